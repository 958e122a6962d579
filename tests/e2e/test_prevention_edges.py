"""End to end: the prevention path in the corners a source review found (issue 10).

Each test runs the same real parts as tests/e2e/test_prevention.py (emulated API server,
simulated Longhorn v1.7.2 writing real cfg files, a real webhook replica over verified TLS with
its leader-elected controller, the simulated kubelet running the real `bimguard rewrite-cfg`), and
judges the outcome from the stored state: status and cfg agree and Longhorn calls the disk Ready
(docs/design.md, invariant 2), no data-holding disk is rewritten (invariant 3), no Event misleads.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from bimguard import records
from bimguard.rewrite.engine import REASON_DONE, Settings
from bimguard.sim.longhorn import disks as lh_disks
from bimguard.sim.longhorn.node_status import get_condition
from tests.e2e.test_prevention import (
    CLAIMS,
    NAMESPACE,
    SETTINGS,
    Env,
    one_webhook,
    phase,
    running,
)

MWC = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def node_ready(env: Env, node: str) -> bool:
    return get_condition((env.node(node).get("status") or {}).get("conditions"), "Ready").get("status") == "True"


async def hand_written_disk(env: Env, node: str, disk: str, path: str, uuid: str) -> None:
    """A disk whose cfg an operator wrote by hand (as the KB's manual repair has them do), then
    added to spec.disks: Longhorn reads the cfg and records its diskUUID exactly as written."""
    d = env.cluster.host(node).dir(path)
    d.mkdir(parents=True)
    lh_disks.write_cfg_exclusive(d, lh_disks.DiskConfig(disk, uuid))
    await env.cluster.add_disk(node, disk, path)


# ------------------------------------------------------------------ 1. a UUID that is not lower-case


async def test_upper_case_uuid_that_collides_is_rewritten_and_ends_agreeing(tmp_path: Path) -> None:
    """An upper-case UUID whose prefix is, ignoring case, a Ready disk's: it collides (prefixes
    compare case-insensitively); the record keeps the old UUID exactly as Longhorn recorded it, so
    the rewriter's compare-and-swap matches the file, and the disk ends Ready with status == cfg."""
    async with running(tmp_path, nodes=2, seed=81) as env:
        c = env.cluster
        keeper = ("worker-1", c.disks_of("worker-1")[0])
        taken = env.status_uuid(*keeper)
        upper = (taken[:4] + c.uuids.disk_uuid()[4:]).upper()
        hook = await one_webhook(env)
        await hand_written_disk(env, "worker-2", "disk-hand", "/mnt/hand", upper)

        rec = await env.final("worker-2", "disk-hand")
        assert phase(rec) == "Done", rec.get("status")
        assert rec["spec"]["oldUUID"] == upper
        new = rec["spec"]["newUUID"]
        assert new == new.lower() and new[:4] != taken[:4]
        await env.settled("worker-2", "disk-hand")
        assert env.status_uuid("worker-2", "disk-hand") == new == env.cfg_uuid("worker-2", "disk-hand")
        assert env.status_uuid(*keeper) == taken and env.agrees(*keeper)
        assert hook.rewrites() == 1


async def test_upper_case_uuid_rolled_back_gets_exactly_its_old_uuid_back(tmp_path: Path) -> None:
    """The same disk, but its node goes down before the rewriter runs: the rollback must put back
    the UUID exactly as Longhorn recorded it (Longhorn compares status and cfg as strings,
    node_controller.go:707), so the disk is Ready again once the node returns."""
    async with running(tmp_path, nodes=2, seed=82) as env:
        c = env.cluster
        taken = env.status_uuid("worker-1", c.disks_of("worker-1")[0])
        upper = (taken[:4] + c.uuids.disk_uuid()[4:]).upper()
        settings = Settings(**{**SETTINGS.__dict__, "pod_start_timeout": 2.0})
        hook = await env.start_webhook("bimguard-webhook-0", settings, lead=False)
        await env.register(hook)
        await hand_written_disk(env, "worker-2", "disk-hand", "/mnt/hand", upper)
        rec = await env.record_appears("worker-2", "disk-hand")
        await env.until(lambda: env.status_uuid("worker-2", "disk-hand") == rec["spec"]["newUUID"], 10,
                        "the patch stored")
        cfg = c.cfg_path("worker-2", "disk-hand").read_bytes()
        await c.set_node_down("worker-2")
        hook.start_leadership()
        rec = await env.final("worker-2", "disk-hand")
        assert phase(rec) == "RolledBack", rec["status"]
        assert env.status_uuid("worker-2", "disk-hand") == upper
        await c.set_node_down("worker-2", False)
        await env.settled("worker-2", "disk-hand")
        assert env.status_uuid("worker-2", "disk-hand") == upper == env.cfg_uuid("worker-2", "disk-hand")
        assert c.cfg_path("worker-2", "disk-hand").read_bytes() == cfg


