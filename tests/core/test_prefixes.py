import random
import uuid
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bimguard.prefixes import (PREFIX_SPACE, PrefixIndex, PrefixSpaceExhausted, allocate_uuid, draw_free_prefix,
                               uuid_with_prefix)

prefixes = st.integers(0, PREFIX_SPACE - 1).map(lambda i: f"{i:04x}")


@given(occupied=st.sets(prefixes, max_size=2000), seed=st.integers())
def test_allocation_never_returns_an_occupied_prefix(occupied, seed):
    u = allocate_uuid(occupied, random.Random(seed))
    assert u[:4] not in occupied
    assert uuid.UUID(u).version == 4 and str(uuid.UUID(u)) == u


@settings(max_examples=20, deadline=None)
@given(free=st.sets(st.integers(0, PREFIX_SPACE - 1), min_size=1, max_size=40), seed=st.integers())
def test_allocation_succeeds_while_any_prefix_is_free(free, seed):
    occupied = {f"{i:04x}" for i in range(PREFIX_SPACE)} - {f"{i:04x}" for i in free}
    assert int(draw_free_prefix(occupied, random.Random(seed)), 16) in free


def test_exhausted_space_says_so():
    with pytest.raises(PrefixSpaceExhausted, match="all 65,536"):
        draw_free_prefix({f"{i:04x}" for i in range(PREFIX_SPACE)})


@pytest.mark.parametrize("taken", [100, PREFIX_SPACE - 8])  # rejection path and the nearly-full path
def test_draws_are_uniform_over_the_free_prefixes(taken):
    occupied = {f"{i:04x}" for i in range(taken)}
    free = PREFIX_SPACE - taken
    rng = random.Random(7)
    draws = 8000 if free > 64 else 400  # the nearly-full path lists all prefixes per draw
    if free > 64:  # bucket many free prefixes into 8 equal ranges
        counts = Counter((int(draw_free_prefix(occupied, rng), 16) - taken) * 8 // free for _ in range(draws))
    else:
        counts = Counter(int(draw_free_prefix(occupied, rng), 16) for _ in range(draws))
    assert len(counts) == 8
    expected = draws / 8
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 24.3  # p = 0.001 for 7 degrees of freedom


def test_uuid_with_prefix_keeps_a_valid_v4_uuid():
    u = uuid.UUID(uuid_with_prefix("c0ff", random.Random(1)))
    assert str(u).startswith("c0ff") and u.version == 4 and u.variant == uuid.RFC_4122


def test_index_counts_references_per_uuid():
    a, b = "c01200da-8a5c-4692-92e6-c4a983087951", "c012eb76-f8eb-4ea1-b81d-472eac9d98bf"
    idx = PrefixIndex([a, a.upper(), b])
    assert len(idx) == 2 and idx.holders("C012") == {a, b}
    idx.remove(a)
    assert a in idx
    idx.remove(a)
    assert a not in idx and idx.holders("c012") == {b}
    idx.remove(b)
    assert idx.occupied() == frozenset()
