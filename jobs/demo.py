"""`bimguard demo`: the BIM name collision, live, in the cluster emulator: found by the scan,
prevented by the webhook, repaired by the repair.

1. a simulated Longhorn v1.7.2 cluster (API server + one manager per node) settles;
2. new disks are added whose generated UUIDs are forced to share a prefix with existing disks;
3. a backing image with a copy on each existing disk, then a replica on each new disk: Longhorn's
   BackingImage controller hits `AlreadyExists` for the second BIM and the replica waits forever
   (`controller/backing_image_controller.go:742-746 @v1.7.2`), shown with Longhorn's own log lines
   and object states;
4. `bimguard scan` against the live emulator, through the same code as `bimguard scan --kubeconfig`,
   must find exactly the planted pairs (plus any collision the random UUIDs made by themselves);
5. prevention: bimguard's webhook is installed (two replicas of the real `bimguard webhook`
   process code, the chart's webhook configuration, a leader-elected controller), more colliding
   disks are added, and each gets a unique UUID at admission, its cfg rewritten on the node by a
   rewriter pod, and ends Ready; their BIMs can all be created; a second scan finds only the
   collisions that existed before bimguard was installed;
6. the repair, with the webhook still running: `bimguard repair --apply --evict` regenerates one
   disk of each old pair (drained first by Longhorn's eviction where it holds data), and a last
   scan finds no collision.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bimguard.findings import analyze
from bimguard.sim.clock import DEFAULT_TIME_SCALE
from bimguard.sim.longhorn.node_status import get_condition
from bimguard.sim.scenarios import add_replica
from bimguard.sim.serve import install_bimguard, simulated_cluster
from bimguard.sources.live import read_live
from jobs import report, signals
from jobs.args import non_negative_int, positive_float, positive_int
from webhook import scope

STATUS_WRITES = "longhorn.io/nodes/status UPDATE"  # how the emulator's admission counts them
BACKING_IMAGE = "demo-image"
# bimguard's own CRDs, as the chart installs them (the demo runs from a checkout).


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=positive_int, default=40, help="simulated nodes (default %(default)s)")
    p.add_argument("--disks-per-node", type=positive_int, default=3, help="v1 disks per node (default %(default)s)")
    p.add_argument("--pairs", type=positive_int, default=3, help="colliding disks to add (default %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=7,
                   help="seed for UUIDs and choices: the same seed plants the same collisions (default %(default)s)")
    p.add_argument("--time-scale", type=positive_float, default=DEFAULT_TIME_SCALE, metavar="F",
                   help="inverse speed of simulated time; 0.02 makes Longhorn's 30 s poll 0.6 s (default %(default)s)")
    p.add_argument("--no-prevention", action="store_true",
                   help="stop after the scan (skip the webhook and the repair)")


class _Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def step(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    @staticmethod
    def detail(text: str) -> None:
        print(f"           {text}", flush=True)


async def _plant(cluster: Any, pairs: int, rng: random.Random, say: _Progress) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """Add `pairs` disks whose UUID prefixes equal those of existing disks on other nodes."""
    nodes = list(cluster.node_names)
    victims = rng.sample(nodes, pairs)
    planted = []
    for i, node_a in enumerate(victims):
        disk_a = cluster.disks_of(node_a)[0]
        uuid_a = await cluster.disk_uuid(node_a, disk_a)
        node_b = rng.choice([n for n in nodes if n != node_a])
        disk_b = f"disk-new-{i + 1}"
        await cluster.add_disk(node_b, disk_b, force_uuid=uuid_a[:4])
        planted.append(((node_a, disk_a), (node_b, disk_b)))
        say.detail(f"{node_b}: new disk {disk_b}; its generated UUID will start with {uuid_a[:4]}, "
                   f"like {node_a}/{disk_a} ({uuid_a})")
    return planted


async def _break_backing_image(cluster: Any, planted: list, say: _Progress) -> list[str]:
    """One backing image with a copy on every existing disk; then each new disk gets a replica of a
    volume that uses it (the volume's first replica is healthy on a third node), and the first new
    disk also a replica of a volume without backing image (data the repair has to drain)."""
    kube = cluster.kube
    await cluster.create_backing_image(BACKING_IMAGE, min_copies=1, disks_=[a for a, _ in planted])

    async def copies_ready() -> bool:
        bi = await kube.get("backingimages", BACKING_IMAGE)
        status = (bi.get("status") or {}).get("diskFileStatusMap") or {}
        return len(status) == len(planted) and all((s or {}).get("state") == "ready" for s in status.values())

    await cluster.wait_for(copies_ready, 60, "backing-image copies on the existing disks")
    for (node_a, disk_a), _ in planted:
        uuid_a = await cluster.disk_uuid(node_a, disk_a)
        say.detail(f"{cluster.expected_bim_name(uuid_a)} created for {node_a}/{disk_a}; copy ready")
    busy = {n for pair in planted for n, _ in pair}
    spare = [n for n in cluster.node_names if n not in busy] or list(cluster.node_names)
    volumes = []
    for i, (_, (node_b, _)) in enumerate(planted):
        third = next(n for n in spare[i:] + spare if n != node_b)
        await cluster.create_volume(f"pvc-demo-{i + 1}", [(third, cluster.disks_of(third)[0])], backing_image=BACKING_IMAGE)
        volumes.append(f"pvc-demo-{i + 1}")
    node_b, disk_b = planted[0][1]
    other = next(n for n in spare if n != node_b)
    await cluster.create_volume("pvc-demo-data", [(node_b, disk_b), (other, cluster.disks_of(other)[0])])
    for v in volumes + ["pvc-demo-data"]:
        await cluster.wait_for(lambda v=v: _volume_healthy(kube, v), 60, f"volume {v} healthy")
    stuck = [await add_replica(cluster, v, b) for v, (_, b) in zip(volumes, planted)]

    async def all_waiting() -> bool:
        for name in stuck:
            r = await kube.get("replicas", name)
            cond = get_condition((r.get("status") or {}).get("conditions"), "WaitForBackingImage")
            if cond.get("status") != "True":
                return False
        return True

    await cluster.wait_for(all_waiting, 60, "replicas on the new disks waiting for the backing image")
    await cluster.wait_for(lambda: any("already exists" in line for line in cluster.all_log_lines()), 60,
                           "the BackingImage controller's AlreadyExists error")
    return stuck


async def _volume_healthy(kube: Any, name: str) -> bool:
    st = (await kube.get("volumes", name)).get("status") or {}
    return st.get("robustness") == "healthy" and st.get("state") == "attached"


def _longhorn_lines(lines: list[str]) -> list[str]:
    """The first log line of each kind the KB quotes (creating, failing, waiting)."""
    picked = []
    for marker in ("Creating default backing image manager", "already exists", "Waiting for backing image"):
        line = next((l for l in lines if marker in l and "Dropping" not in l), None)
        if line:
            picked.append(line)
    return picked


async def _demo(args: argparse.Namespace) -> int:
    # The simulated managers log like longhorn-manager, the webhook as JSON; the demo quotes and
    # summarizes what matters itself.
    for name in ("bimguard.sim", "bimguard.webhook", "bimguard.leader", "bimguard.controller", "bimguard"):
        logging.getLogger(name).addHandler(logging.NullHandler())
    say = _Progress()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bimguard-demo-") as tmp:
        root = Path(tmp)
        print("Longhorn releases up to v1.9.1 name the Backing Image Manager of a disk after the first 4 hex characters of "
              "its UUID (backing-image-manager-<image hash>-<UUID[:4]>, types/types.go:385 @v1.7.2). Two disks whose "
              "UUIDs share those 4 characters want the same BIM: the second is never created, and replicas that need "
              "a backing image on that disk never start.", flush=True)
        say.step(f"Starting a simulated Longhorn v1.7.2 cluster: {args.nodes} nodes x {args.disks_per_node} disks "
                 f"(emulated Kubernetes API over HTTP, one longhorn-manager per node, real disk directories)")
        async with simulated_cluster(nodes=args.nodes, disks_per_node=args.disks_per_node, seed=args.seed,
                                     time_scale=args.time_scale, root=root / "nodes",
                                     progress=lambda ready, total: say.detail(f"{ready} of {total} disks Ready")
                                     ) as (api, cluster):
            say.step(f"All {args.nodes * args.disks_per_node} disks recorded and Ready (API server {api.url})")

            say.step(f"Adding {args.pairs} disks whose UUIDs collide with existing disks' prefixes")
            planted = await _plant(cluster, args.pairs, rng, say)
            await cluster.wait_until_ready(timeout=60)
            say.step("Longhorn recorded the new disks; the Node objects look perfectly healthy (Ready, Schedulable)")

            say.step(f"Creating backing image {BACKING_IMAGE} with a copy on each existing disk; volumes using it "
                     f"get a replica on each new disk, and one new disk holds a replica of another volume")
            stuck = await _break_backing_image(cluster, planted, say)
            say.step("Longhorn cannot create the new disks' BIMs: the names are taken. Its log says:")
            for line in _longhorn_lines(cluster.all_log_lines()):
                say.detail(line)
            bi = await cluster.kube.get("backingimages", BACKING_IMAGE)
            spec_only = sorted(set(bi["spec"]["diskFileSpecMap"]) - set((bi.get("status") or {}).get("diskFileStatusMap") or {}))
            say.detail(f"backingimage {BACKING_IMAGE}: {len(spec_only)} disk(s) in spec.diskFileSpecMap with no "
                       f"status entry: {', '.join(spec_only)}")
            say.detail(f"replicas stuck with WaitForBackingImage=True (their volumes stay degraded): {', '.join(stuck)}")

            kubeconfig = root / "sim.kubeconfig"
            api.kubeconfig(kubeconfig)
            say.step(f"Running bimguard scan against the live emulator (same as: bimguard scan --kubeconfig {kubeconfig})")
            doc = await _scan(kubeconfig, api.url)
            print()
            sys.stdout.write(report.to_table(doc))
            print()
            if args.no_prevention:
                return _verdict(say, doc, planted)
            if _verdict(say, doc, planted) != 0:
                return 1
            return await _prevent(args, api, cluster, kubeconfig, root, rng, say, planted, doc)



async def _scan(kubeconfig: Path, url: str) -> dict[str, Any]:
    inv = await read_live(kubeconfig=str(kubeconfig), context=None, namespace="longhorn-system")
    return report.to_json(analyze(inv), {"type": "live", "namespace": "longhorn-system",
                                         "description": f"the emulated cluster at {url}"})


def _groups(doc: dict[str, Any]) -> set[frozenset]:
    return {frozenset((d["node"], d["disk"]) for d in c["disks"]) for c in doc["collisions"]}


def _natural(doc: dict[str, Any], planted: list) -> set[frozenset]:
    return _groups(doc) - {frozenset(pair) for pair in planted}


def _verdict(say: _Progress, doc: dict[str, Any], planted: list) -> int:
    wanted = {frozenset(pair) for pair in planted}
    natural = _natural(doc, planted)
    missing = wanted - _groups(doc)
    if missing:
        say.step(f"FAILED: the scan missed {len(missing)} planted pair(s): {sorted(map(sorted, missing))}")
        return 1
    extra = f" (and {len(natural)} collision(s) the random UUIDs made by themselves)" if natural else ""
    say.step(f"OK: the scan found all {len(wanted)} planted collisions{extra}, and "
             f"{len(doc['symptoms'])} stuck backing-image copies")
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _prevent(args: argparse.Namespace, api: Any, cluster: Any, kubeconfig: Path, root: Path,
                   rng: random.Random, say: _Progress, planted: list, doc: dict[str, Any]) -> int:
    """The webhook installed and at work on new disks, then, with it still running, the repair of
    the collisions from before it was installed."""
    from kubernetes_asyncio import client

    from bimguard import kube, records
    from bimguard.kube import Kube, Resource
    from webhook import main as webhook_main

    namespace, service, mwc_name = "bimguard", "bimguard", "bimguard"
    say.step("Installing bimguard's admission webhook as the Helm chart does: its CRDs, 2 replicas of "
             "`bimguard webhook`, and a MutatingWebhookConfiguration on nodes/status (failurePolicy Ignore)")
    admitted_before = api.admission.counts.copy()
    await install_bimguard(str(kubeconfig), namespace=namespace, service=service, mwc_name=mwc_name)
    api_client = await kube.api_client(str(kubeconfig))
    kube = Kube(api_client)
    await cluster.start_kubelet(images=["bimguard"])
    parser = argparse.ArgumentParser()
    webhook_main.add_arguments(parser)
    stop = asyncio.Event()
    ports = [_free_port() for _ in range(2)]
    replicas = [asyncio.create_task(webhook_main.serve(parser.parse_args([
        "--kubeconfig", str(kubeconfig), "--namespace", namespace, "--host", "127.0.0.1", f"--port={port}",
        f"--metrics-port={_free_port()}", "--service-name", service, "--webhook-configuration", mwc_name,
        "--identity", f"bimguard-{i}", "--shutdown-delay", "0"]), stop)) for i, port in enumerate(ports)]
    api.webhook_hosts[f"{service}.{namespace}.svc"] = ("127.0.0.1", ports[0])
    try:
        async def injected() -> bool:
            mwc = await client.AdmissionregistrationV1Api(api_client).read_mutating_webhook_configuration(mwc_name)
            return bool(mwc.webhooks[0].client_config.ca_bundle)

        await cluster.wait_for(injected, 60, "the leader to inject its CA into the webhook configuration")
        say.detail("both replicas serve; the elected leader injected its CA into caBundle")

        say.step(f"Adding {args.pairs} more disks whose generated UUIDs collide with existing disks")
        taken = {frozenset(p) for p in planted}
        candidates = [(n, d) for n in cluster.node_names for d in cluster.disks_of(n)
                      if not any((n, d) in pair for pair in taken)]
        added = []
        for i, (node_a, disk_a) in enumerate(rng.sample(candidates, args.pairs)):
            uuid_a = await cluster.disk_uuid(node_a, disk_a)
            node_b = rng.choice([n for n in cluster.node_names if n != node_a])
            disk_b = f"disk-guarded-{i + 1}"
            await cluster.add_disk(node_b, disk_b, force_uuid=uuid_a[:4])
            added.append((node_b, disk_b, uuid_a, f"{node_a}/{disk_a}"))

        rewrites = Resource(records.GROUP, records.VERSION, records.REWRITES)

        async def all_done() -> list[dict[str, Any]] | None:
            recs = [r for r in await kube.items(rewrites, namespace) if r["spec"]["disk"].startswith("disk-guarded-")]
            if len(recs) == len(added) and all((r.get("status") or {}).get("phase") == "Done" for r in recs):
                return recs
            return None

        recs = await cluster.wait_for(all_done, 120, "every rewrite to be Done")
        await cluster.wait_until_ready(timeout=60)
        by_disk = {(r["spec"]["node"], r["spec"]["disk"]): r for r in recs}
        for node_b, disk_b, uuid_a, holder in added:
            rec = by_disk[(node_b, disk_b)]
            cfg = cluster.read_cfg(node_b, disk_b).disk_uuid
            status = await cluster.disk_uuid(node_b, disk_b)
            say.detail(f"{node_b}/{disk_b}: Longhorn drew {rec['spec']['oldUUID']} (the prefix of {holder}), "
                       f"bimguard gave {status}; cfg {'agrees' if cfg == status else 'DISAGREES'}; record "
                       f"{rec['metadata']['name']} Done; disk Ready")
            if cfg != status or status[:4] == uuid_a[:4]:
                raise RuntimeError(f"{node_b}/{disk_b} was not protected")
        counts = api.admission.counts - admitted_before
        writes = counts[(STATUS_WRITES, "requests")]
        sent = counts[(STATUS_WRITES, f"sent {scope.WEBHOOK_NAME}")]
        say.detail(f"Longhorn Node status writes since bimguard was installed: {writes}; sent to its webhook: {sent} "
                   f"(its matchConditions let through only writes that first-record a disk's UUID)")
        say.step("Every new disk's BIM can be created: a backing image with a copy on each of them")
        await cluster.create_backing_image("demo-image-guarded", min_copies=1, disks_=[(n, d) for n, d, _, _ in added])

        async def copies_ready() -> bool:
            bi = await cluster.kube.get("backingimages", "demo-image-guarded")
            st = (bi.get("status") or {}).get("diskFileStatusMap") or {}
            return len(st) == len(added) and all((s or {}).get("state") == "ready" for s in st.values())

        await cluster.wait_for(copies_ready, 60, "the guarded disks' copies to be ready")
        for node_b, disk_b, _, _ in added:
            say.detail(f"{cluster.expected_bim_name(await cluster.disk_uuid(node_b, disk_b))} created for "
                       f"{node_b}/{disk_b}; copy ready")
        say.step("Scanning again: only the collisions from before bimguard was installed remain")
        left = _groups(await _scan(kubeconfig, api.url))
        if left - {frozenset(p) for p in planted} - _natural(doc, planted):
            say.step(f"FAILED: new collisions appeared despite the webhook: {sorted(map(sorted, left))}")
            return 1
        say.detail(f"{len(left)} collision group(s), all from before the webhook")
        return await _repair(cluster, kubeconfig, namespace, say)
    finally:
        stop.set()
        await asyncio.gather(*replicas, return_exceptions=True)
        await api_client.close()


async def _repair(cluster: Any, kubeconfig: Path, namespace: str, say: _Progress) -> int:
    """`bimguard repair --apply --evict` on the emulated cluster, the webhook still running."""
    from jobs import repair

    say.step("Repairing them: bimguard repair --apply --evict (drains the disk that holds data through "
             "Longhorn's eviction; the stuck replicas and backing-image entries are deleted)")
    parser = argparse.ArgumentParser()
    repair.add_arguments(parser)
    args = parser.parse_args(["--apply", "--evict", "--kubeconfig", str(kubeconfig), "--namespace", namespace,
                              "--poll-interval", "0.2", "--pod-start-timeout", "20", "--pod-deadline", "20",
                              "--identity", "demo"])
    code = await repair.run_async(args, sys.stdout, sys.stdout)
    if code != 0:
        say.step("FAILED: the repair did not finish every disk")
        return 1
    after = await _scan(kubeconfig, "")
    kube = cluster.kube
    bi = await kube.get("backingimages", BACKING_IMAGE)
    states = {u: (f or {}).get("state") for u, f in ((bi.get("status") or {}).get("diskFileStatusMap") or {}).items()}
    stuck_left = [r["metadata"]["name"] for r in await kube.list("replicas")
                  if get_condition((r.get("status") or {}).get("conditions"), "WaitForBackingImage").get("status") == "True"]
    if after["collisions"] or after["symptoms"] or stuck_left:
        say.step(f"FAILED: after the repair: {len(after['collisions'])} collision(s), {len(after['symptoms'])} stuck "
                 f"copies, replicas still waiting: {stuck_left}")
        return 1
    say.detail(f"backing image {BACKING_IMAGE}: {sum(1 for s in states.values() if s == 'ready')} copies ready, none stuck")
    say.step("OK: `bimguard scan` finds no collision; the stuck copies and replicas are gone, their volumes rebuilt "
             "elsewhere (kubectl get diskrewrites -n bimguard: the records)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.nodes < 2 or args.disks_per_node < 1 or not 1 <= args.pairs <= args.nodes:
        print("bimguard demo: needs --nodes >= 2, --disks-per-node >= 1 and 1 <= --pairs <= --nodes", file=sys.stderr)
        return 2
    return signals.run(_demo(args))