# ------------------------------------------------------------------ 2. moved and renamed disks


async def test_disk_moved_off_a_down_node_is_not_called_a_clone(tmp_path: Path) -> None:
    """A disk holding a replica is moved off a node that went down and added on another node.
    Longhorn leaves the down node's disk Ready=True (only the owner's manager updates disk status,
    node_controller.go:433), so the same whole UUID looks recorded and Ready elsewhere. The
    disk's own node is not Ready, so this is no proof of a clone: the webhook must not rewrite it,
    must not warn that its replicas will become orphans, and the disk ends Ready with its UUID,
    cfg untouched, data in place."""
    async with running(tmp_path, nodes=2, seed=83) as env:
        c = env.cluster
        await c.add_disk("worker-1", "disk-m")
        await env.settled("worker-1", "disk-m")
        uuid = env.status_uuid("worker-1", "disk-m")
        await c.create_volume("vol-m", [("worker-1", "disk-m")])
        data = c.disk_dir("worker-1", "disk-m") / "replicas"
        await env.until(lambda: data.is_dir() and any(data.iterdir()), 15, "the replica's data directory")
        hook = await one_webhook(env)

        await c.set_node_down("worker-1")
        await env.until(lambda: not node_ready(env, "worker-1"), 10, "worker-1 reported down")
        assert env.ready("worker-1", "disk-m")  # stale, as Longhorn leaves it
        moved = c.host("worker-2").dir("/mnt/moved")
        shutil.copytree(c.disk_dir("worker-1", "disk-m"), moved)
        cfg = (moved / lh_disks.DISK_CONFIG_FILE).read_bytes()
        await c.add_disk("worker-2", "disk-m", "/mnt/moved")

        await env.settled("worker-2", "disk-m")
        assert env.status_uuid("worker-2", "disk-m") == uuid == env.cfg_uuid("worker-2", "disk-m")
        assert (moved / lh_disks.DISK_CONFIG_FILE).read_bytes() == cfg
        assert any((moved / "replicas").iterdir())
        assert not env.events("ClonedDiskUUID")
        assert hook.rewrites() == 0
        assert [phase(r) for r in env.records_of("worker-2", "disk-m")] in ([], ["Blocked"])
        for rec in env.records_of("worker-2", "disk-m"):
            assert "worker-1" in rec["spec"]["reason"] and "not Ready" in rec["spec"]["reason"], rec["spec"]


async def test_disk_entry_renamed_with_the_same_path_is_the_same_disk(tmp_path: Path) -> None:
    """An operator renames a disk entry (one spec write drops `disk-a` and adds `disk-b` with the
    same path). Longhorn records the cfg's UUID for the new entry in the same status write that
    deletes the old one, so the webhook's index still has the old entry, Ready, with the same
    UUID. Same node, same path: the same directory and cfg, not a clone. Kept as it is."""
    async with running(tmp_path, nodes=2, seed=84) as env:
        c = env.cluster
        hook = await one_webhook(env)
        path = await c.add_disk("worker-2", "disk-a")
        await env.settled("worker-2", "disk-a")
        uuid = env.status_uuid("worker-2", "disk-a")
        assert not env.records()  # a unique prefix: kept, and claimed
        assert uuid[:4] in {x["metadata"]["name"] for x in env.api.store.list(CLAIMS, NAMESPACE)[0]}
        await c.rename_disk("worker-2", "disk-a", "disk-b")
        await env.settled("worker-2", "disk-b")
        assert "disk-a" not in (env.node("worker-2")["status"]["diskStatus"])
        assert env.status_uuid("worker-2", "disk-b") == uuid == env.cfg_uuid("worker-2", "disk-b")
        assert env.entry("worker-2", "disk-b")["diskPath"] == path
        assert hook.rewrites() == 0 and not env.records() and not env.events("ClonedDiskUUID")


# ------------------------------------------------------------------ 3. clocks


