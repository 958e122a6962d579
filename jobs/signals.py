"""SIGTERM handled like Ctrl-C for the commands that run an event loop.

Kubernetes stops a Job's pod with SIGTERM, and so do `timeout` and service managers. Python's
default is to die on the spot, which skips every `finally`: the demo's temporary directory
stays in /tmp and the repair's Lease is held until it expires. Here the main task is cancelled
instead, so cleanup runs, and `Terminated` tells the CLI to exit 143 (128 + SIGTERM) in one line.
Ctrl-C (SIGINT) goes the same way and ends in KeyboardInterrupt (exit 130). Either signal decides
the exit code even when its cancellation was lost and the command ran on to its end (on Python
3.11 `asyncio.wait_for` can swallow a cancellation, cpython gh-86296): a stopped command never
exits with its own verdict.
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
    """`asyncio.run(main)`; on SIGTERM (SIGINT), `main` is cancelled and `Terminated`
    (KeyboardInterrupt) raised."""
    import asyncio  # here: the CLI imports this module, and `rewrite-cfg` keeps to a few modules

    return asyncio.run(_terminable(main))


async def _terminable(main: Coroutine[Any, Any, T]) -> T:
    import asyncio

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        task.cancel()

    def stopped() -> BaseException:
        return KeyboardInterrupt() if received[0] == signal.SIGINT else Terminated()

    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
    except (NotImplementedError, RuntimeError):  # not the main thread (tests call commands from threads)
        return await main
    try:
        result = await main
    except asyncio.CancelledError:
        if received:
            raise stopped() from None
        raise
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    if received:
        raise stopped()
    return result
