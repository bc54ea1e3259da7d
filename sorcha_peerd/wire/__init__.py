"""The gRPC wire layer: generated messages, codecs, and the purerpc bridge.

purerpc is used only inside this package, so that it could be replaced in one place.
"""
