#!/usr/bin/env python3
"""Soak: --rate reviews/s for --duration against the real webhook server, watching what leaks.

Set-up as bench/webhook_bench.py builds it (its helpers are imported): the API server emulator in
its own process (bimguard's CRDs installed) and the real WebhookServer + Admission + ClusterIndex
(index filled directly with --nodes x --disks disks and their replicas, production JSON logging at
info, certificates from files hot-reloaded by FileCerts) in --replicas processes, pinned to core 1
(the emulator and this load generator on core 0). Reviews: routine Node status writes (allowed,
no patch) and, every 1/--rewrite-share-th request, a first-record of a distinct disk whose prefix a
disk in the index holds (claim, record, new claim, release, JSONPatch, in the emulator).

The generator is open loop (request i is due at t0 + i/rate whatever earlier ones did; latency
from the due time), over verified TLS (CA, the Service's DNS name), round robin over the replicas'
endpoints; a connection is closed by the client after --requests-per-connection reviews, so TLS
handshakes go on all the time (kube-apiserver keeps connections much longer). A request that fails
on a reused connection before any byte of an answer arrived is sent again, as Go's HTTP transport
in kube-apiserver does for a request whose body it can replay (again while that is so); those
replays are counted apart from errors.

Every second, per replica: RSS, open file descriptors, established TCP connections on its port
(/proc), and asyncio tasks (a bench-only debug port of the replica process). Reported: errors by
kind, p50/p90/p99/max overall and per minute, RSS after --warmup and at the end (growth %), tasks,
fds and connections after warm-up and at the end, and the server's own outcome counters and the
emulator's records and claims against what was sent.

Events under load (optional):
  --rotate-at S    at S seconds write a new serving certificate (same CA) over the files; the
                   replicas pick it up at their next poll (--cert-poll, default 1 s)
  --rollout-at S   a rolling update: for each replica in turn, start its successor, wait until it
                   answers, take the old one out of the endpoints, SIGTERM it (it serves through
                   --shutdown-delay, then drains in-flight reviews and closes keep-alives)
Failed reviews and failed TLS handshakes are counted on the client side.

    .venv/bin/python bench/soak_bench.py                        # 1,000/s for 10 min, 2 % rewrites
    .venv/bin/python bench/soak_bench.py --duration 120 --replicas 2 --rollout-at 40 --rotate-at 80
    .venv/bin/python bench/soak_bench.py --check                # 5 s at 100/s: set-up and checks only
Needs taskset (util-linux) and 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import webhook_bench as wb  # noqa: E402  (bench/ is not a package)

SERVER_CORE, LOAD_CORE = wb.SERVER_CORE, wb.LOAD_CORE


# -- the replica process ---------------------------------------------------------------------------

async def role_webhook(args: argparse.Namespace) -> None:
    """webhook_bench's server wiring, with a shutdown delay, a fast certificate poll, and a debug
    port (plain HTTP on 127.0.0.1) that reports the process's asyncio tasks."""
    import gc
    import logging

    from aiohttp import web

    from bimguard.kube import api_client as kube_client
    from webhook.admission import Admission
    from webhook.index import ClusterIndex
    from webhook.main import JsonFormatter
    from webhook.metrics import Metrics
    from webhook.records_api import RecordsApi
    from webhook.server import WebhookServer
    from webhook.tls import FileCerts

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("bimguard")
    root.handlers[:] = [handler]
    root.setLevel("INFO")
    root.propagate = False

    index = ClusterIndex()
    wb.fill_index(index, wb.index_nodes(args.nodes, args.disks, args.replicas_per_disk, args.seed))
    gc.collect()
    gc.freeze()
    api_client = await kube_client(args.kubeconfig, None)
    metrics = Metrics()
    certs = FileCerts(args.cert, args.key, poll_interval=args.cert_poll)
    admission = Admission(index, RecordsApi(api_client, wb.NAMESPACE, wb.LONGHORN_NS), metrics, ready=lambda: None)
    server = WebhookServer(admission, certs, metrics, not_ready=lambda: None, host="127.0.0.1", port=0,
                           metrics_host="127.0.0.1", metrics_port=0, shutdown_delay=args.shutdown_delay)
    await certs.start()
    await server.start()

    async def tasks(_request: web.Request) -> web.Response:
        return web.json_response({"tasks": len(asyncio.all_tasks()), "serial": certs.certificate.serial_number})

    debug = web.AppRunner(web.Application(), access_log=None)
    debug.app.router.add_get("/tasks", tasks)
    await debug.setup()
    site = web.TCPSite(debug, "127.0.0.1", 0)
    await site.start()
    wb._announce({"port": server.bound_port, "metrics_port": server.bound_metrics_port,
                  "debug_port": site._server.sockets[0].getsockname()[1]})  # type: ignore[union-attr]
    await wb._until_signal()
    await server.stop()  # not ready, serve through the delay, drain, close keep-alives
    await debug.cleanup()
    await certs.stop()
    await api_client.close()


