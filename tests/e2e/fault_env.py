"""Faults against bimguard in the emulator, and the outcomes issue 13 §1 asks for, judged from the
emulator's own state and record -- never from bimguard's report:

1. no two v1 disks share a prefix (the stored Node statuses);
2. no disk changed UUID while holding data (`History`: at each change of a recorded UUID, also
   across a deleted and re-created Node, no Replica, backing-image copy, BIM or scheduledReplica
   named the old one on that node);
3. no `longhorn-disk.cfg` was ever absent or written in place (`CfgWatch`, the kernel's record),
   and none disagrees with its status at the end;
4. every DiskRewrite record is final, or a repair record a rerun can take up (its disk still
   holds the old UUID in status and cfg, or already the new one in the status);
5. no PrefixClaim is leaked: each one's UUID is a recorded disk's or an unfinished record's;
6. Longhorn never crashed (`SimCluster.crashes`).

`FaultEnv` is the prevention side: webhook pods (the real replica, elector and controller, each
pod authenticating as itself so the emulator can tell whose write it saw) that can be killed at
any moment -- listening socket closed, open connections reset, every task of the process
cancelled, the Lease not released -- and restarted; the Service routed to the live pods in turn;
kill rules keyed on the requests the emulator serves; and `bimguard repair` as the backstop for
what a fault let through. bench/fault_run.py drives the same parts for minutes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from bimguard import records
from bimguard.kube import KubeError
from bimguard.kube import api_client as api_client_from
from bimguard.rewrite.engine import Settings
from bimguard.sim.apiserver import ApiServer
from bimguard.sim.history import History
from bimguard.sim.hostwatch import CfgWatch
from bimguard.sim.longhorn import disks as lh_disks
from bimguard.sim.longhorn.cluster import SimCluster
from bimguard.sim.longhorn.node_status import get_condition
from bimguard.sim.serve import simulated_cluster
from tests.e2e import repair_env

# The prevention e2e's names, and its leases: roomy for a loaded machine, short enough for a test.
from tests.e2e.test_prevention import (
    CLAIMS,
    HOST,
    IMAGE,
    LEASE,
    NODES,
    RW,
    free_prefix,
    phase,
)
from tests.webhook.harness import (
    LONGHORN_NS,
    NAMESPACE,
    Replica,
    prepare,
    start_replica,
    webhook_configuration,
)
from webhook.controller import RewriteController
from webhook.leader import LeaderElector

HISTORY = ("nodes", "replicas", "backingimages", "backingimagemanagers", "prefixclaims", "diskrewrites", "pods")
# The controller collects unreferenced claims within seconds (gc_interval, gc_grace), so "no claim
# leaked" can be judged after a wait; the grace stays above the moment between a rewrite's claim
# and its record.
SETTINGS = Settings(resync=0.2, pending_grace=5, pod_start_timeout=15, gc_interval=1.0, gc_grace=5.0,
                    active_deadline=60, check_interval=3.0)


# ---------------------------------------------------------------------------------- the outcomes


@dataclass
class Outcome:
    """What the emulator's record says; `violations` is empty when every §1 outcome holds."""

    violations: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def fail(self, what: str) -> None:
        self.violations.append(what)


def v1_uuids(api: ApiServer) -> dict[tuple[str, str], str]:
    """(node, disk) -> recorded UUID of every filesystem disk in the stored Node statuses."""
    out = {}
    for n in api.store.list(NODES, LONGHORN_NS)[0]:
        for disk, entry in ((n.get("status") or {}).get("diskStatus") or {}).items():
            entry = entry or {}
            if (entry.get("diskType") or "filesystem") == "filesystem" and entry.get("diskUUID"):
                out[(n["metadata"]["name"], disk)] = str(entry["diskUUID"])
    return out


def uuid_changes(history: History) -> list[tuple[int, str, str, str, str, dict[str, Any]]]:
    """(rv, node, disk, old, new, old entry) for every change of a disk's recorded UUID, including
    one across a deleted and re-created Node (the new object records "" -> X, but X is not what
    the disk had)."""
    last: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    out = []
    for c in history.of("nodes"):
        if c.old is not None:
            for disk, entry in ((c.old.get("status") or {}).get("diskStatus") or {}).items():
                if (entry or {}).get("diskUUID"):
                    last[(c.name, disk)] = (str(entry["diskUUID"]), entry)
        if c.type == "DELETED":
            continue
        for disk, entry in ((c.obj.get("status") or {}).get("diskStatus") or {}).items():
            new = str((entry or {}).get("diskUUID") or "")
            if not new:
                continue
            before = last.get((c.name, disk))
            if before is not None and before[0].lower() != new.lower():
                out.append((c.rv, c.name, disk, before[0], new, before[1]))
            last[(c.name, disk)] = (new, entry)
    return out


