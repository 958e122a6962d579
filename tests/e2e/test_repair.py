"""`bimguard repair` end to end on an emulated cluster upgraded from Longhorn v1.7.2, judged from
the emulator's own record of what was written and which files exist, not from the Job's report."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import jsonschema

from bimguard import records
from bimguard.repair import steps
from bimguard.sim.longhorn import disks as lh_disks
from bimguard.sim.longhorn.node_status import get_condition
from bimguard.sim.scenarios import Group, plant
from tests.e2e.repair_env import NS, REWRITER_NS, Env, repair_env

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "repair-report.schema.json").read_text())
UPGRADED = ["empty", "empty", "three-way", "data", "data", "detached", "stuck-replica", "stuck-image", "cannot-move",
            "clone", "clone-leftovers", "orphan"]


def _victim_state(env: Env, groups: list[Group]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for g in groups:
        for node, disk in g.victims:
            out[(node, disk)] = dict(env.node(node)["spec"]["disks"][disk])
    return out


def assert_nothing_lost(env: Env) -> None:
    """No disk's UUID changed while Replicas, backing-image copies or BIMs still named it (the
    emulator's history at the moment of each change), every Replica sits on a disk that exists,
    and status == cfg on every disk."""
    h = env.history
    for rv, node, disk, old, new in h.uuid_changes():
        holders = [n for n, r in h.at("replicas", rv).items()
                   if r["spec"].get("nodeID") == node and old in (r["spec"].get("diskID"), r["metadata"]["labels"].get("longhorndiskuuid"))]
        copies = [n for n, bi in h.at("backingimages", rv).items()
                  if old in ((bi.get("status") or {}).get("diskFileStatusMap") or {})]
        assert not holders and not copies, f"{node}/{disk} changed {old} -> {new} while {holders + copies} named it"
    uuids = {}
    for n in env.objects("nodes"):
        for d, entry in (n.get("status") or {}).get("diskStatus", {}).items():
            uuids[(n["metadata"]["name"], entry["diskUUID"])] = d
            cfg = env.cluster.host(n["metadata"]["name"]).dir(n["spec"]["disks"][d]["path"]) / lh_disks.DISK_CONFIG_FILE
            assert lh_disks.decode_cfg(cfg.read_bytes()).disk_uuid == entry["diskUUID"], (n["metadata"]["name"], d)
    for r in env.objects("replicas"):
        assert (r["spec"]["nodeID"], r["spec"]["diskID"]) in uuids, f"replica {r['metadata']['name']} on a disk that is gone"


async def test_upgraded_cluster_is_repaired_with_nothing_lost(tmp_path: Path) -> None:
    async with repair_env(tmp_path, nodes=60, seed=3) as env:
        c = env.cluster
        groups = await plant(c, UPGRADED)
        before = _victim_state(env, groups)
        leftovers = {g.victims[0]: sorted((c.disk_dir(*g.victims[0]) / "replicas").iterdir())
                     for g in groups if g.kind in ("orphan", "clone-leftovers")}

        code, out, _ = await env.repair()  # the plan first
        assert code == 1 and "Plan: 13 disk(s)" in out
        assert not env.records()  # a plan changes nothing

        code, out, err = await env.repair("--apply", "--evict", "--max-parallel", "3", "--timeout", "60s", "-o", "json",
                                          timeout=100)
        report = json.loads(out)
        jsonschema.validate(report, SCHEMA)
        assert code == 3 and report["exitCode"] == 3, err[-2000:]
        assert report["backingImages"]["stillStuck"] == [] and report["backingImages"]["recovered"]  # the orphan, the clone with leftovers and the volume that cannot move
        phases = {(d["node"], d["disk"]): d["phase"] for d in report["disks"]}
        for g in groups:
            for v in g.victims:
                rec = env.record_of(*v)
                assert rec is not None, (g.kind, v)
                phase = rec["status"]["phase"]
                want = g.expect
                assert (phase if want != "Pending" else "Pending" if rec["status"]["step"].startswith("pending") else phase) \
                    == want, (g.kind, v, rec["status"])
                assert phases[v] == phase
        # What the records say, checked against the cluster itself:
        assert_nothing_lost(env)
        for g in groups:
            for v in g.victims:
                rec = env.record_of(*v)
                entry = env.node(v[0])["status"]["diskStatus"][v[1]]
                if rec["status"]["phase"] == "Done":
                    assert entry["diskUUID"] == rec["spec"]["newUUID"] and entry["diskUUID"][:4] != g.prefix
                    assert get_condition(entry["conditions"], "Ready")["status"] == "True"
                    assert env.node(v[0])["spec"]["disks"][v[1]] == before[v], "flags not as before"
                else:
                    assert entry["diskUUID"] == rec["spec"]["oldUUID"]
        for v, dirs in leftovers.items():
            assert sorted((c.disk_dir(*v) / "replicas").iterdir()) == dirs  # nothing deleted on a blocked disk
        code, scan = await env.scan()
        left = {g["prefix"] for g in scan["collisions"]}
        assert left == {g.prefix for g in groups if g.expect != "Done"}, left
        assert scan["symptoms"] == []  # no backing-image copy is stuck any more

        async def settled() -> bool:
            for g in groups:
                for v in g.volumes:
                    vol = env.api.store.get("longhorn.io/v1beta2/volumes", "longhorn-system", v)
                    reps = [r for r in env.objects("replicas") if r["spec"]["volumeName"] == v]
                    want_state = "detached" if g.kind == "detached" else "attached"
                    if vol["status"].get("state") != want_state or len(reps) != vol["spec"]["numberOfReplicas"] or \
                            not all(r["spec"]["healthyAt"] for r in reps):
                        return False
                for bi in g.backing_images:
                    obj = env.api.store.get("longhorn.io/v1beta2/backingimages", "longhorn-system", bi)
                    spec_keys = set(obj["spec"]["diskFileSpecMap"])
                    states = {u: f.get("state") for u, f in (obj["status"].get("diskFileStatusMap") or {}).items()}
                    if any(states.get(u) != "ready" for u in spec_keys):
                        return False
            return True

        await c.wait_for(settled, 30, "volumes healthy with replacements, backing images synced")
        for bi in env.objects("backingimages"):  # every copy asked for has its BIM
            for u in bi["spec"]["diskFileSpecMap"]:
                assert any(b["metadata"]["labels"].get("longhorn.io/disk-uuid") == u for b in env.objects("backingimagemanagers"))
        assert_nothing_lost(env)


async def test_killed_at_every_step_and_mid_wait_a_rerun_converges(tmp_path: Path) -> None:
    """SIGKILL after its k-th successful write (a step boundary: the write landed, nothing after
    it did) and after delays (mostly inside a wait), re-run with the same identity (a retried
    Job's pod), until a run finishes: the end state is a clean run's, no step that must happen
    once happened twice, no flag lost."""
    async with repair_env(tmp_path, nodes=10, seed=5) as env:
        groups = await plant(env.cluster, ["empty", "data", "stuck-replica", "stuck-image"])
        before = _victim_state(env, groups)
        kills = 0
        for i in range(1, 60):
            kw = {"kill_after_writes": i} if i % 3 else {"kill_after_seconds": 0.4 + 0.1 * i}
            code, out, err = await env.repair("--apply", "--evict", **kw)
            if code != -9:
                break
            kills += 1
        assert code == 0, (code, out, err[-2000:])
        assert kills >= 8  # it really was killed along the way
        recs = [r for r in env.records() if r["spec"]["origin"] == "job"]
        assert sorted(r["status"]["phase"] for r in recs) == ["Done"] * 4
        assert_nothing_lost(env)
        changes = [(node, disk) for _, node, disk, _, _ in env.history.uuid_changes()]
        assert sorted(changes) == sorted(set(changes)) and len(changes) == 4  # one change each, no rollback
        for v, flags in before.items():
            assert env.node(v[0])["spec"]["disks"][v[1]] == flags
        rewriter_pods = [ch.name for ch in env.history.of("pods") if ch.type == "ADDED" and "-rw" in ch.name]
        assert len(rewriter_pods) == len(set(rewriter_pods)) == 4  # one rewriter pod per disk, never a second
        claims = env.api.store.list("bimguard.io/v1alpha1/prefixclaims", "bimguard")[0]
        assert sorted(c["spec"]["uuid"] for c in claims) == sorted(r["spec"]["newUUID"] for r in recs)  # none leaked


async def test_refusals_are_one_line_exit_2_and_change_nothing(tmp_path: Path) -> None:
    async with repair_env(tmp_path, nodes=4, seed=7) as env:
        await plant(env.cluster, ["empty"])
        api, store = env.api, env.api.store

        def one_line(err: str) -> str:
            lines = [l for l in err.splitlines() if l.strip() and not l.startswith("[")]
            assert len(lines) == 1 and "Traceback" not in err, err
            return lines[0]

        code, _, err = await env.repair("--apply", "--from-dump", "x.json")
        assert code == 2 and "--apply acts on a live cluster" in one_line(err)
        code, _, err = await env.repair("--apply", "--only", "ffff")
        assert code == 2 and "--only ffff matches no disk" in one_line(err)
        # The version is unknown: no Setting says it, no BIM image tag.
        saved = [store.get("longhorn.io/v1beta2/settings", "longhorn-system", n)
                 for n in ("current-longhorn-version", "default-backing-image-manager-image")]
        for s in saved:
            store.delete("longhorn.io/v1beta2/settings", "longhorn-system", s["metadata"]["name"])
        code, _, err = await env.repair("--apply")
        assert code == 2 and "--longhorn-version" in one_line(err)
        for s in saved:
            s["metadata"].pop("resourceVersion", None)
            store.create("longhorn.io/v1beta2/settings", s)
        # A missing permission, found by the preflight before anything changes.
        api.deny("update", "nodes", group="longhorn.io", user="system:serviceaccount:bimguard:bimguard-repair")
        code, _, err = await env.repair("--apply")
        assert code == 2 and "missing permission: update nodes.longhorn.io in longhorn-system" in one_line(err)
        api.allow()
        # Pod Security refusing the privileged hostPath pod (its namespace enforces restricted by
        # mistake): one line up front, not a rollback per disk.
        ns = store.get("v1/namespaces", None, REWRITER_NS)
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = "restricted"
        store.update("v1/namespaces", ns)
        code, _, err = await env.repair("--apply")
        line = one_line(err)
        assert code == 2 and "refuses the on-node rewriter pod" in line and "PodSecurity" in line
        assert not env.records() and not store.list("v1/pods", NS)[0] and not store.list("v1/pods", REWRITER_NS)[0]
        # Longhorn v1.9.2 and later name BIMs after the whole UUID: nothing to do.
        v = store.get("longhorn.io/v1beta2/settings", "longhorn-system", "current-longhorn-version")
        v["value"] = "v1.9.2"
        store.update("longhorn.io/v1beta2/settings", v)
        code, out, _ = await env.repair("--apply")
        assert code == 0 and "Nothing to do: Longhorn v1.9.2 names BIMs after the whole disk UUID" in out
        assert not env.records()


async def test_two_repairs_at_once_one_runs_the_other_says_so(tmp_path: Path) -> None:
    async with repair_env(tmp_path, nodes=6, seed=11) as env:
        await plant(env.cluster, ["data", "empty"])
        first = asyncio.create_task(env.repair("--apply", "--evict", identity="hook-run"))
        await env.cluster.wait_for(lambda: env.records(), 20, "the first run's records")
        code, _, err = await env.repair("--apply", identity="manual-run")
        assert code == 2 and "another repair is running: the Lease bimguard/bimguard-repair is held by hook-run" in err
        code, out, err = await first
        assert code == 0, (out, err[-1500:])
        assert_nothing_lost(env)


async def test_an_upper_case_uuid_is_repaired_as_longhorn_recorded_it(tmp_path: Path) -> None:
    """A cfg written by hand in upper case (the knowledge base's manual fix has operators edit it)
    whose prefix collides ignoring case: the record keeps the UUID exactly as Longhorn recorded it,
    so the status compare-and-swap and the cfg's match, and the disk ends Ready with status == cfg."""
    async with repair_env(tmp_path, nodes=3, seed=37) as env:
        c = env.cluster
        taken = await c.disk_uuid("worker-1", c.disks_of("worker-1")[0])
        upper = (taken[:4] + "cafe-0000-4000-8000-00000000cafe").upper()
        d = c.host("worker-2").dir("/mnt/hand")
        d.mkdir(parents=True)
        lh_disks.write_cfg_exclusive(d, lh_disks.DiskConfig("disk-hand", upper))
        await c.add_disk("worker-2", "disk-hand", "/mnt/hand")
        await c.wait_until_ready(30)
        assert env.node("worker-2")["status"]["diskStatus"]["disk-hand"]["diskUUID"] == upper  # as written
        code, out, err = await env.repair("--apply", "--only", "worker-2/disk-hand")
        assert code == 0, (out, err[-2000:])
        [rec] = env.records()
        assert rec["spec"]["oldUUID"] == upper and rec["status"]["phase"] == "Done"
        new = rec["spec"]["newUUID"]
        assert env.node("worker-2")["status"]["diskStatus"]["disk-hand"]["diskUUID"] == new
        assert lh_disks.decode_cfg((d / "longhorn-disk.cfg").read_bytes()).disk_uuid == new
        assert_nothing_lost(env)


async def test_a_disk_it_cannot_read_is_never_nothing_to_do(tmp_path: Path) -> None:
    """A recorded diskUUID that is not a UUID (a cfg written by hand) cannot be judged: it could be
    one of a pair. Neither the plan nor a run says "nothing to do" then: exit 3, the disk named."""
    async with repair_env(tmp_path, nodes=3, seed=41) as env:
        d = env.cluster.host("worker-2").dir("/mnt/hand")
        d.mkdir(parents=True)
        lh_disks.write_cfg_exclusive(d, lh_disks.DiskConfig("disk-hand", "b84e-0000-4000-8000-00000000cafe"))
        await env.cluster.add_disk("worker-2", "disk-hand", "/mnt/hand")
        await env.cluster.wait_until_ready(30)
        code, out, _ = await env.repair("-o", "json")
        doc = json.loads(out)
        jsonschema.validate(doc, SCHEMA)
        assert code == 3 == doc["exitCode"] and doc["planned"] == 0
        assert doc["skipped"] == ["Node worker-2/disk-hand: diskUUID 'b84e-0000-4000-8000-00000000cafe' is not a UUID"]
        code, out, _ = await env.repair("--apply")
        assert code == 3 and "skipped: could not be read, so not looked at: Node worker-2/disk-hand" in out
        assert not env.records()


async def test_a_claim_left_between_claiming_and_recording_is_taken_up(tmp_path: Path) -> None:
    """A run killed after it claimed a prefix for a disk and before it created the disk's record
    leaves a PrefixClaim naming that record: the next run records that claim's UUID rather than
    claim a second prefix, so no claim is left behind."""
    async with repair_env(tmp_path, nodes=4, seed=31) as env:
        [g] = await plant(env.cluster, ["empty"])
        node, disk = g.victims[0]
        old = await env.cluster.disk_uuid(node, disk)
        left = "0f1e" + old[4:]
        assert not env.api.store.list("bimguard.io/v1alpha1/prefixclaims", NS)[0]
        env.api.store.create("bimguard.io/v1alpha1/prefixclaims", records.claim_manifest(
            prefix=left[:4], namespace=NS, node=node, disk=disk, uuid=left,
            record=steps.job_record_name(node, disk, old)))
        code, _, err = await env.repair("--apply")
        assert code == 0, err[-2000:]
        [rec] = env.records()
        assert rec["spec"]["newUUID"] == left and rec["status"]["phase"] == "Done"
        claims = env.api.store.list("bimguard.io/v1alpha1/prefixclaims", NS)[0]
        assert [c["spec"]["uuid"] for c in claims] == [left]
        assert await env.cluster.disk_uuid(node, disk) == left


async def test_max_parallel_bounds_the_disks_evicting_at_once(tmp_path: Path) -> None:
    """--max-parallel 1 with three disks to drain: at no point of the emulator's history do two
    disks have evictionRequested, even when all three reach the step in the same pass."""
    async with repair_env(tmp_path, nodes=8, seed=43) as env:
        await plant(env.cluster, ["data", "data", "data"])
        code, out, err = await env.repair("--apply", "--evict", "--max-parallel", "1", "-o", "json")
        assert code == 0, err[-2000:]
        evicting: dict[str, set[str]] = {}
        most = 0
        for ch in env.history.of("nodes"):
            disks = (ch.obj.get("spec") or {}).get("disks") or {}
            evicting[ch.name] = {d for d, spec in disks.items() if spec.get("evictionRequested")}
            most = max(most, sum(len(v) for v in evicting.values()))
        assert most == 1
        doc = json.loads(out)
        assert [d["phase"] for d in doc["disks"]] == ["Done"] * 3
        assert doc["api"] == env.sent  # the report counts every request, as the API server saw them
        assert_nothing_lost(env)


async def test_late_lease_renewals_do_not_stop_a_run_nobody_else_took_over(tmp_path: Path) -> None:
    """An overloaded API server answers the Lease's renewals after its renew deadline for a while:
    the run stops acting (its steps are cut short), finds the Lease still its own to take, and
    finishes; nothing is done twice."""
    async with repair_env(tmp_path, nodes=6, seed=47) as env:
        await plant(env.cluster, ["data", "empty"])
        slow = env.api.faults.latency(2.5, verbs="update", resource="coordination.k8s.io/v1/leases")
        asyncio.get_running_loop().call_later(6, env.api.faults.latencies.remove, slow)
        code, out, err = await env.repair("--apply", "--evict", "--lease-duration", "3")
        assert code == 0, err[-2000:]
        assert "taken back, continuing" in err
        assert sorted(r["status"]["phase"] for r in env.records()) == ["Done", "Done"]
        changes = [(node, disk) for _, node, disk, _, _ in env.history.uuid_changes()]
        assert sorted(changes) == sorted(set(changes)) and len(changes) == 2
        assert_nothing_lost(env)


async def test_sigterm_releases_the_lease_and_a_rerun_finishes(tmp_path: Path) -> None:
    """SIGTERM (the Job's pod deleted, a Helm hook timing out) mid-way: one line, exit 143, the
    Lease given back at once (empty holder) rather than held until it expires, and the next run
    finishes the same records."""
    async with repair_env(tmp_path, nodes=6, seed=29) as env:
        await plant(env.cluster, ["data"])
        code, out, err = await env.repair("--apply", "--evict", "--lease-duration", "60", kill_after_writes=4,
                                          stop_signal=signal.SIGTERM)
        assert code == 143 and err.strip().splitlines()[-1] == "bimguard: terminated", err[-1500:]
        lease = env.api.store.get("coordination.k8s.io/v1/leases", NS, "bimguard-repair")
        assert not lease["spec"].get("holderIdentity"), lease["spec"]
        [rec] = [r for r in env.records() if r["spec"]["origin"] == "job"]
        assert (rec.get("status") or {}).get("phase") not in ("Done", "Blocked")  # stopped mid-way
        code, out, err = await env.repair("--apply", "--evict", "--lease-duration", "60", identity="second")
        assert code == 0, err[-2000:]
        assert [r["status"]["phase"] for r in env.records() if r["spec"]["origin"] == "job"] == ["Done"]
        assert_nothing_lost(env)


async def test_failing_writes_are_retried_and_a_rerun_finishes(tmp_path: Path) -> None:
    """The API server fails a third of the Job's writes (500) for a while: the run retries them,
    and whatever it could not finish a second run does, with nothing half-done."""
    async with repair_env(tmp_path, nodes=6, seed=13) as env:
        await plant(env.cluster, ["empty", "stuck-replica"])
        env.api.faults.error_rate(0.33, 500, verbs=["create", "update", "patch", "delete"])
        code, out, err = await env.repair("--apply", "--timeout", "20s")
        env.api.faults.clear()
        assert code in (0, 2, 3) and "Traceback" not in err, err[-2000:]
        if code != 0:
            code, out, err = await env.repair("--apply")
        assert code == 0, (out, err[-2000:])
        assert sorted(r["status"]["phase"] for r in env.records() if r["spec"]["origin"] == "job") == ["Done", "Done"]
        assert_nothing_lost(env)


async def test_plan_from_a_dump_and_unfinished_work_for_a_hook(tmp_path: Path) -> None:
    """The plan of an offline copy (the scan's plan, stuck objects from its symptoms), and
    --exit-zero-on-unfinished turning exit 3 into 0 for a Helm hook."""
    async with repair_env(tmp_path, nodes=4, seed=19) as env:
        dump = Path(__file__).resolve().parents[2] / "examples" / "collision-dump.json"
        code, out, err = await env.repair("--from-dump", str(dump), "-o", "json")
        doc = json.loads(out)
        jsonschema.validate(doc, SCHEMA)
        assert code == 1 and doc["mode"] == "plan" and doc["planned"] >= 1, err
        assert any("stuck waiting for their backing image" in line for line in doc["plan"])
        await plant(env.cluster, ["orphan"])
        code, out, _ = await env.repair("--apply", "-o", "json")
        assert code == 3 and json.loads(out)["disks"][0]["phase"] == "Blocked"
        code, out, _ = await env.repair("--apply", "--exit-zero-on-unfinished", "-o", "json")
        assert code == 0 and json.loads(out)["exitCode"] == 3


async def test_a_blocked_disk_is_looked_at_again_and_repaired_with_evict(tmp_path: Path) -> None:
    """Without --evict a disk holding data is Blocked and its flags put back; a later run with
    --evict takes the same record up again and finishes it, flags as they were at the start."""
    async with repair_env(tmp_path, nodes=6, seed=23) as env:
        [g] = await plant(env.cluster, ["data"])
        v = g.victims[0]
        before = dict(env.node(v[0])["spec"]["disks"][v[1]])
        code, out, _ = await env.repair("--apply", "-o", "json")
        assert code == 3 and json.loads(out)["disks"][0]["phase"] == "Blocked"
        assert env.node(v[0])["spec"]["disks"][v[1]] == before  # put back
        assert env.record_of(*v)["status"]["step"].startswith("restore")  # type: ignore[index]
        code, out, err = await env.repair("--apply", "--evict", "-o", "json")
        assert code == 0, err[-2000:]
        rec = env.record_of(*v)
        assert rec is not None and rec["status"]["phase"] == "Done" and len([r for r in env.records()]) == 1
        assert env.node(v[0])["spec"]["disks"][v[1]] == before
        assert_nothing_lost(env)
