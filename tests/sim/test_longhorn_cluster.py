"""The simulated Longhorn against the real emulated API server over HTTP, with real disk dirs.

A recording mutating webhook (HTTPS, registered like the product's on ``nodes/status``) captures
exactly what longhorn-manager's status writes look like to a webhook. Expected strings come from
lm v1.7.2 controller/monitor/disk_monitor.go:269 and node_controller.go:705,708,773,807, not from the
code under test.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bimguard.sim.apiserver import ApiServer
from bimguard.sim.longhorn import disks
from bimguard.sim.longhorn.cluster import SimCluster
from bimguard.sim.longhorn.node_status import get_condition

NODES = "longhorn.io/v1beta2/nodes"
MWC = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
SA = "system:serviceaccount:longhorn-system:longhorn-service-account"


# ----------------------------------------------------------------------------- recording webhook
def _cert(common: str, issuer_key: Any = None, issuer_name: Any = None, ca: bool = False, dns: str | None = None):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if dns:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = b.sign(issuer_key or key, hashes.SHA256())
    return key, cert


class Recorder:
    """An HTTPS mutating webhook that allows everything and keeps every AdmissionReview."""

    def __init__(self) -> None:
        self.reviews: list[dict[str, Any]] = []

    async def start(self, tmp: Path, api: ApiServer) -> None:
        ca_key, ca = _cert("recorder-ca", ca=True)
        key, cert = _cert("recorder.default.svc", ca_key, ca.subject, dns="recorder.default.svc")
        (tmp / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tmp / "tls.crt", tmp / "tls.key")
        app = web.Application()
        app.router.add_post("/mutate", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        api.webhook_hosts["recorder.default.svc"] = ("127.0.0.1", port)
        api.store.create(MWC, {
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "recorder"},
            "webhooks": [{
                "name": "recorder.bimguard.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Ignore", "timeoutSeconds": 5,
                "clientConfig": {"service": {"name": "recorder", "namespace": "default", "path": "/mutate"},
                                 "caBundle": base64.b64encode(ca.public_bytes(serialization.Encoding.PEM)).decode()},
                "rules": [{"apiGroups": ["longhorn.io"], "apiVersions": ["v1beta2"], "operations": ["UPDATE"],
                           "resources": ["nodes/status"], "scope": "Namespaced"}],
            }],
        })

    async def _handle(self, request: web.Request) -> web.Response:
        review = await request.json()
        self.reviews.append(review["request"])
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                  "response": {"uid": review["request"]["uid"], "allowed": True}})

    async def stop(self) -> None:
        await self.runner.cleanup()


# ----------------------------------------------------------------------------- fixtures
async def _cluster(api: ApiServer, root: Path, **kw: Any) -> SimCluster:
    kw.setdefault("seed", 11)
    kw.setdefault("time_scale", 0.01)
    c = SimCluster(api, root, **kw)
    await c.start()
    return c


def _disk(node: dict[str, Any], disk: str) -> dict[str, Any]:
    return ((node.get("status") or {}).get("diskStatus") or {}).get(disk) or {}


def _ready(entry: dict[str, Any]) -> dict[str, Any]:
    return dict(get_condition(entry.get("conditions"), "Ready"))


# ----------------------------------------------------------------------------- tests
async def test_new_disk_entry_and_uuid_arrive_in_one_status_write(api: ApiServer, tmp_path: Path) -> None:
    rec = Recorder()
    await rec.start(tmp_path, api)
    c = await _cluster(api, tmp_path / "hosts", nodes=["worker-1"], disks_per_node=1)
    try:
        await c.wait_until_ready(20)
        n_before = len(rec.reviews)
        await c.add_disk("worker-1", "disk-nvme2", "/mnt/nvme2")
        await c.wait_until_ready(20)
        firsts = [r for r in rec.reviews[n_before:] if "disk-nvme2" in _status_disks(r["object"])]
        assert firsts, "no status write recorded the new disk"
        first = firsts[0]
        assert first["operation"] == "UPDATE" and first["subResource"] == "status"
        assert first["resource"] == {"group": "longhorn.io", "version": "v1beta2", "resource": "nodes"}
        assert first["userInfo"]["username"] == SA
        assert "disk-nvme2" not in _status_disks(first["oldObject"])  # entry created in this very write
        entry = _status_disks(first["object"])["disk-nvme2"]
        cfg = disks.decode_cfg((tmp_path / "hosts" / "worker-1" / "mnt" / "nvme2" / "longhorn-disk.cfg").read_bytes())
        assert entry["diskUUID"] == cfg.disk_uuid != ""
        assert cfg.disk_name == "disk-nvme2"
        assert _ready(entry)["status"] == "True"
        # every write carried the informer's resourceVersion (PUT with precondition)
        assert all(r["object"]["metadata"]["resourceVersion"] == r["oldObject"]["metadata"]["resourceVersion"] for r in rec.reviews)
    finally:
        await c.stop()
        await rec.stop()


def _status_disks(obj: dict[str, Any]) -> dict[str, Any]:
    return (obj.get("status") or {}).get("diskStatus") or {}


async def test_vanished_cfg_gets_new_uuid_and_disk_turns_not_ready(api: ApiServer, tmp_path: Path) -> None:
    c = await _cluster(api, tmp_path, nodes=["worker-1"], disks_per_node=2)
    try:
        await c.wait_until_ready(20)
        recorded = await c.disk_uuid("worker-1", "disk-1")
        cfg = c.cfg_path("worker-1", "disk-1")
        cfg.unlink()  # vanishes "for a moment": the next poll regenerates it
        regenerated = await c.wait_for(lambda: cfg.exists(), 10, "cfg regenerated")
        assert regenerated
        new = disks.decode_cfg(cfg.read_bytes()).disk_uuid
        assert new != recorded  # a NEW random UUID (controller/monitor/disk_utils.go:141 @v1.7.2)

        async def not_ready() -> dict[str, Any] | None:
            e = _disk(await c.get_node("worker-1"), "disk-1")
            return e if _ready(e)["status"] == "False" else None

        entry = await c.wait_for(not_ready, 10, "disk NotReady")
        assert entry["diskUUID"] == recorded  # never overwritten
        ready = _ready(entry)
        assert ready["reason"] == "DiskFilesystemChanged"
        assert ready["message"] == "Disk disk-1(/mnt/disk1) on node worker-1 is not ready: record diskUUID doesn't match the one on the disk "
        sched = get_condition(entry["conditions"], "Schedulable")
        assert (sched["status"], sched["reason"], sched["message"]) == (
            "False", "DiskNotReady", "Disk disk-1 (/mnt/disk1) on the node worker-1 is not ready")
    finally:
        await c.stop()


async def test_status_cfg_mismatch_then_recovery(api: ApiServer, tmp_path: Path) -> None:
    c = await _cluster(api, tmp_path, nodes=["worker-1"], disks_per_node=1)
    try:
        await c.wait_until_ready(20)
        disk = next(iter((await c.get_node("worker-1"))["spec"]["disks"]))
        old = await c.disk_uuid("worker-1", disk)
        t_ready = _ready(_disk(await c.get_node("worker-1"), disk))["lastTransitionTime"]
        new = "beef" + old[4:]
        await c.set_status_disk_uuid("worker-1", disk, new)  # what the product's webhook/job does

        async def ready_status() -> str:
            return _ready(_disk(await c.get_node("worker-1"), disk))["status"]

        await c.wait_for(lambda: _is(ready_status(), "False"), 10, "NotReady")
        entry = _disk(await c.get_node("worker-1"), disk)
        assert entry["diskUUID"] == new
        assert _ready(entry)["message"].endswith("is not ready: record diskUUID doesn't match the one on the disk ")
        # Longhorn's EventRecorder broadcasts asynchronously, so the Event may trail the status write.
        async def mismatch_event() -> bool:
            return any(e["reason"] == "Ready" and e["type"] == "Warning" and "doesn't match" in e["message"]
                       for e in await _events(c, "worker-1"))

        assert await c.wait_for(mismatch_event, 10, "Warning Event about the mismatch")
        # cfg rewritten atomically to the new UUID -> Ready again within a poll
        ddir = c.disk_dir("worker-1", disk)
        disks.replace_cfg_atomically(ddir, disks.DiskConfig(disk, new))
        await c.wait_for(lambda: _is(ready_status(), "True"), 10, "Ready again")
        entry = _disk(await c.get_node("worker-1"), disk)
        assert entry["diskUUID"] == new
        assert _ready(entry)["lastTransitionTime"] >= t_ready
        assert get_condition(entry["conditions"], "Schedulable")["status"] == "True"
    finally:
        await c.stop()


async def _is(coro: Any, value: Any) -> bool:
    return (await coro) == value


async def _events(c: SimCluster, name: str) -> list[dict[str, Any]]:
    assert c.kube is not None
    resp = await c.kube.core.list_namespaced_event("longhorn-system", _preload_content=False)
    items = json.loads(await resp.read())["items"]
    return [e for e in items if e["involvedObject"]["name"] == name]


async def test_removed_disk_loses_its_status_entry(api: ApiServer, tmp_path: Path) -> None:
    c = await _cluster(api, tmp_path, nodes=["worker-1"], disks_per_node=2)
    try:
        await c.wait_until_ready(20)
        await c.remove_disk("worker-1", "disk-1")

        async def gone() -> bool:
            return "disk-1" not in _status_disks(await c.get_node("worker-1"))

        await c.wait_for(gone, 10, "status entry deleted")
        # re-adding the same directory records the UUID that is still in its cfg
        # (controller/node_controller.go:745 @v1.7.2)
        cfg_uuid = disks.decode_cfg((tmp_path / "worker-1" / "mnt" / "disk1" / "longhorn-disk.cfg").read_bytes()).disk_uuid
        await c.add_disk("worker-1", "disk-1", "/mnt/disk1")
        await c.wait_until_ready(20)
        assert await c.disk_uuid("worker-1", "disk-1") == cfg_uuid
    finally:
        await c.stop()


async def test_bad_cfg_is_no_disk_info(api: ApiServer, tmp_path: Path) -> None:
    c = await _cluster(api, tmp_path, nodes=["worker-1"], disks_per_node=1)
    try:
        await c.wait_until_ready(20)
        path = await c.add_disk("worker-1", "disk-bad", "/mnt/bad")
        (tmp_path / "worker-1" / "mnt" / "bad" / "longhorn-disk.cfg").write_text("{not json")

        async def entry() -> dict[str, Any] | None:
            e = _disk(await c.get_node("worker-1"), "disk-bad")
            return e if e.get("conditions") else None

        e = await c.wait_for(entry, 10, "entry for bad disk")
        # the entry exists with an empty UUID (created by alignDiskSpecAndStatus,
        # controller/node_controller.go:1668-1670 @v1.7.2, never filled while the disk is NotReady)
        assert e["diskUUID"] == ""
        r = _ready(e)
        assert r["status"] == "False" and r["reason"] == "NoDiskInfo"
        assert r["message"].startswith(f"Disk disk-bad({path}) on node worker-1 is not ready: failed to get disk config: error: ")
        assert (tmp_path / "worker-1" / "mnt" / "bad" / "longhorn-disk.cfg").read_text() == "{not json"
    finally:
        await c.stop()


async def test_disk_table_reports_recorded_and_cfg_uuids(api: ApiServer, tmp_path: Path) -> None:
    c = await _cluster(api, tmp_path, nodes=2, disks_per_node=2)
    try:
        await c.wait_until_ready(20)
        rows = await c.disk_table()
        assert len(rows) == 4
        assert all(r["diskUUID"] == r["cfgUUID"] != "" and r["ready"] == "True" for r in rows)
        assert {r["node"] for r in rows} == {"worker-1", "worker-2"}
    finally:
        await c.stop()


async def test_converges_despite_api_errors_and_dropped_watches(api: ApiServer, tmp_path: Path) -> None:
    c = await _cluster(api, tmp_path, nodes=2, disks_per_node=1)
    try:
        await c.wait_until_ready(20)
        api.faults.error_rate(0.3, 500, verbs=["get", "list", "watch", "update"], resource=NODES)
        api.faults.error_rate(0.3, 500, verbs=["update"], resource=NODES, subresource="status")
        api.faults.error_rate(0.25, 503, verbs=["create", "update"], resource="longhorn.io/v1beta2/backingimagemanagers")
        await c.add_disk("worker-2", "disk-x", "/mnt/x")
        for _ in range(3):
            api.faults.drop_watches()

        def recorded() -> bool:  # read in-process: the faults only hit HTTP clients
            node = api.store.get(NODES, "longhorn-system", "worker-2")
            e = _disk(node, "disk-x")
            return bool(e.get("diskUUID")) and _ready(e)["status"] == "True"

        await c.wait_for(recorded, 20, "disk-x recorded despite faults")
        cfg = disks.decode_cfg((tmp_path / "worker-2" / "mnt" / "x" / "longhorn-disk.cfg").read_bytes())
        assert _disk(api.store.get(NODES, "longhorn-system", "worker-2"), "disk-x")["diskUUID"] == cfg.disk_uuid
        assert api.faults.injected > 0
    finally:
        api.faults.clear()
        await c.stop()
