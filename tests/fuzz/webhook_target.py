"""A real webhook replica over real HTTPS on loopback, as a target for generated AdmissionReviews.

The replica is the one tests/webhook/harness.py starts (index fed by list+watch from the API
server emulator, self-managed certificates, the admission handler, the aiohttp HTTPS server);
it runs on its own event loop in a thread, and reviews are POSTed to it from the caller's thread
over a verified TLS connection (the CA from the replica's Secret, the Service's DNS name), kept
alive between requests as kube-apiserver keeps its connections. Every log record of the process
is captured, so a check can say that no review left a traceback.

`check_answer` is the oracle the suite's sample (tests/fuzz/test_webhook_fuzz.py) and the bounded
run (bench/fuzz_bench.py) share: what the server must answer to a well-formed review, to a
malformed one, and to an oversized one.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import http.client
import json
import logging
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bimguard import records
from bimguard.sim.apiserver import ApiServer
from bimguard.sim.patch import PatchError, apply_json_patch
from tests.builders import disk_entry, node
from tests.webhook.harness import LONGHORN_NS, NAMESPACE, SERVICE, Replica, prepare, start_replica
from webhook.scope import LONGHORN_NODE_STATUS
from webhook.server import MAX_BODY_BYTES

SERVER_NAME = f"{SERVICE}.{NAMESPACE}.svc"
NODES = "longhorn.io/v1beta2/nodes"
# Disks of the node "held-by" in the emulator: a first-recorded disk whose UUID starts with one of
# these collides (rewrite), one with exactly one of these UUIDs is a clone of a Ready disk.
HELD_UUIDS = ("a3af57ea-8353-4200-a67e-6939ff4dcecf", "c01200da-8a5c-4692-92e6-c4a983087951",
              "0000c0de-0000-4000-8000-000000000000", "ffff1e55-ffff-4fff-bfff-ffffffffffff")
HELD_PREFIXES = frozenset(u[:4] for u in HELD_UUIDS)
HELD_NODE = "held-by"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        with self._lock2:
            out, self.records = self.records, []
        return out


def bad_log_records(records: list[logging.LogRecord]) -> list[str]:
    """Records that mean something went wrong: a traceback anywhere, an error of the webhook or of
    aiohttp's server (which logs every exception that escapes a handler)."""
    out = []
    for r in records:
        if r.exc_info or r.exc_text or r.stack_info:
            out.append(f"traceback logged by {r.name}: {r.getMessage()[:200]}")
        elif r.levelno >= logging.ERROR and r.name.startswith(("bimguard.webhook", "aiohttp")):
            out.append(f"{r.levelname} by {r.name}: {r.getMessage()[:200]}")
    return out