def holders(history: History, rv: int, node: str, old: str, entry: dict[str, Any]) -> list[str]:
    """What named the disk's old UUID on its node just before the change at `rv`."""
    u = old.lower()
    found = [f"replica {n}" for n, r in history.at("replicas", rv - 1).items()
             if (r.get("spec") or {}).get("nodeID") == node
             and u in {str((r.get("spec") or {}).get("diskID") or "").lower(),
                       str(((r.get("metadata") or {}).get("labels") or {}).get("longhorndiskuuid") or "").lower()}]
    for n, bi in history.at("backingimages", rv - 1).items():
        keys = set((bi.get("spec") or {}).get("diskFileSpecMap") or {}) | set((bi.get("status") or {}).get("diskFileStatusMap") or {})
        if u in {k.lower() for k in keys}:
            found.append(f"backing image {n}")
    found += [f"BIM {n}" for n, b in history.at("backingimagemanagers", rv - 1).items()
              if (b.get("spec") or {}).get("nodeID") == node and str((b.get("spec") or {}).get("diskUUID") or "").lower() == u]
    if entry.get("scheduledReplica"):
        found.append(f"scheduledReplica {sorted(entry['scheduledReplica'])}")
    return found


def cfg_uuid(cluster: SimCluster, node: str, path: str) -> str | None:
    try:
        return lh_disks.decode_cfg((cluster.host(node).dir(path) / lh_disks.DISK_CONFIG_FILE).read_bytes()).disk_uuid
    except (OSError, ValueError):
        return None


def resumable(api: ApiServer, cluster: SimCluster, rec: dict[str, Any]) -> str:
    """"" when a repair rerun can take this unfinished record up, else why not."""
    spec = rec["spec"]
    if spec.get("origin") != "job":
        return f"a {spec.get('origin')} record left {phase(rec)} (the controller finishes those)"
    node = api.store.list(NODES, LONGHORN_NS)[0]
    node = next((n for n in node if n["metadata"]["name"] == spec["node"]), None)
    if node is None:
        return ""  # the Node is gone: the record waits for it (the cfg is checked below, by path)
    entry = ((node.get("status") or {}).get("diskStatus") or {}).get(spec["disk"]) or {}
    status = str(entry.get("diskUUID") or "")
    cfg = cfg_uuid(cluster, spec["node"], spec["diskPath"])
    if phase(rec) in ("Rewriting", "Restoring"):
        return "" if status.lower() in (spec["oldUUID"].lower(), spec["newUUID"].lower(), "") else \
            f"status holds {status}, neither of the record's UUIDs"
    if status and status != spec["oldUUID"]:
        return f"{phase(rec)} but the status holds {status}, not the old {spec['oldUUID']}"
    if cfg is not None and cfg != spec["oldUUID"]:
        return f"{phase(rec)} but the cfg holds {cfg}, not the old {spec['oldUUID']}"
    return ""


