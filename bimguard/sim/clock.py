"""The one clock behind every simulated Longhorn and kubelet timing.

Longhorn's periods (30 s disk-monitor poll, ``controller/monitor/disk_monitor.go:28 @v1.7.2``; 30 s
informer resync, ``controller/node_controller.go:46 @v1.7.2``) are written in this package in
*Longhorn seconds*; :class:`SimClock` turns them into real seconds with a single ``time_scale``
(default 0.02: a 30 s poll takes 0.6 s). ``time_scale=1`` is real time.

Timestamps written into objects (``lastTransitionTime`` and friends) stay real UTC wall-clock time:
the product under test compares them with its own clock, and scaling them would make them lie.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import time
from dataclasses import dataclass

DEFAULT_TIME_SCALE = 0.02


@dataclass
class SimClock:
    """Scales Longhorn durations to real durations; the only place the sim sleeps through.

    ``skew`` (seconds, may be negative, changeable at any time) shifts :meth:`wall`, the clock of
    the component that owns this instance. The emulated API server stamps ``creationTimestamp``
    and its ``Date`` headers from its own ``ApiServer.clock.wall()``: a skew of -30 there is an API
    server 30 s behind the pods around it, i.e. a controller clock 30 s ahead of the server's. Nodes
    do not agree on time either; nothing keeps clocks in step but NTP.
    """

    time_scale: float = DEFAULT_TIME_SCALE
    skew: float = 0.0

    def __post_init__(self) -> None:
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")

    def real(self, longhorn_seconds: float) -> float:
        """Real seconds that correspond to ``longhorn_seconds`` of simulated time."""
        return longhorn_seconds * self.time_scale

    async def sleep(self, longhorn_seconds: float) -> None:
        await asyncio.sleep(self.real(longhorn_seconds))

    def monotonic(self) -> float:
        """Simulated seconds elapsed on a monotonic scale (real monotonic / time_scale)."""
        return time.monotonic() / self.time_scale

    def wall(self) -> _dt.datetime:
        """This component's wall-clock time: real UTC time plus ``skew``."""
        return _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=self.skew)

    @staticmethod
    def now_rfc3339() -> str:
        """Kubernetes/Longhorn timestamp format (lm ``util.Now()``: RFC3339, UTC, seconds)."""
        return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
