"""`bimguard demo`: the BIM name collision, live, in the cluster emulator, and the scan finding it.

1. a simulated Longhorn v1.7.2 cluster (API server + one manager per node) settles;
2. new disks are added whose generated UUIDs are forced to share a prefix with existing disks;
3. a backing image with a copy on each existing disk, then a replica on each new disk: Longhorn's
   BackingImage controller hits `AlreadyExists` for the second BIM and the replica waits forever
   (BRIEF §4), shown with Longhorn's own log lines and object states;
4. `bimguard scan` against the live emulator, through the same code as `bimguard scan --kubeconfig`,
   must find exactly the planted pairs (plus any collision the random UUIDs made by themselves).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bimguard.findings import analyze
from bimguard.sim.clock import DEFAULT_TIME_SCALE
from bimguard.sim.longhorn.node_status import get_condition
from bimguard.sim.serve import simulated_cluster
from bimguard.sources.live import read_live
from jobs import report

BACKING_IMAGE = "demo-image"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=40, help="simulated nodes (default %(default)s)")
    p.add_argument("--disks-per-node", type=int, default=3, help="v1 disks per node (default %(default)s)")
    p.add_argument("--pairs", type=int, default=3, help="colliding disks to add (default %(default)s)")
    p.add_argument("--seed", type=int, default=7, help="seed for UUIDs and choices (default %(default)s)")
    p.add_argument("--time-scale", type=float, default=DEFAULT_TIME_SCALE, metavar="F",
                   help="inverse speed of simulated time; 0.02 makes Longhorn's 30 s poll 0.6 s (default %(default)s)")


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
    """One backing image with a copy on every existing disk, then a replica on every new disk."""
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
    stuck = []
    for i, (_, (node_b, disk_b)) in enumerate(planted):
        stuck += await cluster.create_volume_replicas(f"pvc-demo-{i + 1}", BACKING_IMAGE, [(node_b, disk_b)])

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


def _longhorn_lines(lines: list[str]) -> list[str]:
    """The first log line of each kind the KB quotes (creating, failing, waiting)."""
    picked = []
    for marker in ("Creating default backing image manager", "already exists", "Waiting for backing image"):
        line = next((l for l in lines if marker in l and "Dropping" not in l), None)
        if line:
            picked.append(line)
    return picked


async def _demo(args: argparse.Namespace) -> int:
    # The simulated managers log like longhorn-manager; the demo quotes those lines itself.
    logging.getLogger("bimguard.sim").addHandler(logging.NullHandler())
    say = _Progress()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bimguard-demo-") as tmp:
        root = Path(tmp)
        say.step(f"Starting a simulated Longhorn v1.7.2 cluster: {args.nodes} nodes x {args.disks_per_node} disks "
                 f"(emulated Kubernetes API over HTTP, one longhorn-manager per node, real disk directories)")
        async with simulated_cluster(nodes=args.nodes, disks_per_node=args.disks_per_node, seed=args.seed,
                                     time_scale=args.time_scale, root=root / "nodes") as (api, cluster):
            say.step(f"All {args.nodes * args.disks_per_node} disks recorded and Ready (API server {api.url})")

            say.step(f"Adding {args.pairs} disks whose UUIDs collide with existing disks' prefixes")
            planted = await _plant(cluster, args.pairs, rng, say)
            await cluster.wait_until_ready(timeout=60)
            say.step("Longhorn recorded the new disks; the Node objects look perfectly healthy (Ready, Schedulable)")

            say.step(f"Creating backing image {BACKING_IMAGE} with a copy on each existing disk, "
                     f"then a volume replica on each new disk")
            stuck = await _break_backing_image(cluster, planted, say)
            say.step("Longhorn cannot create the new disks' BIMs: the names are taken. Its log says:")
            for line in _longhorn_lines(cluster.all_log_lines()):
                say.detail(line)
            bi = await cluster.kube.get("backingimages", BACKING_IMAGE)
            spec_only = sorted(set(bi["spec"]["diskFileSpecMap"]) - set((bi.get("status") or {}).get("diskFileStatusMap") or {}))
            say.detail(f"backingimage {BACKING_IMAGE}: {len(spec_only)} disk(s) in spec.diskFileSpecMap with no "
                       f"status entry: {', '.join(spec_only)}")
            say.detail(f"replicas stuck with WaitForBackingImage=True: {', '.join(stuck)}")

            kubeconfig = root / "sim.kubeconfig"
            api.kubeconfig(kubeconfig)
            say.step(f"Running bimguard scan against the live emulator (same as: bimguard scan --kubeconfig {kubeconfig})")
            inv = await read_live(kubeconfig=str(kubeconfig), context=None, namespace="longhorn-system")
            doc = report.to_json(analyze(inv), {"type": "live", "namespace": "longhorn-system",
                                                "description": f"the emulated cluster at {api.url}"})
            print()
            sys.stdout.write(report.to_table(doc))
            print()

    found = {frozenset((d["node"], d["disk"]) for d in c["disks"]) for c in doc["collisions"]}
    wanted = {frozenset(pair) for pair in planted}
    natural = found - wanted
    missing = wanted - found
    if missing:
        say.step(f"FAILED: the scan missed {len(missing)} planted pair(s): {sorted(map(sorted, missing))}")
        return 1
    extra = f" (and {len(natural)} collision(s) the random UUIDs made by themselves)" if natural else ""
    say.step(f"OK: the scan found all {len(wanted)} planted collisions{extra}, and "
             f"{len(doc['symptoms'])} stuck backing-image copies")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.nodes < 2 or args.disks_per_node < 1 or not 1 <= args.pairs <= args.nodes:
        print("bimguard demo: needs --nodes >= 2, --disks-per-node >= 1 and 1 <= --pairs <= --nodes", file=sys.stderr)
        return 2
    return asyncio.run(_demo(args))
