"""`bimguard rewrite-cfg` against real files: every exit code, idempotency, atomicity under a
concurrent reader, mode 0644, symlinks refused, and a standard-library-only import
(docs/design.md, invariant 4)."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bimguard import rewrite_cfg
from bimguard.rewrite_cfg import (CFG, EXIT_MISSING, EXIT_OK, EXIT_REFUSED, EXIT_TRANSIENT, EXIT_USAGE, encode_cfg,
                                  rewrite)

REPO = Path(__file__).resolve().parents[2]
OLD = "b529264b-345a-4a14-8445-40b9f1e4d10c"
NEW = "5f1c0a2e-1d7b-4b55-9c1e-0a4e2f9b7c31"
OTHER = "0d0d0d0d-1111-4222-8333-444455556666"
NAME = "6fb02c828177508fc70b10b09d7c8c28"


def cfg_bytes(uuid: str = OLD, name: str = NAME, driver: str = "") -> bytes:
    # The exact form Longhorn writes (util/util.go:637-641, controller/monitor/disk_utils.go:143,161
    # @v1.7.2; a real one in harvester/harvester#10453).
    return f'{{"diskName":"{name}","diskUUID":"{uuid}","diskDriver":"{driver}"}}'.encode()


@pytest.fixture()
def disk(tmp_path: Path) -> Path:
    """A freshly generated Longhorn v1 disk: the cfg (0644) and an empty replicas/
    (controller/monitor/disk_utils.go:133-170 @v1.7.2)."""
    d = tmp_path / "disk"
    d.mkdir()
    (d / CFG).write_bytes(cfg_bytes())
    os.chmod(d / CFG, 0o644)
    (d / "replicas").mkdir()
    return d


def temps(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith(".longhorn-disk.cfg."))


# -- the swap --------------------------------------------------------------------------------------------

def test_writes_the_new_uuid_in_longhorns_exact_format(disk: Path) -> None:
    out = rewrite(str(disk), NAME, OLD, NEW)
    assert out.code == EXIT_OK and out.message.startswith("written:")
    assert (disk / CFG).read_bytes() == cfg_bytes(NEW)  # one line, compact, key order, no newline
    assert stat.S_IMODE((disk / CFG).stat().st_mode) == 0o644
    assert temps(disk) == []


def test_mode_is_0644_whatever_the_umask_and_the_old_mode(disk: Path) -> None:
    os.chmod(disk / CFG, 0o600)
    old_umask = os.umask(0o077)
    try:
        assert rewrite(str(disk), NAME, OLD, NEW).code == EXIT_OK
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((disk / CFG).stat().st_mode) == 0o644


def test_disk_driver_and_key_order_are_preserved(disk: Path) -> None:
    (disk / CFG).write_bytes(cfg_bytes(driver="aio"))
    assert rewrite(str(disk), NAME, OLD, NEW).code == EXIT_OK
    assert (disk / CFG).read_bytes() == cfg_bytes(NEW, driver="aio")


def test_a_cfg_from_longhorn_1_5_without_disk_name(disk: Path) -> None:
    # Longhorn <= v1.5 wrote only diskUUID (lm v1.5.0 util/util.go DiskConfig) and never rewrites it.
    (disk / CFG).write_bytes(f'{{"diskUUID":"{OLD}"}}'.encode())
    assert rewrite(str(disk), NAME, OLD, NEW).code == EXIT_REFUSED
    assert rewrite(str(disk), "", OLD, NEW).code == EXIT_OK
    assert (disk / CFG).read_bytes() == f'{{"diskUUID":"{NEW}"}}'.encode()


def test_idempotent_when_the_new_uuid_is_already_there(disk: Path) -> None:
    assert rewrite(str(disk), NAME, OLD, NEW).code == EXIT_OK
    before = (disk / CFG).stat()
    (disk / "replicas" / "pvc-1-r-0").mkdir()  # Longhorn may already use the disk under the new UUID
    out = rewrite(str(disk), NAME, OLD, NEW)
    assert out.code == EXIT_OK and out.message.startswith("unchanged:")
    after = (disk / CFG).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not written again


def test_go_json_escaping_matches_longhorn() -> None:
    assert encode_cfg({"diskName": "a<b>&c", "diskUUID": OLD, "diskDriver": ""}) == \
        f'{{"diskName":"a\\u003cb\\u003e\\u0026c","diskUUID":"{OLD}","diskDriver":""}}'.encode()


# -- refusals (exit 3) -----------------------------------------------------------------------------------

def assert_untouched(disk: Path, content: bytes = cfg_bytes()) -> None:
    assert (disk / CFG).read_bytes() == content
    assert temps(disk) == []


def test_another_uuid_is_refused(disk: Path) -> None:
    out = rewrite(str(disk), NAME, OTHER, NEW)
    assert out.code == EXIT_REFUSED and OLD in out.message
    assert_untouched(disk)


def test_another_disk_name_is_refused(disk: Path) -> None:
    out = rewrite(str(disk), "some-other-disk", OLD, NEW)
    assert out.code == EXIT_REFUSED and NAME in out.message
    assert_untouched(disk)


@pytest.mark.parametrize("sub", ["replicas", "backing-images"])
def test_a_disk_holding_data_is_refused(disk: Path, sub: str) -> None:
    (disk / sub).mkdir(exist_ok=True)
    (disk / sub / "pvc-1-r-0").mkdir()
    out = rewrite(str(disk), NAME, OLD, NEW)
    assert out.code == EXIT_REFUSED and sub in out.message
    assert_untouched(disk)


def test_hidden_entries_count_as_data(disk: Path) -> None:
    (disk / "replicas" / ".anything").write_text("x")
    assert rewrite(str(disk), NAME, OLD, NEW).code == EXIT_REFUSED


def test_missing_data_directories_are_fine(disk: Path) -> None:
    (disk / "replicas").rmdir()
    assert rewrite(str(disk), NAME, OLD, NEW).code == EXIT_OK


def test_replicas_as_a_file_or_symlink_is_refused(disk: Path, tmp_path: Path) -> None:
    (disk / "replicas").rmdir()
    (tmp_path / "elsewhere").mkdir()
    (disk / "replicas").symlink_to(tmp_path / "elsewhere")
    assert rewrite(str(disk), NAME, OLD, NEW).code == EXIT_REFUSED
    (disk / "replicas").unlink()
    (disk / "replicas").write_text("")
    assert rewrite(str(disk), NAME, OLD, NEW).code == EXIT_REFUSED
    assert_untouched(disk)


@pytest.mark.parametrize("content", [
    b"", b"garbage", b"[]", b'{"diskName":"x"}', b'{"diskUUID":7}',
    f'{{"diskName":"{NAME}","diskUUID":"{OLD}","diskDriver":"","extra":"1"}}'.encode(), b"\xff\xfe",
])
def test_not_a_longhorn_cfg_is_refused(disk: Path, content: bytes) -> None:
    (disk / CFG).write_bytes(content)
    assert rewrite(str(disk), NAME, OLD, NEW).code == EXIT_REFUSED
    assert_untouched(disk, content)


def test_path_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    assert rewrite(str(f), NAME, OLD, NEW).code == EXIT_REFUSED
    assert rewrite(str(tmp_path / "nowhere"), NAME, OLD, NEW).code == EXIT_REFUSED


def test_a_symlinked_disk_path_is_refused(disk: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(disk)
    out = rewrite(str(link), NAME, OLD, NEW)
    assert out.code == EXIT_REFUSED and "symlink" in out.message
    assert_untouched(disk)


def test_a_symlinked_cfg_is_refused_and_its_target_untouched(disk: Path, tmp_path: Path) -> None:
    # A hostile symlink on the disk must not redirect the write to another host file.
    target = tmp_path / "precious"
    target.write_bytes(cfg_bytes())
    (disk / CFG).unlink()
    (disk / CFG).symlink_to(target)
    out = rewrite(str(disk), NAME, OLD, NEW)
    assert out.code == EXIT_REFUSED and "symlink" in out.message
    assert target.read_bytes() == cfg_bytes()
    assert os.readlink(disk / CFG) == str(target)
    assert temps(disk) == []


def test_a_cfg_that_is_a_directory_or_fifo_is_refused(disk: Path) -> None:
    (disk / CFG).unlink()
    (disk / CFG).mkdir()
    assert rewrite(str(disk), NAME, OLD, NEW).code == EXIT_REFUSED
    (disk / CFG).rmdir()
    os.mkfifo(disk / CFG)  # opened O_NONBLOCK: must not hang
    assert rewrite(str(disk), NAME, OLD, NEW).code == EXIT_REFUSED


# -- missing (4), usage (2), transient (1) ---------------------------------------------------------------

def test_missing_cfg_is_never_created(disk: Path) -> None:
    (disk / CFG).unlink()
    out = rewrite(str(disk), NAME, OLD, NEW)
    assert out.code == EXIT_MISSING
    assert not (disk / CFG).exists() and temps(disk) == []


@pytest.mark.parametrize("path,name,old,new", [
    ("relative/dir", NAME, OLD, NEW),
    ("/abs", NAME, OLD, NEW.upper()),
    ("/abs", NAME, "not-a-uuid", NEW),
    ("/abs", NAME, NEW.upper(), NEW),
    ("/abs", NAME, OLD, "not-a-uuid"),
    ("/abs", NAME, OLD, NEW + "0"),
    ("/abs", NAME, OLD, OLD),
    ("/abs", "two\nlines", OLD, NEW),
])
def test_usage_errors(path: str, name: str, old: str, new: str) -> None:
    assert rewrite(path, name, old, new).code == EXIT_USAGE


def test_an_upper_case_old_uuid_is_compared_exactly(disk: Path) -> None:
    """A cfg edited by hand can hold upper case; Longhorn records and compares it as written
    (controller/node_controller.go:707 @v1.7.2), so the swap compares it exactly too."""
    (disk / CFG).write_bytes(cfg_bytes(OLD.upper()))
    assert rewrite(str(disk), NAME, OLD, NEW).code == EXIT_REFUSED  # not what the cfg holds
    assert (disk / CFG).read_bytes() == cfg_bytes(OLD.upper())
    out = rewrite(str(disk), NAME, OLD.upper(), NEW)
    assert out.code == EXIT_OK, out.message
    assert (disk / CFG).read_bytes() == cfg_bytes(NEW)


def test_check_writes_nothing_and_says_whether_the_cfg_holds_the_new_uuid(disk: Path) -> None:
    (disk / ".longhorn-disk.cfg.0123456789abcdef").write_bytes(b"{")  # even a stale temp stays
    before = sorted(p.name for p in disk.iterdir())
    out = rewrite(str(disk), NAME, OLD, NEW, check=True)
    assert out.code == EXIT_REFUSED and OLD in out.message and "nothing written" in out.message
    assert (disk / CFG).read_bytes() == cfg_bytes(OLD) and sorted(p.name for p in disk.iterdir()) == before
    (disk / CFG).write_bytes(cfg_bytes(NEW))
    assert rewrite(str(disk), NAME, OLD, NEW, check=True).code == EXIT_OK
    assert rewrite(str(disk), "another-disk", OLD, NEW, check=True).code == EXIT_REFUSED
    (disk / CFG).unlink()
    assert rewrite(str(disk), NAME, OLD, NEW, check=True).code == EXIT_MISSING


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_directory_is_transient(disk: Path) -> None:
    os.chmod(disk, 0o555)
    try:
        out = rewrite(str(disk), NAME, OLD, NEW)
    finally:
        os.chmod(disk, 0o755)
    assert out.code == EXIT_TRANSIENT
    assert_untouched(disk)


def test_io_error_while_writing_is_transient_and_leaves_no_temp(disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(rewrite_cfg.os, "fsync", fail)
    out = rewrite(str(disk), NAME, OLD, NEW)
    assert out.code == EXIT_TRANSIENT and "Input/output error" in out.message
    assert_untouched(disk)


def test_a_rewriter_stuck_holding_the_lock_is_a_transient_error(disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rewrite_cfg, "LOCK_TIMEOUT_SECONDS", 0.2)
    fd = os.open(disk, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        out = rewrite(str(disk), NAME, OLD, NEW)
    finally:
        os.close(fd)
    assert out.code == EXIT_TRANSIENT and "lock" in out.message
    assert_untouched(disk)
    assert rewrite(str(disk), NAME, OLD, NEW).code == EXIT_OK  # released with the descriptor


def test_stale_temp_files_of_a_killed_rewriter_are_removed(disk: Path) -> None:
    (disk / ".longhorn-disk.cfg.0123456789abcdef").write_bytes(b"half")
    (disk / ".longhorn-disk.cfg.keep-me").write_bytes(b"not ours")
    assert rewrite(str(disk), NAME, OLD, NEW).code == EXIT_OK
    assert temps(disk) == [".longhorn-disk.cfg.keep-me"]


# -- atomicity -------------------------------------------------------------------------------------------

def test_a_concurrent_reader_never_sees_the_cfg_missing_or_partial(disk: Path) -> None:
    """Longhorn's monitor stats and reads the cfg every 30 s; a failed stat makes it generate a new
    random UUID (controller/monitor/disk_monitor.go:264-296 @v1.7.2). 200 swaps back and forth with
    a reader hammering the path."""
    valid = {cfg_bytes(OLD), cfg_bytes(NEW)}
    stop = threading.Event()
    seen: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        path = disk / CFG
        while not stop.is_set():
            try:
                os.stat(path)
                data = path.read_bytes()
            except OSError as e:
                seen.append(f"{type(e).__name__}: {e}")
                continue
            reads += 1
            if data not in valid:
                seen.append(f"partial: {data!r}")

    t = threading.Thread(target=reader)
    t.start()
    try:
        current, other = OLD, NEW
        for _ in range(200):
            out = rewrite(str(disk), NAME, current, other)
            assert out.code == EXIT_OK, out.message
            current, other = other, current
    finally:
        stop.set()
        t.join()
    assert seen == []
    assert reads > 0
    assert (disk / CFG).read_bytes() == cfg_bytes(OLD)  # an even number of swaps
    assert temps(disk) == []


def test_concurrent_rewriters_of_one_disk_agree(disk: Path) -> None:
    """Two pods for the same record (a retry beside a slow attempt): both succeed, one writes."""
    results: list[str] = []

    def go() -> None:
        results.append(rewrite(str(disk), NAME, OLD, NEW).message.split(":")[0])

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["unchanged"] * 7 + ["written"]
    assert (disk / CFG).read_bytes() == cfg_bytes(NEW)


# -- the command -----------------------------------------------------------------------------------------

def run_module(disk: Path, *extra: str, old: str = OLD, termination: Path | None = None,
               isolated: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["--path", str(disk), "--disk-name", NAME, "--old", old, "--new", NEW, *extra]
    if termination is not None:
        args += ["--termination-log", str(termination)]
    if isolated:
        # -S: no site-packages, -I: no PYTHONPATH/user site/cwd; only the standard library and this file's package.
        code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from bimguard.rewrite_cfg import main; sys.exit(main())"
        cmd = [sys.executable, "-S", "-I", "-c", code, *args]
    else:
        cmd = [sys.executable, "-m", "bimguard.rewrite_cfg", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)


def test_imports_only_the_standard_library() -> None:
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); before = set(sys.modules); "
            "import bimguard.rewrite_cfg; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "print(sorted(new - set(sys.stdlib_module_names) - {'bimguard'}))")
    p = subprocess.run([sys.executable, "-S", "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
    src = (REPO / "bimguard" / "__init__.py").read_text()
    assert "import" not in src  # the package init must stay empty for this to hold


def test_command_writes_and_reports(disk: Path, tmp_path: Path) -> None:
    term = tmp_path / "termination-log"
    p = run_module(disk, termination=term)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("written:")
    assert term.read_text().startswith("written:")
    assert (disk / CFG).read_bytes() == cfg_bytes(NEW)
    p = run_module(disk, termination=term)
    assert p.returncode == 0 and term.read_text().startswith("unchanged:")


def test_command_refusal_goes_to_stderr_and_termination_log(disk: Path, tmp_path: Path) -> None:
    term = tmp_path / "termination-log"
    p = run_module(disk, old=OTHER, termination=term)
    assert p.returncode == EXIT_REFUSED
    assert p.stderr.startswith("refused:") and OLD in p.stderr
    assert term.read_text().startswith("refused:")


def test_command_missing_and_unwritable_termination_log(disk: Path, tmp_path: Path) -> None:
    (disk / CFG).unlink()
    p = run_module(disk, termination=tmp_path / "no" / "such" / "dir")  # failing to write it is not fatal
    assert p.returncode == EXIT_MISSING and p.stderr.startswith("missing:")


def test_command_usage_errors_exit_2(disk: Path, tmp_path: Path) -> None:
    term = tmp_path / "termination-log"
    p = run_module(disk, old="nope", termination=term)
    assert p.returncode == EXIT_USAGE and term.read_text().startswith("usage:")
    p = subprocess.run([sys.executable, "-m", "bimguard.rewrite_cfg", "--path", str(disk)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == EXIT_USAGE


def test_python_dash_m_works(disk: Path, tmp_path: Path) -> None:
    p = run_module(disk, termination=tmp_path / "t", isolated=False)
    assert p.returncode == 0, p.stderr
    assert json.loads((disk / CFG).read_bytes())["diskUUID"] == NEW
