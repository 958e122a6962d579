"""Bugs the fuzzers of tests/fuzz and bench/fuzz_bench.py found, each pinned by the input that
showed it (reduced), against the real server or the real CLI."""

from __future__ import annotations

import copy
import json
import uuid as uuidlib
from pathlib import Path

import pytest

from bimguard import records
from bimguard.decision import rewrite_patch
from bimguard.sim.patch import apply_json_patch
from tests.fuzz.webhook_target import NAMESPACE, WELL_FORMED, ServedWebhook, check_answer
from tests.scan.clirun import one_line, scan_in_process

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures/longhorn/samples/admission/nodes-status-first-record.request.json"
CLAIMS = f"{records.GROUP}/{records.VERSION}/{records.CLAIMS}"


def first_record(node: str | None = None, disk: str = "disk-nvme2", drop_conditions: bool = False) -> dict:
    """The sample review: `disk` first recorded with a UUID whose prefix (a3af) a disk of the
    fuzz target's cluster holds, so the answer is a rewrite."""
    doc = json.loads(SAMPLE.read_text())
    req = doc["request"]
    req["uid"] = str(uuidlib.uuid4())
    if node:
        req["name"] = node
        for obj in (req["object"], req["oldObject"]):
            obj["metadata"]["name"] = node
    entry = req["object"]["status"]["diskStatus"].pop("disk-nvme2")
    entry["diskUUID"] = "a3af" + str(uuidlib.uuid4())[4:]
    if drop_conditions:
        del entry["conditions"]
    req["object"]["status"]["diskStatus"][disk] = entry
    for obj in (req["object"], req["oldObject"]):  # the spec entry under the same name
        obj["spec"]["disks"][disk] = obj["spec"]["disks"].pop("disk-nvme2")
    return doc


def post(hook: ServedWebhook, doc: dict) -> dict:
    """POST the review as kube-apiserver would send it: its oldObject is the stored Node."""
    doc, body = hook.as_stored(doc, json.dumps(doc).encode())
    status, ctype, data = hook.post(body)
    assert check_answer(doc, body, WELL_FORMED, status, ctype, data) == []
    assert hook.problems_logged() == []
    return json.loads(data)["response"]


def test_a_node_name_longer_than_a_label_value_still_gets_its_rewrite(hook: ServedWebhook) -> None:
    """A Node's name is a DNS subdomain of up to 253 characters, a label value at most 63: the
    claim and the record used the name as the value of `bimguard.io/node`, the API server refused
    them (422) and the webhook allowed the colliding disk unchanged, logging a traceback."""
    node = "ip-10-0-3-17." + "x" * 60 + ".eu-west-1.compute.internal"
    resp = post(hook, first_record(node))
    assert resp.get("patchType") == "JSONPatch", resp
    claims = [c for c in hook.run(_list(hook, CLAIMS)) if c["spec"]["node"] == node]
    assert claims and all("bimguard.io/node" not in c["metadata"]["labels"] for c in claims)
    short = post(hook, first_record("worker-7"))
    assert short.get("patchType") == "JSONPatch"
    assert any(c["metadata"]["labels"].get("bimguard.io/node") == "worker-7" for c in hook.run(_list(hook, CLAIMS)))


async def _list(hook: ServedWebhook, key: str) -> list[dict]:
    assert hook.api is not None
    return hook.api.store.list(key, NAMESPACE)[0]


def test_a_disk_entry_without_conditions_gets_a_patch_that_applies(hook: ServedWebhook) -> None:
    """The patch replaced `conditions`, which a disk entry without that member does not have:
    kube-apiserver fails the whole write when a webhook's patch does not apply, whatever the
    failurePolicy. check_answer applies the patch as the emulator's API server does."""
    resp = post(hook, first_record(disk="disk/with~slash", drop_conditions=True))
    assert resp.get("patchType") == "JSONPatch", resp


