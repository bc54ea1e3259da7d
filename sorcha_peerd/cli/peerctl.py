"""``sorcha-peerctl``: talk to a running sorcha-peerd over its control socket.

A placeholder: the command-line shape is fixed now so scripts and the
systemd health check can be written against it; the control socket client
comes with the control socket itself.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sorcha_peerd import __version__

PROG = "sorcha-peerctl"
#: Exit status when the daemon cannot be reached (the health check's "down").
EX_UNREACHABLE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Control a running sorcha-peerd.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--socket", metavar="PATH", help="the daemon's control socket")
    parser.add_argument(
        "--config", metavar="PATH", help="read the control socket path from this config file"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("status", help="show the daemon's state; exit 0 when healthy")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sorcha-peerctl``; returns the process exit status."""
    build_parser().parse_args(argv)
    print(f"{PROG}: cannot reach the daemon: control socket not implemented yet", file=sys.stderr)
    return EX_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
