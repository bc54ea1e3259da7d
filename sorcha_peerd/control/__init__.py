"""The control socket: varlink over a unix socket, served by the daemon, used by sorcha-peerctl.

Start it from a role's nursery::

    server = ControlServer(settings.control.socket, backend)
    await nursery.start(server.serve)

where ``backend`` implements :class:`ControlBackend`. See docs/control.md.
"""

from sorcha_peerd.control.backend import ConfigInvalid, ControlBackend, NotSupported, SyncFailed
from sorcha_peerd.control.client import ControlClient, DaemonUnreachable
from sorcha_peerd.control.interface import IDL, ControlService, ServiceInfo, blueprint_json
from sorcha_peerd.control.protocol import INTERFACE, ControlError
from sorcha_peerd.control.server import (
    STATUS_SOCKET_MODE,
    ControlServer,
    ControlSocketError,
    ControlSocketInUse,
)

__all__ = [
    "IDL",
    "INTERFACE",
    "STATUS_SOCKET_MODE",
    "ConfigInvalid",
    "ControlBackend",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "ControlService",
    "ControlSocketError",
    "ControlSocketInUse",
    "DaemonUnreachable",
    "NotSupported",
    "ServiceInfo",
    "SyncFailed",
    "blueprint_json",
]