@pytest.mark.parametrize("has_conditions", [True, False])
def test_the_rewrite_patch_applies_with_and_without_conditions(has_conditions: bool) -> None:
    entry = {"diskUUID": "a3af57ea-8353-4200-a67e-6939ff4dcecf"}
    if has_conditions:
        entry["conditions"] = [{"type": "Ready", "status": "True"}]
    obj = {"status": {"diskStatus": {"a/b~c": copy.deepcopy(entry)}}}
    patched = apply_json_patch(obj, rewrite_patch("a/b~c", "1234abcd-0000-4000-8000-000000000000",
                                                  entry.get("conditions", []), "m", "now"))
    got = patched["status"]["diskStatus"]["a/b~c"]
    assert got["diskUUID"] == "1234abcd-0000-4000-8000-000000000000"
    assert {c["type"]: c["status"] for c in got["conditions"]} == {"Ready": "False", "Schedulable": "False"}


def test_a_dump_with_a_byte_that_is_not_utf8_inside_an_item_is_one_line(tmp_path, capsys) -> None:
    """A JSON array whose item holds an invalid UTF-8 byte: splitting the array into raw items
    does not look inside strings, and the per-item decode raised an uncaught DecodeError (the
    CLI's "internal error" line)."""
    dump = tmp_path / "d.json"
    dump.write_bytes(b'[{"apiVersion": "longhorn.io/v1beta2", "kind": "Replica", "metadata": {"name": "p\xb2c"}}]')
    code, out, err = scan_in_process(["--from-dump", str(dump)], capsys)
    assert (code, out) == (2, "")
    assert one_line(err) == f"bimguard scan: {dump}: not valid JSON: item #1: Invalid UTF-8 encoded string"


@pytest.mark.parametrize("value", ["1.0", "[longhorn.io/v1beta2]", "{a: b}"])
def test_an_object_whose_api_version_is_not_a_string_is_ignored(tmp_path, capsys, value: str) -> None:
    """YAML `apiVersion: 1.0` is a float: `"/" in 1.0` raised TypeError (internal error)."""
    node = ("apiVersion: longhorn.io/v1beta2\nkind: Node\nmetadata: {name: n1, namespace: longhorn-system}\n"
            "status:\n  diskStatus:\n    d1: {diskUUID: c01200da-8a5c-4692-92e6-c4a983087951, diskType: filesystem}\n")
    dump = tmp_path / "d.yaml"
    dump.write_text(f"apiVersion: {value}\nkind: Node\nmetadata: {{name: odd}}\n---\n{node}")
    code, out, err = scan_in_process(["--from-dump", str(dump), "-o", "json"], capsys)
    assert (code, err) == (0, ""), err
    assert json.loads(out)["disks"]["total"] == 1
    dump.write_text(f"apiVersion: longhorn.io/v1beta2\nkind: {value}\nmetadata: {{name: odd}}\n---\n{node}")
    code, out, err = scan_in_process(["--from-dump", str(dump), "-o", "json"], capsys)
    assert (code, err) == (0, ""), err


def test_a_dump_whose_every_node_is_skipped_is_one_line_naming_the_first(tmp_path, capsys) -> None:
    """The message said "(N, see below)" and five more lines followed; every error is one line."""
    dump = tmp_path / "d.json"
    nodes = [{"apiVersion": "longhorn.io/v1beta2", "kind": "Node", "metadata": {"name": f"n{i}"},
              "status": {"diskStatus": "broken"}} for i in (1, 2, 3)]
    dump.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
    code, out, err = scan_in_process(["--from-dump", str(dump)], capsys)
    assert (code, out) == (2, "")
    line = one_line(err)
    assert line.startswith(f"bimguard scan: {dump}: no usable nodes.longhorn.io: every Longhorn Node or disk was "
                           f"skipped, first Node n1 in {dump}: "), line
    assert line.endswith(" (and 2 more); nothing can be concluded"), line