async def test_controller_clock_ahead_of_the_api_server_still_finishes_the_rewrite(tmp_path: Path) -> None:
    """The webhook pod's clock is a minute ahead of the API server's (here: the emulated API
    server's clock a minute behind). Ages measured as local time minus a server timestamp would
    make every new record look a minute old and abandon it before its admission write lands. The
    answer is held back a second after the record exists (latency on the webhook's claim read),
    so the controller sees the record before the patch is stored: it must wait, not abandon."""
    async with running(tmp_path, nodes=2, seed=85) as env:
        c = env.cluster
        env.api.clock.skew = -60.0
        hook = await one_webhook(env)
        env.api.faults.latency(1.0, verbs="get", resource=CLAIMS)
        prefix = env.status_uuid("worker-1", c.disks_of("worker-1")[0])[:4]
        await c.add_disk("worker-2", "disk-new", force_uuid=prefix)
        rec = await env.record_appears("worker-2", "disk-new")
        await env.until(lambda: env.status_uuid("worker-2", "disk-new"), 10, "Longhorn's write stored")
        env.api.faults.clear()
        rec = await env.final("worker-2", "disk-new")
        assert phase(rec) == "Done", rec["status"]
        await env.settled("worker-2", "disk-new")
        assert env.status_uuid("worker-2", "disk-new") == rec["spec"]["newUUID"] == env.cfg_uuid("worker-2", "disk-new")
        assert hook.controller.transitions == {"Rewriting": 1, "Done": 1}
        assert len(env.events(REASON_DONE)) == 1


# ------------------------------------------------------------------ 5. a crash between claim and record


async def test_claim_left_by_a_crash_before_its_record_does_not_hold_the_prefix(tmp_path: Path) -> None:
    """The webhook pod dies after claiming a new prefix for a colliding disk and before creating
    the record (no answer: the API server gives up after timeoutSeconds, failurePolicy Ignore
    stores the write unpatched). The claim names a record that never came to exist. Past a short
    grace, a new disk that naturally has that prefix must keep it: the claim is not alive."""
    async with running(tmp_path, nodes=2, seed=86) as env:
        c = env.cluster
        first = await env.start_webhook("bimguard-webhook-0", deadline=30)
        await env.register(first, timeout_seconds=1)
        assert await first.elector.wait_leading(5)
        die = asyncio.Event()

        async def die_before_the_record(manifest: dict[str, Any], *a: Any, **kw: Any) -> None:
            await die.wait()
            raise asyncio.CancelledError  # the process is gone: no record, no answer

        real_create = first.replica.admission.api.create_record
        first.replica.admission.api.create_record = die_before_the_record  # type: ignore[method-assign]
        taken = env.status_uuid("worker-1", c.disks_of("worker-1")[0])[:4]
        await c.add_disk("worker-2", "disk-crash", force_uuid=taken)

        def orphan_claims() -> list[dict[str, Any]]:
            return [x for x in env.api.store.list(CLAIMS, NAMESPACE)[0] if x["spec"].get("record")]

        await env.until(orphan_claims, 10, "the new prefix claimed")
        (orphan,) = orphan_claims()
        await env.until(lambda: env.status_uuid("worker-2", "disk-crash"), 15, "Longhorn's write stored unpatched")
        assert env.status_uuid("worker-2", "disk-crash")[:4] == taken
        die.set()
        first.replica.admission.api.create_record = real_create  # type: ignore[method-assign]
        assert not env.records()

        # Later (the API server's clock a minute on, the webhook registered as the chart does): a
        # disk whose UUID has the orphaned prefix.
        (mwc,) = env.api.store.list(MWC)[0]
        mwc["webhooks"][0]["timeoutSeconds"] = 5
        env.api.store.update(MWC, mwc)
        env.api.clock.skew = 60.0
        prefix = orphan["metadata"]["name"]
        await c.add_disk("worker-1", "disk-natural", force_uuid=prefix)
        await env.settled("worker-1", "disk-natural")
        assert env.status_uuid("worker-1", "disk-natural")[:4] == prefix
        assert not env.records_of("worker-1", "disk-natural")
        claim = env.api.store.get(CLAIMS, NAMESPACE, prefix)
        assert (claim["spec"]["node"], claim["spec"]["disk"], claim["spec"]["record"]) == \
            ("worker-1", "disk-natural", "")
        assert records.claim_owner(claim)[2] == env.status_uuid("worker-1", "disk-natural")
