#!/usr/bin/env python3
"""What `bimguard repair --apply --evict` costs on a large emulated cluster: time to converge, API
reads and writes per repaired disk, and replicas rebuilt. A benchmark, not a test:
it prints figures against their targets (PASS/MISS) and exits non-zero only when a run did not
repair every planted group.

Every run starts the real Job as a process (tests/e2e/repair_env.py: its own service account, so
its requests are told apart from Longhorn's) against the emulator (bimguard.sim: API server,
simulated Longhorn v1.7.2 with one disk per node, kubelet running the on-node pods as real
processes), with collision groups planted by bimguard.sim.scenarios.plant. Everything is measured
from the emulator, not from the Job's report (printed beside for comparison):

  mixed        --nodes nodes, --groups groups: half "empty" (the victim holds nothing), half
               "data" (the victim holds a healthy replica of an attached 2-replica volume, drained
               through Longhorn's eviction).
  empty-big    --nodes nodes, the empty half only.
  empty-small  --small-nodes nodes, the same empty groups.

  - Time to converge: from the Job's process being started to each victim's DiskRewrite record
    first stored with phase Done (a listener on the emulator's store stamps every change), in
    Longhorn resync periods (30 Longhorn s = 30 x --time-scale real seconds); split into the Job's
    start-up, its on-node pods (created -> terminated), cfg rewritten -> Done (Longhorn's disk
    monitor noticing the new cfg, the flags put back, the verification), draining (data victims)
    and the rest: the Job's passes. Target: every empty victim within 2 periods.
  - Requests by the Job's user (ApiServer.request_listeners): reads (GET, and the
    SelfSubjectAccessReviews: they change nothing), writes (everything else that succeeded, dry
    runs apart), the Lease's renewals apart (they depend on the run's length, not on the disks).
    Per disk. Targets: writes <= 20 per empty victim (empty-big, empty-small); reads per disk
    not growing with the cluster's size: empty-big / empty-small <= 1.25 (run-to-run noise).
    Data victims' writes: mixed's writes less the empty victims' share, per data victim.
  - Disks with evictionRequested at the same time on the Longhorn Nodes (history of "nodes"),
    against the Job's --max-parallel.
  - Replicas rebuilt: Replica CRs the emulated Longhorn created during the mixed run
    (bimguard.sim.history.History of "replicas") against the plan's count, the replicas on the
    data victims when the Job starts. Target: never more.

The Job runs with the tests' settings (--pod-start-timeout 10 --pod-deadline 10 --lease-duration 6)
and --poll-interval 2 x --time-scale by default: its own 2 s default, scaled like Longhorn's
periods. What does not scale: the Job's and the emulator's own work (real CPU time, on the same
machine) and the on-node pods (real processes): the smaller --time-scale, the more periods they
weigh. --time-scale 1 runs Longhorn's periods and the Job's poll in their real ratio.

    .venv/bin/python bench/repair_bench.py                         # 200 nodes, 50 groups, scale 0.1 (~1.5 min)
    .venv/bin/python bench/repair_bench.py --time-scale 1          # real-time periods, poll 2 s (~7 min)
    .venv/bin/python bench/repair_bench.py --cases empty-big --trace 2   # one run; two victims' steps on stderr
    .venv/bin/python bench/repair_bench.py --check                 # tiny and fast (~10 s): the test suite's
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from bimguard.rewrite.pod import LABEL_RECORD
from bimguard.sim.history import History
from bimguard.sim.longhorn.manager import RESYNC_PERIOD
from bimguard.sim.scenarios import plant
from bimguard.sim.store import WatchEvent
from tests.e2e.repair_env import JOB_USER, repair_env

TARGET_PERIODS = 2.0
TARGET_EMPTY_WRITES = 20.0
TARGET_READ_RATIO = 1.25  # "reads do not grow with the cluster's size": allow the run-to-run noise


@dataclass
class Requests:
    """The Job's requests, by kind, as the emulated API server saw them."""

    reads: int = 0
    writes: int = 0
    failed_writes: int = 0  # 409 conflicts and the like: no change stored
    lease_reads: int = 0
    lease_writes: int = 0
    dry_runs: int = 0
    passes: int = 0  # lists of the DiskRewrite records: one per pass, plus the run's first and last
    pass_starts: list[float] = field(default_factory=list)  # monotonic times of those lists
    first: float | None = None  # monotonic time of the Job's first request
    writes_by: dict[str, int] = field(default_factory=dict)

    def __call__(self, method: str, path: str, status: int, user: str) -> None:
        if user != JOB_USER:
            return
        if self.first is None:
            self.first = time.monotonic()
        parts = [p for p in path.split("?")[0].split("/") if p]
        resource = _resource(parts)
        lease = resource.startswith("leases")
        if method in ("GET", "HEAD") or resource == "selfsubjectaccessreviews":
            if lease:
                self.lease_reads += 1
            else:
                self.reads += 1
            if method == "GET" and resource == "diskrewrites":
                self.passes += 1
                self.pass_starts.append(time.monotonic())
            return
        if "dryRun" in path:
            self.dry_runs += 1
        elif status >= 400:
            self.failed_writes += 1
        elif lease:
            self.lease_writes += 1
        else:
            self.writes += 1
            key = f"{method} {resource}"
            self.writes_by[key] = self.writes_by.get(key, 0) + 1


