"""jobs.signals: a signal decides the exit even when the command swallowed its cancellation
(what asyncio.wait_for can do on Python 3.11) and ran on to its own verdict."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from jobs import signals


def swallowing(signum: int):
    async def main() -> int:
        os.kill(os.getpid(), signum)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            pass  # lost, as by the wait_for race
        return 0

    return main()


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, signals.Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_a_lost_cancellation_still_ends_in_the_signal(signum: int, raised: type[BaseException]) -> None:
    with pytest.raises(raised):
        signals.run(swallowing(signum))


def test_without_a_signal_the_command_s_own_result_stands() -> None:
    async def main() -> int:
        await asyncio.sleep(0)
        return 3

    assert signals.run(main()) == 3
