"""`bimguard scan --from-dump | --support-bundle` as a target for generated files.

Inputs are written to a scratch directory and scanned in-process through the CLI's own entry point
(`jobs.cli.main`, which is what the `bimguard` console script runs), so a run of 100,000 inputs
takes minutes, not hours of interpreter start-ups. The oracle (`check_scan`): exit 0 or 1 with a
report that validates against docs/scan-report.schema.json and nothing on standard error, or
exit 2 with nothing on standard output and exactly one line on standard error; never a traceback,
never an "internal error" (the CLI's last line of defence: an exception nothing else handled).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from jobs.cli import main

REPO = Path(__file__).resolve().parents[2]
_SCHEMA = json.loads((REPO / "docs/scan-report.schema.json").read_text())
_VALIDATOR = jsonschema.Draft202012Validator(_SCHEMA) if "2020-12" in _SCHEMA.get("$schema", "") else \
    jsonschema.validators.validator_for(_SCHEMA)(_SCHEMA)
BUNDLE_SEED = next((REPO / "tests/fixtures/longhorn/samples/support-bundle").glob("supportbundle_*"))
DUMP_SEED = REPO / "examples/collision-dump.json"


@dataclass(frozen=True)
class Input:
    """What to write and how to scan it. `files` maps a relative path to its bytes; `layout` is
    `file` (the one file is the path given), `dir` (the directory is), `zip` (a zip of the files
    is), or `stdin` (the one file's bytes are standard input, path "-")."""

    option: str  # --from-dump | --support-bundle
    layout: str
    files: tuple[tuple[str, bytes], ...]
    suffix: str = ".json"

    def describe(self) -> str:
        sizes = ", ".join(f"{name} ({len(data)} B)" for name, data in self.files[:4])
        return f"{self.option} {self.layout}: {sizes}"


def materialize(inp: Input, scratch: Path) -> tuple[list[str], bytes | None]:
    """Write the input under `scratch` (emptied first); the argv and standard input to scan it."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    if inp.layout == "stdin":
        return [inp.option, "-"], inp.files[0][1] if inp.files else b""
    if inp.layout == "file":
        path = scratch / f"input{inp.suffix}"
        path.write_bytes(inp.files[0][1] if inp.files else b"")
        return [inp.option, str(path)], None
    root = scratch / "bundle"
    root.mkdir()
    if inp.layout == "dir":
        for name, data in inp.files:
            target = root / name
            if target.exists() and target.is_dir():
                continue
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            except (NotADirectoryError, FileExistsError, IsADirectoryError):
                continue  # a member named like another's directory: not representable on disk
        return [inp.option, str(root)], None
    path = scratch / f"bundle{inp.suffix}"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in inp.files:
            zf.writestr(name, data)
    return [inp.option, str(path)], None


def mangle_zip(path: Path, cut: int | None, flips: list[tuple[int, int]]) -> None:
    data = bytearray(path.read_bytes())
    for pos, byte in flips:
        if data:
            data[pos % len(data)] = byte
    if cut is not None:
        del data[cut % (len(data) + 1):]
    path.write_bytes(bytes(data))


def run_scan(argv: list[str], stdin: bytes | None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    try:
        if stdin is not None:
            sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["scan", *argv, "-o", "json"])
    finally:
        sys.stdin = saved
    return code, out.getvalue(), err.getvalue()


def check_scan(code: int, out: str, err: str) -> list[str]:
    if "Traceback" in err or "Traceback" in out:
        return [f"a traceback: {err[-500:]}"]
    if "internal error" in err:
        return [f"an internal error: {err.strip()[:300]}"]
    if code == 2:
        problems = []
        if out:
            problems.append(f"exit 2 with a report on standard output: {out[:200]!r}")
        lines = err.splitlines()
        if len(lines) != 1 or not err.endswith("\n") or not lines[0].startswith("bimguard scan: "):
            problems.append(f"exit 2 with {len(lines)} line(s) on standard error: {err[:600]!r}")
        return problems
    if code not in (0, 1):
        return [f"exit {code}: {err[:300]!r}"]
    if err:
        return [f"exit {code} with standard error: {err[:300]!r}"]
    try:
        doc: Any = json.loads(out)
    except ValueError as e:
        return [f"exit {code} with a report that is not JSON ({e}): {out[:200]!r}"]
    errors = sorted(_VALIDATOR.iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        return [f"exit {code}: the report does not match the schema: {errors[0].message[:300]}"]
    return []


def scan_problems(inp: Input, scratch: Path, zip_damage: tuple[int | None, list[tuple[int, int]]] | None = None
                  ) -> tuple[int, list[str]]:
    argv, stdin = materialize(inp, scratch)
    if zip_damage is not None and inp.layout == "zip":
        mangle_zip(Path(argv[1]), *zip_damage)
    code, out, err = run_scan(argv, stdin)
    return code, check_scan(code, out, err)