def _resource(parts: list[str]) -> str:
    """'replicas', 'nodes/status', 'diskrewrites/status', 'pods', ... from a request path."""
    if "namespaces" in parts:
        i = parts.index("namespaces")
        rest = parts[i + 2:]
        if not rest:  # the namespace itself
            return "namespaces"
    else:
        rest = parts[3:] if parts[:1] == ["apis"] else parts[2:]
    if not rest:
        return "/".join(parts)
    return rest[0] + ("/" + rest[2] if len(rest) > 2 else "")


@dataclass
class Victim:
    """One Job record: a disk the plan regenerated, and what its run looked like."""

    disk: str  # node/disk
    kind: str  # the planted group's kind: "empty" or "data"
    phase: str = "Pending"
    done: float | None = None  # seconds from the Job's start to the record first stored Done
    pods: float = 0.0  # seconds with one of its on-node pods created and not yet terminated
    longhorn: float = 0.0  # seconds from the cfg rewritten (phase Restoring) to Done
    draining: float = 0.0  # seconds with evictionRequested set (data victims)
    steps: list[tuple[float, str, str]] = field(default_factory=list)  # (t, phase, step) as stored


@dataclass
class Case:
    label: str
    nodes: int
    empty: int
    data: int
    code: int = 0
    seconds: float = 0.0  # the Job's run, process start to exit
    startup: float = 0.0  # process start to its first request
    req: Requests = field(default_factory=Requests)
    victims: dict[str, Victim] = field(default_factory=dict)  # record name -> victim
    planned_replicas: int = 0  # replicas on the data victims when the Job starts
    rebuilt: int = 0  # Replica CRs created during the run
    evicting_max: int = 0  # most disks with spec evictionRequested at once on the Longhorn Nodes
    rebuild_story: list[str] = field(default_factory=list)  # volumes given more than one new replica
    job_reads: int = 0  # the Job's own count (its report), for comparison
    job_writes: int = 0
    error: str = ""

    @property
    def disks(self) -> int:
        return self.empty + self.data

    def of(self, kind: str) -> list[Victim]:
        return [v for v in self.victims.values() if v.kind == kind]


def _kinds(empty: int, data: int) -> list[str]:
    """Empty and data groups interleaved: a mixed cluster, not the empty groups first."""
    out: list[str] = []
    for i in range(max(empty, data)):
        out += (["empty"] if i < empty else []) + (["data"] if i < data else [])
    return out