# -- observing a process from outside ----------------------------------------------------------------

def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def established(port: int) -> int:
    """Established TCP connections whose local port is `port` (the server side)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "01" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


def debug_tasks(port: int) -> int:
    import urllib.request

    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/tasks", timeout=10).read())["tasks"]


@dataclass
class Replica:
    name: str
    child: wb.Child
    port: int
    metrics_port: int
    debug_port: int
    samples: list[tuple[float, float, int, int, int]] = field(default_factory=list)  # t, rss, fds, conns, tasks
    final_metrics: dict[str, float] = field(default_factory=dict)

    def sample(self, t: float) -> None:
        try:
            self.samples.append((t, rss_mib(self.child.proc.pid), open_fds(self.child.proc.pid), established(self.port),
                                 debug_tasks(self.debug_port)))
        except (OSError, ValueError):
            pass  # the process is going away


# -- the load generator ------------------------------------------------------------------------------

@dataclass
class Stats:
    sent: int = 0
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    retries: int = 0
    handshakes: int = 0
    handshake_failures: int = 0
    rewrites_sent: int = 0
    rewrites_patched: int = 0
    lat: list[tuple[float, float]] = field(default_factory=list)  # (due - t0, seconds)
    lag: list[float] = field(default_factory=list)


class Generator:
    """At most `max_connections` open at once: a request beyond that waits for an idle one (as
    kube-apiserver's transport pools its connections per host)."""

    def __init__(self, endpoints: list[Replica], ctx: ssl.SSLContext, per_connection: int,
                 max_connections: int) -> None:
        self.endpoints = endpoints  # changed by the rollout: new connections go to these only
        self.ctx = ctx
        self.per_connection = per_connection
        self.max_connections = max_connections
        self.idle: list[tuple[Any, asyncio.StreamReader, asyncio.StreamWriter, int]] = []
        self.stats = Stats()
        self._rr = 0
        self.open = 0
        self._freed: asyncio.Condition | None = None

    async def _connect(self) -> tuple[Any, asyncio.StreamReader, asyncio.StreamWriter, int]:
        if self._freed is None:
            self._freed = asyncio.Condition()
        async with self._freed:
            while True:
                while self.idle:
                    # A kept-alive connection stays pinned to its replica after the endpoints change
                    # (conntrack keeps it there), until that replica closes it at shutdown.
                    conn = self.idle.pop()
                    if not conn[2].is_closing() and not conn[1].at_eof():
                        return conn
                    self._close(conn[2])  # closed by the server
                if self.open < self.max_connections:
                    self.open += 1
                    break
                await self._freed.wait()
        rep = self.endpoints[self._rr % len(self.endpoints)]
        self._rr += 1
        self.stats.handshakes += 1
        try:
            r, w = await asyncio.open_connection("127.0.0.1", rep.port, ssl=self.ctx, server_hostname=wb.SERVER_NAME)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as err:
            self.stats.handshake_failures += 1
            await self._release(None)
            raise _Failed(f"connect/handshake: {type(err).__name__}") from None
        return rep, r, w, 0

    def _close(self, w: asyncio.StreamWriter) -> None:
        w.close()
        self.open -= 1

    async def _release(self, conn: tuple[Any, asyncio.StreamReader, asyncio.StreamWriter, int] | None) -> None:
        assert self._freed is not None
        async with self._freed:
            if conn is None:
                self.open -= 1
            else:
                self.idle.append(conn)
            self._freed.notify()

    async def one(self, t0: float, due: float, body: bytes, rewrite: bool, record: bool = True) -> None:
        st = self.stats
        if record:
            st.sent += 1
            st.rewrites_sent += rewrite
        # Go's transport replays a request that failed on a reused connection before anything came
        # back, again and again while that is so (net/http transport.go roundTrip/shouldRetryRequest);
        # each attempt may take another kept-alive connection the dying replica has just closed.
        for attempt in range(1, self.max_connections + 3):
            try:
                conn = await self._connect()
            except _Failed as f:
                if record:
                    st.errors[str(f)] += 1
                return
            rep, reader, writer, used = conn
            if record and attempt == 1:
                st.lag.append(time.monotonic() - due)
            got_bytes = False
            try:
                writer.write(b"POST /mutate HTTP/1.1\r\nHost: " + wb.SERVER_NAME.encode() +
                             b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() +
                             b"\r\n\r\n" + body)
                first = await reader.read(1)
                if not first:
                    raise ConnectionResetError("closed before an answer")
                got_bytes = True
                head = first + await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length: *(\d+)", head)
                payload = await reader.readexactly(int(m.group(1))) if m else b""
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError) as err:
                writer.close()
                await self._release(None)
                if used and not got_bytes:
                    if record:
                        st.retries += 1
                    continue
                if record:
                    where = "an answer had begun" if got_bytes else ("a fresh connection" if not used else "replayed")
                    st.errors[f"connection: {type(err).__name__} ({where})"] += 1
                return
            if record:
                st.lat.append((due - t0, time.monotonic() - due))
                if not head.startswith(b"HTTP/1.1 200"):
                    st.errors[f"HTTP {head[9:12].decode(errors='replace')}"] += 1
                elif b'"allowed":true' not in payload:
                    st.errors["not allowed"] += 1
                else:
                    st.ok += 1
                    if rewrite and b'"patch"' in payload:
                        st.rewrites_patched += 1
            if used + 1 >= self.per_connection or b"connection: close" in head.lower():
                writer.close()
                await self._release(None)
            else:
                await self._release((rep, reader, writer, used + 1))
            return

    def close_all(self) -> None:
        for _, _, w, _ in self.idle:
            self._close(w)
        self.idle.clear()


