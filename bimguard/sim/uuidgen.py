"""Deterministic, steerable source of the random identifiers the simulated Longhorn draws.

Longhorn draws disk UUIDs with google/uuid ``New()`` (random v4, lm v1.7.2 ``util/util.go:168``) and
8-hex ids with ``util.RandomID()`` (BackingImage ``status.uuid``, replica name suffixes). The sim
draws them from a seeded :class:`random.Random` so a run is reproducible, and lets tests and the
demo *force* values: a full UUID or only a 4-hex prefix, for one ``(node, disk)`` or for whatever
disk asks next. Forcing prefixes is how the BIM-name collision (two disks whose UUIDs share the first
four characters want the same BIM name, ``types/types.go:385 @v1.7.2``) is produced on purpose.
"""

from __future__ import annotations

import random
import re
import threading
import uuid
from collections import defaultdict, deque

_PREFIX = re.compile(r"^[0-9a-f]{1,32}$")


class UuidGen:
    """Seeded UUID4 / random-id generator with per-disk and global queues of forced values.

    A forced entry is either a full UUID (``"c01200da-8a5c-..."``) or a hex prefix (``"c012"``),
    in which case the rest is drawn from the seeded generator. Per-disk queues win over the
    global queue; each forced entry is used once.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self._rng = random.Random(seed)
        self._drawn: dict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()
        self._per_disk: dict[tuple[str, str], deque[str]] = defaultdict(deque)
        self._global: deque[str] = deque()

    def force(self, value: str, node: str | None = None, disk: str | None = None) -> None:
        """Queue a full UUID or a hex prefix for the next UUID drawn for (node, disk), or globally."""
        value = value.lower()
        if not _is_uuid(value) and not _PREFIX.match(value):
            raise ValueError(f"not a UUID or hex prefix: {value!r}")
        with self._lock:
            if node is None and disk is None:
                self._global.append(value)
            else:
                if node is None or disk is None:
                    raise ValueError("force per disk needs both node and disk")
                self._per_disk[(node, disk)].append(value)

    def disk_uuid(self, node: str = "", disk: str = "") -> str:
        """Next disk UUID for (node, disk): forced if queued, else seeded random v4. With a seed,
        the n-th UUID of a given (node, disk) is the same in every run, whatever order the disks'
        monitors happen to poll in."""
        with self._lock:
            queue = self._per_disk.get((node, disk))
            forced = queue.popleft() if queue else (self._global.popleft() if self._global else None)
            if self._seed is None:
                drawn = self._uuid4()
            else:
                n = self._drawn[(node, disk)]
                self._drawn[(node, disk)] = n + 1
                rng = random.Random(f"{self._seed}/{node}/{disk}/{n}")
                drawn = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if forced is None:
            return drawn
        if _is_uuid(forced):
            return forced
        return _apply_prefix(forced, drawn)

    def random_id(self) -> str:
        """8 hex chars, like lm ``util.RandomID()``."""
        with self._lock:
            return f"{self._rng.getrandbits(32):08x}"

    def _uuid4(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _apply_prefix(prefix: str, drawn: str) -> str:
    """Overlay ``prefix`` on the hex digits of ``drawn``, keeping dashes in place."""
    out: list[str] = []
    it = iter(prefix)
    for ch in drawn:
        if ch == "-":
            out.append(ch)
            continue
        nxt = next(it, None)
        out.append(nxt if nxt is not None else ch)
    return "".join(out)
