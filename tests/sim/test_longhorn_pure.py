"""Pure parts of the simulated Longhorn: cfg format, disk monitor over real tmp dirs, node status.

Expected strings are copied from lm v1.7.2 (util/util.go:637-641, controller/monitor/disk_monitor.go:269,293,
controller/node_controller.go:705,708,740,789,827,885), not from the code under test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bimguard.sim.longhorn import disks, node_status as ns, orphans
from bimguard.sim.longhorn.backing_images import bim_name
from bimguard.sim.longhorn.monitor import HostDisks, collect_disk_data
from bimguard.sim.uuidgen import UuidGen

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:01:00Z"


def _node(disk_specs: dict[str, str], status: dict | None = None, name: str = "worker-1") -> dict:
    return {
        "metadata": {"name": name, "namespace": "longhorn-system", "resourceVersion": "1"},
        "spec": {
            "allowScheduling": True, "evictionRequested": False, "name": name, "tags": [],
            "disks": {
                d: {"path": p, "diskType": "filesystem", "allowScheduling": True, "evictionRequested": False,
                    "storageReserved": 0, "tags": [], "diskDriver": ""}
                for d, p in disk_specs.items()
            },
        },
        "status": status or {},
    }


def _host(tmp_path: Path, node: str, *paths: str) -> HostDisks:
    h = HostDisks(tmp_path, node)
    for p in paths:
        h.dir(p).mkdir(parents=True, exist_ok=True)
    return h


def test_cfg_encoding_is_longhorns_exact_bytes() -> None:
    cfg = disks.DiskConfig("disk-7", "c01200da-8a5c-4692-92e6-c4a983087951")
    assert disks.encode_cfg(cfg) == b'{"diskName":"disk-7","diskUUID":"c01200da-8a5c-4692-92e6-c4a983087951","diskDriver":""}'
    assert disks.decode_cfg(disks.encode_cfg(cfg)) == cfg


def test_monitor_generates_cfg_once_and_never_overwrites(tmp_path: Path) -> None:
    host = _host(tmp_path, "worker-1", "/mnt/d1")
    gen = UuidGen(5)
    node = _node({"d1": "/mnt/d1"})
    info = collect_disk_data(node, host, gen, [])["d1"]
    cfg_file = host.dir("/mnt/d1") / "longhorn-disk.cfg"
    raw = cfg_file.read_bytes()
    assert raw == disks.encode_cfg(disks.DiskConfig("d1", info.disk_uuid)) and not raw.endswith(b"\n")
    assert oct(cfg_file.stat().st_mode & 0o777) == "0o644"
    assert (host.dir("/mnt/d1") / "replicas").is_dir()
    assert not info.has_error
    # second poll reads the same file
    assert collect_disk_data(node, host, gen, [])["d1"].disk_uuid == info.disk_uuid
    assert cfg_file.read_bytes() == raw


def test_vanished_cfg_gets_a_new_random_uuid(tmp_path: Path) -> None:
    host = _host(tmp_path, "worker-1", "/mnt/d1")
    gen = UuidGen(5)
    node = _node({"d1": "/mnt/d1"})
    first = collect_disk_data(node, host, gen, [])["d1"].disk_uuid
    os.remove(host.dir("/mnt/d1") / "longhorn-disk.cfg")
    second = collect_disk_data(node, host, gen, [])["d1"].disk_uuid
    assert second != first and len(second) == 36


def test_bad_json_is_no_disk_info_without_regeneration(tmp_path: Path) -> None:
    host = _host(tmp_path, "worker-1", "/mnt/d1")
    (host.dir("/mnt/d1") / "longhorn-disk.cfg").write_text("garbage")
    info = collect_disk_data(_node({"d1": "/mnt/d1"}), host, UuidGen(1), [])["d1"]
    assert info.error_reason == "NoDiskInfo"
    assert info.error_message.startswith("Disk d1(/mnt/d1) on node worker-1 is not ready: failed to get disk config: error: ")
    assert (host.dir("/mnt/d1") / "longhorn-disk.cfg").read_text() == "garbage"


def test_missing_directory_is_no_disk_info(tmp_path: Path) -> None:
    host = HostDisks(tmp_path, "worker-1")
    info = collect_disk_data(_node({"d1": "/mnt/nothere"}), host, UuidGen(1), [])["d1"]
    assert info.error_reason == "NoDiskInfo"
    assert "failed to generate disk config" in info.error_message


def _sync(node, collected, replicas=(), now=NOW):
    return ns.sync_node_status(node, collected, list(replicas), [], now, owner=True)


def test_first_record_creates_entry_and_uuid_together(tmp_path: Path) -> None:
    host = _host(tmp_path, "worker-1", "/mnt/d1")
    node = _node({"d1": "/mnt/d1"})
    # before the monitor saw the disk: early return, no diskStatus at all
    res = _sync(node, {})
    assert res.disk_part_skipped and "diskStatus" not in res.status
    collected = collect_disk_data(node, host, UuidGen(2), [])
    res = _sync(node, collected)
    entry = res.status["diskStatus"]["d1"]
    assert entry["diskUUID"] == collected["d1"].disk_uuid
    ready = ns.get_condition(entry["conditions"], "Ready")
    assert ready["status"] == "True" and ready["message"] == "Disk d1(/mnt/d1) on node worker-1 is ready"
    assert ready["lastTransitionTime"] == NOW and ready["lastProbeTime"] == ""
    sched = ns.get_condition(entry["conditions"], "Schedulable")
    assert sched["status"] == "True" and sched["message"] == "Disk d1(/mnt/d1) on node worker-1 is schedulable"
    assert entry["storageAvailable"] % (100 * 1024 * 1024) == 0
    assert {(e.reason, e.type) for e in res.events} >= {("Ready", "Normal"), ("Schedulable", "Normal")}


def test_mismatch_and_missing_cfg_messages_and_recovery(tmp_path: Path) -> None:
    host = _host(tmp_path, "worker-1", "/mnt/d1")
    node = _node({"d1": "/mnt/d1"})
    collected = collect_disk_data(node, host, UuidGen(2), [])
    node["status"] = _sync(node, collected).status
    real = collected["d1"].disk_uuid
    node["status"]["diskStatus"]["d1"]["diskUUID"] = "aaaa" + real[4:]  # e.g. a webhook changed it
    res = _sync(node, collected, now=LATER)
    entry = res.status["diskStatus"]["d1"]
    ready = ns.get_condition(entry["conditions"], "Ready")
    assert ready["status"] == "False" and ready["reason"] == "DiskFilesystemChanged"
    assert ready["message"] == "Disk d1(/mnt/d1) on node worker-1 is not ready: record diskUUID doesn't match the one on the disk "
    assert ready["lastTransitionTime"] == LATER
    assert entry["diskUUID"] == "aaaa" + real[4:]  # never overwritten
    sched = ns.get_condition(entry["conditions"], "Schedulable")
    assert (sched["status"], sched["reason"], sched["message"]) == ("False", "DiskNotReady", "Disk d1 (/mnt/d1) on the node worker-1 is not ready")
    assert entry["storageMaximum"] == 0 and entry["scheduledReplica"] == {}
    assert ("Ready", "Warning") in {(e.reason, e.type) for e in res.events}
    # unchanged inputs -> no new events, same status (status written only if changed)
    node["status"] = res.status
    again = _sync(node, collected, now="2026-01-01T00:02:00Z")
    assert again.status == res.status and again.events == []
    # cfg rewritten to match -> Ready again
    disks.replace_cfg_atomically(host.dir("/mnt/d1"), disks.DiskConfig("d1", "aaaa" + real[4:]))
    collected2 = collect_disk_data(node, host, UuidGen(9), [])
    rec = _sync(node, collected2).status["diskStatus"]["d1"]
    assert ns.get_condition(rec["conditions"], "Ready")["status"] == "True"
    # cfg missing but recorded UUID present -> "cannot find disk config file" (monitor saw no cfg)
    from bimguard.sim.longhorn.monitor import DiskInfo
    blank = {"d1": DiskInfo("d1", "", "/mnt/d1", "", False, collected["d1"].stat)}
    msg = ns.get_condition(_sync(node, blank).status["diskStatus"]["d1"]["conditions"], "Ready")["message"]
    assert msg == "Disk d1(/mnt/d1) on node worker-1 is not ready: cannot find disk config file, maybe due to a mount error"


def test_scheduled_replica_from_labels_and_disk_removal(tmp_path: Path) -> None:
    host = _host(tmp_path, "worker-1", "/mnt/d1", "/mnt/d2")
    node = _node({"d1": "/mnt/d1", "d2": "/mnt/d2"})
    collected = collect_disk_data(node, host, UuidGen(2), [])
    u1 = collected["d1"].disk_uuid
    rep = {"metadata": {"name": "v-r-1", "labels": {"longhorndiskuuid": u1}},
           "spec": {"nodeID": "old-node", "diskPath": "/old", "volumeSize": "1073741824"}}
    res = _sync(node, collected, [rep])
    assert res.status["diskStatus"]["d1"]["scheduledReplica"] == {"v-r-1": 1073741824}
    assert res.status["diskStatus"]["d1"]["storageScheduled"] == 1073741824
    assert res.relinks == [ns.Relink("replicas", "v-r-1", "worker-1", "/mnt/d1")]
    node["status"] = res.status
    del node["spec"]["disks"]["d2"]
    del collected["d2"]
    assert set(_sync(node, collected).status["diskStatus"]) == {"d1"}


def test_same_fsid_only_one_ready(tmp_path: Path) -> None:
    host = _host(tmp_path, "worker-1", "/mnt/d1")
    node = _node({"a": "/mnt/d1", "b": "/mnt/d1"})
    collected = collect_disk_data(node, host, UuidGen(2), [])
    st = _sync(node, collected).status["diskStatus"]
    readies = sorted(ns.get_condition(st[d]["conditions"], "Ready")["status"] for d in ("a", "b"))
    assert readies == ["False", "True"]
    bad = next(d for d in ("a", "b") if ns.get_condition(st[d]["conditions"], "Ready")["status"] == "False")
    assert "disk has same file system ID" in ns.get_condition(st[bad]["conditions"], "Ready")["message"]


def test_eviction_only_for_scheduled_replicas() -> None:
    node = _node({"d1": "/mnt/d1"})
    node["spec"]["disks"]["d1"]["evictionRequested"] = True
    rep = {"metadata": {"name": "r1"}, "spec": {"evictionRequested": False}}
    status_ready = {"diskStatus": {"d1": {"scheduledReplica": {"r1": 1}}}}
    status_not_ready = {"diskStatus": {"d1": {"scheduledReplica": {}}}}
    assert ns.eviction_updates(node, status_ready, [rep]) == {"r1": True}
    assert ns.eviction_updates(node, status_not_ready, [rep]) == {}


def test_bi_eviction_only_for_status_listed_copies() -> None:
    node = _node({"d1": "/mnt/d1"})
    node["spec"]["disks"]["d1"]["evictionRequested"] = True
    status = {"diskStatus": {"d1": {"diskUUID": "u1"}}}
    spec_only = {"metadata": {"name": "a"}, "spec": {"diskFileSpecMap": {"u1": {"evictionRequested": False}}}, "status": {}}
    listed = {"metadata": {"name": "b"}, "spec": {"diskFileSpecMap": {"u1": {"evictionRequested": False}}},
              "status": {"diskFileStatusMap": {"u1": {"state": "ready"}}}}
    assert ns.backing_image_eviction_updates(node, status, [spec_only, listed]) == ([("b", "u1", True)], [])


def test_names_match_longhorn_samples() -> None:
    # samples/collision/backingimagemanager-existing.yaml
    assert bim_name("longhornio/backing-image-manager:v1.7.2", "c01200da-8a5c-4692-92e6-c4a983087951") == "backing-image-manager-5ae6-c012"
    # samples/healthy/orphan.yaml: name = orphan- + sha256(node-diskName-diskPath-diskUUID-dataDir)
    name = orphans.orphan_name("worker-1", "disk-hdd1", "/mnt/hdd1", "41449e05-f11f-4757-b817-ccc567721f62",
                               "pvc-5e6f7a8b-1c2d-4e3f-9a0b-c1d2e3f4a5b6-2d9c4e1a")
    assert name.startswith("orphan-") and len(name) == 7 + 64


def test_orphan_dirs_need_volume_meta_and_no_matching_replica(tmp_path: Path) -> None:
    host = _host(tmp_path, "worker-1", "/mnt/d1")
    node = _node({"d1": "/mnt/d1"})
    collected = collect_disk_data(node, host, UuidGen(2), [])
    node["status"] = _sync(node, collected).status
    u = collected["d1"].disk_uuid
    rdir = host.dir("/mnt/d1") / "replicas"
    for d in ("vol-aaaaaaaa", "vol-bbbbbbbb", "vol-cccccccc"):
        (rdir / d).mkdir()
    (rdir / "vol-aaaaaaaa" / "volume.meta").write_text("{}")
    (rdir / "vol-bbbbbbbb" / "volume.meta").write_text("{}")
    (rdir / "not-a-replica").mkdir()
    rep = {"metadata": {"name": "r", "labels": {"longhorndiskuuid": u}},
           "spec": {"diskPath": "/mnt/d1", "dataDirectoryName": "vol-bbbbbbbb"}}
    info = collect_disk_data(node, host, UuidGen(2), [rep])["d1"]
    assert info.orphaned_dirs == frozenset({"vol-aaaaaaaa"})
    json.dumps(orphans.orphan_manifest(node, "d1", u, "vol-aaaaaaaa"))


from hypothesis import given, settings, strategies as st  # noqa: E402

from bimguard.sim.longhorn.disks import DiskStat  # noqa: E402
from bimguard.sim.longhorn.monitor import DiskInfo  # noqa: E402

UUIDS = ["", "c01200da-8a5c-4692-92e6-c4a983087951", "c012eb76-f8eb-4ea1-b81d-472eac9d98bf"]


@settings(max_examples=200, deadline=None)
@given(recorded=st.sampled_from(UUIDS), cfg=st.sampled_from(UUIDS + ["<error>"]), entry_exists=st.booleans())
def test_recorded_uuid_is_never_overwritten_and_ready_iff_agreeing(recorded: str, cfg: str, entry_exists: bool) -> None:
    """lm v1.7.2 findNotReadyAndReadyDiskMaps (controller/node_controller.go:696-712,745) as a property
    over (recorded UUID, cfg UUID, monitor error)."""
    status: dict = {}
    if entry_exists or recorded:
        status = {"diskStatus": {"d": {"diskUUID": recorded, "conditions": []}}}
    node = _node({"d": "/mnt/d"}, status)
    stat = DiskStat("fsid-1", 200 * 1024**3, 190 * 1024**3)
    if cfg == "<error>":
        info = DiskInfo("d", "", "/mnt/d", "", False, None, frozenset(), "NoDiskInfo", "Disk d(/mnt/d) on node worker-1 is not ready: x")
    else:
        info = DiskInfo("d", cfg, "/mnt/d", "", False, stat)
    entry = _sync(node, {"d": info}).status["diskStatus"]["d"]
    ready = ns.get_condition(entry["conditions"], "Ready")["status"]
    if recorded:
        assert entry["diskUUID"] == recorded
    elif cfg not in ("", "<error>"):
        assert entry["diskUUID"] == cfg
    else:
        assert entry["diskUUID"] == ""
    # Longhorn checks the cfg only against a non-empty recorded UUID (node_controller.go:700-712):
    # with nothing recorded even a cfg whose diskUUID is "" makes a Ready disk.
    agree = cfg != "<error>" and (recorded in ("", cfg))
    assert (ready == "True") == agree
    sched = ns.get_condition(entry["conditions"], "Schedulable")
    assert (sched["status"] == "True") == agree
