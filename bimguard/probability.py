"""How likely a BIM name collision is, for a number of v1 disks with random UUIDs.

Each v4 UUID's prefix is uniform over 16^4 = 65,536 values, so for n disks the chance that some
two share a prefix is the birthday bound 1 - prod_{i<n} (1 - i/65536): 7.3 % at 100 disks,
50 % at 300.
"""

from __future__ import annotations

import math

from bimguard.prefixes import PREFIX_SPACE


def next_disk_collides(distinct_prefixes: int) -> float:
    """Chance that one more disk with a random UUID lands on an occupied prefix."""
    return min(distinct_prefixes, PREFIX_SPACE) / PREFIX_SPACE


def birthday(disks: int) -> float:
    """Chance that among `disks` random UUIDs at least two share a prefix."""
    if disks > PREFIX_SPACE:
        return 1.0
    # Summing logs keeps precision for large n where the product underflows.
    log_none = sum(math.log1p(-i / PREFIX_SPACE) for i in range(disks))
    return -math.expm1(log_none)
