#!/usr/bin/env python3
"""A scripted fault run (issue 13 §1): faults toggled on and off for minutes while colliding disks
keep arriving on two webhook pods, then convergence and the §1 outcomes, judged from the
emulator's own state and record. A benchmark-style script, not a test: it prints its figures and
exits 1 when an outcome does not hold (2 when the set-up fails).

The cluster is tests/e2e/fault_env.py's: the emulated API server, a simulated Longhorn v1.7.2
(one disk per node), the kubelet running the on-node pods as real processes, two real webhook
pods (replica + elector + controller, each authenticating as itself) behind a Service routed to
the live pods in turn, and `bimguard repair` as a process. Every `--period` seconds a new set of
faults is drawn, held for the first half of the period and cleared for the second:

  - API errors on the webhook's claims and records: 429 (Retry-After 1 s) and 503/500 at rates;
  - API errors on every other write too (Longhorn's, the leases', the pods'), 500/503 at a rate;
  - added latency on claim and record creates and on Node status writes;
  - dropped watches (every open watch closed) and compaction (older resourceVersions get 410);
  - a webhook pod killed -- at random, the leader, or inside a review (after its new prefix's
    claim or its record was stored, or with its answer computed and not sent) -- and restarted
    (same name, new process) a second later.

Disks arrive throughout, `--disks` every `--every` seconds, each drawn onto a prefix already taken
(a recorded disk's or its pair's). Once the time is up the faults stop, killed pods restart, every
record must go final and every disk Ready with status == cfg, `bimguard repair --apply` fixes what
the faults let through, the controller collects unreferenced claims, and the outcomes are checked:
no two v1 disks share a prefix, no UUID changed while anything named it, no cfg was ever absent
(inotify) or disagrees with its status, every record final or resumable, no claim leaked,
Longhorn never crashed.

    .venv/bin/python bench/fault_run.py                    # 10 minutes, 10 nodes
    .venv/bin/python bench/fault_run.py --minutes 2 --seed 7
    .venv/bin/python bench/fault_run.py --check            # ~10 s of faults on 6 nodes: what the suite runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.e2e.fault_env import (
    CLAIMS,
    RW,
    FaultEnv,
    check,
    colliding_burst,
    fault_env,
    phase,
)

POINTS = ("claim", "record", "answer")


class Run:
    """The fault schedule and what it did."""

    def __init__(self, env: FaultEnv, args: argparse.Namespace) -> None:
        self.env, self.args = env, args
        self.rng = random.Random(args.seed)
        self.counts: Counter[str] = Counter()
        self.leaders: list[str] = []

    def faults_on(self) -> list[str]:
        """Draw this period's faults; returns their names."""
        f, rng, drawn = self.env.api.faults, self.rng, []
        writes = ["create", "get", "update", "delete"]
        if rng.random() < 0.6:
            rate = rng.choice((0.1, 0.25, 0.4))
            for resource in (CLAIMS, RW):
                f.error_rate(rate, 429, verbs=writes, resource=resource)
                f.error_rate(rate / 3, rng.choice((500, 503)), verbs=writes, resource=resource)
            drawn.append(f"429 {rate:.0%} + 5xx {rate / 3:.0%} on claims and records")
        if rng.random() < 0.4:
            rate = rng.choice((0.05, 0.1))
            f.error_rate(rate, rng.choice((500, 503)), verbs=["create", "update", "patch", "delete"])
            drawn.append(f"5xx {rate:.0%} on every write")
        if rng.random() < 0.4:
            seconds = rng.choice((0.3, 1.0, 2.5))
            f.latency(seconds, verbs="create", resource=CLAIMS)
            f.latency(seconds / 2, verbs="create", resource=RW)
            f.latency(seconds / 3, verbs="update", resource="longhorn.io/v1beta2/nodes")
            drawn.append(f"latency {seconds:g} s on claim creates")
        return drawn

    async def chaos(self, until: float) -> None:
        """Kills, dropped watches and compaction at random moments while faults are on."""
        env, rng = self.env, self.rng
        while time.monotonic() < until:
            await asyncio.sleep(rng.uniform(0.5, 2.0) * self.args.chaos_every)
            if time.monotonic() >= until:
                return
            what = rng.choice(("kill", "leader", "inside", "drop", "compact"))
            if what == "drop":
                self.counts["watches dropped"] += env.api.faults.drop_watches()
            elif what == "compact":
                env.api.faults.compact()
                self.counts["compactions"] += 1
            elif what == "inside":
                if not any(not r.fired for r in env.rules):
                    env.kill_at(rng.choice(POINTS))
                    self.counts["kill rules armed"] += 1
            else:
                live = env.live()
                target = env.leader() if what == "leader" else (rng.choice(live) if live else None)
                if target is not None and len(live) == 2:  # one pod always serves
                    env.kill(target, "the leader" if what == "leader" else "at random")
            await self.restart_dead()

    async def restart_dead(self, delay: float = 1.0) -> None:
        env = self.env
        alive = {p.identity for p in env.live()}
        for identity in ("bimguard-webhook-0", "bimguard-webhook-1"):
            if identity not in alive:
                await asyncio.sleep(delay)
                await env.restart(identity)

    async def watch_leader(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            leader = self.env.leader()
            name = leader.identity if leader else ""
            if name and (not self.leaders or self.leaders[-1] != name):
                self.leaders.append(name)
            await asyncio.sleep(0.1)


async def amain(args: argparse.Namespace) -> int:
    load_before = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fault-run-") as tmp:
        try:
            async with fault_env(Path(tmp), nodes=args.nodes, seed=args.seed) as env:
                return await run(env, args, load_before, started)
        except TimeoutError as exc:
            print(f"fault_run: did not converge: {exc}", file=sys.stderr)
            return 1


async def run(env: FaultEnv, args: argparse.Namespace, load_before: tuple[float, ...], started: float) -> int:
    await env.start_pod("bimguard-webhook-0")
    await env.start_pod("bimguard-webhook-1")
    await env.register()
    await env.until(env.leader, 20, "a leader")
    env.start_flipping()
    r = Run(env, args)
    stop = asyncio.Event()
    leader_watch = asyncio.create_task(r.watch_leader(stop))
    rng = random.Random(args.seed + 1)
    added: list[tuple[str, str]] = []
    periods: list[str] = []
    t0 = time.monotonic()
    end = t0 + args.seconds
    n = 0

    async def disks() -> None:
        nonlocal n
        while time.monotonic() < end:
            added.extend(await colliding_burst(env, rng, args.disks, f"f{n:03d}"))
            n += 1
            await asyncio.sleep(args.every)

    adder = asyncio.create_task(disks())
    loads = [os.getloadavg()[0]]
    while time.monotonic() < end:
        on = time.monotonic()
        drawn = r.faults_on()
        periods.append(", ".join(drawn) or "none")
        await r.chaos(min(on + args.period / 2, end))
        env.api.faults.clear()
        await r.restart_dead()
        loads.append(os.getloadavg()[0])
        await asyncio.sleep(max(0.0, min(on + args.period, end) - time.monotonic()))
    faulty = time.monotonic() - t0
    await adder
    env.api.faults.clear()
    env.rules.clear()
    await r.restart_dead(0.0)
    await env.stop_flipping()
    t1 = time.monotonic()
    try:
        code, out, err = await env.converge(timeout=args.converge_timeout)
    except TimeoutError:
        leader = env.leader()
        print(f"fault_run: leader {leader.identity if leader else 'none'}; pods "
              f"{[(p.identity, p.dead) for p in env.pods]}", file=sys.stderr)
        for rec in env.records():
            if phase(rec) not in ("Done", "Abandoned", "RolledBack", "Blocked"):
                print(f"fault_run: not final: {rec['metadata']['name']} {rec['spec']['node']}/{rec['spec']['disk']} "
                      f"{rec['metadata'].get('creationTimestamp')} {rec.get('status')}", file=sys.stderr)
        raise
    converged = time.monotonic() - t1
    stop.set()
    await leader_watch
    outcome = check(env.api, env.cluster, env.history, env.watch)
    if code != 0:
        outcome.fail(f"the repair Job exited {code}: {(err.strip().splitlines() or [''])[-1][:300]}")

    recs = env.records()
    skipped: Counter[str] = Counter()
    rewritten = 0
    for pod in env.pods:
        skipped.update({k: int(v) for k, v in pod.skipped().items()})
        rewritten += pod.rewrites()
    kills = Counter(kill_kind(why) for _, why in env.kills)
    rows: list[tuple[str, Any]] = [
        ("seed / nodes / fault time", f"{args.seed} / {args.nodes} / {faulty:.0f} s ({len(periods)} periods of {args.period:g} s)"),
        ("load average (1 min) before, during (min-max)", f"{load_before[0]:.2f}, {min(loads):.2f}-{max(loads):.2f}"),
        ("disks added", len(added)),
        ("faults injected (by the emulator), by code", f"{env.api.faults.injected} ("
                                                         f"{', '.join(f'{k}: {v}' for k, v in sorted(env.api.faults.injected_by_code.items()))})"),
        ("webhook pods killed", f"{len(env.kills)} ({', '.join(f'{k}: {v}' for k, v in sorted(kills.items()))})"),
        ("leaders in turn", " -> ".join(r.leaders)),
        ("watches dropped / compactions", f"{r.counts['watches dropped']} / {r.counts['compactions']}"),
        ("reviews rewritten by the webhook", rewritten),
        ("reviews skipped, by reason", ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none"),
        ("records", ", ".join(f"{k} {v}" for k, v in sorted(Counter(
            f"{x['spec']['origin']} {phase(x)}" for x in recs).items()))),
        ("repaired by the Job", sum(1 for x in recs if x["spec"]["origin"] == "job" and phase(x) == "Done")),
        ("converged after the faults (records, disks, repair, claims)", f"{converged:.1f} s"),
        ("UUID changes / cfg replaced / cfg absent", f"{outcome.figures['uuid_changes']} / "
                                                     f"{outcome.figures['cfg_replaced']} / {len(env.watch.absences())}"),
        ("Longhorn crashes", len(env.cluster.crashes)),
        ("wall time", f"{time.monotonic() - started:.0f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.verbose:
        for i, p in enumerate(periods):
            print(f"  period {i}: {p}")
    if outcome.violations:
        for v in outcome.violations:
            print(f"VIOLATION: {v}")
        return 1
    print(f"fault_run: every outcome holds ({len(added)} disks, {len(env.kills)} kills, "
          f"{env.api.faults.injected} faults)")
    return 0


def kill_kind(why: str) -> str:
    for start, kind in (("after its claim", "after the claim"), ("after its record", "after the record"),
                        ("with its rewrite answer", "before answering")):
        if why.startswith(start):
            return kind
    return why


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long faults come and go (default 10)")
    ap.add_argument("--nodes", type=int, default=10, help="Longhorn nodes, one disk each to start (default 10)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the faults, the disks and the emulator (default 1)")
    ap.add_argument("--period", type=float, default=20.0,
                    help="seconds per fault period: faults on for the first half (default 20)")
    ap.add_argument("--disks", type=int, default=4, help="colliding disks per burst (default 4)")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between bursts (default 5)")
    ap.add_argument("--chaos-every", type=float, default=3.0,
                    help="mean seconds between kills, dropped watches, compactions while faults are on (default 3)")
    ap.add_argument("--converge-timeout", type=float, default=300.0, help="seconds for each convergence step")
    ap.add_argument("--verbose", action="store_true", help="also print each period's faults, and warnings")
    ap.add_argument("--check", action="store_true",
                    help="~10 s of faults on 6 nodes with short periods: the test suite's run")
    args = ap.parse_args()
    if args.check:
        args.nodes, args.period, args.disks, args.every, args.chaos_every = 6, 4.0, 4, 2.0, 1.0
        args.converge_timeout = 60.0
        args.seconds = 10.0
    else:
        args.seconds = args.minutes * 60
    if args.nodes < 3 or args.disks < 2:
        ap.error("needs at least 3 nodes and 2 disks per burst")
    # The product's and the emulator's logs would drown the figures: faults make them talk.
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.CRITICAL)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(amain(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
