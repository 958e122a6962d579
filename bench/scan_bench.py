#!/usr/bin/env python3
"""Benchmark `bimguard scan --from-dump` against a jq one-liner on the same generated dump.

Generates `kubectl get ... -o json`-shaped dumps (4-space indented List, Longhorn v1.7.2 object
shapes as in tests/fixtures/longhorn/samples, trimmed of fields neither tool reads so that the full size
is the ~190 MB the task names) of N nodes x 5 disks with 7.5 replicas per node and
N/100 backing images, then runs, in the same process tree and one after the other:
  - the full scan (groups, ownership, replica counts, plan, symptoms), JSON output;
  - jq that only groups v1 disk UUIDs by prefix.
It prints wall seconds and peak RSS (from wait4 of each child) for each, at full size and at
1/10th, so linear scaling can be read off.

    .venv/bin/python bench/scan_bench.py              # 20,000 nodes (~190 MB) and 2,000 nodes
    .venv/bin/python bench/scan_bench.py --nodes 2000 # just the small one
    .venv/bin/python bench/scan_bench.py --nodes 5000 --yaml   # also the same objects as `kubectl -o yaml`
Needs jq on PATH (Debian: apt-get install jq).

With --yaml the same dump is also written as `kubectl get ... -o yaml` prints it (keys sorted,
block style, 2-space indentation: what support bundles hold too), and the scan of it is timed
beside the scan of the JSON.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
JQ_FILTER = ('[.items[] | select(.kind == "Node") | .status.diskStatus[]? '
             '| select(.diskType == "filesystem" or .diskType == "") | .diskUUID[0:4]] '
             '| group_by(.) | map(select(length > 1)) | length')
IMAGE = "longhornio/backing-image-manager:v1.7.2"


def _cond(kind: str, message: str) -> dict:
    return {"lastProbeTime": "", "lastTransitionTime": "2025-03-02T09:15:22Z", "message": message, "reason": "",
            "status": "True", "type": kind}


def to_yaml(json_path: Path, yaml_path: Path) -> int:
    """The JSON dump as `kubectl -o yaml` writes it (sigs.k8s.io/yaml: sorted keys, block style)."""
    import yaml

    doc = msgspec.json.decode(json_path.read_bytes())
    with yaml_path.open("w", encoding="utf-8") as f:
        yaml.dump(doc, f, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), default_flow_style=False,
                  sort_keys=True, allow_unicode=True, width=1 << 20)
    return yaml_path.stat().st_size


def generate(nodes: int, path: Path, seed: int = 1) -> dict[str, int]:
    rng = random.Random(seed)
    new_uuid = lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4))  # noqa: E731
    items: list[dict] = []
    disks: list[tuple[str, str, str]] = []  # node, disk, uuid
    replicas_per_node = 7.5
    replica_count = int(nodes * replicas_per_node)
    for n in range(nodes):
        name = f"worker-{n:05d}"
        spec, status = {}, {}
        for d in range(5):
            dname = "default-disk-" + f"{rng.getrandbits(64):016x}" if d == 0 else f"disk-{d}"
            dpath = "/var/lib/longhorn/" if d == 0 else f"/mnt/disk{d}"
            u = new_uuid()
            disks.append((name, dname, u))
            spec[dname] = {"allowScheduling": True, "diskType": "filesystem", "evictionRequested": False,
                           "path": dpath, "storageReserved": 0}
            status[dname] = {
                "conditions": [_cond("Ready", f"Disk {dname}({dpath}) on node {name} is ready")],
                "diskName": dname, "diskPath": dpath, "diskType": "filesystem", "diskUUID": u,
                "scheduledReplica": {}, "storageAvailable": 90177536000, "storageMaximum": 105686820864,
                "storageScheduled": 0}
        items.append({
            "apiVersion": "longhorn.io/v1beta2", "kind": "Node",
            "metadata": {"name": name, "namespace": "longhorn-system", "resourceVersion": str(1000000 + n),
                         "uid": new_uuid()},
            "spec": {"allowScheduling": True, "disks": spec, "evictionRequested": False, "tags": []},
            "status": {"conditions": [_cond("Ready", f"Node {name} is ready")], "diskStatus": status,
                       "region": "", "zone": ""}})
    node_items = {it["metadata"]["name"]: it for it in items}
    bis = [f"image-{i:03d}" for i in range(max(1, nodes // 100))]
    for r in range(replica_count):
        node_name, dname, u = disks[rng.randrange(len(disks))]
        volume = f"pvc-{new_uuid()}"
        rname = f"{volume}-r-{rng.getrandbits(32):08x}"
        node_items[node_name]["status"]["diskStatus"][dname]["scheduledReplica"][rname] = 10737418240
        bi = bis[r % len(bis)] if r % 10 == 0 else ""
        items.append({
            "apiVersion": "longhorn.io/v1beta2", "kind": "Replica",
            "metadata": {"labels": {"longhorndiskuuid": u, "longhornnode": node_name, "longhornvolume": volume},
                         "name": rname, "namespace": "longhorn-system"},
            "spec": {"backingImage": bi, "diskID": u, "nodeID": node_name, "volumeName": volume},
            "status": {"currentState": "running"}})
    bims: dict[tuple[str, str], dict] = {}
    for bi in bis:
        copies = [disks[rng.randrange(len(disks))] for _ in range(3)]
        items.append({
            "apiVersion": "longhorn.io/v1beta2", "kind": "BackingImage",
            "metadata": {"name": bi, "namespace": "longhorn-system", "uid": new_uuid()},
            "spec": {"diskFileSpecMap": {u: {"evictionRequested": False} for _, _, u in copies}, "disks": {},
                     "minNumberOfCopies": 3, "sourceType": "download"},
            "status": {"diskFileStatusMap": {u: {"progress": 100, "state": "ready", "message": ""}
                                             for _, _, u in copies}, "uuid": "516b7c23", "size": 33554432}})
        for node_name, _, u in copies:
            bim = bims.setdefault((node_name, u), {
                "apiVersion": "longhorn.io/v1beta2", "kind": "BackingImageManager",
                "metadata": {"labels": {"longhorn.io/disk-uuid": u, "longhorn.io/node": node_name},
                             "name": f"backing-image-manager-5ae6-{u[:4]}", "namespace": "longhorn-system"},
                "spec": {"backingImages": {}, "diskPath": "/var/lib/longhorn/", "diskUUID": u, "image": IMAGE,
                         "nodeID": node_name}})
            bim["spec"]["backingImages"][bi] = "516b7c23"
    items.extend(bims.values())
    items.append({"apiVersion": "longhorn.io/v1beta2", "kind": "Setting",
                  "metadata": {"name": "default-backing-image-manager-image", "namespace": "longhorn-system"},
                  "value": IMAGE})
    doc = {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}
    path.write_bytes(msgspec.json.format(msgspec.json.encode(doc), indent=4))  # kubectl -o json indents by 4
    return {"nodes": nodes, "disks": len(disks), "replicas": replica_count, "backingImages": len(bis),
            "bims": len(bims), "bytes": path.stat().st_size}


# Runs in a small, fresh interpreter: it spawns the measured command and reports that child's wall
# time and peak RSS. Forking the command straight from this (large) process would charge the
# fork's page-table copy to the wall time and this process's pages to the child's ru_maxrss.
_TRAMPOLINE = """
import json, os, sys, time
out = open(sys.argv[1], "wb")
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1)])
_, status, usage = os.wait4(pid, 0)
print(json.dumps([time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)]))
"""


def measure(cmd: list[str], out_path: Path) -> tuple[float, float, int, bytes]:
    """Wall seconds, peak RSS in MiB (the command only), exit code, its stdout."""
    r = subprocess.run([sys.executable, "-c", _TRAMPOLINE, str(out_path), *cmd], capture_output=True, check=True)
    wall, rss, code = msgspec.json.decode(r.stdout)
    return wall, rss, code, out_path.read_bytes()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, action="append", help="node counts (default: 20000 and 2000)")
    ap.add_argument("--out", type=Path, default=HERE / "out", help="where dumps are written (default bench/out)")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement; the best wall time is kept")
    ap.add_argument("--yaml", action="store_true", help="also time the scan of the same dump as YAML")
    ap.add_argument("--generate-only", nargs=2, metavar=("NODES", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--yaml-only", nargs=2, metavar=("JSON", "YAML"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate_only:
        print(msgspec.json.encode(generate(int(args.generate_only[0]), Path(args.generate_only[1]))).decode())
        return 0
    if args.yaml_only:
        print(to_yaml(Path(args.yaml_only[0]), Path(args.yaml_only[1])))
        return 0
    jq = shutil.which("jq")
    if not jq:
        print("scan_bench: jq not found on PATH (Debian: apt-get install jq)", file=sys.stderr)
        return 2
    jq_version = subprocess.run([jq, "--version"], capture_output=True, text=True).stdout.strip()
    bimguard = str(Path(sys.executable).parent / "bimguard")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"# {jq_version}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; best of {args.runs} runs")
    print(f"{'nodes':>6} {'disks':>7} {'replicas':>8} {'MB':>6} | {'scan s':>7} {'scan MiB':>8} | "
          f"{'jq s':>6} {'jq MiB':>7} | {'time x jq':>9} {'RSS x jq':>8} | groups")
    for nodes in args.nodes or [20000, 2000]:
        path = args.out / f"dump-{nodes}.json"
        # Generate in a child: a fork of this process after building the dump in memory would carry
        # its RSS into every measured child's peak (ru_maxrss counts the pre-exec image).
        stats = msgspec.json.decode(subprocess.run([sys.executable, __file__, "--generate-only", str(nodes), str(path)],
                                                   check=True, capture_output=True).stdout)
        out = args.out / "stdout"
        scan = [measure([bimguard, "scan", "--from-dump", str(path), "-o", "json"], out) for _ in range(args.runs)]
        groups = len(msgspec.json.decode(scan[0][3])["collisions"])
        jqr = [measure([jq, JQ_FILTER, str(path)], out) for _ in range(args.runs)]
        s_wall, s_rss = min(r[0] for r in scan), max(r[1] for r in scan)
        j_wall, j_rss = min(r[0] for r in jqr), max(r[1] for r in jqr)
        jq_groups = int(jqr[0][3])
        assert groups == jq_groups, f"scan found {groups} groups, jq {jq_groups}"
        print(f"{nodes:>6} {stats['disks']:>7} {stats['replicas']:>8} {stats['bytes'] / 1e6:>6.0f} | "
              f"{s_wall:>7.2f} {s_rss:>8.0f} | {j_wall:>6.2f} {j_rss:>7.0f} | "
              f"{s_wall / j_wall:>9.2f} {s_rss / j_rss:>8.2f} | {groups}")
        if args.yaml:
            ypath = path.with_suffix(".yaml")
            size = int(subprocess.run([sys.executable, __file__, "--yaml-only", str(path), str(ypath)], check=True,
                                      capture_output=True).stdout)
            ys = [measure([bimguard, "scan", "--from-dump", str(ypath), "-o", "json"], out) for _ in range(args.runs)]
            y_wall, y_rss = min(r[0] for r in ys), max(r[1] for r in ys)
            y_groups = len(msgspec.json.decode(ys[0][3])["collisions"])
            assert y_groups == groups, f"the YAML scan found {y_groups} groups, the JSON scan {groups}"
            print(f"{'  yaml':>6} {'':>7} {'':>8} {size / 1e6:>6.0f} | {y_wall:>7.2f} {y_rss:>8.0f} | "
                  f"{y_wall / s_wall:>5.1f}x the JSON scan's time, {y_rss / s_rss:.1f}x its memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
