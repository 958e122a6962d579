#!/usr/bin/env python3
"""What matchConditions spare Longhorn: Node status writes sent to the webhook, and the latency a
routine write pays while the webhook is unreachable.

Three measurements, all against the API server emulator (bimguard.sim), whose admission evaluates
matchConditions as kube-apiserver does (bimguard/sim/admission.py):

  latency  One Longhorn Node (3 filesystem disks, the shape longhorn-manager v1.7.2 writes) and
           a routine status write (storageAvailable and a probe time move; every disk already has
           its UUID), PUT to nodes/status over loopback HTTP, timed at the client, in turn with:
             none      no webhook configuration at all (the floor);
             ignore    bimguard's configuration WITHOUT matchConditions (Kubernetes < 1.28), the
                       webhook unreachable: its Service leads to a socket that accepts TCP but
                       never answers the TLS handshake (what a NetworkPolicy drop or a hung pod
                       looks like), so each call waits timeoutSeconds (the chart's 5 s), then
                       failurePolicy Ignore admits the write;
             match     the same configuration WITH matchConditions, same unreachable webhook,
                       once per CEL implementation installed (cel-expr-python = cel-cpp;
                       cel-python); kube-apiserver itself uses cel-go;
             first     with matchConditions, a write that first-records a disk: it is sent, and
                       waits like `ignore` (the writes the webhook exists for).
  counts   A simulated Longhorn v1.7.2 cluster (--nodes x --disks-per-node) with one real webhook
           replica (tests/webhook/harness.py), --new-disks new disks added in waves, then
           --rounds rounds of routine churn (--churn-mib of data lands on every disk, then goes:
           every node's monitor writes the new storageAvailable); with and without matchConditions. Counted by the emulator:
           Node status writes admission saw, writes sent to the webhook, writes skipped by
           matchConditions, and (ground truth, for every write the webhook's rules matched) writes
           that first-record a disk by the webhook's own trigger (webhook/review.py decode +
           bimguard.decision.first_recorded), first-records not sent (must be 0) and routine
           writes sent.
  e2e      The same counters read from the emulator during tests/e2e/test_prevention.py's 200-disk
           burst test (two webhook replicas, 200 colliding disks, rewrites, rewriter pods), run
           unchanged with and without matchConditions (each run is a pytest child process).

    .venv/bin/python bench/match_conditions_bench.py                 # latency + counts (~1 min)
    .venv/bin/python bench/match_conditions_bench.py --e2e           # + the e2e burst test twice (~3-5 min)
    .venv/bin/python bench/match_conditions_bench.py --only latency --writes 500
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from bimguard.decision import first_recorded  # noqa: E402
from bimguard.sim import admission as sim_admission  # noqa: E402
from bimguard.sim.apiserver import ApiServer  # noqa: E402
from webhook import registration, scope  # noqa: E402
from webhook import review as wire  # noqa: E402

LONGHORN_NS = "longhorn-system"
STATUS_WRITES = "longhorn.io/nodes/status UPDATE"
HOOK = scope.WEBHOOK_NAME
U = ["0a1b2c3d-1111-4111-8111-111111111111", "4e5f6a7b-2222-4222-8222-222222222222",
     "8c9d0e1f-3333-4333-8333-333333333333", "d2e3f4a5-4444-4444-8444-444444444444"]


class SetupError(Exception):
    pass


# --------------------------------------------------------------------------- ground truth


def is_first_record(obj: dict[str, Any] | None, old: dict[str, Any] | None) -> bool:
    """The webhook's own trigger on this write (what Admission.handle decides on)."""
    body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": "x", "object": obj, "oldObject": old}}).encode()
    try:
        req = wire.decode(body).request
    except wire.BadReview:
        return False
    assert req is not None
    name = ((obj or {}).get("metadata") or {}).get("name", "")
    return bool(first_recorded(name, wire.disk_entries(req.object), wire.disk_entries(req.oldObject)))


def count_first_records(dispatcher: sim_admission.Dispatcher, into: collections.Counter[str]) -> None:
    """Wrap one dispatcher's matchConditions step, which runs for every write the webhook's rules
    and selectors matched: each Node status write is checked against the webhook's trigger, and
    so is what the conditions did with it."""
    inner = dispatcher._conditions_allow

    def conditions_allow(hook: dict[str, Any], attrs: sim_admission.Attributes) -> bool:
        allowed = inner(hook, attrs)
        if hook.get("name") == HOOK and sim_admission.request_key(attrs) == STATUS_WRITES:
            first = is_first_record(attrs.obj, attrs.old)
            into["first-record writes"] += first
            into["first-records not sent"] += first and not allowed
            into["routine writes sent"] += allowed and not first
        return allowed

    dispatcher._conditions_allow = conditions_allow  # type: ignore[method-assign]


