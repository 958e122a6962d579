"""Occupied disk-UUID prefixes, and drawing a UUID whose prefix is free.

There are 16^4 = 65,536 prefixes (a v4 UUID's first four characters are random hex,
util/util.go:168 @v1.7.2). A new prefix is drawn uniformly from the free ones, so allocation
succeeds while any prefix is free (docs/design.md, invariant 6) instead of retrying a fixed number
of times as Longhorn v1.9.0 does (20 draws, `generateUniqueFirstFourCharUUID`,
controller/monitor/disk_utils.go:26,240-249 @v1.9.0).
"""

from __future__ import annotations

import random
import secrets
import uuid as uuidlib
from collections import Counter
from typing import AbstractSet as Set, Iterable

PREFIX_SPACE = 16**4
_SYSTEM_RANDOM = secrets.SystemRandom()
_ALL_PREFIXES = tuple(f"{i:04x}" for i in range(PREFIX_SPACE))


class PrefixSpaceExhausted(Exception):
    def __init__(self) -> None:
        super().__init__(
            f"all {PREFIX_SPACE:,} disk UUID prefixes are in use: no UUID with a unique prefix exists; "
            "upgrade Longhorn to v1.9.2 or later, whose BIM names use the whole UUID"
        )


def draw_free_prefix(occupied: Set[str], rng: random.Random | None = None) -> str:
    """A prefix drawn uniformly from those not in `occupied` (a set of lower-case 4-hex strings)."""
    rng = rng or _SYSTEM_RANDOM
    free_count = PREFIX_SPACE - len(occupied)
    if free_count >= PREFIX_SPACE // 4:
        # Rejection sampling is uniform over the free set and needs < 4 draws on average here.
        while True:
            candidate = f"{rng.randrange(PREFIX_SPACE):04x}"
            if candidate not in occupied:
                return candidate
    # Nearly full: list the free prefixes and pick one, rather than looping on rejections.
    free = [p for p in _ALL_PREFIXES if p not in occupied]
    if not free:
        raise PrefixSpaceExhausted()
    return free[rng.randrange(len(free))]


def uuid_with_prefix(prefix: str, rng: random.Random | None = None) -> str:
    """A random version-4 UUID that starts with `prefix` (the first 16 bits are random in v4)."""
    rng = rng or _SYSTEM_RANDOM
    value = (rng.getrandbits(128) & ~(0xFFFF << 112)) | (int(prefix, 16) << 112)
    return str(uuidlib.UUID(int=value, version=4))


def allocate_uuid(occupied: Set[str], rng: random.Random | None = None) -> str:
    return uuid_with_prefix(draw_free_prefix(occupied, rng), rng)


class PrefixIndex:
    """Reference counts per UUID, and the prefixes they occupy.

    Memory is bounded by distinct UUIDs, not by the objects that reference them: a UUID held by a
    disk, three replicas and a BIM is one entry with count 5.
    """

    def __init__(self, uuids: Iterable[str] = ()) -> None:
        self._refs: Counter[str] = Counter()
        self._by_prefix: dict[str, set[str]] = {}
        for u in uuids:
            self.add(u)

    def add(self, uuid: str) -> None:
        uuid = uuid.lower()
        if not uuid:
            return
        if self._refs[uuid] == 0:
            self._by_prefix.setdefault(uuid[:4], set()).add(uuid)
        self._refs[uuid] += 1

    def remove(self, uuid: str) -> None:
        uuid = uuid.lower()
        count = self._refs.get(uuid, 0)
        if count <= 0:
            return
        if count == 1:
            del self._refs[uuid]
            holders = self._by_prefix[uuid[:4]]
            holders.discard(uuid)
            if not holders:
                del self._by_prefix[uuid[:4]]
        else:
            self._refs[uuid] = count - 1

    def holders(self, prefix: str) -> frozenset[str]:
        return frozenset(self._by_prefix.get(prefix.lower(), ()))

    def occupied(self) -> frozenset[str]:
        return frozenset(self._by_prefix)

    def count(self, uuid: str) -> int:
        """How many references to `uuid` were added (and not removed)."""
        return self._refs.get(uuid.lower(), 0)

    def __contains__(self, uuid: object) -> bool:
        return isinstance(uuid, str) and self._refs.get(uuid.lower(), 0) > 0

    def __len__(self) -> int:
        return len(self._refs)
