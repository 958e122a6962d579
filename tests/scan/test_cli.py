"""The scan command as an operator runs it: exit codes, and one clear line for every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.builders import as_list, disk_entry, node, setting

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
A = "c01200da-8a5c-4692-92e6-c4a983087951"
B = "c012eb76-f8eb-4ea1-b81d-472eac9d98bf"
C = "a9394d40-2811-4778-89bd-03edf86d0e75"


def run(*args: str, stdin: bytes | None = None, cmd: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([*(cmd or [str(BIN / "bimguard")]), *args], input=stdin, capture_output=True, env=env,
                          timeout=60)


def write(path: Path, doc) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def test_exit_codes(tmp_path):
    clean = write(tmp_path / "clean.json", as_list([node("n1", {"d": disk_entry(A, "/d")}),
                                                    node("n2", {"d": disk_entry(C, "/d")})]))
    colliding = write(tmp_path / "coll.json", as_list([node("n1", {"d": disk_entry(A, "/d")}),
                                                       node("n2", {"d": disk_entry(B, "/d")})]))
    fixed = write(tmp_path / "fixed.json", as_list([node("n1", {"d": disk_entry(A, "/d")}),
                                                    node("n2", {"d": disk_entry(B, "/d")}),
                                                    setting("current-longhorn-version", "v1.10.1")]))
    assert run("scan", "--from-dump", clean).returncode == 0
    r = run("scan", "--from-dump", colliding, "-o", "json")
    assert r.returncode == 1 and json.loads(r.stdout)["longhorn"]["affected"] is None  # unknown counts as affected
    r = run("scan", "--from-dump", fixed, "-o", "json")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert doc["collisions"][0]["informational"] is True and doc["longhorn"]["affected"] is False


def test_skipped_objects_do_not_hide_a_collision(tmp_path):
    bad_uuid = node("n3", {"d": disk_entry("not-a-uuid", "/d"), "e": disk_entry(C, "/e")})
    no_name = node("", {"d": disk_entry(C, "/d")})
    wrong_shape = node("n4", {})
    wrong_shape["status"]["diskStatus"] = "oops"
    dump = write(tmp_path / "d.json", as_list([node("n1", {"d": disk_entry(A, "/d")}),
                                               node("n2", {"d": disk_entry(B, "/d")}), bad_uuid, no_name,
                                               wrong_shape]))
    r = run("scan", "--from-dump", dump, "-o", "json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    skipped = {(s["kind"], s["name"]): s["error"] for s in doc["skipped"]}
    assert skipped[("Node", "n3/d")] == "diskUUID 'not-a-uuid' is not a UUID"
    assert "metadata.name" in skipped[("Node", "")]
    assert "$.status.diskStatus" in skipped[("Node", "n4")]
    assert all(s["source"] == dump for s in doc["skipped"])
    assert doc["disks"]["total"] == 3  # n1/d, n2/d, n3/e
    assert len(doc["collisions"]) == 1


def _not_a_bundle_zip(tmp_path: Path) -> str:
    z = tmp_path / "photos.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("holiday/readme.txt", "hello")
    return str(z)


def text(name: str, content: str):
    def make(p: Path) -> str:
        (p / name).write_text(content)
        return str(p / name)
    return make


def truncated(p: Path) -> str:
    full = json.dumps(as_list([node("n1", {"d": disk_entry(A, "/d")})]))
    return text("t.json", full[:-40])(p)


def empty_dir(p: Path) -> str:
    (p / "empty").mkdir()
    (p / "empty" / "notes.txt").write_text("x")
    return str(p / "empty")


FIX = "kubectl get nodes.longhorn.io,replicas.longhorn.io,"  # the fix every "nothing usable" line ends with

BAD_INPUTS = {
    "truncated JSON": (truncated, "not valid JSON"),
    "YAML syntax": (text("y.yaml", "kind: List\nitems:\n  - {a: [1, 2\n"), "not valid YAML (line"),
    "Kubernetes nodes, not Longhorn's": (
        text("k.json", json.dumps(as_list([{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}]))),
        "1 Kubernetes Node(s) (kind Node, apiVersion v1), not Longhorn's nodes.longhorn.io; dump Longhorn's "
        "resources: " + FIX),
    "Kubernetes nodes as YAML": (
        text("k.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: v1\nkind: Node\n"),
        "2 Kubernetes Node(s) (kind Node, apiVersion v1), not Longhorn's nodes.longhorn.io"),
    "only other kinds": (
        text("o.json", json.dumps(as_list([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]))),
        "no nodes.longhorn.io objects (it holds 1 ConfigMap (v1)); dump Longhorn's resources: " + FIX),
    "empty List": (text("e.json", json.dumps(as_list([]))), "empty: no Kubernetes objects in it; dump "),
    "empty file": (text("z.yaml", ""), "empty: no Kubernetes objects in it; dump Longhorn's resources: " + FIX),
    "whitespace and comments": (text("w.yaml", "\n  \n# nothing\n---\n"), "empty: no Kubernetes objects in it"),
    "missing file": (lambda p: str(p / "nope.json"), "no such file or directory"),
    "directory without dumps": (empty_dir, "a directory with no"),
    "a zip given as a dump": (_not_a_bundle_zip,
                              "a zip archive, not a JSON or YAML dump: for a support bundle use --support-bundle"),
    "a scalar document": (text("s.yaml", "just text\n"),
                          "document #1 is a string ('just text'), not a Kubernetes object; dump "),
    "a list of strings": (text("l.yaml", "- a\n- b\n"), "document #1 is a list of 2, not a Kubernetes object"),
    "a JSON array of numbers": (text("n.json", "[1, 2]"), "item #1 is a number, not a Kubernetes object"),
    "binary data": (lambda p: (p / "b.json").write_bytes(b"\x00" * 100) and str(p / "b.json"),
                    "binary data (NUL bytes), not a JSON or YAML dump"),
    "not UTF-8": (lambda p: (p / "l1.yaml").write_bytes(b"kind: caf\xe9\n") and str(p / "l1.yaml"),
                  "not UTF-8 text (incomplete UTF-8 octet sequence at byte 9): save it as UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_dump_input_gets_one_line(case, tmp_path):
    make, message = BAD_INPUTS[case]
    path = make(tmp_path)
    r = run("scan", "--from-dump", path)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "Traceback" not in err
    assert message in err.splitlines()[0] and path in err.splitlines()[0], err
    assert r.stdout == b""


@pytest.mark.parametrize("make, message", [
    (_not_a_bundle_zip, "not a Longhorn support bundle (the zip holds no Longhorn nodes.yaml"),
    (text("f.zip", "PK\x03\x04garbage"), "not a Longhorn support bundle"),
    (empty_dir, "no Longhorn nodes.yaml in this directory"),
])
def test_bad_bundle_gets_one_line(make, message, tmp_path):
    path = make(tmp_path)
    r = run("scan", "--support-bundle", path)
    err = r.stderr.decode()
    assert (r.returncode, len(err.splitlines())) == (2, 1), err
    assert message in err and path in err and "Traceback" not in err


def test_unreachable_cluster_exits_2_with_one_line(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    r = run("scan", "--kubeconfig", str(kubeconfig))
    err = r.stderr.decode()
    assert (r.returncode, len(err.splitlines())) == (2, 1), err
    assert "cannot reach the Kubernetes API at http://127.0.0.1:9" in err
    r = run("scan", "--kubeconfig", str(tmp_path / "missing"))
    assert (r.returncode, r.stderr.decode()) == (
        2, f"bimguard scan: stat {tmp_path / 'missing'}: no such file or directory\n")


def test_entry_points_run_the_same_cli(tmp_path):
    dump = str(REPO / "examples" / "collision-dump.json")
    outputs = [run("scan", "--from-dump", dump, "-o", "json", cmd=c) for c in (
        [str(BIN / "bimguard")], [sys.executable, "-m", "jobs"], ["kubectl", "bimguard"])]
    assert [o.returncode for o in outputs] == [1, 1, 1], [o.stderr for o in outputs]
    assert outputs[0].stdout == outputs[1].stdout == outputs[2].stdout
    helptext = run("scan", "--help").stdout.decode()
    assert "exit codes:" in helptext and "--support-bundle" in helptext


def test_rewrite_cfg_through_the_console_script_loads_only_the_standard_library(tmp_path):
    # The privileged rewriter pod runs `bimguard rewrite-cfg`: nothing but the stdlib and our modules that
    # need nothing else (jobs.signals: the CLI's SIGTERM exit).
    probe = ("import runpy, sys; sys.argv = ['bimguard', 'rewrite-cfg', '--help']; before = set(sys.modules)\n"
             "try:\n    runpy.run_module('jobs.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "extra = sorted(m for m in set(sys.modules) - before if m.split('.')[0] not in sys.stdlib_module_names)\n"
             "print(extra, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.stderr.strip().splitlines()[-1] == "['bimguard', 'bimguard.rewrite_cfg', 'jobs', 'jobs.signals']"
    assert "rewrite-cfg" in r.stdout