class ServedWebhook:
    """`with ServedWebhook(tmp) as hook: hook.post(body)`. `deadline` is the webhook's internal
    deadline, raised from 2 s so that a busy machine cannot turn a review into a skipped one."""

    def __init__(self, workdir: Path, *, deadline: float = 60.0) -> None:
        self.workdir = workdir
        self.deadline = deadline
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="served-webhook", daemon=True)
        self.api: ApiServer | None = None
        self.replica: Replica | None = None
        self.capture = _Capture()
        self._conn: http.client.HTTPSConnection | None = None
        self._ctx: ssl.SSLContext | None = None
        self.port = 0

    # -- life cycle --------------------------------------------------------------------------
    def __enter__(self) -> "ServedWebhook":
        logging.getLogger().addHandler(self.capture)
        self.thread.start()
        try:
            self.run(self._start(), timeout=120)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_: Any) -> None:
        if self._conn is not None:
            self._conn.close()
        if self.thread.is_alive():
            try:
                self.run(self._stop(), timeout=60)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)
        logging.getLogger().removeHandler(self.capture)

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.api = ApiServer()
        await self.api.start()
        kubeconfig = self.workdir / "kubeconfig"
        self.api.kubeconfig(kubeconfig)
        await prepare(kubeconfig)
        disks = {f"held-{i}": disk_entry(u, f"/mnt/held{i}") for i, u in enumerate(HELD_UUIDS)}
        held = node(HELD_NODE, disks)
        created = self.api.store.create(NODES, held)  # a create ignores status (the status subresource)
        self.api.store.update(NODES, {**created, "status": held["status"]}, subresource="status")
        self.replica = await start_replica(kubeconfig, deadline=self.deadline)
        for _ in range(2000):  # the watch delivers the node a moment after the replica is ready
            if HELD_PREFIXES <= self.replica.index.occupied():
                break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("the replica's index never saw the held disks")
        self.port = self.replica.server.bound_port
        self._ctx = ssl.create_default_context(cadata=self.replica.certs.ca_bundle_pem.decode())

    async def _stop(self) -> None:
        if self.replica is not None:
            await self.replica.stop()
        if self.api is not None:
            await self.api.stop()

    # -- requests ------------------------------------------------------------------------------
    def _connect(self) -> http.client.HTTPSConnection:
        ctx, port = self._ctx, self.port
        assert ctx is not None

        class Conn(http.client.HTTPSConnection):
            def connect(self) -> None:  # to 127.0.0.1, verifying the Service's DNS name
                sock = socket.create_connection(("127.0.0.1", port), self.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as http.client's own connect
                self.sock = ctx.wrap_socket(sock, server_hostname=SERVER_NAME)

        return Conn(SERVER_NAME, port, timeout=120, context=ctx)

    def post(self, body: bytes, *, path: str = LONGHORN_NODE_STATUS.path, method: str = "POST",
             content_type: str = "application/json") -> tuple[int, str, bytes]:
        """(status, content type, body). A connection the server closed is reopened once; a
        request that gets no answer within the socket timeout raises (a hang)."""
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.request(method, path, body=body, headers={"Content-Type": content_type})
                resp = self._conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self._conn.close()
                    self._conn = None
                return resp.status, resp.getheader("Content-Type") or "", data
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest,
                    http.client.ResponseNotReady, ssl.SSLEOFError):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def as_stored(self, doc: Any, body: bytes) -> tuple[Any, bytes]:
        """Store the review's oldObject as the Longhorn Node in the API server and make the review
        name the stored resourceVersion and uid, as kube-apiserver's reviews do (its oldObject is
        the stored object): the webhook checks a review against the stored Node before any durable
        effect, so only such reviews reach claims, records and patches. An oldObject the API server
        refuses (its schema) is left unstored: that review is answered all the same."""
        req = doc.get("request") if isinstance(doc, dict) else None
        old = req.get("oldObject") if isinstance(req, dict) else None
        meta = old.get("metadata") if isinstance(old, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name or name == HELD_NODE:
            return doc, body
        got = self.run(self._store_node(old))
        if got is None:
            return doc, body
        rv, uid = got
        reencode = False
        for key, new in (("resourceVersion", rv), ("uid", uid)):
            was = meta.get(key)
            if isinstance(was, str) and was and was != new:
                token = json.dumps(was).encode()
                here = 0
                for obj in (req.get("object"), old):
                    if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict) and obj["metadata"].get(key) == was:
                        obj["metadata"][key] = new
                        here += 1
                if body.count(token) == here:  # only where the metadata has it: keep the body's encoding
                    body = body.replace(token, json.dumps(new).encode())
                else:  # the same string elsewhere too (hypothesis reuses values): encode anew
                    reencode = True
        if reencode:
            body = json.dumps(doc, ensure_ascii=False).encode()
        return doc, body

    async def _store_node(self, old: dict[str, Any]) -> tuple[str, str] | None:
        from bimguard.sim.store import ApiError

        assert self.api is not None
        store = self.api.store
        obj = json.loads(json.dumps(old))
        meta = obj["metadata"]
        for key in ("resourceVersion", "uid", "managedFields", "creationTimestamp", "generation"):
            meta.pop(key, None)
        meta["namespace"] = LONGHORN_NS
        try:
            try:
                current = store.get(NODES, LONGHORN_NS, meta["name"])
            except ApiError:
                current = store.create(NODES, {k: v for k, v in obj.items() if k != "status"})
            else:
                meta["resourceVersion"] = current["metadata"]["resourceVersion"]
                current = store.update(NODES, {k: v for k, v in obj.items() if k != "status"})
            current = store.update(NODES, {**current, "status": obj.get("status") or {}}, subresource="status")
        except (ApiError, TypeError, ValueError, KeyError, AttributeError):
            return None
        return current["metadata"]["resourceVersion"], current["metadata"]["uid"]

    def reset(self) -> None:
        """Forget every PrefixClaim and DiskRewrite (a long run would otherwise fill the prefix
        space with the claims of generated disks)."""
        async def clear() -> None:
            assert self.api is not None
            for plural in (records.CLAIMS, records.REWRITES):
                key = f"{records.GROUP}/{records.VERSION}/{plural}"
                for obj in self.api.store.list(key, NAMESPACE)[0]:
                    self.api.store.delete(key, NAMESPACE, obj["metadata"]["name"])

        self.run(clear())

    def metric(self, name: str, **labels: str) -> float:
        assert self.replica is not None
        return self.replica.metrics.registry.get_sample_value(name, labels) or 0.0

    def problems_logged(self) -> list[str]:
        return bad_log_records(self.capture.take())


# -- the oracle ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Expect:
    """What a generated body must get. `well_formed`: 200 and an allowing review. Otherwise one of
    `codes` (400: not an AdmissionReview, 413: over the 6 MiB cap), or with `maybe_allowed` also an
    allowing review without a patch (a wrong type in a field that only a first-recorded disk's
    full decode reads: a routine write is answered from the brief decode, which never reads it)."""

    well_formed: bool
    codes: tuple[int, ...] = ()
    maybe_allowed: bool = False
    patch_ok: bool = False  # a 200 may carry a patch (checked to apply) though the body is not known good


