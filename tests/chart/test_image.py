"""The Dockerfile's invariants, checked by parsing it (CI cannot build images): a pinned Python
3.11 slim base, a multi-stage build that copies a virtualenv, a non-root final user, the
`bimguard` console script as ENTRYPOINT, no secrets and no remote ADD, and a build context
(.dockerignore) that holds what the install needs and nothing else."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped (no heredocs: the
    Dockerfile must not use them, which keeps it readable without BuildKit)."""
    out: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, value = full.partition(" ")
        out.append(Instruction(keyword.upper(), value.strip()))
    assert not pending, "dangling line continuation"
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def base_images(instructions: list[Instruction]) -> list[str]:
    args = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG" and "=" in ins.value:
            k, v = ins.value.split("=", 1)
            args[k] = v
    images = []
    for ins in instructions:
        if ins.keyword == "FROM":
            image = ins.value.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image))
    return images


def test_base_image_is_a_pinned_python_3_11_slim(instructions: list[Instruction]) -> None:
    images = base_images(instructions)
    assert len(images) >= 2, "multi-stage: build in one stage, copy the virtualenv into a clean one"
    for image in images:
        # A full patch version, not a floating 3.11 or latest.
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), image
    # The virtualenv's python symlinks to the base's interpreter: both stages need the same one.
    assert len(set(images)) == 1


def test_final_stage_copies_the_virtualenv_and_runs_as_non_root(instructions: list[Instruction]) -> None:
    final = stages(instructions)[-1]
    copies = [i.value for i in final if i.keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    assert not [i for i in final if i.keyword == "RUN"], "nothing built in the final stage"
    users = [i.value for i in final if i.keyword == "USER"]
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric so kubelet can verify runAsNonRoot"
    assert int(uid) == 65532  # the chart's runAsUser
    env = " ".join(i.value for i in final if i.keyword == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env


def test_entrypoint_is_the_console_script(instructions: list[Instruction]) -> None:
    (entrypoint,) = [i.value for i in instructions if i.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["bimguard"]  # exec form: signals reach the process
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["bimguard"].partition(":")
    assert callable(getattr(importlib.import_module(module), func))
    # The rewriter pod's stdlib-only entry point is in the image too.
    assert importlib.util.find_spec("bimguard.rewrite_cfg") is not None


def test_no_secrets_and_no_remote_content(instructions: list[Instruction]) -> None:
    for ins in instructions:
        assert ins.keyword != "ADD", "COPY only: ADD fetches URLs and unpacks archives"
        if ins.keyword in ("ARG", "ENV"):
            assert not re.search(r"(?i)(secret|token|password|passwd|api_?key|credential)", ins.value), ins
        if ins.keyword == "RUN":
            assert not re.search(r"\b(curl|wget)\b", ins.value), "dependencies come from pip, not downloads"
            assert "<<" not in ins.value, "no heredocs"
    assert [i for i in instructions if i.keyword == "ENTRYPOINT"]


def test_every_package_setuptools_installs_is_copied(instructions: list[Instruction]) -> None:
    builder = stages(instructions)[0]
    sources = {part for i in builder if i.keyword == "COPY" and not i.value.startswith("--from")
               for part in i.value.split()[:-1]}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= sources
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= sources
    for source in sources:
        assert (REPO / source).exists(), source


# -- the build context -----------------------------------------------------------------------------------

def _pattern(p: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(p):
        if p.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif p.startswith("**", i):
            out += ".*"
            i += 2
        elif p[i] == "*":
            out += "[^/]*"
            i += 1
        elif p[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(p[i])
            i += 1
    return re.compile(out + r"\Z")


def in_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's .dockerignore semantics: the last matching rule wins; a rule matching a directory
    matches everything under it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for negate, rx in rules:
        if any(rx.match(p) for p in prefixes):
            included = negate
    return included


def context_files() -> set[str]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern(line.lstrip("!").strip("/"))))
    files = set()
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".git",)]
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), REPO).replace(os.sep, "/")
            if in_context(rel, rules):
                files.add(rel)
    return files


def test_build_context_holds_the_sources_and_nothing_else() -> None:
    files = context_files()
    for needed in ("pyproject.toml", "README.md", "bimguard/rewrite_cfg.py", "webhook/scope.py", "jobs/cli.py"):
        assert needed in files, needed
    tops = {f.split("/")[0] for f in files}
    assert tops <= {"pyproject.toml", "README.md", "bimguard", "webhook", "jobs"}, tops
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert not [f for f in files if f.endswith(("kubeconfig", ".pem", ".key"))]


def test_the_chart_runs_what_the_image_provides() -> None:
    # The chart's container relies on the ENTRYPOINT and on the image's uid.
    values = yaml.safe_load((REPO / "charts" / "bimguard" / "values.yaml").read_text())
    assert values["image"]["repository"]
    deployment = (REPO / "charts" / "bimguard" / "templates" / "deployment.yaml").read_text()
    assert "command:" not in deployment.split("lifecycle:")[0]  # args only: ENTRYPOINT bimguard runs them
    assert "runAsUser: 65532" in deployment
