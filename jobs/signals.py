"""SIGTERM handled like Ctrl-C for the commands that run an event loop.

Kubernetes stops a Job's pod with SIGTERM, and so do `timeout` and service managers. Python's
default is to die on the spot, which skips every `finally`: the demo's temporary directory
stays in /tmp and the repair's Lease is held until it expires. Here the main task is cancelled
instead, so cleanup runs, and `Terminated` tells the CLI to exit 143 (128 + SIGTERM) in one line.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Coroutine

T = TypeVar("T")


class Terminated(Exception):
    """The command was stopped by SIGTERM after its cleanup ran."""


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`; on SIGTERM, `main` is cancelled and `Terminated` raised."""
    import asyncio  # here: the CLI imports this module, and `rewrite-cfg` keeps to a few modules

    return asyncio.run(_terminable(main))


async def _terminable(main: Coroutine[Any, Any, T]) -> T:
    import asyncio

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def on_sigterm() -> None:
        received.append(signal.SIGTERM)
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError):  # not the main thread (tests call commands from threads)
        return await main
    try:
        return await main
    except asyncio.CancelledError:
        if received:
            raise Terminated from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
