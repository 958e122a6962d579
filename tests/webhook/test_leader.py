"""Leader election on a Lease in the emulated API server, with real HTTP and real 409s."""

from __future__ import annotations

import asyncio


from bimguard.sim.apiserver import ApiServer
from bimguard.sim.longhorn.kube import api_client
from webhook.leader import LeaderElector, micro_time

NS = "default"
LEASE = "coordination.k8s.io/v1/leases"
# Short, but with room for a loaded machine: a renewal may take a few hundred milliseconds.
FAST = dict(lease_duration=2.0, renew_deadline=1.5, retry_period=0.1)


async def _electors(api: ApiServer, *names: str, **kw: object) -> list[LeaderElector]:
    out = []
    for n in names:
        out.append(LeaderElector(api_client(api.url), NS, "bimguard-controller", n, **{**FAST, **kw}))
    return out


async def _close(*els: LeaderElector) -> None:
    for e in els:
        await e.stop()
        await e.kube.api_client.close()


async def _sample(els: list[LeaderElector], seconds: float) -> list[int]:
    """How many lead at each tick: never more than one."""
    counts = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        counts.append(sum(e.is_leader for e in els))
        await asyncio.sleep(0.02)
    return counts


async def test_two_electors_only_one_leads(api: ApiServer) -> None:
    a, b = await _electors(api, "pod-a", "pod-b")
    a.start(); b.start()
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 3
        while not (a.is_leader or b.is_leader) and loop.time() < end:
            await asyncio.sleep(0.02)
        counts = await _sample([a, b], 1.5)
        assert max(counts) == 1 and counts[-1] == 1
        lease = api.store.get(LEASE, NS, "bimguard-controller")
        leader = a if a.is_leader else b
        assert lease["spec"]["holderIdentity"] == leader.identity
        assert lease["spec"]["leaseDurationSeconds"] == 2
    finally:
        await _close(a, b)


async def test_leader_crash_follower_takes_over_after_expiry(api: ApiServer) -> None:
    a, b = await _electors(api, "pod-a", "pod-b", release_on_stop=False)
    a.start()
    try:
        assert await a.wait_leading(3)
        b.start()
        await asyncio.sleep(0.5)
        assert a.is_leader and not b.is_leader
        loop = asyncio.get_running_loop()
        await a.stop()  # a crash: no release
        stopped = loop.time()
        assert await b.wait_leading(5)
        # Not before the lease expired.
        assert loop.time() - stopped >= 1.9
        assert api.store.get(LEASE, NS, "bimguard-controller")["spec"]["holderIdentity"] == "pod-b"
        assert api.store.get(LEASE, NS, "bimguard-controller")["spec"]["leaseTransitions"] == 1
    finally:
        await _close(a, b)


async def test_clean_stop_releases_for_a_fast_takeover(api: ApiServer) -> None:
    a, b = await _electors(api, "pod-a", "pod-b", lease_duration=30.0, renew_deadline=20.0, retry_period=0.1)
    a.start()
    try:
        assert await a.wait_leading(3)
        b.start()
        await asyncio.sleep(0.3)
        await a.stop()
        assert await b.wait_leading(2)  # far sooner than the 30 s lease
    finally:
        await _close(a, b)


async def test_leader_whose_lease_was_taken_steps_down(api: ApiServer) -> None:
    a, = await _electors(api, "pod-a")
    stepped_down = asyncio.Event()
    a.on_stopped_leading = stepped_down.set
    a.start()
    try:
        assert await a.wait_leading(3)
        lease = api.store.get(LEASE, NS, "bimguard-controller")
        lease["spec"].update(holderIdentity="pod-z", renewTime=micro_time(), leaseDurationSeconds=30)
        api.store.update(LEASE, lease)
        await asyncio.wait_for(stepped_down.wait(), 3)
        await asyncio.sleep(0.3)
        assert not a.is_leader
    finally:
        await _close(a)


async def test_renewal_conflict_makes_the_loser_step_down(api: ApiServer) -> None:
    a, = await _electors(api, "pod-a", release_on_stop=False)
    try:
        assert await a.try_acquire_or_renew()
        # a's next renewal reads the lease, then its PUT is held up; meanwhile another candidate
        # wins the lease. a's PUT carries a stale resourceVersion: a real 409 from the server.
        api.faults.latency(0.5, verbs="update", resource=LEASE)
        renewal = asyncio.create_task(a.try_acquire_or_renew())
        await asyncio.sleep(0.2)
        lease = api.store.get(LEASE, NS, "bimguard-controller")
        lease["spec"].update(holderIdentity="pod-z", renewTime=micro_time(), leaseDurationSeconds=30)
        api.store.update(LEASE, lease)
        assert await renewal is False
        assert ("PUT", 409) in {(m, s) for m, p, s in api.requests if "leases" in p}
        api.faults.clear()
        a.start()  # campaigning: pod-z's lease is live, so a stays a follower
        await asyncio.sleep(0.5)
        assert not a.is_leader
        assert api.store.get(LEASE, NS, "bimguard-controller")["spec"]["holderIdentity"] == "pod-z"
    finally:
        await _close(a)


async def test_is_leader_expires_without_renewals(api: ApiServer) -> None:
    a, = await _electors(api, "pod-a")
    a.start()
    try:
        assert await a.wait_leading(3)
        api.faults.error_rate(1.0, 503, resource=LEASE)  # the API server stops answering
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while a.is_leader:
            await asyncio.sleep(0.02)
        # Well before anyone else could acquire (a full lease duration after the last renewal).
        assert loop.time() - t0 < FAST["lease_duration"]
    finally:
        api.faults.clear()
        await _close(a)