class _Failed(Exception):
    pass


# -- orchestration ---------------------------------------------------------------------------------

def spawn_replica(name: str, args: argparse.Namespace, tmp: Path, kubeconfig: Path, cert: Path, key: Path) -> Replica:
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", "webhook", "--kubeconfig", str(kubeconfig),
            "--cert", str(cert), "--key", str(key), "--nodes", str(args.nodes), "--disks", str(args.disks),
            "--replicas-per-disk", str(args.replicas_per_disk), "--seed", str(args.seed),
            "--shutdown-delay", str(args.shutdown_delay), "--cert-poll", str(args.cert_poll)]
    child = wb.spawn(name, SERVER_CORE, argv, tmp, timeout=300)
    return Replica(name, child, child.info["port"], child.info["metrics_port"], child.info["debug_port"])


def rotate(cert: Path, key: Path, ca_cert: Path, ca_key: Path) -> int:
    """A new serving pair from the same CA, written over the files (as a mounted Secret changes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from webhook.certs import Issuer, issue_serving, service_dns_names

    now = wb.datetime.now(wb.timezone.utc)
    ca = Issuer(x509.load_pem_x509_certificate(ca_cert.read_bytes()),
            serialization.load_pem_private_key(ca_key.read_bytes(), None))
    new_cert, new_key = issue_serving(ca, service_dns_names(wb.SERVICE, wb.NAMESPACE), now, wb.timedelta(days=1))
    pem = serialization.Encoding.PEM
    key.write_bytes(new_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert.write_bytes(new_cert.public_bytes(pem))
    return new_cert.serial_number


def make_certs(out: Path) -> tuple[Path, Path, Path, Path]:
    """webhook_bench.make_certs, keeping the CA's key for a rotation."""
    from cryptography.hazmat.primitives import serialization

    from webhook.certs import issue_serving, new_ca, service_dns_names

    now = wb.datetime.now(wb.timezone.utc)
    ca = new_ca(now, wb.timedelta(days=1))
    cert, key = issue_serving(ca, service_dns_names(wb.SERVICE, wb.NAMESPACE), now, wb.timedelta(days=1))
    pem = serialization.Encoding.PEM
    paths = out / "tls.crt", out / "tls.key", out / "ca.crt", out / "ca.key"
    paths[0].write_bytes(cert.public_bytes(pem))
    paths[1].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths[2].write_bytes(ca.cert.public_bytes(pem))
    paths[3].write_bytes(ca.key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    for p in (paths[1], paths[3]):
        os.chmod(p, 0o600)
    return paths


async def drive(args: argparse.Namespace, gen: Generator, hot: bytes, rewrite_body: Any, events: list[Any],
                replicas: list[Replica]) -> float:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    every = max(1, round(1 / args.rewrite_share)) if args.rewrite_share > 0 else 0
    # warm: open a few connections (not measured)
    await asyncio.gather(*(gen.one(0, time.monotonic(), hot, False, record=False) for _ in range(4)))
    total = int(args.rate * args.duration)
    finished = asyncio.Event()
    t0 = time.monotonic() + 0.1

    def start(i: int, due: float) -> None:
        rw = bool(every) and i % every == every // 2
        t = loop.create_task(gen.one(t0, due, rewrite_body(i) if rw else hot, rw))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    def pace() -> None:
        for i in range(total):
            due = t0 + i / args.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(start, i, due)
        loop.call_soon_threadsafe(finished.set)

    async def sampler() -> None:
        while not finished.is_set():
            now = time.monotonic() - t0
            for rep in list(replicas):
                await asyncio.to_thread(rep.sample, now)
            pending = [e for e in events if not e.done and e.at <= now]
            for e in pending:
                e.done = True
                asyncio.create_task(e.run())
            await asyncio.sleep(1.0)

    pacer = threading.Thread(target=pace, daemon=True)
    pacer.start()
    sampling = asyncio.create_task(sampler())
    await finished.wait()
    while tasks:
        await asyncio.gather(*list(tasks))
    await sampling
    pacer.join()
    for e in events:
        if e.task is not None:
            await e.task
    gen.close_all()
    return time.monotonic() - t0


@dataclass
class Event:
    at: float
    name: str
    fn: Any
    done: bool = False
    task: asyncio.Task[Any] | None = None
    log: list[str] = field(default_factory=list)

    async def run(self) -> None:
        self.task = asyncio.current_task()
        try:
            await self.fn(self)
        except Exception as err:  # noqa: BLE001 - reported, the soak goes on
            self.log.append(f"FAILED: {type(err).__name__}: {err}")


def pct(values: list[float], q: float) -> float:
    return wb._pct(values, q)


def run(args: argparse.Namespace, tmp: Path, children: list[wb.Child]) -> int:
    if not wb.shutil.which("taskset"):
        raise wb.SetupError("taskset not found on PATH (Debian: apt-get install util-linux)")
    if not {0, 1} <= os.sched_getaffinity(0):
        raise wb.SetupError("needs cores 0 and 1 (servers on 1, load and emulator on 0)")
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    cert, key, ca, ca_key = make_certs(tmp)
    cluster = wb.index_nodes(args.nodes, args.disks, args.replicas_per_disk, args.seed)
    hot = wb.hot_body(cluster)
    template = wb.rewrite_template(cluster, args.disks)
    prefixes = sorted({d.uuid[:4] for _, disks in cluster for d in disks})
    session = f"{wb.random.getrandbits(56):014x}"

    def rewrite_body(i: int) -> bytes:
        return wb.rewrite_instance(template, *wb.rewrite_names(session, i, prefixes))

    kubeconfig = tmp / "kubeconfig"
    api = wb.spawn("apiserver", LOAD_CORE, [sys.executable, str(HERE / "webhook_bench.py"), "--role", "apiserver",
                                            "--kubeconfig", str(kubeconfig)], tmp)
    children.append(api)
    asyncio.run(wb.install_crds(kubeconfig))
    replicas = []
    for n in range(args.replicas):
        replicas.append(spawn_replica(f"webhook-{n}", args, tmp, kubeconfig, cert, key))
        children.append(replicas[-1].child)
    for rep in replicas:  # every replica answers both kinds over verified TLS
        code, resp = asyncio.run(wb.post_once(rep.port, hot, ca))
        if code != 200 or resp["response"].get("allowed") is not True or "patch" in resp["response"]:
            raise wb.SetupError(f"{rep.name}: routine review did not get 'allowed, no patch': {code} {resp}")
        code, resp = asyncio.run(wb.post_once(rep.port, rewrite_body(10**9 + len(rep.name)), ca))
        if code != 200 or "patch" not in resp["response"]:
            raise wb.SetupError(f"{rep.name}: rewrite review got no patch: {code} {resp}")
    before = {rep.name: wb.scrape(rep.metrics_port) for rep in replicas}

    print(f"# soak_bench {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {os.cpu_count()} CPUs ({wb.cpu_model()}), "
          f"Python {sys.version.split()[0]}; {args.replicas} replica(s) on core {SERVER_CORE}, generator and API "
          f"server emulator on core {LOAD_CORE}; load average before: {Path('/proc/loadavg').read_text().split()[0]}")
    print(f"# {args.rate:,}/s for {args.duration:g} s, every {max(1, round(1 / args.rewrite_share)) if args.rewrite_share else 0}"
          f"th review a rewrite; {args.requests_per_connection} reviews per connection; index {args.nodes} nodes x "
          f"{args.disks} disks; warm-up {args.warmup:g} s", flush=True)

    ctx = ssl.create_default_context(cafile=str(ca))
    gen = Generator(list(replicas), ctx, args.requests_per_connection, args.max_connections)
    all_replicas = list(replicas)
    events: list[Event] = []

    async def do_rotate(ev: Event) -> None:
        serial = await asyncio.to_thread(rotate, cert, key, ca, ca_key)
        ev.log.append(f"new serving certificate {serial:x} written at {ev.at:g} s")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until every replica serves it
            got = []
            for rep in list(gen.endpoints):
                text = await asyncio.to_thread(lambda p=rep.debug_port: __import__("urllib.request").request.urlopen(
                    f"http://127.0.0.1:{p}/tasks", timeout=10).read())
                got.append(json.loads(text)["serial"] == serial)
            if all(got):
                ev.log.append(f"every replica serves it {ev.at + (30 - (deadline - time.monotonic())):.1f} s in")
                return
            await asyncio.sleep(0.2)
        ev.log.append("FAILED: not every replica serves the new certificate after 30 s")

    async def do_rollout(ev: Event) -> None:
        for old in list(gen.endpoints):
            new = await asyncio.to_thread(spawn_replica, old.name + "-next", args, tmp, kubeconfig, cert, key)
            children.append(new.child)
            all_replicas.append(new)
            replicas.append(new)
            code, _ = await wb.post_once(new.port, hot, ca)  # ready: it answers
            if code != 200:
                raise RuntimeError(f"{new.name} answered {code}")
            gen.endpoints[gen.endpoints.index(old)] = new  # endpoints converge: new connections go to `new`
            await asyncio.sleep(args.endpoint_lag)  # kube-proxy/endpoint propagation; the preStop sleep covers it
            old.final_metrics = await asyncio.to_thread(wb.scrape, old.metrics_port)
            old.child.proc.send_signal(signal.SIGTERM)
            t = time.monotonic()
            await asyncio.to_thread(old.child.proc.wait)
            replicas.remove(old)
            ev.log.append(f"{old.name} -> {new.name}: old one exited {old.child.proc.returncode} "
                          f"{time.monotonic() - t:.1f} s after SIGTERM")

    if args.rotate_at is not None:
        events.append(Event(args.rotate_at, "certificate rotation", do_rotate))
    if args.rollout_at is not None:
        events.append(Event(args.rollout_at, "rolling update", do_rollout))

    for rep in replicas:
        rep.sample(-1.0)  # before any load
    wall = asyncio.run(drive(args, gen, hot, rewrite_body, events, replicas))
    time.sleep(0.5)
    st = gen.stats
    after = {}
    for rep in all_replicas:
        if rep.child.proc.poll() is None:
            after[rep.name] = wb.scrape(rep.metrics_port)
            rep.sample(wall)
        else:
            after[rep.name] = rep.final_metrics
    recs, claims, loose = asyncio.run(wb.count_records(kubeconfig))

    # -- report
    lat_ms = sorted(x * 1e3 for _, x in st.lat)
    print(f"\nrequests     {st.sent:,} sent in {wall:.1f} s ({st.sent / wall:,.0f}/s), {st.ok:,} allowed, "
          f"errors {sum(st.errors.values())} {dict(st.errors) or ''}")
    print(f"latency      p50 {pct(lat_ms, 50):.2f} ms  p90 {pct(lat_ms, 90):.2f} ms  p99 {pct(lat_ms, 99):.2f} ms  "
          f"max {lat_ms[-1] if lat_ms else float('nan'):.1f} ms   (generator lag p99 "
          f"{pct(sorted(x * 1e3 for x in st.lag), 99):.2f} ms)")
    print(f"TLS          {st.handshakes:,} handshakes, {st.handshake_failures} failed; {st.retries} request(s) replayed "
          f"after the server closed a kept-alive connection")
    print(f"rewrites     {st.rewrites_sent:,} sent, {st.rewrites_patched:,} answered with a patch; emulator: "
          f"{recs:,} DiskRewrites, {claims:,} PrefixClaims, {len(loose)} claims without a record")
    outcomes: Counter = Counter()
    for rep in all_replicas:
        for k, v in wb.delta(after.get(rep.name, {}), before.get(rep.name, {})).items():
            if k.startswith("bimguard_admission_outcomes_total") or k.startswith("bimguard_admission_skipped_total"):
                outcomes[k] += int(v)
    print(f"server       {dict(outcomes)}")
    window = 60 if args.duration >= 180 else 10
    print(f"\nper {window} s:  t        n      p50 ms   p99 ms   max ms")
    by: dict[int, list[float]] = {}
    for due, x in st.lat:
        by.setdefault(int(due // window), []).append(x * 1e3)
    for w in sorted(by):
        v = sorted(by[w])
        print(f"            {w * window:5d} {len(v):8,} {pct(v, 50):9.2f} {pct(v, 99):8.2f} {v[-1]:8.1f}")
    print("\nper replica: before load | after warm-up | end of load | drained (client gone)")
    verdicts = []
    for rep in all_replicas:
        if not rep.samples:
            continue
        start = [x for x in rep.samples if x[0] < 0][:1]
        loaded = [x for x in rep.samples if 0 <= x[0] <= args.duration]
        # a replica started mid-run (a rollout) warms up from its own start
        since = max(args.warmup, loaded[0][0] + args.warmup) if loaded else args.warmup
        warm = [x for x in loaded if x[0] >= since][:1] or loaded[:1]
        end = loaded[-1:]
        drained = [x for x in rep.samples if x[0] > args.duration][-1:]

        def cols(i: int, fmt: str) -> str:
            return " | ".join(fmt.format(x[0][i]) if x else "-" for x in (start, warm, end, drained))

        print(f"  {rep.name:16} RSS MiB {cols(1, '{:.1f}')}; fds {cols(2, '{}')}; conns {cols(3, '{}')}; "
              f"tasks {cols(4, '{}')}")
        if warm and end and end[0][0] - warm[0][0] >= 60:
            growth = (end[0][1] - warm[0][1]) / warm[0][1] * 100
            print(f"  {'':16} RSS growth after warm-up {growth:+.1f} % (max {max(x[1] for x in rep.samples):.1f} MiB)")
            verdicts.append((f"{rep.name} RSS growth after warm-up < 5 %", growth < 5))
            if drained and start:
                verdicts.append((f"{rep.name} tasks back to the level before load", drained[0][4] <= start[0][4]))
                verdicts.append((f"{rep.name} fds back to the level before load", drained[0][2] <= start[0][2]))
                verdicts.append((f"{rep.name} no connection left", drained[0][3] == 0))
    for ev in events:
        for line in ev.log:
            print(f"event        {ev.name}: {line}")
    verdicts += [("0 errors", not st.errors), ("0 failed TLS handshakes", st.handshake_failures == 0),
                 ("every rewrite patched", st.rewrites_patched == st.rewrites_sent),
                 ("0 claims without a record", not loose),
                 ("events completed", all(not any(l.startswith("FAILED") for l in e.log) and e.done for e in events))]
    print()
    for what, ok in verdicts:
        print(f"{'PASS' if ok else 'MISS'}  {what}")
    if args.check:
        if st.errors or st.ok == 0:
            print("soak_bench --check: FAILED", file=sys.stderr)
            return 1
        print("soak_bench --check: routine and rewrite reviews answered, figures computed")
        return 0
    return 0 if all(ok for _, ok in verdicts) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000, help="reviews/s offered (default %(default)s)")
    ap.add_argument("--duration", type=float, default=600, help="seconds (default %(default)s)")
    ap.add_argument("--warmup", type=float, default=60, help="seconds before RSS/fds/tasks are baselined (default %(default)s)")
    ap.add_argument("--rewrite-share", type=float, default=0.02, help="share of first-record rewrites (default %(default)s)")
    ap.add_argument("--replicas", type=int, default=1, help="webhook server processes (default %(default)s)")
    ap.add_argument("--requests-per-connection", type=int, default=100,
                    help="reviews per client connection before it is closed (default %(default)s)")
    ap.add_argument("--max-connections", type=int, default=64,
                    help="client connections open at once, at most (default %(default)s)")
    ap.add_argument("--rotate-at", type=float, help="seconds in: rotate the serving certificate")
    ap.add_argument("--rollout-at", type=float, help="seconds in: rolling update of every replica")
    ap.add_argument("--shutdown-delay", type=float, default=2.0,
                    help="replicas serve this long after SIGTERM before draining (default %(default)s)")
    ap.add_argument("--endpoint-lag", type=float, default=0.5,
                    help="rollout: seconds between taking a replica out of the endpoints and its SIGTERM "
                         "(default %(default)s)")
    ap.add_argument("--cert-poll", type=float, default=1.0, help="replicas' certificate file poll (default %(default)s)")
    ap.add_argument("--nodes", type=int, default=1000, help="index size (default %(default)s)")
    ap.add_argument("--disks", type=int, default=4)
    ap.add_argument("--replicas-per-disk", type=int, default=18)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check", action="store_true", help="5 s at 100/s, 20 nodes: set-up and figures only")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, certificates)")
    ap.add_argument("--role", choices=("webhook",), help=argparse.SUPPRESS)
    for hidden in ("--kubeconfig", "--cert", "--key"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "webhook":
        asyncio.run(role_webhook(args))
        return 0
    if args.check:
        args.rate, args.duration, args.warmup, args.nodes, args.rewrite_share = 100, 5, 1, 20, 0.1
    tmp = Path(tempfile.mkdtemp(prefix="soak-bench-"))
    children: list[wb.Child] = []
    try:
        return run(args, tmp, children)
    except wb.SetupError as err:
        print(f"soak_bench: {err}", file=sys.stderr)
        return 2
    finally:
        for c in reversed(children):
            c.stop()
        if args.keep:
            print(f"# kept {tmp}")
        else:
            wb.shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