def test_a_skipped_object_whose_name_is_null_is_reported_with_a_string_name(tmp_path, capsys) -> None:
    """`"metadata": {"name": null}` on a malformed Longhorn object put `"name": null` into the
    report's `skipped`, which docs/scan-report.schema.json (and its readers) type as a string."""
    import jsonschema

    from tests.scan.clirun import A, SCHEMA

    node = {"apiVersion": "longhorn.io/v1beta2", "kind": "Node", "metadata": {"name": "n1"},
            "status": {"diskStatus": {"d": {"diskUUID": A, "diskType": "filesystem"}}}}
    odd = {"apiVersion": "longhorn.io/v1beta2", "kind": "Replica", "metadata": {"name": None}, "spec": "broken"}
    dump = tmp_path / "d.json"
    dump.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [odd, node]}))
    code, out, err = scan_in_process(["--from-dump", str(dump), "-o", "json"], capsys)
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    assert (code, err) == (1, "") and [(s["kind"], s["name"]) for s in doc["skipped"]] == [("Replica", "?")]


def test_a_backing_image_key_that_is_not_a_uuid_is_no_stuck_copy(tmp_path, capsys) -> None:
    """A damaged key of a BackingImage's diskFileSpecMap (`c012eb76-...-b81d-}472e...`) was reported
    as a symptom whose diskUUID is not a UUID (the schema's `uuid`), with the BIM name its first
    four characters would give."""
    from tests.scan.clirun import SCHEMA

    import jsonschema

    from tests.builders import as_list, backing_image, bim, disk_entry, node

    owner = "c01200da-8a5c-4692-92e6-c4a983087951"
    objs = [node("n1", {"d1": disk_entry(owner, "/d1")}),
            bim("backing-image-manager-5ae6-c012", "n1", owner, "longhornio/backing-image-manager:v1.7.2", ["parrot"]),
            backing_image("parrot", [owner, "c012eb76-f8eb-4ea1-b81d-}472eac9d98bf"], {owner: "ready"})]
    dump = tmp_path / "d.json"
    dump.write_text(json.dumps(as_list(objs)))
    code, out, err = scan_in_process(["--from-dump", str(dump), "-o", "json"], capsys)
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    assert (code, err, doc["symptoms"]) == (0, "", [])


@pytest.mark.parametrize("path", ["", "relative/dir", "/", "/mnt//x", "/mnt/./x", "/mnt/../etc"])
def test_a_colliding_disk_whose_path_a_record_cannot_hold_is_allowed_without_a_traceback(
        hook: ServedWebhook, path: str) -> None:
    """The DiskRewrite CRD requires an absolute diskPath without empty, "." or ".." segments; a
    first-recorded colliding disk without such a path (no spec entry, an odd status) made the
    record's create fail with 422: an internal error with a traceback. It is now allowed unchanged
    and counted under its own reason."""
    doc = first_record()
    for obj in (doc["request"]["object"], doc["request"]["oldObject"]):
        obj["spec"]["disks"]["disk-nvme2"]["path"] = path
    doc["request"]["object"]["status"]["diskStatus"]["disk-nvme2"]["diskPath"] = path
    before = hook.metric("bimguard_admission_skipped_total", reason="invalid_disk_path")
    resp = post(hook, doc)
    assert "patch" not in resp
    assert hook.metric("bimguard_admission_skipped_total", reason="invalid_disk_path") == before + 1


@pytest.mark.parametrize("path,ok", [("/var/lib/longhorn/", True), ("/mnt/nvme1", True), ("/a/.../b", True),
                                     ("/a/.b", True), ("/", False), ("", False), ("a/b", False), ("/a//b", False),
                                     ("/a/./b", False), ("/a/../b", False), ("/a//", False), ("/" + "a" * 4096, False)])
def test_valid_disk_path_agrees_with_the_crd_pattern(path: str, ok: bool) -> None:
    import re

    import yaml

    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "charts/bimguard/crds/diskrewrites.bimguard.io.yaml")
                         .read_text())
    prop = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["diskPath"]
    by_pattern = len(path) <= prop["maxLength"] and re.fullmatch(prop["pattern"].strip("^$"), path) is not None
    assert records.valid_disk_path(path) == by_pattern == ok


