"""sorcha-peerd: hub and peer daemon for the Sorcha peer network."""

__version__ = "0.1.0"
