"""SimClock scaling and the steerable UUID generator."""

import time
import uuid

import pytest

from bimguard.sim.clock import SimClock
from bimguard.sim.uuidgen import UuidGen


def test_clock_scales_longhorn_seconds() -> None:
    clock = SimClock(0.02)
    assert clock.real(30) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        SimClock(0)


async def test_clock_sleep_is_scaled() -> None:
    clock = SimClock(0.01)
    t0 = time.monotonic()
    await clock.sleep(10)  # 10 Longhorn seconds -> 0.1 s
    elapsed = time.monotonic() - t0
    assert 0.09 <= elapsed < 0.5


def test_now_is_rfc3339_utc() -> None:
    ts = SimClock.now_rfc3339()
    assert len(ts) == 20 and ts.endswith("Z") and ts[10] == "T"


def test_seeded_uuids_are_reproducible_random_v4() -> None:
    a, b = UuidGen(7), UuidGen(7)
    xs = [a.disk_uuid("n", "d") for _ in range(5)]
    assert xs == [b.disk_uuid("n", "d") for _ in range(5)]
    assert len(set(xs)) == 5
    for x in xs:
        u = uuid.UUID(x)
        assert u.version == 4 and str(u) == x


def test_forced_prefix_per_disk_and_global() -> None:
    g = UuidGen(1)
    g.force("c012", node="n1", disk="d1")
    g.force("c01200da-8a5c-4692-92e6-c4a983087951")
    assert g.disk_uuid("n2", "d9") == "c01200da-8a5c-4692-92e6-c4a983087951"  # global queue
    u = g.disk_uuid("n1", "d1")
    assert u.startswith("c012") and uuid.UUID(u).version == 4
    # consumed once: the next draw for that disk is plain seeded random again
    g2 = UuidGen(1)
    g2.force("c012", node="n1", disk="d1")
    g2.disk_uuid("n1", "d1")
    assert g2.disk_uuid("n1", "d1") != u
    with pytest.raises(ValueError):
        g.force("xyz!")
    with pytest.raises(ValueError):
        g.force("abcd", node="n1")


def test_random_id_is_8_hex() -> None:
    r = UuidGen(3).random_id()
    assert len(r) == 8 and int(r, 16) >= 0
