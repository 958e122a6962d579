"""Running the CLI as an operator does, for the tests of issue 14 ("Operator experience").

Commands run as `python -m jobs` with this checkout first on the path, so the tests exercise the
tree they live in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema

from jobs.cli import main

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCHEMA = json.loads((REPO / "docs" / "scan-report.schema.json").read_text())
EXAMPLE = str(REPO / "examples" / "collision-dump.json")  # one collision: exit 1
A = "c01200da-8a5c-4692-92e6-c4a983087951"
B = "c012eb76-f8eb-4ea1-b81d-472eac9d98bf"
C = "a9394d40-2811-4778-89bd-03edf86d0e75"


def env(**extra: str | None) -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for k, v in extra.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


def cli(*args: str, stdin: bytes | None = None, stdout=subprocess.PIPE, timeout: float = 60,
        **env_extra: str | None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs", *args], input=stdin, stdout=stdout,
                          stderr=subprocess.PIPE, env=env(**env_extra), timeout=timeout, cwd=REPO)


def one_line(err: bytes | str) -> str:
    """The only line of an error output, which holds no traceback."""
    text = err.decode() if isinstance(err, bytes) else err
    assert "Traceback" not in text and "Exception ignored" not in text, text
    assert len(text.splitlines()) == 1, text
    return text.strip()


def write(path: Path, doc) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def scan_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(["scan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def scan_json(path: str) -> tuple[int, dict, str]:
    r = cli("scan", "--from-dump", path, "-o", "json")
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, SCHEMA)
    return r.returncode, doc, r.stderr.decode()


def kubeconfig(path: Path, server: str = "http://127.0.0.1:9", context: str = "dev") -> str:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": context, "context": {"cluster": "c", "user": "u", "namespace": "x"}}]}))
    return str(path)
