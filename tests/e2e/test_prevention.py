"""End to end: prevention against a simulated Longhorn v1.7.2 (the Prevention flow of docs/design.md).

Every test runs the real parts together: the emulated API server, simulated longhorn-managers
writing real cfg files, real webhook replicas over verified TLS (tests.webhook.harness), each
with its own LeaderElector + RewriteController as `webhook/main.py` `_Leadership` wires them,
and the simulated kubelet running the real `bimguard rewrite-cfg` pods. The only shortcuts are
the time scale (Longhorn seconds x 0.01), short controller and lease timings, and, where a test
says so, a webhook configuration with a smaller `timeoutSeconds` than the chart's 5 s or a
webhook deadline other than the default 2 s.

Outcomes are checked against the stored state: Node status in the API server, cfg files on the
simulated hosts, DiskRewrite records, Events, BIMs and Longhorn's own log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bimguard import records
from bimguard.sim.apiserver import ApiServer
from bimguard.sim.longhorn import disks as lh_disks
from bimguard.sim.longhorn.cluster import SimCluster
from bimguard.sim.longhorn.kube import Conflict as LonghornConflict
from bimguard.sim.longhorn.node_status import get_condition
from bimguard.sim.serve import simulated_cluster
from tests.webhook.harness import (
    LONGHORN_NS,
    NAMESPACE,
    SERVICE,
    Replica,
    prepare,
    start_replica,
    webhook_configuration,
)
from bimguard.rewrite.engine import REASON_DONE, REASON_ROLLED_BACK, Settings
from webhook.controller import RewriteController
from webhook.leader import LeaderElector

RW = f"{records.GROUP}/{records.VERSION}/{records.REWRITES}"
CLAIMS = f"{records.GROUP}/{records.VERSION}/{records.CLAIMS}"
NODES = "longhorn.io/v1beta2/nodes"
HOST = f"{SERVICE}.{NAMESPACE}.svc"
IMAGE = "bimguard:e2e"
TIME_SCALE = 0.01
# Roomy for a loaded machine, small enough to keep each test short.
LEASE = {"lease_duration": 4.0, "renew_deadline": 3.0, "retry_period": 0.2}
SETTINGS = Settings(resync=0.2, pending_grace=10, pod_start_timeout=15, gc_interval=3600, active_deadline=60)


# ---------------------------------------------------------------------------------- harness


@dataclass
class Webhook:
    """One webhook pod: the replica that answers reviews, and its leader-elected controller."""

    identity: str
    replica: Replica
    elector: LeaderElector
    controller: RewriteController
    stopped: bool = False

    @property
    def endpoint(self) -> tuple[str, int]:
        return "127.0.0.1", self.replica.server.bound_port

    def rewrites(self) -> int:
        """Reviews this replica answered with a rewrite patch."""
        return self.replica.metrics.reviews.outcomes["rewritten"]

    def start_leadership(self) -> None:
        self.elector.start()
        self.controller.start()

    async def stop_leadership(self, *, release: bool = True) -> None:
        """`release=False` is a killed process: the lease stays held until it expires."""
        self.elector.release_on_stop = release
        await self.controller.stop()
        await self.elector.stop()

    async def stop(self, *, release: bool = True) -> None:
        if self.stopped:
            return
        self.stopped = True
        await self.stop_leadership(release=release)
        await self.replica.stop()


@dataclass
class Env:
    api: ApiServer
    cluster: SimCluster
    kubeconfig: Path
    webhooks: list[Webhook] = field(default_factory=list)

    # -- webhook pods ----------------------------------------------------------------------
    async def start_webhook(self, identity: str, settings: Settings = SETTINGS, *, deadline: float = 2.0,
                            lead: bool = True) -> Webhook:
        """`lead=False`: the replica answers reviews, its elector and controller start later
        (`start_leadership`), so a test can act between admission and the rewrite."""
        replica = await start_replica(self.kubeconfig, deadline=deadline)
        elector = LeaderElector(replica.api_client, NAMESPACE, identity=identity, **LEASE)
        controller = RewriteController(replica.api_client, NAMESPACE, LONGHORN_NS, IMAGE, settings=settings,
                                       leader=elector)
        elector.on_started_leading = controller.wake
        hook = Webhook(identity, replica, elector, controller)
        self.webhooks.append(hook)
        if lead:
            hook.start_leadership()
        return hook

    async def register(self, hook: Webhook, *, timeout_seconds: int | None = None) -> None:
        """What the chart installs (failurePolicy Ignore), routed to `hook`; `timeout_seconds`
        overrides the chart's 5 s where a test needs the API server to give up sooner."""
        self.route(hook)
        mwc = webhook_configuration(hook.replica.certs.ca_bundle_pem)
        if timeout_seconds is not None:
            mwc["webhooks"][0]["timeoutSeconds"] = timeout_seconds
        self.api.store.create("admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", mwc)

    def route(self, hook: Webhook | None) -> None:
        """Point the webhook Service at one replica (None: no endpoint at all)."""
        if hook is None:
            self.api.webhook_hosts.pop(HOST, None)
        else:
            self.api.webhook_hosts[HOST] = hook.endpoint

    # -- reading the stored state -------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        return self.api.store.list(RW, NAMESPACE)[0]

    def records_of(self, node: str, disk: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if (r["spec"]["node"], r["spec"]["disk"]) == (node, disk)]

    def node(self, node: str) -> dict[str, Any]:
        return self.api.store.get(NODES, LONGHORN_NS, node)

    def entry(self, node: str, disk: str) -> dict[str, Any]:
        return ((self.node(node).get("status") or {}).get("diskStatus") or {}).get(disk) or {}

    def status_uuid(self, node: str, disk: str) -> str:
        return self.entry(node, disk).get("diskUUID") or ""

    def ready(self, node: str, disk: str) -> bool:
        return get_condition(self.entry(node, disk).get("conditions"), "Ready").get("status") == "True"

    def cfg_uuid(self, node: str, disk: str) -> str:
        return self.cluster.read_cfg(node, disk).disk_uuid

    def spec_disks(self) -> list[tuple[str, str]]:
        return [(n["metadata"]["name"], d) for n in self.api.store.list(NODES, LONGHORN_NS)[0]
                for d in sorted((n.get("spec") or {}).get("disks") or {})]

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in self.api.store.list("v1/events", LONGHORN_NS)[0] if e.get("reason") == reason]

    def agrees(self, node: str, disk: str) -> bool:
        """Status and cfg hold the same UUID and Longhorn calls the disk Ready (invariant 2)."""
        uuid = self.status_uuid(node, disk)
        return bool(uuid) and uuid == self.cfg_uuid(node, disk) and self.ready(node, disk)

    # -- waiting --------------------------------------------------------------------------------
    async def until(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return await self.cluster.wait_for(predicate, timeout, what)

    async def record_appears(self, node: str, disk: str, timeout: float = 15) -> dict[str, Any]:
        await self.until(lambda: self.records_of(node, disk), timeout, f"a DiskRewrite for {node}/{disk}")
        (rec,) = self.records_of(node, disk)
        return rec

    async def final(self, node: str, disk: str, timeout: float = 30) -> dict[str, Any]:
        def done() -> bool:
            recs = self.records_of(node, disk)
            return bool(recs) and all(phase(r) in records.FINAL_PHASES for r in recs)

        await self.until(done, timeout, f"the DiskRewrite of {node}/{disk} in a final phase")
        (rec,) = self.records_of(node, disk)
        return rec

    async def settled(self, node: str, disk: str, timeout: float = 15) -> None:
        try:
            await self.until(lambda: self.agrees(node, disk), timeout, f"{node}/{disk} Ready with status == cfg")
        except TimeoutError:
            raise AssertionError(f"{node}/{disk}: status {self.status_uuid(node, disk)!r}, cfg "
                                 f"{self.cfg_uuid(node, disk)!r}, Ready={self.ready(node, disk)}") from None


def phase(rec: dict[str, Any]) -> str:
    return (rec.get("status") or {}).get("phase") or "Pending"


@contextlib.asynccontextmanager
async def running(tmp_path: Path, *, nodes: int, disks_per_node: int = 1, seed: int = 1) -> AsyncIterator[Env]:
    """A settled simulated cluster with bimguard's CRDs and a kubelet; webhooks are the test's."""
    async with simulated_cluster(nodes=nodes, disks_per_node=disks_per_node, seed=seed, time_scale=TIME_SCALE,
                                 root=tmp_path / "nodes") as (api, cluster):
        kubeconfig = tmp_path / "kubeconfig"
        api.kubeconfig(kubeconfig)
        await prepare(kubeconfig)
        await cluster.start_kubelet(images=["bimguard"])
        env = Env(api, cluster, kubeconfig)
        try:
            yield env
        finally:
            for hook in env.webhooks:
                await hook.stop()


def free_prefix(rng: random.Random, taken: set[str]) -> str:
    while True:
        p = f"{rng.getrandbits(16):04x}"
        if p not in taken:
            taken.add(p)
            return p


def sample(metrics: Any, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# ------------------------------------------------------------------ 1. bursts on two replicas

# Measured on the shared 2-core machine this was written on (other test runs beside it), 10 nodes:
#   200 disks (10 bursts): 68 s at load 5, 118 s at load 7 (recorded in 21-24 s, Ready 49-86 s);
#   160 disks (8 bursts): 32 s at load 4;  120 disks (6 bursts): 27 s at load 7;
#   200 disks on the idle machine (as CI runs it): 30 s.
# The rewrite controller drives records one after the other (about 2.5-3 rewrites a second
# here), so the time grows with the number of rewrites. The suite runs 4 bursts (80 disks), so
# its time stays well inside the timeout on a loaded machine (docs/reliability.md); the 200-disk
# run is the benchmark: BIMGUARD_E2E_BURSTS=10 pytest -s -k bursts tests/e2e/test_prevention.py.
BURSTS = int(os.environ.get("BIMGUARD_E2E_BURSTS", "4"))
PER_BURST, BURST_NODES = 20, 10


@pytest.mark.timeout(60 + 25 * max(BURSTS, 10))  # not scaled down with the default: a loaded machine
async def test_bursts_of_colliding_disks_on_two_replicas_end_unique_ready_and_agreeing(tmp_path: Path) -> None:
    """BURSTS x 20 new disks (80 by default, 200 as the benchmark) over 10 nodes,
    every one forced onto a prefix that is already taken: copied from a Ready disk, or shared by a pair within the burst (the pair on two
    nodes, so two longhorn-managers write at the same moment; several disks of one node may also
    arrive in one status write). Two webhook replicas, each with its own elector and controller.

    The emulator routes the Service to one (host, port) at a time, so a task flips the route
    between the two replicas every few milliseconds during the bursts: concurrent reviews land
    on both. (The exact same-instant race of two reviews on two replicas is also tested directly
    in tests/webhook/test_reviews.py.)"""
    rng = random.Random(2024)
    async with running(tmp_path, nodes=BURST_NODES, seed=2024) as env:
        c = env.cluster
        initial = env.spec_disks()
        # The webhook's own deadline is raised from 2 s to 4 s (still under the chart's
        # timeoutSeconds of 5): API server, Longhorn, both replicas and the kubelet share one event
        # loop here, and a review skipped at the deadline leaves its collision to the repair Job,
        # which this test would report as a failure of prevention.
        a = await env.start_webhook("bimguard-webhook-0", deadline=4.0)
        b = await env.start_webhook("bimguard-webhook-1", deadline=4.0)
        await env.register(a)
        assert await a.elector.wait_leading(5)

        stop_flipping = asyncio.Event()

        async def flip() -> None:
            while not stop_flipping.is_set():
                for hook in (a, b):
                    env.route(hook)
                    await asyncio.sleep(0.003)

        flipper = asyncio.create_task(flip())
        forced: dict[tuple[str, str], str] = {}  # disk -> prefix it was forced onto
        groups: dict[str, list[tuple[str, str]]] = defaultdict(list)  # prefix -> disks sharing it
        nodes = c.node_names
        started = time.monotonic()
        try:
            for burst in range(BURSTS):
                ready = [(n, d) for n, d in env.spec_disks() if env.agrees(n, d)]
                in_use = {env.status_uuid(n, d)[:4] for n, d in env.spec_disks() if env.status_uuid(n, d)}
                plan: list[tuple[str, str, str]] = []
                for i in range(PER_BURST // 2):
                    first, second = nodes[(burst + i) % len(nodes)], nodes[(burst + i + 1) % len(nodes)]
                    if i % 2:
                        src = rng.choice(ready)  # both collide with a Ready disk
                        prefix = env.status_uuid(*src)[:4]
                        if src not in groups[prefix]:
                            groups[prefix].append(src)
                    else:
                        prefix = free_prefix(rng, in_use)  # the pair collides with each other
                    for node in (first, second):
                        plan.append((node, f"b{burst:02d}-d{len(plan):02d}", prefix))
                for node, disk, prefix in plan:
                    forced[(node, disk)] = prefix
                    groups[prefix].append((node, disk))
                await asyncio.gather(*(c.add_disk(n, d, force_uuid=p) for n, d, p in plan))
                await env.until(lambda plan=plan: all(env.status_uuid(n, d) for n, d, _ in plan), 30,
                                f"burst {burst} recorded")
            recorded = time.monotonic() - started
        finally:
            stop_flipping.set()
            await flipper
        new_disks = list(forced)

        # -- every disk ends Ready with status == cfg, and every record Done
        def all_done() -> bool:
            return all(phase(r) in records.FINAL_PHASES for r in env.records())

        await env.until(all_done, 120, "every DiskRewrite final")
        for n, d in new_disks + initial:
            await env.settled(n, d, timeout=30)
        settled = time.monotonic() - started

        recs = env.records()
        assert Counter(phase(r) for r in recs) == {"Done": len(recs)}, [r["status"] for r in recs if phase(r) != "Done"]
        per_disk = Counter((r["spec"]["node"], r["spec"]["disk"]) for r in recs)
        assert max(per_disk.values()) == 1, [k for k, v in per_disk.items() if v > 1]
        assert not set(per_disk) & set(initial)  # disks recorded before the webhook are never touched

        # -- no two v1 disks share a prefix
        final = {(n, d): env.status_uuid(n, d) for n, d in env.spec_disks()}
        by_prefix = defaultdict(list)
        for disk, uuid in final.items():
            by_prefix[uuid[:4]].append(disk)
        assert {p: ds for p, ds in by_prefix.items() if len(ds) > 1} == {}

        # -- each rewritten disk holds its record's new UUID (status and cfg), old UUID = the forced one;
        #    each other disk kept its forced prefix; within a group at most one disk kept the prefix
        for (n, d), prefix in forced.items():
            mine = env.records_of(n, d)
            if mine:
                spec = mine[0]["spec"]
                assert spec["oldUUID"][:4] == prefix and final[(n, d)] == spec["newUUID"] == env.cfg_uuid(n, d)
            else:
                assert final[(n, d)][:4] == prefix
        for prefix, members in groups.items():
            kept = [m for m in members if final[m][:4] == prefix]
            assert len(kept) <= 1, (prefix, kept)
            assert len([m for m in members if m in per_disk]) >= len(members) - 1, (prefix, members)
        assert len(per_disk) >= sum(len(m) - 1 for m in groups.values())

        # -- both replicas answered reviews with rewrites; only one controller drove records
        assert a.rewrites() > 0 and b.rewrites() > 0, (a.rewrites(), b.rewrites())
        drivers = [h for h in (a, b) if h.controller.transitions]
        assert len(drivers) == 1, [(h.identity, dict(h.controller.transitions)) for h in (a, b)]
        assert sum(drivers[0].controller.transitions.values()) == 2 * len(recs)  # Pending->Rewriting->Done
        assert len(env.events(REASON_DONE)) == len(recs)

        # -- every BIM Longhorn needs exists: a backing image with a copy on every disk
        everywhere = env.spec_disks()
        await c.create_backing_image("bi-everywhere", min_copies=1, disks_=everywhere)

        def copies_ready() -> bool:
            bi = env.api.store.get("longhorn.io/v1beta2/backingimages", LONGHORN_NS, "bi-everywhere")
            files = (bi.get("status") or {}).get("diskFileStatusMap") or {}
            return all((files.get(u) or {}).get("state") == "ready" for u in final.values())

        await env.until(copies_ready, 120, "a ready backing-image copy on every disk")
        bims = env.api.store.list("longhorn.io/v1beta2/backingimagemanagers", LONGHORN_NS)[0]
        assert sorted(b_["metadata"]["name"] for b_ in bims) == sorted(c.expected_bim_name(u) for u in final.values())
        assert not [line for line in c.all_log_lines() if "already exists" in line]
        print(f"\n{len(new_disks)} disks, {len(recs)} rewritten: recorded in {recorded:.1f} s, "
              f"settled in {settled:.1f} s, BIMs after {time.monotonic() - started:.1f} s; "
              f"reviews with a rewrite: {a.identity} {a.rewrites()}, {b.identity} {b.rewrites()}")


# ------------------------------------------------------------------ shared single-webhook setup


async def one_webhook(env: Env, settings: Settings = SETTINGS, **register: Any) -> Webhook:
    hook = await env.start_webhook("bimguard-webhook-0", settings)
    await env.register(hook, **register)
    assert await hook.elector.wait_leading(5)
    return hook


async def add_colliding_disk(env: Env, node: str, disk: str, *, like: tuple[str, str]) -> str:
    """A new disk whose UUID Longhorn will draw with the prefix of the Ready disk `like`."""
    prefix = env.status_uuid(*like)[:4]
    await env.cluster.add_disk(node, disk, force_uuid=prefix)
    return prefix


# ------------------------------------------------------------------ 2. re-created node, cloned disk


async def test_recreated_node_whose_colliding_disk_holds_data_is_blocked_not_rewritten(tmp_path: Path) -> None:
    """Two disks already collide before bimguard is installed and one holds replicas. Deleting
    and re-creating the Longhorn Node makes Longhorn re-record the old UUIDs from the cfgs ("" -> X,
    controller/node_controller.go:745 @v1.7.2): not a new disk. The webhook must leave it alone
    (invariant 3): a Blocked record, a Warning Event, no patch, status == cfg, Ready."""
    async with running(tmp_path, nodes=2, seed=31) as env:
        c = env.cluster
        keeper = ("worker-1", c.disks_of("worker-1")[0])
        prefix = await add_colliding_disk(env, "worker-2", "disk-old", like=keeper)
        await env.settled("worker-2", "disk-old")
        old = env.status_uuid("worker-2", "disk-old")
        assert old[:4] == prefix  # the collision predates bimguard
        await c.create_volume("vol-1", [("worker-2", "disk-old")])
        cfg_before = c.cfg_path("worker-2", "disk-old").read_bytes()
        hook = await one_webhook(env)

        await c.recreate_node("worker-2")
        rec = await env.final("worker-2", "disk-old")
        assert phase(rec) == "Blocked" and rec["spec"]["newUUID"] == "" and rec["spec"]["oldUUID"] == old
        assert "replica" in rec["status"]["message"], rec["status"]
        for disk in c.disks_of("worker-2"):
            await env.settled("worker-2", disk)
        assert env.status_uuid("worker-2", "disk-old") == old
        assert c.cfg_path("worker-2", "disk-old").read_bytes() == cfg_before
        assert sample(hook.replica.metrics, "bimguard_admission_outcomes_total", outcome="blocked") == 1
        assert sample(hook.replica.metrics, "bimguard_admission_outcomes_total", outcome="rewritten") == 0
        (event,) = env.events("DiskUUIDCollision")
        assert event["type"] == "Warning" and event["involvedObject"]["name"] == "worker-2"
        assert rec["metadata"]["name"] in event["message"]
        assert [r["metadata"]["name"] for r in env.records()] == [rec["metadata"]["name"]]  # the other disk: kept
        assert not env.api.store.list("v1/pods", NAMESPACE)[0]
        assert env.status_uuid(*keeper)[:4] == prefix and env.agrees(*keeper)


async def test_cloned_disk_is_rewritten_and_ends_ready(tmp_path: Path) -> None:
    """A new disk directory whose cfg is a byte copy of a Ready disk's (a cloned volume or
    image): the same full UUID. Added to spec.disks, Longhorn records it; the webhook rewrites
    it (with a ClonedDiskUUID Event), the rewriter pod swaps the cfg, and the disk ends Ready with
    cfg == status. The original disk is untouched."""
    async with running(tmp_path, nodes=2, seed=32) as env:
        c = env.cluster
        original = ("worker-1", c.disks_of("worker-1")[0])
        uuid = env.status_uuid(*original)
        original_cfg = c.cfg_path(*original).read_bytes()
        hook = await one_webhook(env)

        clone_dir = c.host("worker-2").dir("/mnt/clone")
        clone_dir.mkdir(parents=True)
        (clone_dir / lh_disks.DISK_CONFIG_FILE).write_bytes(original_cfg)
        await c.add_disk("worker-2", "disk-clone", "/mnt/clone")

        rec = await env.final("worker-2", "disk-clone")
        assert phase(rec) == "Done", rec.get("status")
        assert rec["spec"]["oldUUID"] == uuid and "clone" in rec["spec"]["reason"]
        new = rec["spec"]["newUUID"]
        await env.settled("worker-2", "disk-clone")
        assert env.status_uuid("worker-2", "disk-clone") == new == env.cfg_uuid("worker-2", "disk-clone")
        assert new[:4] != uuid[:4]
        assert env.status_uuid(*original) == uuid and c.cfg_path(*original).read_bytes() == original_cfg
        assert env.agrees(*original)
        (event,) = env.events("ClonedDiskUUID")
        assert event["involvedObject"]["name"] == "worker-2" and new in event["message"]
        assert hook.rewrites() == 1


# ------------------------------------------------------------------ 3. webhook killed after the record


async def test_webhook_killed_after_its_answer_landed_rewrite_finishes_after_restart(tmp_path: Path) -> None:
    """The webhook pod dies right after creating the record: its answer reached the API server
    (the stored status holds the new UUID) but its controller never acts, and the killed process
    does not release the lease. A new webhook pod takes over (after the lease expires) and
    finishes the rewrite: Done, cfg == status, Ready."""
    async with running(tmp_path, nodes=2, seed=33) as env:
        c = env.cluster
        first = await one_webhook(env)
        real_create = first.replica.admission.api.create_record

        async def create_then_die(manifest: dict[str, Any], *a: Any, **kw: Any) -> None:
            await real_create(manifest, *a, **kw)
            await first.stop_leadership(release=False)  # the controller dies with the process

        first.replica.admission.api.create_record = create_then_die  # type: ignore[method-assign]
        await add_colliding_disk(env, "worker-2", "disk-new", like=("worker-1", c.disks_of("worker-1")[0]))
        rec = await env.record_appears("worker-2", "disk-new")
        new = rec["spec"]["newUUID"]
        await env.until(lambda: env.status_uuid("worker-2", "disk-new") == new, 10, "the patch stored")
        await first.stop(release=False)
        env.route(None)
        assert phase(env.records_of("worker-2", "disk-new")[0]) == "Pending"
        assert not first.controller.transitions

        second = await env.start_webhook("bimguard-webhook-1")
        env.route(second)
        rec = await env.final("worker-2", "disk-new", timeout=30)
        assert phase(rec) == "Done", rec["status"]
        assert sum(second.controller.transitions.values()) == 2
        await env.settled("worker-2", "disk-new")
        assert env.status_uuid("worker-2", "disk-new") == new == env.cfg_uuid("worker-2", "disk-new")


async def test_webhook_killed_before_its_answer_record_is_abandoned_cfg_untouched(tmp_path: Path) -> None:
    """The webhook pod dies right after creating the record and before answering: the review's
    connection is dropped without a response. The API server gives up (a registered timeoutSeconds
    of 1 s instead of the chart's 5 s, to keep the test short) and, with failurePolicy Ignore,
    stores Longhorn's write unpatched: the status holds the old UUID. After restart the record
    ends Abandoned, the cfg is byte-identical, status == cfg, the disk Ready."""
    async with running(tmp_path, nodes=2, seed=34) as env:
        c = env.cluster
        # Only the restarted webhook may abandon: the first one's grace outlasts its life even on a
        # loaded machine, where Longhorn's unpatched write can take seconds to be stored.
        first = await env.start_webhook("bimguard-webhook-0", SETTINGS, deadline=30)
        settings = Settings(**{**SETTINGS.__dict__, "pending_grace": 2.0})
        await env.register(first, timeout_seconds=1)
        assert await first.elector.wait_leading(5)
        real_create = first.replica.admission.api.create_record
        die = asyncio.Event()

        async def create_then_hang(manifest: dict[str, Any], *a: Any, **kw: Any) -> None:
            await real_create(manifest, *a, **kw)
            await die.wait()
            raise asyncio.CancelledError  # the process is gone: the connection drops, no answer

        first.replica.admission.api.create_record = create_then_hang  # type: ignore[method-assign]
        await add_colliding_disk(env, "worker-2", "disk-new", like=("worker-1", c.disks_of("worker-1")[0]))
        rec = await env.record_appears("worker-2", "disk-new")
        old = rec["spec"]["oldUUID"]
        await env.until(lambda: env.status_uuid("worker-2", "disk-new"), 10, "Longhorn's write stored")
        assert env.status_uuid("worker-2", "disk-new") == old  # unpatched (failurePolicy Ignore)
        assert any("ignored" in outcome and "deadline" in outcome for _, outcome in env.api.admission.calls)
        cfg = c.cfg_path("worker-2", "disk-new").read_bytes()
        await first.stop_leadership(release=False)
        die.set()
        await first.stop(release=False)
        env.route(None)

        second = await env.start_webhook("bimguard-webhook-1", settings)
        env.route(second)
        rec = await env.final("worker-2", "disk-new", timeout=30)
        assert phase(rec) == "Abandoned", rec["status"]
        assert "did not land" in rec["status"]["message"]
        await env.settled("worker-2", "disk-new")
        assert env.status_uuid("worker-2", "disk-new") == old
        assert c.cfg_path("worker-2", "disk-new").read_bytes() == cfg
        assert not first.controller.transitions and second.controller.transitions["Abandoned"] == 1
        await env.until(lambda: rec["spec"]["newUUID"][:4] not in
                        {x["metadata"]["name"] for x in env.api.store.list(CLAIMS, NAMESPACE)[0]}, 5,
                        "the new prefix's claim released")



async def test_webhook_killed_before_its_answer_retry_on_the_other_replica_gets_the_same_uuid(tmp_path: Path) -> None:
    """Two webhook pods; the leader dies right after creating the record and before answering,
    and the Service moves to the other pod. Meanwhile the Node moved on (a spec write), so the
    API server -- after giving up on the dead webhook (timeoutSeconds 1) -- refuses Longhorn's
    write with 409. longhorn-manager's retry is reviewed by the surviving replica, which finds the
    record and answers with the same new UUID; that replica's controller takes the lease over
    once it expires and finishes the rewrite: Done, one record, cfg == status, Ready."""
    async with running(tmp_path, nodes=2, seed=35) as env:
        c = env.cluster
        first = await env.start_webhook("bimguard-webhook-0", deadline=30)
        await env.register(first, timeout_seconds=1)
        assert await first.elector.wait_leading(5)
        second = await env.start_webhook("bimguard-webhook-1")
        real_create = first.replica.admission.api.create_record
        die = asyncio.Event()

        async def create_then_die(manifest: dict[str, Any], *a: Any, **kw: Any) -> None:
            await real_create(manifest, *a, **kw)
            await first.stop_leadership(release=False)
            await move_on(c, "worker-2")
            env.route(second)  # the endpoints controller drops the dead pod
            await die.wait()
            raise asyncio.CancelledError  # no answer, ever

        first.replica.admission.api.create_record = create_then_die  # type: ignore[method-assign]
        await add_colliding_disk(env, "worker-2", "disk-new", like=("worker-1", c.disks_of("worker-1")[0]))
        rec = await env.record_appears("worker-2", "disk-new")
        new = rec["spec"]["newUUID"]
        await env.until(lambda: env.status_uuid("worker-2", "disk-new"), 15, "Longhorn's retry stored")
        assert env.status_uuid("worker-2", "disk-new") == new  # the retry got the record's UUID
        assert [s for m, p, s in env.api.requests if m == "PUT" and p.startswith(
            "/apis/longhorn.io/v1beta2/namespaces/longhorn-system/nodes/worker-2/status")].count(409) >= 1
        die.set()
        await first.stop(release=False)

        rec = await env.final("worker-2", "disk-new", timeout=30)
        assert phase(rec) == "Done", rec["status"]
        assert len(env.records()) == 1 and rec["spec"]["newUUID"] == new
        assert not first.controller.transitions and sum(second.controller.transitions.values()) == 2
        assert second.rewrites() == 1
        await env.settled("worker-2", "disk-new")
        assert env.status_uuid("worker-2", "disk-new") == new == env.cfg_uuid("worker-2", "disk-new")

# ------------------------------------------------------------------ 4. 409 after admission; webhook timing out


async def move_on(c: SimCluster, node: str) -> None:
    """Another write to the Node meanwhile. A status write: while a disk is in spec but not yet in
    status, Longhorn's validator refuses every spec write with 403 (validator.go:115-117)."""
    assert c.kube is not None
    obj = await c.kube.get("nodes", node)
    obj["status"]["region"] = "moved-on"
    await c.kube.replace_status("nodes", obj)


def first_record_entry(disk: str, path: str, uuid: str) -> dict[str, Any]:
    """The diskStatus entry longhorn-manager writes when it first records a disk: created by
    `alignDiskSpecAndStatus` and filled in the same sync (controller/node_controller.go:1663-1683,
    745-748 @v1.7.2)."""
    return {"conditions": [], "diskDriver": "", "diskName": disk, "diskPath": path, "diskType": "filesystem",
            "diskUUID": uuid, "filesystemType": "", "instanceManagerName": "", "scheduledReplica": {},
            "storageAvailable": 0, "storageMaximum": 0, "storageScheduled": 0}


async def test_status_write_failing_with_409_after_admission_is_retried_with_the_same_new_uuid(tmp_path: Path) -> None:
    """The emulator, like kube-apiserver, runs admission before the resourceVersion precondition:
    a status write with a stale resourceVersion is admitted (record and claim created, patch
    returned) and then fails with 409. Longhorn's retry -- here the manager's next sync once its
    node is back -- is a new review for the same (node, disk, old UUID): it must get the same new
    UUID from the record (deterministic names), and the flow ends Done with cfg == status."""
    async with running(tmp_path, nodes=2, seed=41) as env:
        c = env.cluster
        hook = await one_webhook(env)
        taken = env.status_uuid("worker-1", c.disks_of("worker-1")[0])
        # Play longhorn-manager on worker-2 by hand: its own manager is stopped meanwhile.
        await c.set_node_down("worker-2")
        path = await c.add_disk("worker-2", "disk-new")
        old = taken[:4] + c.uuids.disk_uuid()[4:]
        lh_disks.write_cfg_exclusive(c.disk_dir("worker-2", "disk-new"), lh_disks.DiskConfig("disk-new", old))
        stale = await c.kube.get("nodes", "worker-2")
        await move_on(c, "worker-2")  # the RV moves on
        stale["status"]["diskStatus"]["disk-new"] = first_record_entry("disk-new", path, old)
        with pytest.raises(LonghornConflict):
            await c.kube.replace_status("nodes", stale)
        assert env.api.admission.calls[-1][1] == "patched"  # admitted, then refused by the precondition
        (rec,) = env.records_of("worker-2", "disk-new")
        assert rec["spec"]["oldUUID"] == old and phase(rec) == "Pending"
        new = rec["spec"]["newUUID"]
        assert env.status_uuid("worker-2", "disk-new") == ""  # nothing stored

        await c.set_node_down("worker-2", False)  # the manager's next sync retries the write
        rec = await env.final("worker-2", "disk-new")
        assert phase(rec) == "Done", rec["status"]
        assert rec["spec"]["newUUID"] == new and len(env.records_of("worker-2", "disk-new")) == 1
        await env.settled("worker-2", "disk-new")
        assert env.status_uuid("worker-2", "disk-new") == new == env.cfg_uuid("worker-2", "disk-new")
        assert hook.rewrites() == 2  # two reviews, one answer
        claims = {x["metadata"]["name"]: x["spec"] for x in env.api.store.list(CLAIMS, NAMESPACE)[0]}
        assert claims[new[:4]]["uuid"] == new and [p for p, s in claims.items() if s["disk"] == "disk-new"] == [new[:4]]


async def test_webhook_timing_out_leaves_the_write_unpatched_and_the_record_abandoned(tmp_path: Path) -> None:
    """The webhook is slow (1.5 s of injected latency on its DiskRewrite create) and the API
    server gives up first (timeoutSeconds 1 in the registered configuration; the chart's is 5):
    failurePolicy Ignore stores Longhorn's write unpatched while the webhook goes on to create the
    record and answer nobody. The record ends Abandoned; status == cfg (old UUID), cfg untouched."""
    async with running(tmp_path, nodes=2, seed=42) as env:
        c = env.cluster
        settings = Settings(**{**SETTINGS.__dict__, "pending_grace": 2.0})
        hook = await one_webhook(env, settings, timeout_seconds=1)
        env.api.faults.latency(1.5, verbs="create", resource=RW)
        await add_colliding_disk(env, "worker-2", "disk-new", like=("worker-1", c.disks_of("worker-1")[0]))
        rec = await env.record_appears("worker-2", "disk-new")
        old = rec["spec"]["oldUUID"]
        assert env.status_uuid("worker-2", "disk-new") == old  # stored before the record existed
        assert any("ignored" in outcome and "deadline" in outcome for _, outcome in env.api.admission.calls)
        env.api.faults.clear()
        cfg = c.cfg_path("worker-2", "disk-new").read_bytes()
        rec = await env.final("worker-2", "disk-new")
        assert phase(rec) == "Abandoned" and "did not land" in rec["status"]["message"], rec["status"]
        await env.settled("worker-2", "disk-new")
        assert env.status_uuid("worker-2", "disk-new") == old == env.cfg_uuid("worker-2", "disk-new")
        assert c.cfg_path("worker-2", "disk-new").read_bytes() == cfg
        assert hook.rewrites() == 1 and not env.api.store.list("v1/pods", NAMESPACE)[0]


# ------------------------------------------------------------------ 5. rewriter refusing; node down


async def admitted_but_not_rewritten(env: Env, node: str, disk: str, settings: Settings = SETTINGS
                                     ) -> tuple[Webhook, dict[str, Any]]:
    """A colliding disk whose rewrite patch is stored, with no controller running yet."""
    hook = await env.start_webhook("bimguard-webhook-0", settings, lead=False)
    await env.register(hook)
    await add_colliding_disk(env, node, disk, like=("worker-1", env.cluster.disks_of("worker-1")[0]))
    rec = await env.record_appears(node, disk)
    await env.until(lambda: env.status_uuid(node, disk) == rec["spec"]["newUUID"], 10, "the patch stored")
    return hook, rec


async def test_rewriter_refusing_a_cfg_that_names_another_disk_rolls_back(tmp_path: Path) -> None:
    """Between admission and the rewrite the disk's cfg comes to name another disk (a swapped
    disk): `rewrite-cfg` refuses (compare-and-swap, invariant 4), the controller rolls the status
    back: RolledBack, status == cfg (the old UUID), the cfg as it was, the disk Ready."""
    async with running(tmp_path, nodes=2, seed=51) as env:
        c = env.cluster
        hook, rec = await admitted_but_not_rewritten(env, "worker-2", "disk-new")
        old = rec["spec"]["oldUUID"]
        lh_disks.replace_cfg_atomically(c.disk_dir("worker-2", "disk-new"), lh_disks.DiskConfig("other-disk", old))
        swapped = c.cfg_path("worker-2", "disk-new").read_bytes()
        hook.start_leadership()
        rec = await env.final("worker-2", "disk-new")
        assert phase(rec) == "RolledBack", rec["status"]
        assert "exit 3" in rec["status"]["lastError"]
        await env.settled("worker-2", "disk-new")
        assert env.status_uuid("worker-2", "disk-new") == old == env.cfg_uuid("worker-2", "disk-new")
        assert c.cfg_path("worker-2", "disk-new").read_bytes() == swapped
        (event,) = env.events(REASON_ROLLED_BACK)
        assert event["type"] == "Warning" and event["involvedObject"]["name"] == "worker-2"


async def test_node_down_before_the_rewriter_runs_rolls_back(tmp_path: Path) -> None:
    """The disk's node goes down after admission: the rewriter pod never starts. After
    pod_start_timeout the controller deletes it and rolls the stored status back to the old
    UUID (no longhorn-manager runs on a down node, so the stored status is what is checked);
    the cfg is untouched. When the node returns, Longhorn finds status == cfg: Ready."""
    async with running(tmp_path, nodes=2, seed=52) as env:
        c = env.cluster
        settings = Settings(**{**SETTINGS.__dict__, "pod_start_timeout": 2.0})
        hook, rec = await admitted_but_not_rewritten(env, "worker-2", "disk-new", settings)
        old = rec["spec"]["oldUUID"]
        cfg = c.cfg_path("worker-2", "disk-new").read_bytes()
        await c.set_node_down("worker-2")
        hook.start_leadership()
        rec = await env.final("worker-2", "disk-new")
        assert phase(rec) == "RolledBack", rec["status"]
        assert "did not start" in rec["status"]["message"]
        assert env.status_uuid("worker-2", "disk-new") == old
        assert c.cfg_path("worker-2", "disk-new").read_bytes() == cfg
        await env.until(lambda: not env.api.store.list("v1/pods", NAMESPACE)[0], 5, "the rewriter pod deleted")
        await c.set_node_down("worker-2", False)
        await env.settled("worker-2", "disk-new")
        assert env.status_uuid("worker-2", "disk-new") == old and c.cfg_path("worker-2", "disk-new").read_bytes() == cfg


# ------------------------------------------------------------------ 6. webhook down


@pytest.mark.parametrize("outage", ["no-endpoint", "closed-port"])
async def test_webhook_down_never_blocks_longhorn(tmp_path: Path, outage: str) -> None:
    """With the webhook unreachable (no endpoint behind the Service, or a port nobody listens
    on), failurePolicy Ignore lets every status write through: new disks are recorded with their
    colliding UUIDs and turn Ready; nothing is recorded by bimguard (the repair Job is the
    backstop)."""
    async with running(tmp_path, nodes=2, seed=61) as env:
        c = env.cluster
        hook = await one_webhook(env)
        await hook.stop()
        before = len(env.api.admission.calls)
        if outage == "no-endpoint":
            env.route(None)
        else:
            assert env.api.webhook_hosts[HOST] == hook.endpoint  # the stopped replica's port: closed now
        keeper = ("worker-1", c.disks_of("worker-1")[0])
        prefix = await add_colliding_disk(env, "worker-2", "disk-a", like=keeper)
        await c.add_disk("worker-1", "disk-b", force_uuid=prefix)
        for disk in (("worker-2", "disk-a"), ("worker-1", "disk-b")):
            await env.settled(*disk)
            assert env.status_uuid(*disk)[:4] == prefix
        assert env.status_uuid(*keeper)[:4] == prefix
        assert not env.records()
        outcomes = [o for name, o in env.api.admission.calls[before:] if name != "validator.longhorn.io"]
        assert outcomes and all(o.startswith("ignored") for o in outcomes), outcomes[:3]
        assert ("no such host" if outage == "no-endpoint" else "connection refused") in outcomes[-1]


# ------------------------------------------------------------------ re-recording after a final record


async def test_disk_re_recorded_after_its_rewrite_was_rolled_back_ends_agreeing(tmp_path: Path) -> None:
    """A rewrite rolled back (here: the node was down), then Longhorn records the same disk with
    the same old UUID again -- the operator re-creates the Longhorn Node (the issue's own
    workaround), or removes and re-adds the disk. The record's name is derived from (node, disk,
    old UUID), so the new review finds the old, final record. Whatever the webhook decides, the
    disk must end with status == cfg and Ready (invariant 2)."""
    async with running(tmp_path, nodes=2, seed=53) as env:
        c = env.cluster
        settings = Settings(**{**SETTINGS.__dict__, "pod_start_timeout": 2.0})
        hook, rec = await admitted_but_not_rewritten(env, "worker-2", "disk-new", settings)
        old = rec["spec"]["oldUUID"]
        await c.set_node_down("worker-2")
        hook.start_leadership()
        assert phase(await env.final("worker-2", "disk-new")) == "RolledBack"
        await c.set_node_down("worker-2", False)
        await env.settled("worker-2", "disk-new")

        await c.recreate_node("worker-2")
        await env.until(lambda: env.status_uuid("worker-2", "disk-new"), 10, "disk-new re-recorded")
        try:
            await env.settled("worker-2", "disk-new", timeout=8)
        finally:
            print(f"\nold {old}, record newUUID {rec['spec']['newUUID']}, status {env.status_uuid('worker-2', 'disk-new')}, "
                  f"cfg {env.cfg_uuid('worker-2', 'disk-new')}, records "
                  f"{[(phase(r), r['spec']['newUUID']) for r in env.records()]}")