COLUMNS = ("status writes", "first-record writes", "sent to the webhook", "skipped by matchConditions",
           "first-records not sent", "routine writes sent")


def summary(counts: collections.Counter[Any], truth: collections.Counter[str]) -> dict[str, int]:
    """"status writes": every Node status write admission saw (some before the webhook was
    registered); the rest counts writes the webhook's rules and namespaceSelector matched."""
    return {"status writes": counts[(STATUS_WRITES, "requests")],
            "first-record writes": truth["first-record writes"],
            "sent to the webhook": counts[(STATUS_WRITES, f"sent {HOOK}")],
            "skipped by matchConditions": counts[(STATUS_WRITES, f"skipped {HOOK}")],
            "first-records not sent": truth["first-records not sent"],
            "routine writes sent": truth["routine writes sent"]}


def print_counts(title: str, rows: dict[str, dict[str, int]]) -> None:
    print(f"\n{title}")
    print(f"  {'':22}" + "".join(f"{c:>{len(c) + 2}}" for c in COLUMNS))
    for name, row in rows.items():
        print(f"  {name:22}" + "".join(f"{row[c]:>{len(c) + 2}}" for c in COLUMNS))


# --------------------------------------------------------------------------- latency


@contextlib.asynccontextmanager
async def blackhole() -> AsyncIterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never speaks: the TLS
    handshake hangs until the caller's deadline."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def ca_pem() -> bytes:
    """A CA certificate for caBundle (nothing will ever present a certificate it signed)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-ca")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def lh_node(name: str, disks: int) -> dict[str, Any]:
    from tests.builders import disk_entry, node

    return node(name, {f"disk-{i}": disk_entry(U[i], f"/mnt/disk-{i}") for i in range(disks)})


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values)) - 1))]


async def latency(args: argparse.Namespace) -> None:
    api = ApiServer()
    await api.start()
    try:
        async with blackhole() as port, aiohttp.ClientSession() as http:
            api.webhook_hosts["bimguard-webhook.bimguard.svc"] = ("127.0.0.1", port)
            n = lh_node("worker-1", 3)
            status = n.pop("status")
            created = api.store.create("longhorn.io/v1beta2/nodes", n)
            current = api.store.update("longhorn.io/v1beta2/nodes", {**created, "status": status}, subresource="status")
            url = f"{api.url}/apis/longhorn.io/v1beta2/namespaces/{LONGHORN_NS}/nodes/worker-1/status"

            async def write(first_record: bool = False) -> float:
                nonlocal current
                body = copy.deepcopy(current)
                disks = body["status"]["diskStatus"]
                for e in disks.values():
                    e["storageAvailable"] -= 4096
                    e["conditions"][0]["lastProbeTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ")
                if first_record:
                    disks.pop("disk-3", None)
                    current = api.store.update("longhorn.io/v1beta2/nodes", body, subresource="status")
                    body = copy.deepcopy(current)
                    body["status"]["diskStatus"]["disk-3"] = copy.deepcopy(body["status"]["diskStatus"]["disk-0"])
                    body["status"]["diskStatus"]["disk-3"]["diskUUID"] = U[3]
                t0 = time.perf_counter()
                async with http.put(url, json=body) as resp:
                    text = await resp.text()
                elapsed = time.perf_counter() - t0
                if resp.status != 200:
                    raise SetupError(f"status write answered {resp.status}: {text[:200]}")
                current = json.loads(text)
                return elapsed

            def configure(kube_version: str | None) -> None:
                for c in api.store.list("admissionregistration.k8s.io/v1/mutatingwebhookconfigurations")[0]:
                    api.store.delete("admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", "",
                                     c["metadata"]["name"])
                if kube_version is None:
                    return
                mwc = registration.mutating_webhook_configuration(
                    name="bimguard", service="bimguard-webhook", namespace="bimguard", longhorn_namespace=LONGHORN_NS,
                    ca_bundle=ca, kube_version=kube_version)
                mwc["webhooks"][0]["timeoutSeconds"] = args.timeout_seconds
                api.store.create("admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", mwc)

            ca = ca_pem()
            results: dict[str, list[float]] = {}
            for _ in range(20):  # warm-up: connections, the CEL compile caches
                await write()
            configure(None)
            results["none (no webhook)"] = [await write() for _ in range(args.writes)]
            configure("v1.27.0")
            print(f"  ignore: {args.slow_writes} writes of up to {args.timeout_seconds} s each ...", flush=True)
            results["ignore (no matchConditions)"] = [await write() for _ in range(args.slow_writes)]
            configure("v1.30.0")
            engines = [e for e in ("cel-expr-python", "cel-python") if args.engine in ("both", e)]
            default_engine = sim_admission.CEL.name
            for engine in engines:
                try:
                    sim_admission.use_cel(engine)
                except ImportError:
                    print(f"  ({engine} is not installed: skipped)")
                    continue
                for _ in range(5):
                    await write()
                results[f"match ({engine})"] = [await write() for _ in range(args.writes)]
            sim_admission.use_cel(default_engine)
            print(f"  first: {args.slow_writes} first-record writes ...", flush=True)
            results["first (sent, waits)"] = [await write(first_record=True) for _ in range(args.slow_writes)]
            counts = api.admission.counts
            print(f"\nrouting: sent {counts[(STATUS_WRITES, f'sent {HOOK}')]}, skipped by matchConditions "
                  f"{counts[(STATUS_WRITES, f'skipped {HOOK}')]} (ignored calls: "
                  f"{sum(1 for _, o in api.admission.calls if o.startswith('ignored'))})")

        floor = statistics.median(results["none (no webhook)"])
        print(f"\nlatency of one Longhorn Node status write (3 disks), webhook unreachable, timeoutSeconds "
              f"{args.timeout_seconds}; client-side, loopback HTTP to the emulator")
        print(f"  {'':32}{'n':>6}{'p50 ms':>11}{'p99 ms':>11}{'max ms':>11}{'added p50 ms':>15}")
        for name, values in results.items():
            ms = [v * 1e3 for v in values]
            print(f"  {name:32}{len(ms):>6}{statistics.median(ms):>11.2f}{percentile(ms, 99):>11.2f}{max(ms):>11.2f}"
                  f"{statistics.median(ms) - floor * 1e3:>15.2f}")
    finally:
        await api.stop()


# --------------------------------------------------------------------------- counts


async def counts_run(args: argparse.Namespace, with_conditions: bool) -> dict[str, int]:
    from bimguard.sim.serve import simulated_cluster
    from tests.webhook.harness import prepare, register, start_replica

    saved = registration.supports_match_conditions
    if not with_conditions:
        registration.supports_match_conditions = lambda version: False  # type: ignore[assignment]
    truth: collections.Counter[str] = collections.Counter()
    try:
        with tempfile.TemporaryDirectory(prefix="bimguard-mc-bench-") as tmp:
            root = Path(tmp)
            async with simulated_cluster(nodes=args.nodes, disks_per_node=args.disks_per_node, seed=7, time_scale=0.01,
                                         root=root / "nodes") as (api, cluster):
                kubeconfig = root / "kubeconfig"
                api.kubeconfig(kubeconfig)
                await prepare(kubeconfig)
                replica = await start_replica(kubeconfig)
                try:
                    await register(api, replica)
                    before = collections.Counter(api.admission.counts)
                    count_first_records(api.admission, truth)
                    names = cluster.node_names
                    waves = max(1, args.new_disks // len(names))
                    added = 0
                    for wave in range(waves):
                        plan = [(names[i % len(names)], f"new-{wave}-{i}")
                                for i in range(len(names))][:args.new_disks - added]
                        await asyncio.gather(*(cluster.add_disk(n, d) for n, d in plan))
                        added += len(plan)
                        await cluster.wait_for(lambda plan=plan: all(cluster_uuid(api, n, d) for n, d in plan), 60,
                                               f"wave {wave} recorded")
                    # Routine churn: data lands on every disk and goes again (the emulator's
                    # per-disk usage, what statfs tells longhorn-manager's monitor): each node
                    # writes the new storageAvailable, as on a busy cluster.
                    for rnd in range(args.rounds):
                        delta = args.churn_mib << 20 if rnd % 2 == 0 else -(args.churn_mib << 20)
                        for n in names:
                            host = cluster.host(n)
                            for d in cluster.disks_of(n):
                                path = cluster.host_path(n, d)
                                host.used[path] = host.used.get(path, host.stat(path).storage_maximum // 20) + delta
                        await asyncio.sleep(args.idle / max(1, args.rounds))
                    await asyncio.sleep(1.0)
                    counts = collections.Counter(api.admission.counts)
                    counts.subtract(before)
                    return summary(counts, truth)
                finally:
                    await replica.stop()
    finally:
        registration.supports_match_conditions = saved  # type: ignore[assignment]


def cluster_uuid(api: ApiServer, node: str, disk: str) -> str:
    obj = api.store.get("longhorn.io/v1beta2/nodes", LONGHORN_NS, node)
    return (((obj.get("status") or {}).get("diskStatus") or {}).get(disk) or {}).get("diskUUID") or ""


async def counts(args: argparse.Namespace) -> None:
    rows = {}
    for with_conditions in (True, False):
        label = "with matchConditions" if with_conditions else "without"
        print(f"  counts {label}: {args.nodes} nodes x {args.disks_per_node} disks, {args.new_disks} new disks, "
              f"{args.rounds} rounds of storage churn ...", flush=True)
        rows[label] = await counts_run(args, with_conditions)
    print_counts(f"Node status writes, simulated Longhorn v1.7.2 ({args.nodes} nodes), one webhook replica, "
                 f"CEL: {sim_admission.CEL.name}", rows)


# --------------------------------------------------------------------------- e2e


E2E_TEST = "tests/e2e/test_prevention.py::test_bursts_of_colliding_disks_on_two_replicas_end_unique_ready_and_agreeing"


class E2EPlugin:
    """Loaded into the pytest child: counts every Dispatcher's writes until it closes."""

    def __init__(self, with_conditions: bool) -> None:
        self.counts: collections.Counter[Any] = collections.Counter()
        self.truth: collections.Counter[str] = collections.Counter()
        self.with_conditions = with_conditions

    def pytest_configure(self, config: Any) -> None:
        if not self.with_conditions:
            registration.supports_match_conditions = lambda version: False  # type: ignore[assignment]
        plugin = self
        init, close = sim_admission.Dispatcher.__init__, sim_admission.Dispatcher.close

        def __init__(self: sim_admission.Dispatcher, *a: Any, **kw: Any) -> None:
            init(self, *a, **kw)
            count_first_records(self, plugin.truth)

        async def _close(self: sim_admission.Dispatcher) -> None:
            plugin.counts.update(self.counts)
            await close(self)

        sim_admission.Dispatcher.__init__ = __init__  # type: ignore[method-assign]
        sim_admission.Dispatcher.close = _close  # type: ignore[method-assign]


