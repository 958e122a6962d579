"""Bad inputs get one line naming the actual problem and its fix, and what is read is bounded (issue 14)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import yaml

from tests.builders import as_list, disk_entry, node
from tests.scan.clirun import EXAMPLE, A, cli, one_line, scan_in_process, scan_json, write


def test_dev_zero_fails_fast_with_one_line():
    r = cli("scan", "--from-dump", "/dev/zero", timeout=20)
    assert r.returncode == 2
    assert one_line(r.stderr) == "bimguard scan: /dev/zero: binary data (NUL bytes), not a JSON or YAML dump"


def test_a_file_past_the_maximum_size_is_refused_before_reading(tmp_path):
    from bimguard.sources.dump import MAX_DUMP_BYTES

    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:  # sparse: no disk space, no read
        f.truncate(MAX_DUMP_BYTES + 1)
    r = cli("scan", "--from-dump", str(huge), timeout=20)
    assert r.returncode == 2
    assert one_line(r.stderr) == (f"bimguard scan: {huge}: larger than 4 GiB, the most a dump may have "
                                  f"(bimguard.sources.dump.MAX_DUMP_BYTES): is this really a kubectl dump?")


def test_a_stream_past_the_maximum_size_is_refused(monkeypatch, capsys):
    monkeypatch.setattr("bimguard.sources.dump.MAX_DUMP_BYTES", 3 << 20)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b" " * (4 << 20))))
    code, out, err = scan_in_process(["--from-dump", "-"], capsys)
    assert (code, out) == (2, "")
    assert one_line(err) == ("bimguard scan: standard input: larger than 0.00292969 GiB, the most a dump may have "
                             "(bimguard.sources.dump.MAX_DUMP_BYTES): is this really a kubectl dump?")


def test_a_json_dump_given_as_a_support_bundle(tmp_path):
    r = cli("scan", "--support-bundle", EXAMPLE)
    assert r.returncode == 2
    assert one_line(r.stderr) == (f"bimguard scan: {EXAMPLE}: a JSON or YAML file, not a Longhorn support bundle "
                                  f"(a .zip or its extracted directory): for a kubectl dump use --from-dump {EXAMPLE}")


def test_standard_input_is_called_standard_input(tmp_path):
    data = Path(EXAMPLE).read_bytes()
    r = cli("scan", "--from-dump", "-", stdin=data)
    assert r.returncode == 1 and r.stdout.decode().splitlines()[0] == "bimguard scan of standard input"
    r = cli("scan", "--from-dump", "-", stdin=b"{")
    assert one_line(r.stderr).startswith("bimguard scan: standard input: not valid JSON")
    r = cli("scan", "--from-dump", "-", stdin=b"")
    assert one_line(r.stderr).startswith("bimguard scan: standard input: empty: no Kubernetes objects in it; dump ")


def test_a_cluster_without_disks_has_zero_risk_not_minus_zero(tmp_path):
    dump = write(tmp_path / "d.json", as_list([node("n1", {})]))
    code, doc, _ = scan_json(dump)
    p = doc["probability"]
    assert code == 0 and p["birthday"] == 0 and math.copysign(1, p["birthday"]) == 1
    assert math.copysign(1, p["nextDiskCollides"]) == 1
    out = cli("scan", "--from-dump", dump).stdout.decode()
    assert "-0" not in out and "collides with 0 % chance" in out


def test_non_objects_among_objects_are_named_by_position(tmp_path):
    dump = write(tmp_path / "d.json", as_list([node("n1", {"d": disk_entry(A, "/d")}), "stray", 7]))
    code, doc, _ = scan_json(dump)
    assert [(s["kind"], s["name"], s["error"]) for s in doc["skipped"]] == [
        ("item", "#2", "a string, not a Kubernetes object"), ("item", "#3", "a number, not a Kubernetes object")]
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(as_list([node("n1", {"d": disk_entry(A, "/d")}), "stray"])))
    code, doc, _ = scan_json(str(tmp_path / "d.yaml"))
    assert [(s["kind"], s["name"], s["error"]) for s in doc["skipped"]] == [
        ("item", "#2", "a string ('stray'), not a Kubernetes object")]


def test_a_utf16_dump_from_powershell_is_read(tmp_path):
    dump = tmp_path / "ps.json"
    dump.write_bytes(Path(EXAMPLE).read_text().encode("utf-16"))  # with a BOM, as PowerShell's `>` writes
    code, doc, err = scan_json(str(dump))
    assert (code, err, len(doc["collisions"])) == (1, "", 1)
