"""Waiting in tests for state another task owns."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until true; TooSlowError after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - the state has no event of its own to wait on
            await trio.sleep(interval)
