"""``sorcha-peerd``: load the configuration, then run the daemon for its role.

The process boundary lives here and only here: reading ``os.environ``, the
host name and the working directory, printing, and choosing the exit status.
Everything below it (config, daemon) takes those as arguments.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from sorcha_peerd import __version__
from sorcha_peerd.config import EX_CONFIG, FLAG_FOR_KEY, ConfigError, Settings, load_settings
from sorcha_peerd.logs import configure_logging

PROG = "sorcha-peerd"

#: Flag -> metavar/help; the dotted key each one overrides comes from FLAG_FOR_KEY.
_FLAG_HELP: dict[str, tuple[str, str]] = {
    "--node-id": ("ID", "this node's id (node.id)"),
    "--role": ("ROLE", "hub, peer or auto (node.role)"),
    "--listen": ("HOST:PORT", "gRPC listen address (grpc.listen)"),
    "--state-dir": ("DIR", "state directory (node.state_dir)"),
    "--control-socket": ("PATH", "control socket path (control.socket)"),
    "--store": ("BACKEND", "sqlite or mongodb (store.backend)"),
    "--mongodb-uri": ("URI", "MongoDB connection URI (store.mongodb_uri)"),
    "--mongodb-database": ("NAME", "MongoDB database name (store.mongodb_database)"),
    "--log-level": ("LEVEL", "debug, info, warning or error (log.level)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; flag values are plain strings, validated by config.

    No argparse ``choices`` or ``type``: a bad value must be a config error
    (exit 78, naming the flag), not a usage error (exit 2).
    """
    parser = argparse.ArgumentParser(
        prog=PROG, description="Hub and peer daemon of the Sorcha peer network."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--config", metavar="PATH", help="configuration file (TOML)")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print a summary and exit",
    )
    for key, flag in FLAG_FOR_KEY.items():
        metavar, help_text = _FLAG_HELP[flag]
        parser.add_argument(flag, dest=_dest(key), metavar=metavar, help=help_text)
    return parser


def _dest(key: str) -> str:
    return "override_" + key.replace(".", "__")


def system_hostname() -> str:
    """The fully qualified host name, as role detection matches it.

    ``gethostname()`` is used as is when it already has a domain; otherwise
    ``getfqdn()`` (what ``hostname -f`` does) adds one when the resolver knows it.
    """
    name = socket.gethostname()
    if "." not in name:
        fqdn = socket.getfqdn(name)
        if fqdn.startswith(name + "."):
            name = fqdn
    return name


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sorcha-peerd``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    overrides = {
        key: value for key in FLAG_FOR_KEY if (value := getattr(args, _dest(key))) is not None
    }
    config_path = Path(args.config) if args.config is not None else None
    cwd = Path.cwd()

    def load() -> Settings:
        # the same file and flags as at start; the environment as it is now
        return load_settings(
            overrides, config_path=config_path, env=os.environ, hostname=system_hostname(), cwd=cwd
        )

    try:
        settings = load()
    except ConfigError as exc:
        for line in exc.lines():
            print(f"{PROG}: {line}", file=sys.stderr)
        return EX_CONFIG
    if args.check_config:
        print(f"{PROG}: configuration OK: {settings.summary()}")
        return 0
    log_control = configure_logging(settings.log.level, env=os.environ)
    # the daemon itself is imported only now: --check-config needs none of it
    from sorcha_peerd.daemon import run_daemon
    from sorcha_peerd.runtime import DaemonContext

    context = DaemonContext(load_settings=load, log_control=log_control, env=dict(os.environ))
    return run_daemon(settings, context)


if __name__ == "__main__":
    sys.exit(main())
