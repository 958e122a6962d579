"""Every offline source format gives the same findings for the same objects."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from jobs.cli import main

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "docs" / "scan-report.schema.json").read_text())
COLLISION_FILES = ["node-worker-a.yaml", "node-worker-b.yaml", "replicas.yaml", "backingimage-stuck.yaml",
                   "backingimagemanager-existing.yaml"]


def scan(args: list[str], capsys, stdin: bytes | None = None, monkeypatch=None) -> tuple[int, dict | str, str]:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(["scan", *args])
    out, err = capsys.readouterr()
    if "-o" in args and args[args.index("-o") + 1] == "json" and out:
        doc = json.loads(out)
        jsonschema.validate(doc, SCHEMA)
        return code, doc, err
    return code, out, err


def findings(doc: dict) -> dict:
    """The report without where it came from."""
    return {k: v for k, v in doc.items() if k not in ("source", "skipped")}


@pytest.fixture
def collision_objects(fixtures: Path) -> list[dict]:
    objs = []
    for name in COLLISION_FILES:
        objs += [d for d in yaml.safe_load_all((fixtures / "longhorn/samples/collision" / name).read_text()) if d]
    objs += [yaml.safe_load((fixtures / "longhorn/samples/healthy/setting-default-backing-image-manager-image.yaml")
                            .read_text())]
    return objs


@pytest.fixture
def bundle_dir(fixtures: Path) -> Path:
    (bundle,) = (fixtures / "longhorn/samples/support-bundle").glob("supportbundle_*")
    return bundle


def test_collision_sample_matches_the_expected_findings(fixtures, collision_objects, tmp_path, capsys):
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": collision_objects}, indent=4))
    code, doc, _ = scan(["--from-dump", str(dump), "-o", "json"], capsys)
    expected = yaml.safe_load((fixtures / "longhorn/samples/collision/expected-findings.yaml").read_text())
    assert code == 1
    assert doc["longhorn"]["bimImage"] == expected["bimImage"]
    assert doc["longhorn"]["bimImagePrefix"] == expected["bimImagePrefix"]
    assert doc["longhorn"]["version"] == expected["longhornVersionAssumed"] and doc["longhorn"]["affected"] is True
    (group,) = doc["collisions"]
    (want,) = expected["prefixGroups"].values()
    assert group["prefix"] == next(iter(expected["prefixGroups"])) and group["kind"] == "prefix"
    assert [(d["node"], d["disk"], d["uuid"], d["path"], d["ownsBim"], d["replicas"], d["backingImageCopies"])
            for d in group["disks"]] == [
        (w["node"], w["disk"], w["diskUUID"], w["path"], w["ownsBIM"], len(w["replicas"]),
         len(w["backingImageCopies"])) for w in want]
    node, disk = expected["recommendedSideToRegenerate"].split("/")
    assert group["regenerate"] == [{"node": node, "disk": disk, "needsEviction": True,
                                    "reason": group["regenerate"][0]["reason"]}]
    assert (group["keep"]["node"], group["keep"]["disk"]) == ("worker-a", "disk-7")
    (sym,) = doc["symptoms"]
    (exp,) = expected["activeSymptoms"]
    assert (sym["backingImage"], sym["diskUUID"], sym["expectedBimName"], sym["bimOwner"]["uuid"],
            sym["stuckReplicas"]) == (exp["backingImage"], exp["diskUUID"], exp["expectedBIMName"],
                                       exp["bimWithThatNameBelongsTo"], exp["stuckReplicas"])


def test_all_offline_formats_agree(collision_objects, bundle_dir, tmp_path, capsys, monkeypatch):
    json_list = json.dumps({"apiVersion": "v1", "kind": "List", "items": collision_objects}, indent=4)
    (tmp_path / "list.json").write_text(json_list)
    (tmp_path / "list.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List",
                                                        "items": collision_objects}))
    (tmp_path / "multi.yaml").write_text(yaml.safe_dump_all(collision_objects))
    objdir = tmp_path / "objects"
    (objdir / "nested").mkdir(parents=True)
    for i, obj in enumerate(collision_objects):  # single objects, JSON and YAML, some in a subdirectory
        target = objdir / ("nested" if i % 2 else "") / f"{i}.{'json' if i % 3 else 'yaml'}"
        target.write_text(json.dumps(obj) if i % 3 else yaml.safe_dump(obj))
    (objdir / "notes.txt").write_text("not a dump file: ignored")
    # A zipped support bundle in the real layout: one top directory, zip -r (rancher/support-bundle-kit
    # pkg/manager/manager.go:430-437 @v0.0.45).
    zpath = tmp_path / "bundle.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in bundle_dir.rglob("*"):
            if f.is_file():
                zf.write(f, f"{bundle_dir.name}/{f.relative_to(bundle_dir)}")
    results = []
    for args in (["--from-dump", str(tmp_path / "list.json")], ["--from-dump", str(tmp_path / "list.yaml")],
                 ["--from-dump", str(tmp_path / "multi.yaml")], ["--from-dump", str(objdir)],
                 ["--support-bundle", str(zpath)], ["--support-bundle", str(bundle_dir)]):
        code, doc, err = scan([*args, "-o", "json"], capsys)
        assert (code, err) == (1, ""), args
        assert doc["skipped"] == [], args
        results.append(findings(doc))
    code, doc, _ = scan(["--from-dump", "-", "-o", "json"], capsys, stdin=json_list.encode(), monkeypatch=monkeypatch)
    results.append(findings(doc))
    assert all(r == results[0] for r in results)
    assert results[0]["collisions"][0]["prefix"] == "c012"


def test_bundle_null_and_float_rewriting_is_undone(bundle_dir, tmp_path, capsys):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    nodes = copy / "yamls/namespaced/longhorn-system/longhorn.io/v1beta2/nodes.yaml"
    # A disk whose UUID is not recorded yet appears as "null" in a bundle; a 1e+10 float stays a string in YAML.
    text = nodes.read_text().replace("diskUUID: a9394d40-2811-4778-89bd-03edf86d0e75", 'diskUUID: "null"')
    text = text.replace("storageScheduled: 0\n", "storageScheduled: 1e+10\n", 1)
    nodes.write_text(text)
    code, doc, _ = scan(["--support-bundle", str(copy), "-o", "json"], capsys)
    assert code == 1 and doc["skipped"] == []
    assert doc["disks"]["withoutUuid"] == 1


def test_table_output_is_readable(tmp_path, collision_objects, capsys):
    dump = tmp_path / "d.yaml"
    dump.write_text(yaml.safe_dump_all(collision_objects))
    code, out, _ = scan(["--from-dump", str(dump)], capsys)
    assert code == 1
    assert "COLLISION c012" in out and "backing-image-manager-5ae6-c012" in out
    assert "keep        worker-a/disk-7: owns backing-image-manager-5ae6-c012" in out
    assert "regenerate  worker-b/default-disk-a0c5d780fe32c91c" in out
    assert "Result: 1 collision group(s) to repair" in out


def test_dumps_above_the_mapping_threshold_give_the_same_findings(collision_objects, tmp_path, capsys, monkeypatch):
    """Large files are memory-mapped (bimguard.sources.dump.MAP_FROM_BYTES), small ones read: a
    well-formed List (the one-pass typed decode), a List mixing in other kinds (the per-item path
    over msgspec.Raw) and YAML with a BOM all give the findings of the same objects from stdin."""
    from bimguard.sources.dump import MAP_FROM_BYTES

    padded = [dict(o) for o in collision_objects]
    padded[0] = {**padded[0], "metadata": {**padded[0]["metadata"], "annotations": {"pad": "x" * MAP_FROM_BYTES}}}
    configmaps = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{i}"}, "data": {"k": "v" * 1024}}
                  for i in range(MAP_FROM_BYTES // 1024 + 1)]
    files = {
        "typed.json": json.dumps({"apiVersion": "v1", "kind": "List", "items": padded}, indent=4).encode(),
        "mixed.json": json.dumps({"apiVersion": "v1", "kind": "List", "items": configmaps + collision_objects}).encode(),
        "bom.yaml": b"\xef\xbb\xbf" + yaml.safe_dump_all(padded).encode(),
    }
    code, doc, _ = scan(["--from-dump", "-", "-o", "json"], capsys, monkeypatch=monkeypatch,
                        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": collision_objects}).encode())
    want = findings(doc)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert len(data) >= MAP_FROM_BYTES
        code, doc, err = scan(["--from-dump", str(tmp_path / name), "-o", "json"], capsys)
        assert (code, err, doc["skipped"]) == (1, "", []), name
        assert findings(doc) == want, name
