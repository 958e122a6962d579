"""Usage errors and numeric flags in one line, --version, the kubectl plugin's name, and errors that escape a
command (issue 14): one line and exit 2, never 0 or 1, which are a scan's verdicts."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from jobs import args as jargs
from tests.scan.clirun import BIN, EXAMPLE, REPO, cli, env, one_line, scan_in_process


@pytest.mark.parametrize("argv, message", [
    (["scan", "--page-size", "0"], "bimguard scan: error: argument --page-size: '0' must be at least 1"),
    (["scan", "--page-size", "ten"], "bimguard scan: error: argument --page-size: 'ten' is not a whole number"),
    (["scan", "--request-timeout", "0"],
     "bimguard scan: error: argument --request-timeout: '0' must be a finite duration above 0"),
    (["scan", "--request-timeout", "soon"], "bimguard scan: error: argument --request-timeout: 'soon' is not a "
                                            "duration (seconds, or a number with a unit: 30s, 1m30s, 500ms)"),
    (["sim", "serve", "--port", "99999"],
     "bimguard sim serve: error: argument --port: '99999' is not a port number (0-65535; 0 picks a free port)"),
    (["sim", "serve", "--port", "-1"],
     "bimguard sim serve: error: argument --port: '-1' is not a port number (0-65535; 0 picks a free port)"),
    (["sim", "serve", "--time-scale", "0"], "bimguard sim serve: error: argument --time-scale: '0' must be above 0"),
    (["sim", "serve", "--time-scale", "-1"], "bimguard sim serve: error: argument --time-scale: '-1' must be above 0"),
    (["sim", "serve", "--time-scale", "nan"],
     "bimguard sim serve: error: argument --time-scale: 'nan' is not a finite number"),
    (["sim", "serve", "--time-scale", "inf"],
     "bimguard sim serve: error: argument --time-scale: 'inf' is not a finite number"),
    (["sim", "serve", "--nodes", "0"], "bimguard sim serve: error: argument --nodes: '0' must be at least 1"),
    (["sim", "serve", "--service", "a.b.svc=127.0.0.1:70000"],
     "bimguard sim serve: --service 'a.b.svc=127.0.0.1:70000': expected NAME.NAMESPACE.svc=HOST:PORT"),
])
def test_numeric_flags_get_one_clear_line(argv, message):
    r = cli(*argv, timeout=30)
    assert (r.returncode, r.stdout) == (2, b"")
    line = one_line(r.stderr)
    assert line.startswith(message), line


def test_usage_errors_are_one_line():
    r = cli("scan", "--from-dump", "a", "--support-bundle", "b")
    assert r.returncode == 2
    assert one_line(r.stderr) == ("bimguard scan: error: argument --support-bundle: not allowed with argument "
                                  "--from-dump (see 'bimguard scan --help')")


def test_argument_types():
    assert jargs.positive_int("3") == 3 and jargs.non_negative_int("0") == 0
    assert jargs.positive_float("0.02") == 0.02 and jargs.port_number("0") == 0 and jargs.port_number("65535") == 65535
    assert [jargs.seconds(t) for t in ("30", "2.5", "30s", "1m30s", "500ms", "1h")] == [30, 2.5, 30, 90, 0.5, 3600]
    for fn, bad in ((jargs.positive_int, "0"), (jargs.positive_int, "1.5"), (jargs.non_negative_int, "-1"),
                    (jargs.positive_float, "-inf"), (jargs.positive_float, "1e999"), (jargs.port_number, "65536"),
                    (jargs.port_number, "http"), (jargs.seconds, "nan"), (jargs.seconds, "1x"), (jargs.seconds, "s"),
                    (jargs.seconds, "-5s")):
        with pytest.raises(argparse.ArgumentTypeError):
            fn(bad)


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    r = cli("--version")
    assert (r.returncode, r.stdout.decode()) == (0, f"bimguard {version('bimguard')}\n")


def test_the_kubectl_plugin_calls_itself_kubectl_bimguard():
    plugin = str(BIN / "kubectl-bimguard")
    r = subprocess.run([plugin, "scan", "--page-size", "0"], capture_output=True, timeout=60)
    assert r.returncode == 2
    assert one_line(r.stderr).startswith("kubectl bimguard scan: error: argument --page-size")
    r = subprocess.run([plugin, "scan", "--help"], capture_output=True, timeout=60)
    assert r.stdout.decode().startswith("usage: kubectl bimguard scan ")
    r = subprocess.run([str(BIN / "bimguard"), "scan", "--help"], capture_output=True, timeout=60)
    assert r.stdout.decode().startswith("usage: bimguard scan ")


@pytest.mark.parametrize("exc, message", [
    (RuntimeError("boom\nsecond line"), "bimguard: internal error: RuntimeError: boom (a bug: please report it "
                                        "with the command line)"),
    (MemoryError(), "bimguard: out of memory"),
    (PermissionError(13, "Permission denied", "/x/y"), "bimguard: /x/y: Permission denied"),
])
def test_unexpected_errors_are_one_line_and_exit_2(exc, message, monkeypatch, capsys):
    def fail(*_a, **_k):
        raise exc

    monkeypatch.setattr("jobs.scan.analyze", fail)
    code, out, err = scan_in_process(["--from-dump", EXAMPLE], capsys)
    assert (code, out) == (2, "")
    assert one_line(err) == message


def test_a_closed_pipe_under_help_is_quiet():
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([sys.executable, "-m", "jobs", "--help"], stdout=write_end, stderr=subprocess.PIPE,
                           env=env(), timeout=60, cwd=REPO)
    finally:
        os.close(write_end)
    assert r.stderr == b""
