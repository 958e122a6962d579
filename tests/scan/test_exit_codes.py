"""Only a scan result exits 0 or 1, and 0 only for a complete one (issue 14): a full disk is exit 2 with one
line, a closed pipe keeps the verdict, skipped objects make the scan incomplete."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.builders import as_list, disk_entry, node
from tests.scan.clirun import EXAMPLE, REPO, A, B, C, cli, env, one_line, scan_json, write


@pytest.mark.parametrize("output", ["table", "json", "yaml"])
def test_a_full_disk_is_exit_2_with_one_line(output):
    with open("/dev/full", "wb") as full:
        r = cli("scan", "--from-dump", EXAMPLE, "-o", output, stdout=full)
    assert r.returncode == 2
    assert one_line(r.stderr) == "bimguard scan: cannot write the report: No space left on device"


@pytest.mark.parametrize("output", ["table", "json"])
def test_a_closed_pipe_keeps_the_verdict(output, tmp_path):
    clean = write(tmp_path / "clean.json", as_list([node("n1", {"d": disk_entry(A, "/d")})]))
    for dump, verdict in ((EXAMPLE, 1), (clean, 0)):
        read_end, write_end = os.pipe()
        os.close(read_end)  # like `| true` that has already exited: every write gets EPIPE
        try:
            r = subprocess.run([sys.executable, "-m", "jobs", "scan", "--from-dump", dump, "-o", output],
                               stdout=write_end, stderr=subprocess.PIPE, env=env(), timeout=60, cwd=REPO)
        finally:
            os.close(write_end)
        assert (r.returncode, r.stderr) == (verdict, b""), r.stderr.decode()


def test_skipped_objects_make_the_scan_incomplete(tmp_path):
    dump = write(tmp_path / "d.json", as_list([node("n1", {"d": disk_entry(A, "/d")}),
                                               node("n2", {"d": disk_entry("not-a-uuid", "/d")})]))
    code, doc, _ = scan_json(dump)
    assert code == 1
    assert doc["result"] == {"verdict": "incomplete", "complete": False, "collisionsToRepair": 0, "skipped": 1}
    r = cli("scan", "--from-dump", dump)
    assert r.returncode == 1
    assert r.stdout.decode().splitlines()[-1] == ("Result: incomplete: 1 object(s) skipped (listed above), and a "
                                                  "skipped disk could collide too; no collision among the objects read")


def test_collisions_and_skipped_objects_say_both(tmp_path):
    dump = write(tmp_path / "d.json", as_list([node("n1", {"d": disk_entry(A, "/d")}),
                                               node("n2", {"d": disk_entry(B, "/d"), "e": disk_entry("x", "/e")})]))
    code, doc, _ = scan_json(dump)
    assert code == 1
    assert doc["result"] == {"verdict": "collisions", "complete": False, "collisionsToRepair": 1, "skipped": 1}
    last = cli("scan", "--from-dump", dump).stdout.decode().splitlines()[-1]
    assert last == ("Result: 1 collision group(s) to repair; incomplete: 1 object(s) skipped (listed above), and a "
                    "skipped disk could collide too")


def test_complete_scans_say_so(tmp_path):
    clean = write(tmp_path / "clean.json", as_list([node("n1", {"d": disk_entry(A, "/d")}),
                                                    node("n2", {"d": disk_entry(C, "/d")})]))
    code, doc, _ = scan_json(clean)
    assert code == 0
    assert doc["result"] == {"verdict": "no-collision", "complete": True, "collisionsToRepair": 0, "skipped": 0}
    code, doc, _ = scan_json(EXAMPLE)
    assert (code, doc["result"]["verdict"], doc["result"]["complete"]) == (1, "collisions", True)