def check(api: ApiServer, cluster: SimCluster, history: History, watch: CfgWatch, *, converged: bool = True) -> Outcome:
    """Every §1 outcome, from the emulator's state and record (module docstring). `converged=False`
    judges a moment mid-way (a repair that could not finish yet): collisions may still be there."""
    out = Outcome()
    watch.flush()
    # 1. unique prefixes
    by_prefix: dict[str, list[str]] = defaultdict(list)
    uuids = v1_uuids(api)
    for (node, disk), uuid in uuids.items():
        by_prefix[uuid[:4].lower()].append(f"{node}/{disk}")
    shared = {p: m for p, m in by_prefix.items() if len(m) > 1}
    for prefix, members in sorted(shared.items()):
        if converged:
            out.fail(f"prefix {prefix} is shared by {', '.join(sorted(members))}")
    # 2. no UUID changed while something named it
    changes = uuid_changes(history)
    for rv, node, disk, old, new, entry in changes:
        held = holders(history, rv, node, old, entry)
        if held:
            out.fail(f"{node}/{disk} changed {old} -> {new} while {', '.join(held)} named it")
    # 3. cfg never absent, only replaced whole, and agreeing with the status at the end
    for e in watch.absences():
        out.fail(f"longhorn-disk.cfg absent in {e.disk_dir} (event {e.seq})")
    for e in watch.in_place_writes():
        out.fail(f"longhorn-disk.cfg written in place in {e.disk_dir} (event {e.seq})")
    if watch.overflowed:
        out.fail("the cfg watch lost events (inotify queue overflow): cannot tell")
    for n in api.store.list(NODES, LONGHORN_NS)[0]:
        name = n["metadata"]["name"]
        for disk, dspec in ((n.get("spec") or {}).get("disks") or {}).items():
            status = str((((n.get("status") or {}).get("diskStatus") or {}).get(disk) or {}).get("diskUUID") or "")
            cfg = cfg_uuid(cluster, name, dspec.get("path", ""))
            if status and cfg != status:
                out.fail(f"{name}/{disk}: status {status}, cfg {cfg}")
    # 4. records final or resumable
    recs = api.store.list(RW, NAMESPACE)[0]
    for rec in recs:
        if phase(rec) not in records.FINAL_PHASES:
            why = resumable(api, cluster, rec)
            if why:
                out.fail(f"record {rec['metadata']['name']} ({rec['spec']['node']}/{rec['spec']['disk']}): {why}")
    # 5. no claim leaked
    for why in leaked_claims(api):
        out.fail(why)
    # 6. Longhorn never crashed
    for crash in cluster.crashes:
        out.fail(f"longhorn-manager on {crash.node} crashed: {crash.message} ({crash.where})")
    phases: dict[str, int] = defaultdict(int)
    for rec in recs:
        phases[f"{rec['spec']['origin']} {phase(rec)}"] += 1
    out.figures.update(disks=len(uuids), shared_prefixes=len(shared), uuid_changes=len(changes), records=dict(sorted(phases.items())),
                       claims=len(api.store.list(CLAIMS, NAMESPACE)[0]), cfg_replaced=watch.count("replaced"),
                       cfg_created=watch.count("created"))
    return out


def leaked_claims(api: ApiServer) -> list[str]:
    """Claims whose UUID no disk records and no unfinished record names (a repair's Blocked record
    counts as unfinished: a rerun takes it up with its claim)."""
    in_use = {u.lower() for u in v1_uuids(api).values()}
    for rec in api.store.list(RW, NAMESPACE)[0]:
        if phase(rec) not in records.FINAL_PHASES or (phase(rec) == "Blocked" and rec["spec"].get("origin") == "job"):
            in_use.update(str(rec["spec"].get(k) or "").lower() for k in ("oldUUID", "newUUID"))
    return [f"claim {c['metadata']['name']} ({c['spec'].get('uuid')}, record {c['spec'].get('record') or '-'}) "
            f"names nothing" for c in api.store.list(CLAIMS, NAMESPACE)[0]
            if str(c["spec"].get("uuid") or "").lower() not in in_use]


# ---------------------------------------------------------------------------------- webhook pods


@dataclass
class Pod:
    """One webhook pod: its replica, elector and controller, and the tasks a kill ends."""

    identity: str
    user: str
    replica: Replica
    elector: LeaderElector
    controller: RewriteController
    dead: bool = False
    reviews: set[asyncio.Task[Any]] = field(default_factory=set)
    # Called with the review's answer (bytes) just before it is sent; may kill the pod.
    before_answer: Callable[[Pod, bytes], None] | None = None

    @property
    def endpoint(self) -> tuple[str, int]:
        return "127.0.0.1", self.replica.server.bound_port

    def rewrites(self) -> int:
        return self.replica.metrics.reviews.outcomes["rewritten"]

    def skipped(self) -> dict[str, float]:
        return {s.labels["reason"]: s.value for m in self.replica.metrics.skipped.collect() for s in m.samples
                if s.name.endswith("_total")}

    def kill(self) -> None:
        """SIGKILL, as far as the others can tell, done synchronously (a request listener may call
        it between a write landing and its answer leaving the API server): the port closed, its
        connections reset (the API server treats a review in flight as a failed call:
        failurePolicy Ignore), every review, the controller, the elector (Lease not released) and
        the informers cancelled at their next await. `reap()` then frees what is left."""
        if self.dead:
            return
        self.dead = True
        for runner in self.replica.server._runners:
            for site in runner.sites:
                server = getattr(site, "_server", None)
                if server is not None:
                    server.close()
            if runner.server is not None:
                for conn in list(runner.server.connections):
                    if conn.transport is not None:
                        conn.transport.abort()
        for t in list(self.reviews):
            t.cancel()
        self.elector.release_on_stop = False
        for t in (self.controller._task, self.elector._task, *self.replica.informers._tasks):
            if t is not None:
                t.cancel()

    async def reap(self) -> None:
        self.kill()
        await self.controller.stop()
        await self.elector.stop()
        await self.replica.stop()


