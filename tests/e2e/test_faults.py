"""The fault matrix of issue 13 §1 that the other end-to-end tests leave out, one test per row:

a. API 429 (Retry-After) and 5xx at rates on the webhook's own admission-path requests (claims,
   records) during bursts of colliding new disks on two webhook pods;
b. a webhook pod killed inside a review -- after its new prefix's claim was stored, after its
   record was stored, with its answer computed and not sent -- during such a burst;
c. a repair whose eviction never completes (the replacement's rebuild outlasts the run);
d. a Longhorn Node deleted in the middle of a repair;
e. the scripted fault run's `--check` (bench/fault_run.py).

Each ends, once the faults stop, in the outcomes §1 lists, judged from the emulator's own state,
History and cfg watch (tests/e2e/fault_env.py `check`), not from bimguard's report: no two v1
disks share a prefix, no UUID changed while anything named it, no cfg was ever absent or
disagrees with its status, every record is final or one a rerun takes up, no claim is leaked,
Longhorn never crashed. What a fault let through on the webhook's side is the repair Job's to
fix (docs/design.md, invariant 1), so convergence includes a `bimguard repair --apply` run.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bimguard.sim.scenarios import plant
from tests.e2e.fault_env import (
    CLAIMS,
    RW,
    FaultEnv,
    check,
    colliding_burst,
    describe,
    fault_env,
    phase,
    uuid_changes,
)

REPO = Path(__file__).resolve().parents[2]


async def two_pods(env: FaultEnv) -> None:
    await env.start_pod("bimguard-webhook-0")
    await env.start_pod("bimguard-webhook-1")
    await env.register()
    await env.until(env.leader, 10, "a leader")
    env.start_flipping()


def converged(env: FaultEnv) -> dict[str, object]:
    outcome = check(env.api, env.cluster, env.history, env.watch)
    assert not outcome.violations, describe(outcome)
    return outcome.figures


# ------------------------------------------------------------------ a. 429 and 5xx on claims and records


async def test_throttled_and_failing_admission_writes_during_a_two_pod_burst_converge(tmp_path: Path) -> None:
    """A quarter of the webhook's requests on PrefixClaims and DiskRewrites answered 429 (with
    Retry-After 1 s, as API Priority and Fairness answers), a tenth 503 and a twentieth 500, while
    20 colliding disks arrive in two bursts on two pods. Longhorn's writes are never held up; a
    throttled request is sent again after its Retry-After, and a review whose claim or record still
    fails (a 5xx, or the deadline) is allowed unpatched and counted -- never as an internal error.
    Once the faults stop, the controller finishes every record, the repair Job fixes what got
    through, and every §1 outcome holds."""
    async with fault_env(tmp_path, nodes=6, seed=131) as env:
        await two_pods(env)
        faults = env.api.faults
        faults.seed(131)
        writes = ["create", "get", "update", "delete"]
        for resource in (CLAIMS, RW):
            faults.error_rate(0.25, 429, verbs=writes, resource=resource)
            faults.error_rate(0.10, 503, verbs=writes, resource=resource)
            faults.error_rate(0.05, 500, verbs=writes, resource=resource)
        rng = random.Random(131)
        disks = []
        for burst in range(2):
            disks += await colliding_burst(env, rng, 10, f"b{burst}")  # every one recorded: nothing blocked
        injected = Counter(faults.injected_by_code)
        faults.clear()
        await env.stop_flipping()

        code, out, err = await env.converge()
        assert code == 0, (out, err[-2000:])
        figures = converged(env)
        skipped = Counter()
        for pod in env.pods:
            skipped.update(pod.skipped())
        rewritten = sum(p.rewrites() for p in env.pods)
        throttled = sum(p.replica.admission.api.kube.throttled for p in env.pods)
        print(f"\nfaults {dict(injected)}; sent again after a 429: {throttled}; reviews rewritten {rewritten}, "
              f"skipped {dict(skipped)}; {figures}")
        assert injected[429] and injected[503] + injected[500], injected
        assert throttled > 0 and rewritten > 0  # prevention still worked for what was only throttled
        assert not skipped.get("internal_error"), skipped


# ------------------------------------------------------------------ b. a pod killed inside a review


@pytest.mark.parametrize("point", ["claim", "record", "answer"])
async def test_a_webhook_pod_killed_inside_a_review_during_a_two_pod_burst_converges(tmp_path: Path, point: str) -> None:
    """Two pods take a burst of colliding disks; the first pod to reach `point` in a rewrite dies
    there: right after the API server stored its new prefix's claim (the record never comes),
    right after it stored the record, or with the answer computed and not sent. The API server
    sees the connection reset and stores Longhorn's write unpatched (failurePolicy Ignore); the
    other pod keeps answering, the dead one restarts (same name, new process) for a second burst,
    the lease moves if the dead pod led. Afterwards every §1 outcome holds, and the review that
    died left exactly what its point says: a claim naming a record that never existed (collected),
    or a record that ends Abandoned with its disk unpatched."""
    async with fault_env(tmp_path, nodes=6, seed=140 + ["claim", "record", "answer"].index(point)) as env:
        await two_pods(env)
        rule = env.kill_at(point)
        rng = random.Random(17)
        await colliding_burst(env, rng, 10, "b0")
        if not rule.fired:  # the reviews raced past it (a pair's second disk may find the first's claim)
            await colliding_burst(env, rng, 10, "b1")
        assert rule.fired, f"no review reached {point}"
        [(killed, why)] = env.kills
        [left] = rule.objects
        restarted = await env.restart(killed)
        await colliding_burst(env, rng, 10, "b2")
        await env.stop_flipping()

        code, out, err = await env.converge()
        assert code == 0, (out, err[-2000:])
        figures = converged(env)
        assert restarted.rewrites() + sum(p.rewrites() for p in env.pods if p.identity != killed) > 0
        first = next(c for c in env.history.changes if c.plural == ("prefixclaims" if point == "claim" else "diskrewrites")
                     and c.name == left)
        if point == "claim":
            record = first.obj["spec"]["record"]
            assert not [c for c in env.history.of("diskrewrites", record)], "the record of the dead review came to exist"
            assert env.history.deletion_requested("prefixclaims", left) is not None  # collected
        else:
            rec = env.api.store.get(RW, "bimguard", left)
            # Abandoned: the write was stored unpatched. Done: Longhorn's write met a 409 and its
            # retry found the record on the other pod (the same UUID).
            assert phase(rec) in ("Abandoned", "Done"), rec["status"]
        print(f"\nkilled {killed} {why} ({left}); {figures}")


# ------------------------------------------------------------------ c. an eviction that never completes


async def test_a_repair_whose_eviction_never_completes_keeps_the_uuid_and_a_rerun_converges(tmp_path: Path) -> None:
    """The victim holds a replica of an attached volume; Longhorn's rebuild of its replacement
    outlasts the run (a rebuild may take up to long-grpc-timeout, 24 h by default). The repair
    requests the eviction, waits for the drain until its --timeout, and exits 3 with the disk
    Draining: UUID unchanged in status and cfg, the eviction left requested, the record one a
    rerun takes up. Once rebuilds finish again, a rerun drains the disk and repairs it."""
    async with fault_env(tmp_path, nodes=6, seed=151) as env:
        c = env.cluster
        [g] = await plant(c, ["data"])
        node, disk = g.victims[0]
        old = await c.disk_uuid(node, disk)
        c.set_rebuild_seconds(10**9)
        code, out, err = await env.job.repair("--apply", "--evict", "--timeout", "6s", "-o", "json", timeout=90)
        report = json.loads(out)
        assert code == 3 == report["exitCode"], err[-2000:]
        [row] = report["disks"]
        assert (row["node"], row["disk"], row["phase"]) == (node, disk, "Draining"), row
        assert row["detail"].startswith("draining: "), row  # what the disk still waits for
        assert report["elapsedSeconds"] >= 6  # it waited its whole --timeout, then stopped
        assert env.status_uuid(node, disk) == old == c.read_cfg(node, disk).disk_uuid
        assert (await c.get_node(node))["spec"]["disks"][disk]["evictionRequested"]
        replacement = [r for r in await c.kube.list("replicas", f"longhornvolume={g.volumes[0]}") if not r["spec"]["healthyAt"]]
        assert replacement, "no replacement rebuilding: the fault did not hold"
        midway = check(env.api, c, env.history, env.watch, converged=False)
        assert not midway.violations, describe(midway)  # nothing changed, the record resumable

        c.set_rebuild_seconds(1)
        code, out, err = await env.job.repair("--apply", "--evict", "--timeout", "60s", "-o", "json", timeout=90)
        assert code == 0, err[-2000:]
        assert [d["phase"] for d in json.loads(out)["disks"]] == ["Done"]
        await env.until(env.settled, 30, "every disk Ready with status == cfg")
        figures = converged(env)
        assert figures["uuid_changes"] == 1  # the victim's, once drained
        print(f"\n{figures}")


# ------------------------------------------------------------------ d. a Longhorn Node deleted mid-repair


@pytest.mark.parametrize("moment", ["draining", "rewriting"])
async def test_a_longhorn_node_deleted_mid_repair_loses_nothing_and_a_rerun_converges(tmp_path: Path, moment: str) -> None:
    """An operator deletes the victim's Longhorn Node while the repair works on it, and puts it
    back (with the spec it had) later:
    - while its disk drains (eviction requested, the replacement rebuilding): the run ends (exit 3)
      with the record Blocked ("no longer on node") and nothing changed; the Node is put back;
    - right after the repair changed the disk's recorded UUID (its rewriter pod about to swap the
      cfg): the run swaps the cfg and waits for the disk (Restoring, resumable) until the Node is
      put back, then finishes -- Longhorn may record the old UUID again from its monitor's data
      of before the swap, which the run records new again.
    Nothing is lost or left half-done at any point; a rerun then converges with every §1 outcome
    holding."""
    async with fault_env(tmp_path, nodes=6, seed=161 if moment == "draining" else 162) as env:
        c = env.cluster
        [g] = await plant(c, ["data" if moment == "draining" else "empty"])
        node, disk = g.victims[0]
        old = await c.disk_uuid(node, disk)
        saved: list[dict[str, object]] = []
        loop = asyncio.get_running_loop()
        if moment == "draining":
            c.set_rebuild_seconds(10**9)  # the drain waits, long enough to delete the Node during it

        def delete_when(method: str, path: str, status: int, user: str) -> None:
            if user != "system:serviceaccount:bimguard:bimguard-repair" or status >= 300 or saved:
                return
            spec_write = method in ("PUT", "PATCH") and path.split("?")[0].endswith(f"/nodes/{node}")
            status_write = method == "PATCH" and path.split("?")[0].endswith(f"/nodes/{node}/status")
            evicting = spec_write and moment == "draining" and \
                env.api.store.get("longhorn.io/v1beta2/nodes", "longhorn-system", node)["spec"]["disks"][disk].get("evictionRequested")
            if evicting or (status_write and moment == "rewriting"):
                saved.append({})  # once
                loop.create_task(delete())

        async def delete() -> None:
            if moment == "draining":
                await c.wait_for(lambda: rebuilding(c, g.volumes[0]), 20, "the replacement rebuilding")
            saved[0] = await c.delete_node(node)

        env.api.request_listeners.append(delete_when)
        timeout = "8s" if moment == "draining" else "60s"
        run = asyncio.create_task(env.job.repair("--apply", "--evict", "--timeout", timeout, "-o", "json", timeout=90))
        if moment == "rewriting":
            await env.until(lambda: saved and saved[0] and [r for r in env.records() if phase(r) == "Restoring"], 30,
                            "the run waiting for the deleted Node's disk")
            midway = check(env.api, c, env.history, env.watch, converged=False)
            assert not midway.violations, describe(midway)
            await c.restore_node(node, saved[0])
        code, out, err = await run
        env.api.request_listeners.remove(delete_when)
        assert saved and saved[0], "the Node was never deleted: the repair did not get there"
        [rec] = env.records()
        if moment == "draining":
            assert code == 3 and phase(rec) == "Blocked", (code, rec["status"], err[-2000:])
            assert c.read_cfg(node, disk).disk_uuid == old  # nothing changed
            midway = check(env.api, c, env.history, env.watch, converged=False)
            assert not midway.violations, describe(midway)
            c.set_rebuild_seconds(1)
            await c.restore_node(node, saved[0])
        else:
            assert code == 0, (out, err[-2000:])
        print(f"\nthe run with {node} deleted: exit {code}, record {phase(rec)}: {rec['status'].get('step')}")

        await env.until(lambda: env.status_uuid(node, disk), 30, f"{node}/{disk} recorded again")
        code, out, err = await env.job.repair("--apply", "--evict", "--timeout", "60s", "-o", "json", timeout=90)
        assert code == 0, (out, err[-2000:])
        await env.until(env.settled, 30, "every disk Ready with status == cfg")
        figures = converged(env)
        [rec] = env.records()
        assert phase(rec) == "Done" and env.status_uuid(node, disk) == rec["spec"]["newUUID"] != old
        # When the Node came back before Longhorn's disk monitor polled again, it recorded the old
        # UUID over the swapped cfg (the monitor's data predates the swap); the rerun recorded the
        # new one again (bimguard.repair.steps, "restatus").
        again = [u for *_, u, _e in uuid_changes(env.history) if u == old]
        print(f"after the rerun: {rec['status'].get('message')}; old UUID recorded again: {bool(again)}; {figures}")


async def test_a_longhorn_node_deleted_while_the_webhook_rewrites_its_disk_ends_agreeing(tmp_path: Path) -> None:
    """The webhook's side of row d: the Longhorn Node of a disk being rewritten is deleted the
    moment the controller creates the rewriter pod (the pod still runs: the kubelet is there) and
    put back after the record is Done. Longhorn then records what its disk monitor collected
    before the swap -- the old UUID, over a cfg that holds the new one -- unless the monitor polled
    first (that first record of the old UUID is also a review: the webhook may rewrite it, its pod
    is then refused by the cfg's compare-and-swap and the record rolled back). Either way the
    controller records the Done record's new UUID again, the disk ends Ready with status == cfg,
    and every §1 outcome holds."""
    async with fault_env(tmp_path, nodes=4, seed=171) as env:
        c = env.cluster
        pod = await env.start_pod("bimguard-webhook-0")
        await env.register()
        await env.until(env.leader, 10, "a leader")
        node, disk = "worker-2", "disk-new"
        deleted: list[dict[str, object]] = []

        def on_request(method: str, path: str, status: int, user: str) -> None:
            if user == pod.user and method == "POST" and status == 201 and path.split("?")[0].endswith("/pods") \
                    and not deleted:
                # At once, before the pod can run: the API server marks the Node deleted now.
                deleted.append(env.api.store.get("longhorn.io/v1beta2/nodes", "longhorn-system", node)["spec"])
                env.api.store.delete("longhorn.io/v1beta2/nodes", "longhorn-system", node)

        env.api.request_listeners.append(on_request)
        keeper = await c.disk_uuid("worker-1", c.disks_of("worker-1")[0])
        await c.add_disk(node, disk, force_uuid=keeper[:4])
        await env.until(lambda: [r for r in env.records() if phase(r) in ("Done", "RolledBack", "Abandoned")], 30,
                        "the record final")
        env.api.request_listeners.remove(on_request)
        [rec] = env.records()
        assert deleted and phase(rec) == "Done", rec["status"]  # the pod swapped the cfg under a deleted Node
        await env.until(lambda: env.api.store.list("longhorn.io/v1beta2/nodes", "longhorn-system")[0] and
                        node not in {n["metadata"]["name"] for n in env.api.store.list(
                            "longhorn.io/v1beta2/nodes", "longhorn-system")[0]}, 10, "the Node gone")
        await c.restore_node(node, deleted[0])
        await env.until(env.settled, 30, "every disk Ready with status == cfg")
        figures = converged(env)
        assert env.status_uuid(node, disk) == rec["spec"]["newUUID"] == c.read_cfg(node, disk).disk_uuid
        again = [u for *_, u, _e in uuid_changes(env.history) if u == rec["spec"]["oldUUID"]]
        print(f"\nold UUID recorded again by Longhorn: {bool(again)}; {figures}")


async def rebuilding(c, volume: str) -> bool:
    engines = await c.kube.list("engines", f"longhornvolume={volume}")
    return any("WO" in ((e.get("status") or {}).get("replicaModeMap") or {}).values() for e in engines)


# ------------------------------------------------------------------ e. the scripted fault run, small


def test_fault_run_check_converges_with_every_outcome_holding() -> None:
    """bench/fault_run.py --check: faults toggled on and off while disks are added, then
    convergence and the §1 outcomes, with its figures printed."""
    out = subprocess.run([sys.executable, "bench/fault_run.py", "--check"], cwd=REPO, capture_output=True, text=True, check=False,
                         timeout=110)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "fault_run: every outcome holds" in out.stdout, out.stdout[-3000:]
    for figure in ("disks added", "faults injected", "webhook pods killed", "rewritten by the webhook",
                   "repaired by the Job"):
        assert figure in out.stdout, out.stdout



# ------------------------------------------------------------------ f. the repair on "Repair"'s cluster under faults


async def test_the_upgraded_cluster_repaired_under_api_faults_and_a_kill_converges(tmp_path: Path) -> None:
    """The 60-node cluster of tests/e2e/test_repair.py (12 groups: data, a 3-way group, stuck
    replicas and copies, a volume that cannot move, clones with and without leftovers, an orphan)
    repaired while the API server answers 10 % of the Job's writes 429 (Retry-After) and 10 % 503,
    and the first run is killed (SIGKILL) 8 s in; the faults stop and reruns finish. Judged by the
    §1 outcomes, except that the groups Longhorn's data keeps blocked by design still collide."""
    from tests.e2e.test_repair import UPGRADED

    async with fault_env(tmp_path, nodes=60, seed=3) as env:
        c = env.cluster
        groups = await plant(c, UPGRADED)
        writes = ["create", "update", "patch", "delete"]
        env.api.faults.error_rate(0.1, 429, verbs=writes, retry_after=1)
        env.api.faults.error_rate(0.1, 503, verbs=writes)
        args = ("--apply", "--evict", "--max-parallel", "3", "--timeout", "60s")
        code, _, err = await env.job.repair(*args, kill_after_seconds=8, timeout=100)
        assert code == -9 or (code in (0, 2, 3) and "Traceback" not in err), err[-2000:]
        code, _, err = await env.job.repair(*args, timeout=100)  # still under faults
        assert code in (0, 2, 3) and "Traceback" not in err, err[-2000:]
        # Not judged here: a claim the killed run left between claiming and recording is for the
        # next run to take up (test_repair.py::test_a_claim_left_between_claiming_and_recording_is_taken_up).

        env.api.faults.clear()
        for _ in range(3):
            code, out, err = await env.job.repair(*args, timeout=100)
            if code != 2:
                break
        assert code == 3, err[-2000:]  # the blocked groups, by design (test_repair.py)
        await env.until(env.settled, 30, "every disk Ready with status == cfg")
        outcome = check(env.api, c, env.history, env.watch, converged=False)
        assert not outcome.violations, describe(outcome)
        _, scan = await env.job.scan()
        assert {g["prefix"] for g in scan["collisions"]} == {g.prefix for g in groups if g.expect != "Done"}
        print(f"\n{outcome.figures}")
