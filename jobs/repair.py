"""`bimguard repair`: fix the collisions a cluster already has, one disk of each pair at a time.

Without --apply it prints the plan, step by step for each disk, and changes nothing. With --apply
it carries the plan out on the live cluster (jobs/repair_runner.py; the order and its reasons are
in bimguard/repair/steps.py), one repair at a time (a Lease), every change recorded first in a
DiskRewrite record (`kubectl get diskrewrites -n <namespace>`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from typing import Any, TextIO

from bimguard.decode import InputError
from bimguard.inventory import Inventory
from bimguard.repair import steps
from bimguard.repair.world import World
from jobs import signals
from jobs.args import add_rewriter_pod_arguments, positive_float, positive_int, seconds

EXIT_OK, EXIT_WORK, EXIT_ERROR, EXIT_UNFINISHED = 0, 1, 2, 3
SCHEMA_VERSION = 1

EPILOG = """\
what it does, for each disk to regenerate (the plan of `bimguard scan`):
  record it (a DiskRewrite keeps both UUIDs and the disk's original scheduling flags) and claim
  a new, unused prefix; turn scheduling off (on every disk of the run first); delete the replicas
  stuck waiting for a backing image on it and its stuck backing-image entries (symptoms, not
  data); check what is left (a read-only pod lists the disk's directories); drain what holds
  data through Longhorn's eviction (only with --evict); change the UUID in the Node status, then
  in longhorn-disk.cfg (a short-lived pod on the node); wait for Longhorn to report the disk
  Ready; put the scheduling flags back; verify.

sources:
  live                   in-cluster configuration, else --kubeconfig/--context (or $KUBECONFIG)
  --from-dump / --support-bundle   show the plan of an offline copy (no --apply)

exit codes:
  0  nothing to do, or every planned disk repaired and verified
  1  (without --apply) there is work to do
  2  error: bad input, cluster unreachable, missing permission, refused preflight, another repair running
  3  some disks blocked, pending or rolled back (see the report; the records say why);
     0 instead with --exit-zero-on-unfinished

Rebuilds are bounded by Longhorn's own setting concurrent-replica-rebuild-per-node-limit;
--max-parallel bounds how many disks evict at once. A disk whose eviction has not finished when
--timeout runs out stays as it is (still evicting, scheduling off) and the next run continues it.
"""

def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--from-dump", metavar="PATH", help="show the plan for a kubectl dump (as `scan` reads it)")
    src.add_argument("--support-bundle", metavar="PATH", help="show the plan for a Longhorn support bundle")
    p.add_argument("--apply", action="store_true", help="carry the plan out on the live cluster (default: only show it)")
    p.add_argument("--evict", action="store_true",
                   help="drain disks that hold data through Longhorn's eviction first (default: leave them Blocked); "
                        "needs a maintenance window: detached volumes are attached, replicas rebuild over the network")
    p.add_argument("--only", action="append", default=[], metavar="PREFIX|NODE/DISK",
                   help="limit the run to these collision groups or disks (repeatable; default: all)")
    p.add_argument("--max-parallel", type=positive_int, default=1, metavar="N",
                   help="disks evicting at the same time (default %(default)s)")
    p.add_argument("--timeout", type=seconds, default=1800.0, metavar="DURATION",
                   help="the run's budget, e.g. 90s, 15m, 1h30m (default 30m)")
    p.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig (default: in-cluster, $KUBECONFIG)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("-n", "--longhorn-namespace", default="longhorn-system", help="Longhorn's namespace (default %(default)s)")
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE") or "bimguard",
                   help="where records, claims, the Lease and (without --rewriter-namespace) the on-node pods live "
                        "(default $POD_NAMESPACE or %(default)s)")
    p.add_argument("--image", default=os.environ.get("BIMGUARD_IMAGE") or "bimguard",
                   help="image of the on-node pods (default $BIMGUARD_IMAGE or %(default)s)")
    p.add_argument("--service-account", default="bimguard-rewriter",
                   help="service account of the on-node pods, in --rewriter-namespace (default %(default)s)")
    add_rewriter_pod_arguments(p)
    p.add_argument("--longhorn-version", metavar="vX.Y.Z",
                   help="the Longhorn version, when the cluster does not say it (required with --apply then)")
    p.add_argument("--identity", default=os.environ.get("BIMGUARD_REPAIR_IDENTITY") or os.environ.get("POD_NAME") or "",
                   help="who holds the repair Lease (default $BIMGUARD_REPAIR_IDENTITY, $POD_NAME or the hostname); "
                        "a retried Job that keeps its identity takes its own Lease over at once")
    p.add_argument("--lease-duration", type=positive_float, default=30.0, metavar="SECONDS", help=argparse.SUPPRESS)
    p.add_argument("--poll-interval", type=positive_float, default=2.0, metavar="SECONDS",
                   help="seconds between passes over the cluster (default %(default)s)")
    p.add_argument("--pod-start-timeout", type=positive_float, default=120.0, metavar="SECONDS",
                   help="how long an on-node pod may stay Pending on a Ready node (default %(default)s)")
    p.add_argument("--pod-deadline", type=positive_int, default=120, metavar="SECONDS",
                   help="activeDeadlineSeconds of the on-node rewriter pods; an identity change starts only with "
                        "--pod-start-timeout plus this much of --timeout left (default %(default)s)")
    p.add_argument("--exit-zero-on-unfinished", action="store_true",
                   help="exit 0 instead of 3 when disks stay blocked, pending or rolled back (the report and the "
                        "records still say so); for a Helm hook that must not fail the release over them")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="report format (default %(default)s)")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="progress lines: plain text, or one JSON object per line for a Job's logs (default %(default)s)")


# ---------------------------------------------------------------------------- the plan (no --apply)
def plan_lines(findings: Any, victims: list[Any], evict: bool, world: World | None) -> list[str]:
    """Each disk's steps. Stuck replicas and backing-image entries come from the live objects when
    there are some, else from the scan's symptoms (a dump or bundle)."""
    lines: list[str] = []
    for v in victims:
        if world is not None:
            stuck = sorted(r["metadata"]["name"] for r in steps.stuck_replicas(world, v.node, v.uuid)[0])
            entries = sorted(bi["metadata"]["name"] for bi in steps.stuck_spec_entries(world, v.uuid))
            flags = world.disk_spec(v.node, v.disk) or {}
            now = f"; now allowScheduling={str(flags.get('allowScheduling')).lower()}"
        else:
            mine = [s for s in findings.symptoms if s.node == v.node and s.disk == v.disk]
            stuck = sorted({r for s in mine for r in s.stuck_replicas})
            entries = sorted({s.backing_image for s in mine})
            now = ""
        lines.append(f"{v.node}/{v.disk} ({v.uuid}, prefix {v.prefix}; {v.keep} keeps it)")
        todo = [
            f"record it (both UUIDs, its scheduling flags{now}) and claim a new, unused prefix",
            "turn scheduling off (allowScheduling=false), on every disk of the run before anything else",
            f"delete {len(stuck)} replica(s) stuck waiting for their backing image: {', '.join(stuck)}" if stuck else "",
            f"delete the disk from {len(entries)} backing image(s) that never got a copy there: {', '.join(entries)}"
            if entries else "",
            "list its replicas/ and backing-images/ directories with a read-only pod; leftovers block it",
            ("a clone (same whole UUID as the disk kept): never evicted, blocked if it holds anything" if v.clone else
             (f"holds {v.holds}: " + ("request Longhorn's eviction (evictionRequested=true) and wait until drained"
                                       if evict else "BLOCKED (run with --evict to drain it)")) if v.holds else ""),
            "change diskUUID in the Node status (a JSON Patch testing the old UUID), then rewrite longhorn-disk.cfg "
            "(a compare-and-swap by a pod on the node)",
            "wait until Longhorn reports it Ready with the new UUID; put its scheduling flags back; verify",
        ]
        lines += [f"  {i}. {t}" for i, t in enumerate((t for t in todo if t), 1)]
    return lines


# ---------------------------------------------------------------------------- run
def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    return signals.run(run_async(args, out, err))


async def run_async(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`run` inside a running event loop (the demo)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        return await _main(args, out, err)
    except _Error as e:
        print(f"bimguard repair: {e}", file=err)
        return EXIT_ERROR


class _Error(Exception):
    pass


async def _main(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from bimguard.findings import analyze
    from jobs.repair_runner import Options, RepairError, Runner, plan_victims

    if (args.from_dump or args.support_bundle) and args.apply:
        raise _Error("--apply acts on a live cluster; --from-dump and --support-bundle only show the plan")
    if args.from_dump or args.support_bundle:
        findings = analyze(_offline(args))
        victims = plan_victims(findings, tuple(args.only))
        if args.only and not victims:
            raise _Error(f"--only {' '.join(args.only)} matches no disk the plan would regenerate")
        return _print_plan(args, out, plan_lines(findings, victims, args.evict, None), len(victims), _unread(findings))
    from bimguard.kube import api_client, count_requests
    from bimguard.rewrite.engine import Settings

    try:
        client = await api_client(args.kubeconfig, args.context)
    except Exception as exc:  # the loader raises anything on a broken file
        raise _Error(f"cannot reach the cluster: {_one_line(exc)}") from None
    calls = count_requests(client)
    started = time.monotonic()
    progress = _Progress(err, args.log_format, started)
    settings = Settings(pod_start_timeout=args.pod_start_timeout, service_account=args.service_account,
                        active_deadline=args.pod_deadline, pod_namespace=args.rewriter_namespace or args.namespace,
                        priority_class_name=args.rewriter_priority_class,
                        image_pull_secrets=tuple(args.rewriter_image_pull_secret), tolerations=args.rewriter_tolerations)
    opts = Options(namespace=args.namespace, longhorn_namespace=args.longhorn_namespace, apply=args.apply,
                   evict=args.evict, only=tuple(args.only), max_parallel=args.max_parallel, timeout=args.timeout,
                   image=args.image, longhorn_version=args.longhorn_version, identity=args.identity,
                   lease_duration=args.lease_duration, poll=args.poll_interval, settings=settings)
    runner = Runner(client, opts, progress.line)
    try:
        try:
            world, findings, victims = await runner.plan()
        except Exception as exc:
            raise _Error(f"cannot read Longhorn's objects in namespace {args.longhorn_namespace}: {_one_line(exc)}") from None
        if not world.nodes:
            raise _Error(f"no nodes.longhorn.io in namespace {args.longhorn_namespace}: wrong namespace or cluster?")
        if args.only and not victims:
            raise _Error(f"--only {' '.join(args.only)} matches no disk the plan would regenerate")
        why = runner.longhorn_verdict(findings.longhorn)
        if why:
            print(f"Nothing to do: {why}.", file=out)
            return EXIT_OK
        unread = _unread(findings)
        if not args.apply:
            return _print_plan(args, out, plan_lines(findings, victims, args.evict, world), len(victims), unread)
        runner.report.skipped.extend(f"could not be read, so not looked at: {u}" for u in unread)
        runner.report.stuck_before = sorted({s.backing_image for s in findings.symptoms})
        report = await runner.apply(world, victims)  # also continues what a killed run left
        report.elapsed = time.monotonic() - started
        _judge_backing_images(report, await runner.snapshot())
        report.reads, report.writes, report.checks = calls.reads, calls.writes, calls.checks
    except RepairError as exc:
        raise _Error(str(exc)) from None
    finally:
        await client.close()
    return _print_report(args, out, report)


def _judge_backing_images(report: Any, world: World) -> None:
    """Backing images are judged once, after the run, with the scan's active-collision rule: one
    stuck on several disks recovers only when the last of them is done."""
    from bimguard.findings import analyze

    stuck = sorted({s.backing_image for s in analyze(world.inventory).symptoms})
    report.still_stuck = stuck
    report.recovered = sorted(set(report.stuck_before) - set(stuck))


def _offline(args: argparse.Namespace) -> Inventory:
    from bimguard.sources.bundle import read_bundle
    from bimguard.sources.dump import read_dump

    try:
        return read_dump(args.from_dump) if args.from_dump else read_bundle(args.support_bundle)
    except InputError as e:
        raise _Error(str(e)) from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _Progress:
    """Progress on standard error: on a terminal, a live view (one row per disk, redrawn in place);
    otherwise a line per disk and phase; JSON lines with --log-format json (a Job's logs)."""

    def __init__(self, err: TextIO, fmt: str, started: float) -> None:
        self.err, self.fmt, self.started = err, fmt, started
        self.live = fmt == "text" and err.isatty()
        self.rows: dict[str, tuple[float, str, str]] = {}  # disk -> (time, phase, detail), in first-seen order
        self.drawn = 0  # rows of the live view on screen

    def line(self, disk: str, phase: str, detail: str) -> None:
        t = time.monotonic() - self.started
        if self.fmt == "json":
            print(json.dumps({"time": round(t, 3), "disk": disk, "phase": phase, "msg": detail}), file=self.err, flush=True)
        elif self.live:
            self.rows[disk] = (t, phase, detail)
            self._redraw()
        else:
            print(f"[{t:7.1f}s] {disk:<40} {phase:<10} {detail}", file=self.err, flush=True)

    def _redraw(self) -> None:
        size = shutil.get_terminal_size((120, 40))
        rows = list(self.rows.items())
        hidden = max(0, len(rows) - (size.lines - 2))
        if hidden:  # the disks most recently heard from, and how many more there are
            rows = sorted(rows, key=lambda kv: kv[1][0])[hidden:]
        lines = [f"[{t:7.1f}s] {disk:<40} {phase:<10} {detail}"[: size.columns - 1]
                 for disk, (t, phase, detail) in rows]
        if hidden:
            lines.append(f"... and {hidden} more disk(s)")
        # Back to the view's first row, clear to the end of the screen, draw it again.
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.err.write(up + "\x1b[J" + "\n".join(lines) + "\n")
        self.err.flush()
        self.drawn = len(lines)


def _unread(findings: Any) -> list[str]:
    """The objects the scan could not use (kind, name: why)."""
    return [f"{s.kind} {s.name}: {s.error}" for s in findings.skipped]


def _print_plan(args: argparse.Namespace, out: TextIO, lines: list[str], count: int, unread: list[str]) -> int:
    """Exit 1 with work to do; else 0, or 3 when objects could not be read (one of them could be
    a colliding disk: nothing to do cannot be concluded)."""
    code = EXIT_WORK if count else EXIT_UNFINISHED if unread else EXIT_OK
    if args.output == "json":
        print(json.dumps({"schemaVersion": SCHEMA_VERSION, "mode": "plan", "exitCode": code, "planned": count,
                          "plan": lines, "skipped": unread}, indent=2), file=out)
        return code
    if count == 0 and not unread:
        print("Nothing to do: no disk shares its BIM name prefix with another.", file=out)
    elif count == 0:
        print(f"Nothing to do among the objects read, but {len(unread)} could not be read (see `skipped`): "
              "fix them and run again.", file=out)
    else:
        print(f"Plan: {count} disk(s) to regenerate" + ("" if args.evict else " (without --evict: disks holding data "
                                                                          "are left Blocked)"), file=out)
        print("\n".join(lines), file=out)
        print("Run again with --apply to carry it out.", file=out)
    for u in unread:
        print(f"skipped: {u}", file=out)
    return code


def _exit_code(report: Any) -> int:
    phases = [o.phase for o in report.outcomes]
    if report.skipped or any(p != steps.DONE for p in phases):
        return EXIT_UNFINISHED
    return EXIT_OK


def _print_report(args: argparse.Namespace, out: TextIO, report: Any) -> int:
    code = _exit_code(report)
    unfinished = code == EXIT_UNFINISHED
    if args.output == "json":
        doc = {
            "schemaVersion": SCHEMA_VERSION, "mode": "apply", "exitCode": code,
            "longhorn": {"version": report.longhorn.version if report.longhorn else None},
            "disks": [asdict(o) for o in report.outcomes], "skipped": report.skipped,
            "backingImages": {"recovered": report.recovered, "stillStuck": report.still_stuck},
            "api": {"reads": report.reads, "writes": report.writes, "checks": report.checks}, "elapsedSeconds": round(report.elapsed, 1),
        }
        print(json.dumps(doc, indent=2), file=out)
        return EXIT_OK if unfinished and args.exit_zero_on_unfinished else code
    if not report.outcomes and not report.skipped:
        print("Nothing to do: no disk shares its BIM name prefix with another.", file=out)
        return code
    width = max([len(f"{o.node}/{o.disk}") for o in report.outcomes] + [10])
    print(f"{'DISK':<{width}}  {'PHASE':<10}  {'OLD UUID':<36}  {'NEW UUID':<36}  DETAIL", file=out)
    for o in report.outcomes:
        print(f"{o.node + '/' + o.disk:<{width}}  {o.phase:<10}  {o.old:<36}  {o.new:<36}  {o.detail}", file=out)
    for s in report.skipped:
        print(f"skipped: {s}", file=out)
    if report.still_stuck:
        print(f"Backing images still stuck: {', '.join(report.still_stuck)}", file=out)
    done = sum(1 for o in report.outcomes if o.phase == steps.DONE)
    print(f"Result: {done} of {len(report.outcomes)} disk(s) repaired in {report.elapsed:.0f}s "
          f"({report.reads} API reads, {report.writes} writes)" +
          ("" if code == EXIT_OK else "; see the records: kubectl get diskrewrites -n " + args.namespace), file=out)
    return EXIT_OK if unfinished and args.exit_zero_on_unfinished else code