@dataclass
class KillRule:
    """Kill the pod whose request matches, right after the API server carried it out."""

    what: str  # "claim" (a rewrite's new-prefix claim), "record", or "answer" (before answering)
    pods: set[str] | None = None  # identities it may hit; None = any
    fired: list[str] = field(default_factory=list)  # identities killed
    objects: list[str] = field(default_factory=list)  # the claim or record (the review's) it fired on


class FaultEnv:
    def __init__(self, api: ApiServer, cluster: SimCluster, root: Path, history: History, watch: CfgWatch,
                 settings: Settings = SETTINGS, deadline: float = 4.0) -> None:
        self.api, self.cluster, self.root, self.history, self.watch = api, cluster, root, history, watch
        self.settings, self.deadline = settings, deadline
        self.pods: list[Pod] = []
        self.rules: list[KillRule] = []
        self.kills: list[tuple[str, str]] = []  # (identity, why), in order
        self._flipper: asyncio.Task[None] | None = None
        self._reaping: set[asyncio.Task[None]] = set()
        self.job = repair_env.Env(api, cluster, root / "kubeconfig", history, root, root / "job.kubeconfig")
        api.request_listeners.append(self._on_request)

    # -- pods -------------------------------------------------------------------------------
    def live(self) -> list[Pod]:
        return [p for p in self.pods if not p.dead]

    def pod(self, identity: str) -> Pod | None:
        return next((p for p in self.live() if p.identity == identity), None)

    async def start_pod(self, identity: str) -> Pod:
        """A webhook pod (a restarted one keeps its name: the Lease identity). Each authenticates
        with a token of its own, so the emulator's request listeners can tell the pods apart."""
        user = f"system:serviceaccount:{NAMESPACE}:{identity}"
        token = f"pod-token-{identity}"
        self.api.add_user(token, user)
        kubeconfig = self.root / f"{identity}.kubeconfig"
        if not kubeconfig.exists():
            self.api.kubeconfig(kubeconfig, token=token)
        replica = await start_replica(kubeconfig, deadline=self.deadline)
        elector = LeaderElector(replica.api_client, NAMESPACE, identity=identity, **LEASE)
        controller = RewriteController(replica.api_client, NAMESPACE, LONGHORN_NS, IMAGE, settings=self.settings,
                                       leader=elector)
        elector.on_started_leading = controller.wake
        pod = Pod(identity, user, replica, elector, controller)
        handle = replica.admission.handle

        async def tracked(body: bytes) -> bytes:
            task = asyncio.current_task()
            assert task is not None
            pod.reviews.add(task)
            try:
                answer = await handle(body)
                if pod.before_answer is not None:
                    pod.before_answer(pod, answer)
                if pod.dead:
                    await asyncio.Event().wait()  # killed: no answer, ever (the connection is reset)
                return answer
            finally:
                pod.reviews.discard(task)

        replica.admission.handle = tracked  # type: ignore[method-assign]
        pod.before_answer = self._before_answer
        elector.start()
        controller.start()
        self.pods.append(pod)
        return pod

    async def register(self) -> None:
        """The chart's MutatingWebhookConfiguration (failurePolicy Ignore, timeoutSeconds 5)."""
        pod = self.live()[0]
        self.api.webhook_hosts[HOST] = pod.endpoint
        self.api.store.create("admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                              webhook_configuration(pod.replica.certs.ca_bundle_pem))

    def kill(self, pod: Pod, why: str) -> None:
        """Kill now; reaped in the background (a pod's restart is the caller's: `restart`)."""
        if pod.dead:
            return
        pod.kill()
        self.kills.append((pod.identity, why))
        if self.api.webhook_hosts.get(HOST) == pod.endpoint:
            self._route()
        task = asyncio.get_running_loop().create_task(pod.reap())
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def restart(self, identity: str) -> Pod:
        """Kubernetes restarts the killed container: the same pod name, a new process."""
        await asyncio.gather(*self._reaping, return_exceptions=True)
        return await self.start_pod(identity)

    def leader(self) -> Pod | None:
        return next((p for p in self.live() if p.elector.is_leader), None)

    # -- routing: the Service's endpoints are the live pods, taken in turn -----------------------
    def _route(self) -> None:
        live = self.live()
        if live:
            self.api.webhook_hosts[HOST] = random.choice(live).endpoint
        else:
            self.api.webhook_hosts.pop(HOST, None)

    def start_flipping(self, period: float = 0.003) -> None:
        async def flip() -> None:
            while True:
                self._route()
                await asyncio.sleep(period)

        self._flipper = asyncio.create_task(flip())

    async def stop_flipping(self) -> None:
        if self._flipper is not None:
            self._flipper.cancel()
            await asyncio.gather(self._flipper, return_exceptions=True)
            self._flipper = None
        self._route()

    # -- kill rules --------------------------------------------------------------------------
    def kill_at(self, what: str, pods: set[str] | None = None) -> KillRule:
        rule = KillRule(what, pods)
        self.rules.append(rule)
        return rule

    def _armed(self, what: str, pod: Pod) -> KillRule | None:
        return next((r for r in self.rules if r.what == what and not r.fired
                     and (r.pods is None or pod.identity in r.pods)), None)

    def _on_request(self, method: str, path: str, status: int, user: str) -> None:
        pod = next((p for p in self.live() if p.user == user), None)
        if pod is None or method != "POST" or status != 201:
            return
        where = path.split("?")[0]
        plural = where.rsplit("/", 1)[-1]
        if not where.endswith(f"/namespaces/{NAMESPACE}/{plural}") or plural not in (records.CLAIMS, records.REWRITES):
            return
        # The object just stored is the newest of its kind (the listener runs before the answer leaves).
        added = next((c for c in reversed(self.history.changes) if c.plural == plural and c.type == "ADDED"), None)
        if added is None:
            return
        if plural == records.CLAIMS:
            what = "claim" if (added.obj.get("spec") or {}).get("record") else ""  # a rewrite's new prefix
        else:
            what = "record"
        rule = self._armed(what, pod) if what else None
        if rule is not None:
            rule.fired.append(pod.identity)
            rule.objects.append(added.name)
            self.kill(pod, f"after its {what} {added.name} was stored")

    def _before_answer(self, pod: Pod, answer: bytes) -> None:
        patch = ((json.loads(answer).get("response") or {}).get("patch") or "")
        if not patch:
            return
        rule = self._armed("answer", pod)
        if rule is not None:
            record = re.search(r"DiskRewrite (r-[0-9a-f]+(?:-\d+)?)", base64.b64decode(patch).decode())
            rule.fired.append(pod.identity)
            rule.objects.append(record.group(1) if record else "")
            self.kill(pod, f"with its rewrite answer computed ({rule.objects[-1]}), before sending it")

    # -- stored state ---------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        return self.api.store.list(RW, NAMESPACE)[0]

    def status_uuid(self, node: str, disk: str) -> str:
        n = self.api.store.get(NODES, LONGHORN_NS, node)
        return str((((n.get("status") or {}).get("diskStatus") or {}).get(disk) or {}).get("diskUUID") or "")

    def settled(self) -> bool:
        """Every disk in a Node's spec Ready, with status == cfg."""
        for n in self.api.store.list(NODES, LONGHORN_NS)[0]:
            name = n["metadata"]["name"]
            for disk, dspec in ((n.get("spec") or {}).get("disks") or {}).items():
                entry = (((n.get("status") or {}).get("diskStatus") or {}).get(disk) or {})
                uuid = entry.get("diskUUID") or ""
                if not uuid or cfg_uuid(self.cluster, name, dspec.get("path", "")) != uuid or \
                        get_condition(entry.get("conditions"), "Ready").get("status") != "True":
                    return False
        return True

    async def until(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return await self.cluster.wait_for(predicate, timeout, what)

    # -- convergence ----------------------------------------------------------------------------
    async def converge(self, *, timeout: float = 60) -> tuple[int, str, str]:
        """After the faults: every webhook record final and every disk settled, then the repair
        Job (the backstop for what the faults let through) until it has nothing left, then the
        controller's collection of unreferenced claims. Returns the last repair's result."""
        await self.until(lambda: all(phase(r) in records.FINAL_PHASES for r in self.records()), timeout,
                         "every DiskRewrite final")
        await self.until(self.settled, timeout, "every disk Ready with status == cfg")
        result = await self.job.repair("--apply", "--timeout", f"{int(timeout)}s", timeout=timeout + 30)
        if result[0] == 0:
            await self.until(self.settled, timeout, "every disk Ready with status == cfg after the repair")
            await self.until(lambda: not leaked_claims(self.api), timeout, "unreferenced claims collected")
        return result

    async def close(self) -> None:
        await self.stop_flipping()
        if self._on_request in self.api.request_listeners:
            self.api.request_listeners.remove(self._on_request)
        for pod in self.pods:
            if not pod.dead:
                pod.dead = True
                await pod.controller.stop()
                await pod.elector.stop()
                await pod.replica.stop()
        await asyncio.gather(*self._reaping, return_exceptions=True)


@contextlib.asynccontextmanager
async def fault_env(tmp_path: Path, *, nodes: int, seed: int, time_scale: float = 0.01,
                    settings: Settings = SETTINGS) -> AsyncIterator[FaultEnv]:
    """A settled simulated cluster with bimguard's CRDs, a kubelet, the repair's service account and
    namespaces, the emulator's History and the cfg watch; webhook pods are the caller's."""
    async with simulated_cluster(nodes=nodes, disks_per_node=1, seed=seed, time_scale=time_scale,
                                 root=tmp_path / "hosts") as (api, cluster):
        history = History(api.store, *HISTORY)
        watch = CfgWatch(cluster.root)
        watch.start()
        kubeconfig = tmp_path / "kubeconfig"
        api.kubeconfig(kubeconfig)
        await prepare(kubeconfig)
        ac = await api_client_from(str(kubeconfig))
        try:
            await client.CoreV1Api(ac).create_namespace({"metadata": {"name": repair_env.REWRITER_NS}})
        finally:
            await ac.close()
        api.add_user("repair-token", repair_env.JOB_USER)
        api.kubeconfig(tmp_path / "job.kubeconfig", token="repair-token")
        await cluster.start_kubelet(images=["bimguard"])
        env = FaultEnv(api, cluster, tmp_path, history, watch, settings)
        try:
            yield env
        finally:
            await env.close()
            watch.close()
            history.close()


async def colliding_burst(env: FaultEnv, rng: random.Random, n: int, tag: str) -> list[tuple[str, str]]:
    """`n` new disks at once over the nodes, every one drawn onto a prefix already taken: half
    copy a recorded disk's prefix, half come in pairs on two nodes sharing a fresh one (two
    longhorn-managers writing at the same moment). Returns the disks; waits until each is recorded
    (Longhorn's writes are never blocked, whatever the webhook does)."""
    c = env.cluster
    in_use = {u[:4] for u in v1_uuids(env.api).values()}
    recorded = sorted(v1_uuids(env.api))
    nodes = c.node_names
    plan: list[tuple[str, str, str]] = []
    for i in range(n // 2):
        first, second = rng.sample(nodes, 2)
        prefix = v1_uuids(env.api)[rng.choice(recorded)][:4] if i % 2 else free_prefix(rng, in_use)
        for node in (first, second):
            plan.append((node, f"{tag}-d{len(plan):02d}", prefix))
    await asyncio.gather(*(add_disk(c, nd, d, p) for nd, d, p in plan))
    await env.until(lambda: all(env.status_uuid(nd, d) for nd, d, _ in plan), 60, f"burst {tag} recorded")
    return [(nd, d) for nd, d, _ in plan]


async def add_disk(c: SimCluster, node: str, disk: str, prefix: str) -> None:
    """The operator's spec write, tried again while the API server fails it (5xx, 429): they are
    not what is under test."""
    for _ in range(50):
        try:
            await c.add_disk(node, disk, force_uuid=prefix)
            return
        except KubeError as exc:
            if exc.status != 429 and exc.status < 500:
                raise
            await asyncio.sleep(0.2)
    raise TimeoutError(f"could not add disk {node}/{disk}: the API server kept failing")


def describe(outcome: Outcome) -> str:
    return "\n".join(outcome.violations[:20]) + (f"\n... {len(outcome.violations) - 20} more"
                                                 if len(outcome.violations) > 20 else "")


__all__ = ["FaultEnv", "Outcome", "Pod", "check", "fault_env", "colliding_burst", "describe", "leaked_claims", "phase",
           "SETTINGS"]