@pytest.mark.parametrize("collides", [True, False])
def test_an_upper_case_uuid_gets_a_claim_the_api_server_accepts(hook: ServedWebhook, collides: bool) -> None:
    """Since the webhook keeps a UUID as Longhorn recorded it, an upper-case one went into the
    PrefixClaim's spec.uuid, which the CRD's pattern requires in lower case: 422, an internal error
    with a traceback, and no prevention for that disk. The claim now holds it in lower case."""
    doc = first_record()
    entry = doc["request"]["object"]["status"]["diskStatus"]["disk-nvme2"]
    upper = (entry["diskUUID"] if collides else str(uuidlib.uuid4())).upper()
    entry["diskUUID"] = upper
    resp = post(hook, doc)
    assert ("patch" in resp) is collides
    if not collides:
        claim = next(c for c in hook.run(_list(hook, CLAIMS)) if c["metadata"]["name"] == upper[:4].lower())
        assert claim["spec"]["uuid"] == upper.lower()


def test_the_harness_stores_a_review_whose_node_uid_is_also_its_request_uid(hook: ServedWebhook) -> None:
    """Found by the bench in the harness, not the server: hypothesis drew the same UUID for the
    request's uid and the Node's; rewriting the Node's uid in the body rewrote the request's too."""
    doc = first_record("worker-8")
    same = doc["request"]["uid"]
    for obj in (doc["request"]["object"], doc["request"]["oldObject"]):
        obj["metadata"]["uid"] = same
    resp = post(hook, doc)
    assert resp["uid"] == same and resp.get("patchType") == "JSONPatch"


@pytest.mark.parametrize("odd", ["\x0c", "\n", "\x0b", "\x1e", "\u2028", "\x85"])
def test_an_error_quoting_the_input_stays_one_line(tmp_path, capsys, odd: str) -> None:
    """The 'no nodes.longhorn.io' message quotes the kinds and apiVersions the input holds, and the
    'every Node skipped' one a Node's name: a form feed, newline, vertical tab, record separator,
    U+2028 or NEL there split the error over two lines (str.splitlines, a terminal)."""
    dump = tmp_path / "d.json"
    dump.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": f"x{odd}y/v1", "kind": f"Odd{odd}Kind", "metadata": {"name": "a"}}]}))
    code, out, err = scan_in_process(["--from-dump", str(dump)], capsys)
    assert (code, out) == (2, "")
    assert "(x\\x" in one_line(err) or "(x\\u2028y/v1)" in one_line(err)
    dump.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "longhorn.io/v1beta2", "kind": "Node", "metadata": {"name": f"n{odd}1"},
         "status": {"diskStatus": "broken"}}]}))
    code, out, err = scan_in_process(["--from-dump", str(dump)], capsys)
    assert (code, out) == (2, "")
    assert "first Node n\\x" in one_line(err) or "first Node n\\u2028" in one_line(err)


@pytest.mark.parametrize("damage", ["version", "encrypted", "deflate"])
def test_a_zip_python_cannot_read_is_one_line(tmp_path, capsys, damage: str) -> None:
    """A damaged zip whose central directory names extract version 22.3 made zipfile raise
    NotImplementedError, which the bundle reader did not expect ("internal error"); an encrypted
    member (RuntimeError) and corrupt deflate data (zlib.error) likewise."""
    import zipfile

    members = {f"sb/yamls/namespaced/longhorn-system/longhorn.io/v1beta2/{r}.yaml": "apiVersion: v1\nkind: List\nitems: []\n" * 20
               for r in ("nodes", "replicas")}
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    if damage == "version":
        data[central + 6:central + 8] = (223).to_bytes(2, "little")
    elif damage == "encrypted":
        data[central + 8] |= 1
    else:
        local = data.index(b"PK\x03\x04")
        start = local + 30 + int.from_bytes(data[local + 26:local + 28], "little")
        data[start:start + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    code, out, err = scan_in_process(["--support-bundle", str(path)], capsys)
    assert (code, out) == (2, "")
    assert one_line(err).startswith(f"bimguard scan: {path}: unreadable zip: "), err
