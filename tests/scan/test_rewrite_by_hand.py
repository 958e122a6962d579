"""`bimguard rewrite-cfg` run by hand writes no termination message (issue 14): only the rewriter pod asks for one."""

from __future__ import annotations

import argparse
import json
import os

from bimguard import rewrite_cfg
from tests.scan.clirun import cli


def test_rewrite_cfg_writes_no_termination_log_unless_asked(tmp_path):
    p = argparse.ArgumentParser()
    rewrite_cfg.add_arguments(p)
    assert p.parse_args(["--path", "x", "--disk-name", "", "--old", "o", "--new", "n"]).termination_log is None
    old, new = "b529264b-345a-4a14-8445-40b9f1e4d10c", "5f1c0a2e-1d7b-4b55-9c1e-0a4e2f9b7c31"
    disk = tmp_path / "disk"
    (disk / "replicas").mkdir(parents=True)
    (disk / "longhorn-disk.cfg").write_text(json.dumps({"diskName": "d", "diskUUID": old, "diskDriver": ""}))
    existed = os.path.exists("/dev/termination-log")
    r = cli("rewrite-cfg", "--path", str(disk), "--disk-name", "d", "--old", old, "--new", new)
    assert r.returncode == 0, r.stderr
    assert existed or not os.path.exists("/dev/termination-log")
    term = tmp_path / "term"
    r = cli("rewrite-cfg", "--path", str(disk), "--disk-name", "d", "--old", old, "--new", new,
            "--termination-log", str(term))
    assert r.returncode == 0 and term.read_text().startswith("unchanged")
