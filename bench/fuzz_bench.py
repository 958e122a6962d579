#!/usr/bin/env python3
"""Bounded fuzzing run: generated AdmissionReviews against the real webhook server over HTTPS, and
generated dumps and support bundles against `bimguard scan`; counts, failures and rate.

Targets (each --count inputs, default 100,000):
  webhook  well-formed reviews (~80 %), malformed bodies (~20 %) and a few over the 6 MiB cap,
           POSTed one at a time over one kept-alive verified TLS connection to a real replica
           (tests/fuzz/webhook_target.py: emulated API server, index by list+watch, the HTTPS
           server); oracle: 200 allowed with the request's uid (any patch applies and gives only
           first-recorded disks a free prefix), 400 with one line, 413; no 500, no traceback or
           error in the logs, no internal-error count, no hang (120 s socket timeout). The
           emulator's claims and records are cleared every --reset reviews.
  dump     `bimguard scan --from-dump` (files, directories, standard input) in-process through the
           CLI's entry point;
  bundle   `bimguard scan --support-bundle` (zips, damaged zips, directories, non-bundles);
           oracle for both: exit 0/1 with a schema-valid report and a quiet standard error, or
           exit 2 with exactly one line; never a traceback or "internal error".
  atheris  (optional, --atheris SECONDS) coverage-guided: atheris mutates bytes fed to the review
           decoder + admission pre-checks and to the dump decoder in-process, counting inputs that
           raise anything but the documented errors. Skipped with a message when atheris is not
           installed (pip install atheris; wheels for CPython 3.11 on x86_64/aarch64 Linux).

Inputs come from the hypothesis strategies of tests/fuzz/ (the suite runs a few hundred of the
same), in chunks of --chunk examples, each chunk with its own seed (--seed + chunk number), so a
run is reproducible and hypothesis's bookkeeping stays small. The first failing input of each
distinct problem is written under --out (default: a temporary directory) and the run exits 1.

    .venv/bin/python bench/fuzz_bench.py                          # 100,000 per target (~1 h on 2 cores)
    .venv/bin/python bench/fuzz_bench.py --count 2000 --targets dump,bundle
    .venv/bin/python bench/fuzz_bench.py --count 0 --atheris 120  # only the coverage-guided run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass
class Tally:
    target: str
    inputs: int = 0
    outcomes: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def fail(self, problem: str, sample: bytes | str, out: Path) -> None:
        key = problem.split(":")[0][:120]
        self.failures[key] += 1
        if key not in self.first:
            path = out / f"{self.target}-{len(self.first) + 1}.bin"
            path.write_bytes(sample if isinstance(sample, bytes) else sample.encode("utf-8", "replace"))
            self.first[key] = f"{problem[:400]} (input: {path})"

    def line(self) -> str:
        rate = self.inputs / self.seconds if self.seconds else 0.0
        return (f"{self.target:8} {self.inputs:>8,} inputs  {sum(self.failures.values()):>6,} failing  "
                f"{self.seconds:8.1f} s  {rate:8.1f}/s  outcomes {dict(sorted(self.outcomes.items(), key=lambda kv: str(kv[0])))}")


def run_chunks(strategy: Any, count: int, chunk: int, seed: int, body: Callable[[Any], None],
               deadline: float | None, enough: Callable[[], bool] | None = None) -> None:
    """Draw `count` examples from `strategy` in chunks of `chunk`, each chunk with its own seed,
    and more chunks until `enough()` (inputs counted with their variants)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    done, n = 0, 0
    errors: list[Exception] = []
    while done < count or (enough is not None and not enough()):
        size = min(chunk, count - done) if done < count else max(1, chunk // 40)  # topping up

        @hseed(seed + n)
        @settings(max_examples=size, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def one(drawn: Any) -> None:
            try:
                body(drawn)
            except Exception as err:  # noqa: BLE001 - counted, and the run goes on
                print(f"fuzz_bench: the check itself raised {type(err).__name__}: {err}", file=sys.stderr)
                errors.append(err)

        one()
        done += size
        n += 1
        if deadline is not None and time.monotonic() > deadline:
            break
    if errors:
        raise SystemExit(f"fuzz_bench: the checks raised {len(errors)} time(s); first: {errors[0]!r}")


def fuzz_webhook(args: argparse.Namespace, out: Path) -> Tally:
    from hypothesis import strategies as st

    from tests.fuzz.review_strategies import malformed_reviews, oversized_reviews, well_formed_reviews
    from tests.fuzz.webhook_target import ServedWebhook, check_answer

    from tests.fuzz.variants import ANY_BODY, damage_bytes, respin_review
    from tests.fuzz.webhook_target import WELL_FORMED

    tally = Tally("webhook")
    wf, mal = well_formed_reviews(max_disks=8, max_extra=2, big=True), malformed_reviews()
    mix = st.integers(0, 9).flatmap(lambda k: wf if k < 8 else mal)
    rng = random.Random(args.seed)
    with ServedWebhook(Path(tempfile.mkdtemp(prefix="fuzz-webhook-"))) as hook:
        hook.problems_logged()  # start-up logs
        start = time.monotonic()

        def body(drawn: Any) -> None:
            doc, data, expect = drawn
            check(doc, data, expect)
            for _ in range(args.variants if len(data) < 1 << 18 else 0):  # cheap variants that keep what the oracle needs
                if expect is WELL_FORMED:
                    vdoc, vdata = respin_review(doc, rng)
                    check(vdoc, vdata, WELL_FORMED)
                else:
                    check(None, damage_bytes(data, rng), ANY_BODY)

        def check(doc: Any, data: bytes, expect: Any) -> None:
            if tally.inputs and tally.inputs % 1000 == 0 and oversized:  # a few bodies over the cap
                doc, data, expect = oversized.pop()
            if expect.well_formed:  # the oldObject stored as the Node, as kube-apiserver's reviews are
                doc, data = hook.as_stored(doc, data)
            errors = hook.metric("bimguard_admission_skipped_total", reason="internal_error")
            try:
                status, ctype, answer = hook.post(data)
            except Exception as err:  # noqa: BLE001 - a hang (socket timeout) or a dropped connection
                tally.inputs += 1
                tally.outcomes["no answer"] += 1
                tally.fail(f"no answer: {type(err).__name__}: {err}", data, out)
                return
            tally.inputs += 1
            tally.outcomes[status] += 1
            problems = check_answer(doc, data, expect, status, ctype, answer) + hook.problems_logged()
            if hook.metric("bimguard_admission_skipped_total", reason="internal_error") != errors:
                problems.append("counted as an internal error")
            for p in problems:
                tally.fail(p, data, out)
            if tally.inputs % args.reset == 0:
                hook.reset()
            if tally.inputs % 10000 == 0:
                print(f"  webhook: {tally.inputs:,} ({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)

        oversized: list[Any] = []
        run_chunks(oversized_reviews(), max(args.count // 1000, 1) if args.count else 0, 1000, args.seed,
                   oversized.append, None)
        oversized.reverse()
        deadline = time.monotonic() + args.max_seconds if args.max_seconds else None
        run_chunks(mix, -(-args.count // (1 + args.variants)), args.chunk, args.seed, body, deadline,
                   lambda: tally.inputs >= args.count)
        tally.seconds = time.monotonic() - start
        for o in ("unchanged", "rewritten", "blocked"):
            tally.outcomes[o] = hook.replica.metrics.reviews.outcomes[o]
        for fam in hook.replica.metrics.registry.collect():
            for s in fam.samples:
                if s.name == "bimguard_admission_skipped_total" and s.value:
                    tally.outcomes[f"skipped:{s.labels['reason']}"] = int(s.value)
        if not tally.outcomes["rewritten"] and tally.inputs >= 10_000:  # never reached the rewrite path: vacuous
            tally.fail("no review was rewritten: the generated reviews never reached the rewrite path", b"", out)
    return tally


def fuzz_scan(target: str, args: argparse.Namespace, out: Path) -> Tally:
    from tests.fuzz.scan_strategies import bundle_inputs, dump_inputs
    from tests.fuzz.scan_target import scan_problems

    tally = Tally(target)
    scratch = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    start = time.monotonic()

    from tests.fuzz.variants import damage_input

    rng = random.Random(args.seed)

    def body(drawn: Any) -> None:
        inp, damage = drawn if target == "bundle" else (drawn, None)
        check(inp, damage)
        for _ in range(args.variants):  # the same files, one damaged (the oracle holds for any input)
            check(damage_input(inp, rng), damage)

    def check(inp: Any, damage: Any) -> None:
        code, problems = scan_problems(inp, scratch / "in", damage)
        tally.inputs += 1
        tally.outcomes[code] += 1
        for p in problems:
            tally.fail(p, repr(inp).encode() + b"\ndamage=" + repr(damage).encode(), out)
        if tally.inputs % 10000 == 0:
            print(f"  {target}: {tally.inputs:,} ({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)

    deadline = time.monotonic() + args.max_seconds if args.max_seconds else None
    run_chunks(dump_inputs() if target == "dump" else bundle_inputs(), -(-args.count // (1 + args.variants)),
               args.chunk, args.seed, body, deadline, lambda: tally.inputs >= args.count)
    tally.seconds = time.monotonic() - start
    return tally


def fuzz_atheris(seconds: float, out: Path) -> list[Tally] | str:
    """Coverage-guided, in-process, in a child process per entry point (atheris owns the process)."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "atheris is not installed (pip install atheris): coverage-guided run skipped"
    import subprocess

    tallies = []
    for entry in ("review", "dump"):
        corpus = out / f"atheris-{entry}-corpus"
        corpus.mkdir(exist_ok=True)
        start = time.monotonic()
        proc = subprocess.run([sys.executable, str(REPO / "bench/fuzz_atheris.py"), entry, str(corpus),
                               f"-max_total_time={int(seconds)}", "-print_final_stats=1", f"-artifact_prefix={out}/",
                               "-rss_limit_mb=2048", "-timeout=20"],
                              capture_output=True, text=True, cwd=REPO)
        t = Tally(f"at-{entry}")
        t.seconds = time.monotonic() - start
        for line in proc.stderr.splitlines():
            if line.startswith("stat::number_of_executed_units:"):
                t.inputs = int(line.split(":")[-1])
            if line.startswith("stat::new_units_added:"):
                t.outcomes["corpus"] = int(line.split(":")[-1])
        if proc.returncode != 0:
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-15:]
            t.failures["crash"] += 1
            t.first["crash"] = "\n".join(tail)
        tallies.append(t)
    return tallies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000, help="inputs per target (default %(default)s)")
    ap.add_argument("--targets", default="webhook,dump,bundle", help="comma-separated (default %(default)s)")
    ap.add_argument("--seed", type=int, default=20241204, help="first chunk's seed (default %(default)s)")
    ap.add_argument("--chunk", type=int, default=2000, help="examples per hypothesis run (default %(default)s)")
    ap.add_argument("--variants", type=int, default=4,
                    help="cheap variants after each hypothesis example (tests/fuzz/variants.py; default %(default)s)")
    ap.add_argument("--reset", type=int, default=5000,
                    help="webhook: clear the emulator's claims and records every N reviews (default %(default)s)")
    ap.add_argument("--max-seconds", type=float, default=0, help="stop each target after this long (0: no limit)")
    ap.add_argument("--atheris", type=float, default=0, metavar="SECONDS",
                    help="also run the coverage-guided fuzzer this long per entry point (default: not)")
    ap.add_argument("--out", help="where failing inputs and the atheris corpus go (default: a temporary directory)")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fuzz-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    import logging

    logging.getLogger("bimguard").setLevel(logging.INFO)
    print(f"fuzz_bench: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs ({_cpu_model()}), "
          f"Python {platform.python_version()}, seed {args.seed}, failing inputs -> {out}", flush=True)
    tallies: list[Tally] = []
    notes: list[str] = []
    for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
        if args.count <= 0:
            break
        if target == "webhook":
            tallies.append(fuzz_webhook(args, out))
        elif target in ("dump", "bundle"):
            tallies.append(fuzz_scan(target, args, out))
        else:
            print(f"fuzz_bench: unknown target {target!r} (webhook, dump, bundle)", file=sys.stderr)
            return 2
        print(tallies[-1].line(), flush=True)
    if args.atheris:
        result = fuzz_atheris(args.atheris, out)
        if isinstance(result, str):
            notes.append(result)
        else:
            tallies += result
            for t in result:
                print(t.line(), flush=True)
    print()
    for t in tallies:
        for key, n in t.failures.most_common():
            print(f"FAIL {t.target}: {n} x {t.first.get(key, key)}")
    for n in notes:
        print(f"note: {n}")
    failing = sum(sum(t.failures.values()) for t in tallies)
    print(f"fuzz_bench: {sum(t.inputs for t in tallies):,} inputs, {failing:,} failing")
    return 1 if failing else 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