async def run_case(label: str, root: Path, *, nodes: int, empty: int, data: int, args: argparse.Namespace) -> Case:
    case = Case(label, nodes, empty, data)
    root.mkdir(parents=True, exist_ok=True)
    async with repair_env(root, nodes=nodes, seed=args.seed, time_scale=args.time_scale) as env:
        groups = await plant(env.cluster, _kinds(empty, data))
        # The plan decides which disk of a pair is regenerated (not always the one planted last):
        # records are matched to their group by the prefix they give up.
        kind_of_prefix = {g.prefix: g.kind for g in groups}
        placed: dict[tuple[str, str], int] = {}
        for r in env.objects("replicas"):
            key = (r["spec"]["nodeID"], r["spec"]["diskID"])
            placed[key] = placed.get(key, 0) + 1
        stamps: dict[int, float] = {}

        def stamp(ev: WatchEvent) -> None:
            if ev.key.plural in ("diskrewrites", "replicas", "pods", "nodes"):
                stamps[ev.rv] = time.monotonic()

        unlisten = env.api.store.add_listener(stamp)
        history = History(env.api.store, "diskrewrites", "replicas", "pods", "nodes")
        env.api.request_listeners.append(case.req)
        t0 = time.monotonic()
        try:
            code, out, err = await env.repair(
                "--apply", "--evict", "-o", "json", "--poll-interval", str(args.poll_interval),
                "--max-parallel", str(args.max_parallel), "--timeout", f"{args.job_timeout:g}s",
                timeout=args.job_timeout + 120)
        finally:
            case.seconds = time.monotonic() - t0
            env.api.request_listeners.remove(case.req)
            history.close()
            unlisten()
        case.code = code
        case.startup = (case.req.first - t0) if case.req.first is not None else float("nan")
        try:
            doc = json.loads(out)
            case.job_reads, case.job_writes = doc["api"]["reads"], doc["api"]["writes"]
        except (ValueError, KeyError):
            case.error = f"exit {code}; no JSON report"
        _victims(case, history, stamps, t0, kind_of_prefix, placed)
        case.rebuilt = sum(1 for ch in history.of("replicas") if ch.type == "ADDED")
        case.rebuild_story = _rebuild_story(history, stamps, t0)
        for i, line in enumerate(case.rebuild_story):  # what the emulated managers logged about it
            volume = line.split(":", 1)[0]
            said = [f"[{node}] {text}" for node, m in env.cluster.managers.items() for text in m.log.lines
                    if re.search(rf"{re.escape(volume)}\b", text)
                    and any(w in text for w in ("one more replica", "Schedule replica", "failed"))]
            case.rebuild_story[i] += "".join(f"\n    {t}" for t in said[:8])
        case.evicting_max = _most_evicting(history)
        not_done = sorted(f"{v.disk} {v.phase}" for v in case.victims.values() if v.phase != "Done")
        if len(case.victims) != case.disks:
            not_done.append(f"{len(case.victims)} records for {case.disks} groups")
        if not_done and not case.error:
            case.error = f"exit {code}; not Done: {', '.join(not_done[:5])}" + (" ..." if len(not_done) > 5 else "")
        if case.error:
            case.error += "; last Job lines: " + " | ".join(err.strip().splitlines()[-3:])
    return case


def _rebuild_story(history: History, stamps: dict[int, float], t0: float) -> list[str]:
    """For each volume that got more than one new Replica during the run: what happened to its
    replicas (created, healthy, failed, deleted; seconds from the Job's start)."""
    new: dict[str, list[str]] = {}
    for ch in history.of("replicas"):
        if ch.type == "ADDED":
            new.setdefault(ch.obj["spec"].get("volumeName", ""), []).append(ch.name)
    out = []
    for volume, names in sorted(new.items()):
        if len(names) < 2:
            continue
        events: list[tuple[float, str]] = []
        seen: dict[str, dict[str, Any]] = {}
        for ch in history.of("replicas"):
            if ch.obj["spec"].get("volumeName") != volume:
                continue
            t, before = stamps.get(ch.rv, t0) - t0, seen.get(ch.name, {})
            spec = ch.obj.get("spec") or {}
            tag = "new " if ch.name in names else ""
            if ch.type == "ADDED":
                events.append((t, f"{tag}{ch.name} created on {spec.get('nodeID') or '(unscheduled)'}"))
            elif ch.type == "DELETED" or (ch.obj["metadata"].get("deletionTimestamp")
                                           and not before.get("deleting")):
                events.append((t, f"{tag}{ch.name} deleted"))
            for key in ("healthyAt", "failedAt", "evictionRequested"):
                if spec.get(key) and not before.get(key):
                    events.append((t, f"{tag}{ch.name} {key}"))
            seen[ch.name] = {**spec, "deleting": bool(ch.obj["metadata"].get("deletionTimestamp"))
                             or ch.type == "DELETED"}
        out.append(f"{volume}: {len(names)} new replicas: " + "; ".join(f"{t:.1f}s {e}" for t, e in events))
    return out


def _most_evicting(history: History) -> int:
    """The most disks with ``evictionRequested`` at the same time, from the Longhorn Nodes as stored."""
    evicting: dict[str, int] = {}
    most = 0
    for ch in history.of("nodes"):
        disks = ((ch.obj.get("spec") or {}).get("disks") or {}).values() if ch.type != "DELETED" else []
        evicting[ch.name] = sum(1 for d in disks if (d or {}).get("evictionRequested"))
        most = max(most, sum(evicting.values()))
    return most