def e2e_child(with_conditions: bool) -> int:
    import pytest

    plugin = E2EPlugin(with_conditions)
    started = time.monotonic()
    code = pytest.main(["-q", "-s", "-p", "no:cacheprovider", E2E_TEST], plugins=[plugin])
    print("E2E-RESULT " + json.dumps({"exit": int(code), "seconds": round(time.monotonic() - started, 1),
                                      "counts": summary(plugin.counts, plugin.truth), "cel": sim_admission.CEL.name}))
    return 0


def e2e() -> None:
    rows, notes = {}, []
    for with_conditions in (True, False):
        label = "with matchConditions" if with_conditions else "without"
        print(f"  e2e {label}: {E2E_TEST.split('::')[1]} ...", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--e2e-child", "with" if with_conditions else "without"],
                              cwd=REPO, capture_output=True, text=True, timeout=1800)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("E2E-RESULT ")), None)
        if line is None:
            raise SetupError(f"the e2e child printed no result: {proc.stdout[-500:]} {proc.stderr[-500:]}")
        result = json.loads(line.split(" ", 1)[1])
        if result["exit"] != 0:
            raise SetupError(f"the e2e test failed {label}: {proc.stdout[-1500:]}")
        rows[label] = result["counts"]
        notes.append(f"{label}: test passed in {result['seconds']} s (CEL: {result['cel']})")
    print_counts("Node status writes in the e2e prevention run (200 colliding disks, 10 nodes, two replicas)", rows)
    for n in notes:
        print("  " + n)


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("latency", "counts"), help="run one measurement")
    ap.add_argument("--e2e", action="store_true", help="also count in the e2e burst test, with and without")
    ap.add_argument("--writes", type=int, default=300, help="routine writes per fast case (default %(default)s)")
    ap.add_argument("--slow-writes", type=int, default=3, help="writes in the cases that wait (default %(default)s)")
    ap.add_argument("--timeout-seconds", type=int, default=scope.TIMEOUT_SECONDS,
                    help="the configuration's timeoutSeconds (default: the chart's, %(default)s)")
    ap.add_argument("--engine", choices=("both", "cel-expr-python", "cel-python"), default="both")
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--disks-per-node", type=int, default=3)
    ap.add_argument("--new-disks", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=6,
                    help="rounds of routine churn after the new disks: data written, then removed (default %(default)s)")
    ap.add_argument("--churn-mib", type=int, default=1024,
                    help="MiB added to (then removed from) every disk per round (default %(default)s)")
    ap.add_argument("--idle", type=float, default=6.0, help="seconds spread over the rounds (default %(default)s)")
    ap.add_argument("--e2e-child", choices=("with", "without"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.e2e_child:
        return e2e_child(args.e2e_child == "with")
    print(f"CEL in the emulator: {sim_admission.CEL.name}; Python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}")
    try:
        if args.only in (None, "latency"):
            asyncio.run(latency(args))
        if args.only in (None, "counts"):
            asyncio.run(counts(args))
        if args.e2e:
            e2e()
    except SetupError as err:
        print(f"match_conditions_bench: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
