"""A GrpcServer in its own process, for tests that kill a server mid-call.

Prints the bound port on stdout, then streams entries slowly forever.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio

from sorcha_peerd.register import Entry
from sorcha_peerd.wire import services
from sorcha_peerd.wire.server import GrpcServer


async def endless(request: Any, ctx: Any) -> AsyncIterator[Entry]:
    version = 0
    while True:
        version += 1
        yield Entry(f"bp-{version}", version, b"{}", 1, "slow").with_checksum()
        await trio.sleep(0.01)


async def hang(request: Any, ctx: Any) -> Any:
    await trio.sleep_forever()


async def main() -> None:
    server = GrpcServer("127.0.0.1", 0, {services.FULL_SYNC: endless, services.CONNECT: hang})
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        print(port, flush=True)


if __name__ == "__main__":
    trio.run(main)