def _victims(case: Case, history: History, stamps: dict[int, float], t0: float, kind_of_prefix: dict[str, str],
             placed: dict[tuple[str, str], int]) -> None:
    """Each record's run, from the emulator's history: when it reached each step, how long its
    pods ran, how long Longhorn took to report the new UUID Ready."""
    restoring: dict[str, float] = {}
    evicting: dict[str, float] = {}
    for ch in history.of("diskrewrites"):
        spec, st = ch.obj.get("spec") or {}, ch.obj.get("status") or {}
        if ch.type == "DELETED" or spec.get("origin") != "job":
            continue
        kind = kind_of_prefix.get(str(spec.get("oldUUID", ""))[:4], "other")
        v = case.victims.setdefault(ch.name, Victim(f"{spec.get('node')}/{spec.get('disk')}", kind))
        if ch.type == "ADDED" and kind == "data":
            case.planned_replicas += placed.get((spec.get("node"), spec.get("oldUUID")), 0)
        t = stamps[ch.rv] - t0
        v.phase = st.get("phase") or "Pending"
        entry = (v.phase, st.get("step") or "")
        if not v.steps or v.steps[-1][1:] != entry:
            v.steps.append((t, *entry))
        if v.phase == "Restoring":
            restoring.setdefault(ch.name, t)
        if (st.get("setFlags") or {}).get("evictionRequested"):
            evicting.setdefault(ch.name, t)
        if v.phase == "Done" and v.done is None:
            v.done = t
            v.longhorn = t - restoring.get(ch.name, t)
            if ch.name in evicting:
                v.draining = restoring.get(ch.name, t) - evicting[ch.name]

    created: dict[str, float] = {}
    for ch in history.of("pods"):
        record = ((ch.obj.get("metadata") or {}).get("labels") or {}).get(LABEL_RECORD)
        if record not in case.victims:
            continue
        t = stamps[ch.rv] - t0
        if ch.type == "ADDED":
            created[ch.name] = t
        ended = ch.type == "DELETED" or (ch.obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        if ended and ch.name in created:
            case.victims[record].pods += t - created.pop(ch.name)


# ---------------------------------------------------------------------------- report
def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _pass_seconds(c: Case) -> tuple[float, float]:
    """Median and max seconds from one pass's start to the next's (the poll's sleep included);
    the first and last lists of the records are not passes."""
    starts = c.req.pass_starts[1:-1]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    return (statistics.median(gaps), max(gaps)) if gaps else (float("nan"), float("nan"))


def report(cases: dict[str, Case], args: argparse.Namespace, command: str) -> list[str]:
    period = RESYNC_PERIOD * args.time_scale
    mixed, big, small = cases.get("mixed"), cases.get("empty-big"), cases.get("empty-small")
    lines = [f"# {command}",
             (f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs; before the run: {args.load_before}"),
             (f"# Longhorn resync period: {RESYNC_PERIOD:.0f} Longhorn s x time scale {args.time_scale:g} = "
              f"{period:.2f} s; Job: --poll-interval {args.poll_interval:g} --max-parallel {args.max_parallel}"), ""]
    lines.append(f"{'case':<12} {'nodes':>5} {'empty':>5} {'data':>4} {'exit':>4} {'run s':>6} {'start s':>7} "
                 f"{'passes':>6} {'pass s med/max':>14} {'reads':>6} {'writes':>6} {'lease r/w':>9} {'failed w':>8} "
                 f"{'Job says r/w':>12}")
    for c in cases.values():
        pm, px = _pass_seconds(c)
        lines.append(f"{c.label:<12} {c.nodes:>5} {c.empty:>5} {c.data:>4} {c.code:>4} {c.seconds:>6.1f} "
                     f"{c.startup:>7.2f} {c.req.passes:>6} {f'{pm:.2f}/{px:.2f}':>14} {c.req.reads:>6} {c.req.writes:>6} "
                     f"{f'{c.req.lease_reads}/{c.req.lease_writes}':>9} {c.req.failed_writes:>8} "
                     f"{f'{c.job_reads}/{c.job_writes}':>12}")
    lines.append("")
    rows: list[tuple[str, str, str, str]] = []

    def convergence(c: Case | None, kind: str, judge: bool) -> None:
        vs = [v for v in c.of(kind) if v.done is not None] if c else []
        if not c or not vs:
            return
        done = [v.done for v in vs if v.done is not None]
        med, worst = statistics.median(done) / period, max(done) / period
        rows.append((f"{kind} victims: Job start -> Done, periods ({c.label})", f"median {med:.2f}, max {worst:.2f}",
                     f"<= {TARGET_PERIODS:g}" if judge else "", verdict(worst <= TARGET_PERIODS) if judge else "info"))
        pods = statistics.median(v.pods for v in vs)
        lh = statistics.median(v.longhorn for v in vs)
        drain = statistics.median(v.draining for v in vs)
        rest = statistics.median(v.done - c.startup - v.pods - v.longhorn - v.draining for v in vs if v.done is not None)
        rows.append(("  median s: total = Job start-up + on-node pods + cfg->Done + draining + passes",
                     f"{statistics.median(done):.1f} = {c.startup:.1f} + {pods:.1f} + {lh:.1f} + {drain:.1f} + {rest:.1f}",
                     "", ""))

    convergence(mixed, "empty", True)
    convergence(big, "empty", True)
    convergence(small, "empty", False)
    convergence(mixed, "data", False)
    w_empty = None
    for c in (big, small):
        if c and c.disks:
            w = c.req.writes / c.disks
            w_empty = w if w_empty is None else w_empty
            rows.append((f"writes per empty victim ({c.label})", f"{w:.1f}", f"<= {TARGET_EMPTY_WRITES:g}",
                         verdict(w <= TARGET_EMPTY_WRITES)))
            rows.append(("  the same with the Lease's renewals", f"{(c.req.writes + c.req.lease_writes) / c.disks:.1f}",
                         "", "info"))
    if mixed and mixed.disks:
        if mixed.data and w_empty is not None:
            w_data = (mixed.req.writes - w_empty * mixed.empty) / mixed.data
            rows.append(("writes per data victim (mixed, less the empty victims' share)", f"{w_data:.1f}", "", "info"))
        rows.append(("writes per disk, all (mixed)", f"{mixed.req.writes / mixed.disks:.1f}", "", "info"))
        rows.append(("reads per disk (mixed)", f"{mixed.req.reads / mixed.disks:.1f}", "", "info"))
    if big and small and big.disks and small.disks:
        rb, rs = big.req.reads / big.disks, small.req.reads / small.disks
        ratio = rb / rs if rs else float("inf")
        rows.append((f"reads per empty victim, {big.nodes} / {small.nodes} nodes", f"{rb:.1f} / {rs:.1f} = {ratio:.2f}x",
                     f"<= {TARGET_READ_RATIO:g}x", verdict(ratio <= TARGET_READ_RATIO)))
        pb, ps = big.req.reads / max(big.req.passes, 1), small.req.reads / max(small.req.passes, 1)
        rows.append(("  reads per pass, same two", f"{pb:.1f} / {ps:.1f}", "", "info"))
        rows.append(("  passes, same two", f"{big.req.passes} / {small.req.passes}", "", "info"))
    if mixed and mixed.data:
        most = mixed.evicting_max
        rows.append(("disks evicting at once, max (mixed)", str(most), f"<= {args.max_parallel} (--max-parallel)",
                     verdict(most <= args.max_parallel)))
        rows.append(("replicas rebuilt / plan's count (mixed)", f"{mixed.rebuilt} / {mixed.planned_replicas}",
                     "rebuilt <= plan", verdict(mixed.rebuilt <= mixed.planned_replicas)))
    width = max([len(r[0]) for r in rows] + [6])
    vwidth = max([len(r[1]) for r in rows] + [5])
    lines.append(f"{'figure':<{width}}  {'value':<{vwidth}}  {'target':<22}  result")
    for name, value, target, res in rows:
        lines.append(f"{name:<{width}}  {value:<{vwidth}}  {target:<22}  {res}")
    for c in cases.values():
        for line in c.rebuild_story:
            lines.append(f"more than one replica rebuilt ({c.label}): {line}")
    for c in (big, small, mixed):
        if c and c.req.writes_by:
            lines.append("")
            lines.append(f"writes per disk by request ({c.label}): " + ", ".join(
                f"{k} {v / c.disks:.1f}" for k, v in sorted(c.req.writes_by.items(), key=lambda kv: -kv[1])))
            break
    return lines


async def amain(args: argparse.Namespace, command: str) -> int:
    empty = args.groups - args.groups // 2
    data = args.groups // 2
    cases: dict[str, Case] = {}
    with tempfile.TemporaryDirectory(prefix="repair-bench-") as tmp:
        plan = [("mixed", args.nodes, empty, data), ("empty-big", args.nodes, empty, 0),
                ("empty-small", args.small_nodes, empty, 0)]
        for label, nodes, e, d in plan:
            if label not in args.cases:
                continue
            t = time.monotonic()
            print(f"... {label}: {nodes} nodes, {e} empty + {d} data groups", file=sys.stderr, flush=True)
            try:
                cases[label] = c = await run_case(label, Path(tmp) / label, nodes=nodes, empty=e, data=d, args=args)
            except Exception as exc:  # noqa: BLE001 - the emulator or the scenario failed: one line, exit 2
                text = (str(exc).strip().splitlines() or [""])[0][:500]
                print(f"repair_bench: {label}: {type(exc).__name__}: {text}", file=sys.stderr)
                return 2
            print(f"... {label}: Job exit {c.code} in {c.seconds:.1f}s ({time.monotonic() - t:.0f}s with set-up)",
                  file=sys.stderr, flush=True)
    if args.trace:
        for c in cases.values():
            for kind in ("empty", "data"):
                for v in sorted(c.of(kind), key=lambda v: v.done or 1e9)[:args.trace]:
                    print(f"--- {c.label} {kind} {v.disk}: pods {v.pods:.1f}s, cfg->Done {v.longhorn:.1f}s", file=sys.stderr)
                    for t, phase, step in v.steps:
                        print(f"  {t:7.2f}s  {phase:<10} {step}", file=sys.stderr)
    lines = report(cases, args, command)
    print("\n".join(lines))
    errors = [f"{c.label}: {c.error}" for c in cases.values() if c.error]
    for e in errors:
        print(f"repair_bench: {e}", file=sys.stderr)
    if args.check:
        if errors:
            return 1
        print(f"repair_bench --check: {sum(c.disks for c in cases.values())} disks repaired in {len(cases)} runs, "
              "figures computed")
    return 1 if errors else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=200, help="Longhorn nodes of the mixed and empty-big runs (default 200)")
    ap.add_argument("--small-nodes", type=int, default=50, help="nodes of the empty-small run (default 50)")
    ap.add_argument("--groups", type=int, default=50, help="collision groups of the mixed run, half of them with data "
                                                            "(default 50); the empty runs take its empty half")
    ap.add_argument("--time-scale", type=float, default=0.1,
                    help="real seconds per Longhorn second (default 0.1: a 30 s resync takes 3 s)")
    ap.add_argument("--poll-interval", type=float, help="the Job's --poll-interval (default 2 x --time-scale)")
    ap.add_argument("--max-parallel", type=int, default=1, help="the Job's --max-parallel (default 1, as the Job's)")
    ap.add_argument("--job-timeout", type=float, default=900.0, help="the Job's --timeout in seconds (default 900)")
    ap.add_argument("--seed", type=int, default=1, help="the emulator's seed (default 1)")
    ap.add_argument("--cases", default="mixed,empty-big,empty-small",
                    help="which runs, comma-separated (default: mixed,empty-big,empty-small)")
    ap.add_argument("--trace", type=int, default=0, metavar="N",
                    help="print the stored steps of the first N empty and data victims of each run (standard error)")
    ap.add_argument("--check", action="store_true",
                    help="a tiny, fast configuration (6 and 4 nodes, 2 groups, time scale 0.01) for the test suite")
    args = ap.parse_args()
    command = "python bench/repair_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.check:
        args.nodes, args.small_nodes, args.groups, args.time_scale = 6, 4, 2, 0.01
        args.poll_interval = args.poll_interval or 0.05
    if args.groups < 2 or args.nodes < 3 or args.small_nodes < 3:
        ap.error("needs --groups >= 2 and at least 3 nodes per cluster")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not args.cases or set(args.cases) - {"mixed", "empty-big", "empty-small"}:
        ap.error("--cases takes mixed, empty-big and empty-small")
    if args.poll_interval is None:
        args.poll_interval = round(2.0 * args.time_scale, 3)
    try:
        args.load_before = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        args.load_before = "?"
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(amain(args, command))
    return 130


if __name__ == "__main__":
    sys.exit(main())
