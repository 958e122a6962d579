"""The Dockerfile's invariants, checked by parsing it (CI cannot build images): a Python 3.11
slim base pinned by digest, a multi-stage build that copies a virtualenv installed from a lock
file with hashes (which this file keeps equal to pyproject.toml's dependencies), no pip or
setuptools in the final stage, the OCI labels, no emulator, a non-root final user, the `bimguard`
console script as ENTRYPOINT, no secrets and no remote ADD, and a build context (.dockerignore)
that holds what the install needs and nothing else."""

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


def test_base_image_is_a_python_3_11_slim_pinned_by_digest(instructions: list[Instruction]) -> None:
    images = base_images(instructions)
    assert len(images) >= 2, "multi-stage: build in one stage, copy the virtualenv into a clean one"
    for image in images:
        # A full patch version, not a floating 3.11 or latest, and the digest: a re-pushed tag
        # cannot change what is built.
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?@sha256:[0-9a-f]{64}", image), image
    # The virtualenv's python symlinks to the base's interpreter: both stages need the same one.
    assert len(set(images)) == 1


def test_final_stage_copies_the_virtualenv_and_runs_as_non_root(instructions: list[Instruction]) -> None:
    final = stages(instructions)[-1]
    copies = [i.value for i in final if i.keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    # Nothing built in the final stage: its one RUN only deletes the base image's installers.
    runs = [i.value for i in final if i.keyword == "RUN"]
    assert len(runs) == 1 and runs[0].startswith("rm -rf ") and "&&" not in runs[0] and ";" not in runs[0]
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
    assert {"pyproject.toml", pyproject["project"]["readme"], "requirements.lock", "requirements-build.lock"} <= sources
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
    assert tops <= {"pyproject.toml", "README.md", "requirements.lock", "requirements-build.lock", "bimguard", "webhook",
                    "jobs"}, tops
    assert {"requirements.lock", "requirements-build.lock"} <= files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert not [f for f in files if f.endswith(("kubeconfig", ".pem", ".key"))]


def test_the_chart_runs_what_the_image_provides() -> None:
    # The chart's container relies on the ENTRYPOINT and on the image's uid.
    values = yaml.safe_load((REPO / "charts" / "bimguard" / "values.yaml").read_text())
    assert values["image"]["repository"]
    deployment = (REPO / "charts" / "bimguard" / "templates" / "deployment.yaml").read_text()
    assert "command:" not in deployment.split("lifecycle:")[0]  # args only: ENTRYPOINT bimguard runs them
    assert "runAsUser: 65532" in deployment


# -- supply chain: labels, the lock file, what the final stage holds -------------------------------------

def test_oci_labels(instructions: list[Instruction]) -> None:
    final = stages(instructions)[-1]
    labels = dict(re.findall(r'([\w.]+)="([^"]*)"', " ".join(i.value for i in final if i.keyword == "LABEL")))
    args = dict(i.value.split("=", 1) for i in final if i.keyword == "ARG" and "=" in i.value)
    prefix = "org.opencontainers.image."
    for key in ("source", "version", "revision", "created", "title", "licenses"):
        assert labels.get(prefix + key), key
    assert labels[prefix + "version"] == "${VERSION}" and labels[prefix + "revision"] == "${REVISION}"
    assert labels[prefix + "created"] == "${CREATED}"
    chart = yaml.safe_load((REPO / "charts" / "bimguard" / "Chart.yaml").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert args["VERSION"] == version == chart["appVersion"]
    assert labels[prefix + "source"] in chart["sources"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", args["CREATED"])


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of a pip requirements file with hashes."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)((?:\s+--hash=sha256:[0-9a-f]{64})+)", line)
        assert m, f"{path.name}: not a pinned requirement with hashes: {line[:80]}"
        out[canonical(m.group(1))] = (m.group(2), re.findall(r"sha256:([0-9a-f]{64})", m.group(3)))
    return out


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(skip: set[str]) -> dict[str, set[str]]:
    """The packages pyproject's dependencies pull in on Linux / CPython 3.11 (from the installed
    metadata), without `skip` and what only they need: name -> the specifiers asked of it."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    env = {"python_version": "3.11", "python_full_version": "3.11.12", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    wanted: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in skip or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        first = name not in wanted
        wanted.setdefault(name, set()).add(str(req.specifier))
        if first:
            todo += [Requirement(r) for r in requires(req.name) or []]
    return wanted


def test_the_lock_file_is_pyprojects_dependencies_with_hashes(instructions: list[Instruction]) -> None:
    from packaging.specifiers import SpecifierSet

    lock = parse_lock(REPO / "requirements.lock")
    wanted = runtime_closure(skip={"cel-python"})
    assert set(lock) == set(wanted), (sorted(set(wanted) - set(lock)), sorted(set(lock) - set(wanted)))
    for name, (version, hashes) in lock.items():
        assert hashes, name
        for spec in wanted[name]:
            assert version in SpecifierSet(spec), f"{name}=={version} does not satisfy {spec}"
    assert "cel-python" not in lock  # the emulator's only; the image leaves the emulator out
    build = parse_lock(REPO / "requirements-build.lock")
    assert set(build) == {"setuptools"} and build["setuptools"][1]
    # The build installs from them, hashes required, wheels only, nothing resolved on the side.
    run = " ".join(i.value for i in stages(instructions)[0] if i.keyword == "RUN")
    assert "--require-hashes --no-deps --only-binary=:all: -r requirements.lock" in run
    assert "--require-hashes --no-deps -r requirements-build.lock" in run
    assert "--no-build-isolation" in run  # the hashed setuptools builds bimguard's wheel
    assert "venv --without-pip" in run
    assert "rm -rf /opt/venv/lib/python3.11/site-packages/bimguard/sim" in run


def test_no_installer_is_left_in_the_final_stage(instructions: list[Instruction]) -> None:
    (run,) = [i.value for i in stages(instructions)[-1] if i.keyword == "RUN"]
    removed = run.split()[2:]
    for path in ("/usr/local/bin/pip", "/usr/local/bin/pip3", "/usr/local/lib/python3.11/site-packages/pip",
                 "/usr/local/lib/python3.11/site-packages/setuptools", "/usr/local/lib/python3.11/ensurepip"):
        assert path in removed, path
    # ... and the virtualenv it copies has none (created --without-pip, filled by the builder's pip).
    assert "venv --without-pip /opt/venv" in " ".join(i.value for i in stages(instructions)[0] if i.keyword == "RUN")


@pytest.mark.parametrize("command", [["webhook", "--help"], ["repair", "--help"], ["scan", "--help"],
                                     ["rewrite-cfg", "--help"], ["inspect-disk", "--help"], ["check-webhook", "--help"],
                                     ["--help"]])
def test_the_image_commands_run_without_the_emulator(command: list[str]) -> None:
    """What the image keeps works with bimguard.sim absent, as the Dockerfile removes it."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['bimguard.sim'] = None; from jobs.cli import main; "
            f"sys.exit(main({command!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0 and r.stdout.startswith("usage:"), r.stderr


def test_demo_without_the_emulator_says_so() -> None:
    import subprocess
    import sys

    code = "import sys; sys.modules['bimguard.sim'] = None; from jobs.cli import main; sys.exit(main(['demo']))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and "the cluster emulator is not installed here" in r.stderr, r.stderr
    assert "internal error" not in r.stderr