WELL_FORMED = Expect(True)
NOT_A_REVIEW = Expect(False, (400,))
TOO_LARGE = Expect(False, (413,))
WRONG_TYPE_IN_FULL_DECODE = Expect(False, (400,), maybe_allowed=True)


def check_answer(review: Any, body: bytes, expect: Expect, status: int, ctype: str, data: bytes) -> list[str]:
    """Everything wrong with this answer (empty: fine). `review` is the generated document (the
    JSON value before encoding) where there is one."""
    if len(body) > MAX_BODY_BYTES:
        expect = TOO_LARGE
    if status == 200:
        if expect.well_formed or expect.maybe_allowed:
            return _check_allowed(review, status, ctype, data, patch_ok=expect.well_formed or expect.patch_ok)
        return [f"HTTP 200 for a body that should get {expect.codes}: {data[:300]!r}"]
    if expect.well_formed:
        return [f"HTTP {status} for a well-formed review: {data[:300]!r}"]
    if status not in expect.codes:
        return [f"HTTP {status}, expected {expect.codes}: {data[:300]!r}"]
    if status == 400:
        text = data.decode("utf-8", "replace")
        if not ctype.startswith("text/plain") or text.count("\n") != 1 or not text.endswith("\n") or len(text) < 10:
            return [f"400 without a one-line text message: {ctype} {data[:300]!r}"]
    return []


def _check_allowed(review: Any, status: int, ctype: str, data: bytes, *, patch_ok: bool) -> list[str]:
    if not ctype.startswith("application/json"):
        return [f"HTTP {status} with content type {ctype!r}"]
    try:
        out = json.loads(data)
    except ValueError as err:
        return [f"answer is not JSON ({err}): {data[:300]!r}"]
    problems = []
    if out.get("apiVersion") != "admission.k8s.io/v1" or out.get("kind") != "AdmissionReview":
        problems.append(f"answer is not an AdmissionReview v1: {data[:300]!r}")
    resp = out.get("response") or {}
    if resp.get("allowed") is not True:
        problems.append(f"not allowed: {resp}")
    req = review.get("request") if isinstance(review, dict) else None
    if isinstance(req, dict) and resp.get("uid") != req.get("uid"):
        problems.append(f"answer uid {resp.get('uid')!r} is not the request's {req.get('uid')!r}")
    if "patch" in resp or "patchType" in resp:
        if not patch_ok:
            problems.append("a patch for a malformed review")
        else:
            problems += _check_patch(req, resp)
    return problems


def _check_patch(req: dict[str, Any], resp: dict[str, Any]) -> list[str]:
    """A patch applies to the request's object as kube-apiserver applies it, and only gives
    first-recorded v1 disks a fresh UUID whose prefix nobody holds."""
    if resp.get("patchType") != "JSONPatch":
        return [f"patchType {resp.get('patchType')!r}"]
    try:
        patch = json.loads(base64.b64decode(resp["patch"], validate=True))
    except (ValueError, TypeError) as err:
        return [f"patch is not base64 JSON: {err}"]
    obj = req.get("object")
    try:
        patched = apply_json_patch(copy.deepcopy(obj), patch)
    except PatchError as err:
        return [f"the patch does not apply to the object: {err}: {json.dumps(patch)[:500]}"]
    problems = []
    before = ((obj or {}).get("status") or {}).get("diskStatus") or {}
    after = (patched.get("status") or {}).get("diskStatus") or {}
    old_disks = (((req.get("oldObject") or {}).get("status") or {}).get("diskStatus") or {})
    changed = [d for d in after if (after[d] or {}).get("diskUUID") != (before.get(d) or {}).get("diskUUID")]
    if not changed:
        problems.append(f"a patch that changes no diskUUID: {json.dumps(patch)[:300]}")
    for d in changed:
        new, old = after[d]["diskUUID"], before[d].get("diskUUID")
        if not isinstance(new, str) or not UUID_RE.match(new):
            problems.append(f"disk {d!r}: new UUID {new!r} is not a UUID")
        elif new[:4] in HELD_PREFIXES or new[:4] == str(old)[:4].lower():
            problems.append(f"disk {d!r}: new UUID {new} keeps a taken prefix")
        if ((old_disks.get(d) or {}).get("diskUUID")):
            problems.append(f"disk {d!r} already had a UUID in oldObject and was rewritten")
        conds = {c["type"]: c.get("status") for c in after[d].get("conditions") or []
                 if isinstance(c, dict) and isinstance(c.get("type"), str)}
        if conds.get("Ready") != "False" or conds.get("Schedulable") != "False":
            problems.append(f"disk {d!r} rewritten but not NotReady/unschedulable: {conds}")
    return problems
