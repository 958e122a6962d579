"""`bimguard rewrite-cfg`: the compare-and-swap of one disk's `longhorn-disk.cfg`, run on its node.

It runs in a short-lived privileged pod whose only hostPath volume is the disk directory, so it
imports nothing but the standard library (a test checks this): the less code runs there, the
less can go wrong next to the data. `python -m bimguard.rewrite_cfg` runs it without the CLI.

The rules (docs/design.md, invariants 3 and 4):
- the cfg is replaced only if it names the expected disk and holds the old UUID; if it already
  holds the new UUID nothing is written (idempotent: a retried pod succeeds);
- a disk whose `replicas/` or `backing-images/` holds anything is refused: changing its UUID
  would turn that data into orphans that `orphan-auto-deletion` deletes (Longhorn matches replica
  directories to Replicas by UUID, `controller/monitor/disk_monitor.go:423-433 @v1.7.2`, and deletes
  orphans when the setting is on, `controller/node_controller.go:1584 @v1.7.2`);
- the file must never be absent, not even for a moment: Longhorn's monitor treats a failed
  `stat` as "missing" and writes a fresh random UUID (`controller/monitor/disk_monitor.go:264-296
  @v1.7.2`). So the new content goes to a temporary file in the same directory, which is fsync'ed
  and then renamed over the cfg (never unlink first), and the directory is fsync'ed so the rename
  survives a crash;
- a missing cfg is never created: that is Longhorn's job, and a missing file here means the
  path is not the disk we think it is;
- everything happens relative to one directory descriptor opened with O_NOFOLLOW, and the cfg
  is opened with O_NOFOLLOW too, so a symlink planted on the disk cannot redirect the write to
  another file on the host.

Exit codes (the controller reads them from the pod status; the reason is on stderr and in the
termination message, first word = outcome):
  0 written, or already the new UUID ("written" / "unchanged")
  1 transient I/O error, worth retrying ("error")
  2 usage ("usage")
  3 refused: another disk or UUID, not a directory, data on the disk, not a Longhorn cfg ("refused")
  4 cfg missing, nothing created ("missing")
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import re
import secrets
import stat
import sys
import time
from dataclasses import dataclass
from typing import Any

CFG = "longhorn-disk.cfg"  # lm v1.7.2 util/util.go:72 DiskConfigFile
TMP_PREFIX = f".{CFG}."
_TMP_RE = re.compile(r"\A\.longhorn-disk\.cfg\.[0-9a-f]{16}\Z")
# Directories whose entries are data Longhorn tracks by disk UUID (util/util.go:65 ReplicaDirectory,
# types/types.go:104 BackingImageManagerDirectory @v1.7.2).
DATA_DIRS = ("replicas", "backing-images")
# What DiskConfig holds (lm v1.7.2 util/util.go:637); cfgs written by Longhorn <= v1.5 hold only diskUUID.
CFG_KEYS = frozenset({"diskName", "diskUUID", "diskDriver"})
MAX_CFG_BYTES = 64 * 1024  # a real cfg is ~120 bytes; anything huge is not one
# Where kubelet reads a container's termination message. Written only when --termination-log is
# given (the rewriter pod passes /dev/termination-log): run by hand on a host, the command must not
# create /dev/termination-log.
DEFAULT_TERMINATION_LOG: str | None = None
# A rewriter of the same disk that holds the lock longer than this is stuck (hung storage?): give
# up with a transient error rather than hang the pod.
LOCK_TIMEOUT_SECONDS = 30.0
# Longhorn writes lower-case v4 UUIDs from google/uuid (util/util.go:168-169 @v1.7.2).
UUID_RE = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
# The old UUID is whatever the cfg holds, letters in either case: a cfg edited by hand can hold
# upper case, and Longhorn records it and compares it with the status exactly as written
# (controller/node_controller.go:707 @v1.7.2). It is compared here exactly as given.
ANY_CASE_UUID_RE = re.compile(UUID_RE.pattern, re.IGNORECASE)

EXIT_OK, EXIT_TRANSIENT, EXIT_USAGE, EXIT_REFUSED, EXIT_MISSING = 0, 1, 2, 3, 4
_WORD = {EXIT_TRANSIENT: "error", EXIT_USAGE: "usage", EXIT_REFUSED: "refused", EXIT_MISSING: "missing"}

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Outcome:
    code: int
    message: str  # one line, starts with the outcome word

    @property
    def ok(self) -> bool:
        return self.code == EXIT_OK


class _Stop(Exception):
    """Ends the swap early with an exit code; raised inside, turned into an Outcome at the edge."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def rewrite(path: str, disk_name: str, old_uuid: str, new_uuid: str, *, check: bool = False) -> Outcome:
    """Compare-and-swap `<path>/longhorn-disk.cfg` from `old_uuid` to `new_uuid`; never raises
    for I/O problems, returns the outcome instead.

    With `check`, only look: exit 0 if the cfg (naming the expected disk) already holds `new_uuid`,
    else the refusal the swap would give or "refused: ... holds <uuid>" -- never a write, so it
    runs on a read-only mount. After an attempt that ended without a word (a pod killed between
    its rename and its exit), that is how a controller learns what the cfg holds."""
    problem = validate(path, disk_name, old_uuid, new_uuid)
    if problem:
        return Outcome(EXIT_USAGE, f"usage: {problem}")
    try:
        return _rewrite(path, disk_name, old_uuid, new_uuid, check)
    except _Stop as stop:
        return Outcome(stop.code, f"{_WORD[stop.code]}: {stop.reason}")
    except OSError as e:  # not classified above: an I/O problem a retry may fix
        return Outcome(EXIT_TRANSIENT, f"error: {path}: {e.strerror or e}")


def validate(path: str, disk_name: str, old_uuid: str, new_uuid: str) -> str:
    if not path or not os.path.isabs(path):
        return f"--path must be an absolute path, got {path!r}"
    if "\n" in disk_name or "\x00" in disk_name:
        return "--disk-name must be one line"
    if not ANY_CASE_UUID_RE.match(old_uuid):
        return f"--old must be a UUID, got {old_uuid!r}"
    if not UUID_RE.match(new_uuid):
        return f"--new must be a lower-case UUID like Longhorn writes, got {new_uuid!r}"
    if old_uuid.lower() == new_uuid:
        return "--old and --new are the same UUID"
    return ""


def _rewrite(path: str, disk_name: str, old_uuid: str, new_uuid: str, check: bool = False) -> Outcome:
    dir_fd = _open_disk_dir(path)
    try:
        _lock(dir_fd, path)
        if not check:
            _remove_stale_temps(dir_fd)
        raw, st = _read_cfg(dir_fd, path)
        cfg = _parse_cfg(raw, path)
        recorded_name = cfg.get("diskName", "")
        if recorded_name != disk_name:
            raise _Stop(EXIT_REFUSED, f"{path}/{CFG} names disk {recorded_name!r}, not {disk_name!r}")
        current = cfg["diskUUID"]
        if current == new_uuid:
            return Outcome(EXIT_OK, f"unchanged: {path}/{CFG} already holds {new_uuid}")
        if check:
            raise _Stop(EXIT_REFUSED, f"{path}/{CFG} holds diskUUID {current}, not {new_uuid} (checked, nothing written)")
        if current != old_uuid:
            raise _Stop(EXIT_REFUSED, f"{path}/{CFG} holds diskUUID {current}, expected {old_uuid}")
        _require_no_data(dir_fd, path)
        cfg["diskUUID"] = new_uuid
        _replace(dir_fd, encode_cfg(cfg), st)
        return Outcome(EXIT_OK, f"written: {path}/{CFG} diskUUID {old_uuid} -> {new_uuid}")
    finally:
        os.close(dir_fd)  # also releases the lock


def _lock(dir_fd: int, path: str) -> None:
    """Serialise rewriters of the same disk (a retried pod beside a slow one). Longhorn never
    writes an existing cfg (`controller/monitor/disk_utils.go:148-151 @v1.7.2`), so only bimguard
    competes for it. A filesystem without flock gets no lock rather than no rewrite."""
    deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
    while True:
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise _Stop(EXIT_TRANSIENT, f"{path}: another rewriter of this disk still holds the lock "
                                            f"after {LOCK_TIMEOUT_SECONDS:g} s") from None
            time.sleep(0.05)
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                return
            raise


def _open_disk_dir(path: str) -> int:
    # O_NOFOLLOW refuses a symlink as the last component: the mount point of the hostPath volume
    # is a real directory, so a symlink there is something other than the disk.
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise _Stop(EXIT_REFUSED, f"{path} is not a directory") from e
        if e.errno == errno.ELOOP:
            raise _Stop(EXIT_REFUSED, f"{path} is a symlink") from e
        raise


def _read_cfg(dir_fd: int, path: str) -> tuple[bytes, os.stat_result]:
    try:
        fd = os.open(CFG, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise _Stop(EXIT_MISSING, f"{path}/{CFG} does not exist; not creating it (that is Longhorn's job)") from e
        if e.errno == errno.ELOOP:
            raise _Stop(EXIT_REFUSED, f"{path}/{CFG} is a symlink") from e
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Stop(EXIT_REFUSED, f"{path}/{CFG} is not a regular file")
        if st.st_size > MAX_CFG_BYTES:
            raise _Stop(EXIT_REFUSED, f"{path}/{CFG} is {st.st_size} bytes, not a Longhorn disk config")
        chunks = []
        while chunk := os.read(fd, MAX_CFG_BYTES + 1):
            chunks.append(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def _parse_cfg(raw: bytes, path: str) -> dict[str, Any]:
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _Stop(EXIT_REFUSED, f"{path}/{CFG} is not JSON: {e}") from e
    if (not isinstance(cfg, dict) or not set(cfg) <= CFG_KEYS or "diskUUID" not in cfg
            or not all(isinstance(v, str) for v in cfg.values())):
        raise _Stop(EXIT_REFUSED, f"{path}/{CFG} is not a Longhorn disk config: {raw[:200]!r}")
    return cfg


def encode_cfg(cfg: dict[str, Any]) -> bytes:
    """The cfg as Longhorn writes it: Go's json.Marshal of DiskConfig, keys in the order read (the
    struct order diskName, diskUUID, diskDriver), compact, no trailing newline (`util/util.go:637-641`,
    `controller/monitor/disk_utils.go:143,161 @v1.7.2`)."""
    text = json.dumps(cfg, separators=(",", ":"), ensure_ascii=False)
    # json.Marshal escapes these even inside strings; keep byte-for-byte what Longhorn would write.
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode("utf-8")


def _require_no_data(dir_fd: int, path: str) -> None:
    for name in DATA_DIRS:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.ENOENT:
                continue
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                raise _Stop(EXIT_REFUSED, f"{path}/{name} is not a directory") from e
            raise
        try:
            with os.scandir(fd) as entries:
                first = next(iter(entries), None)
        finally:
            os.close(fd)
        if first is not None:
            raise _Stop(EXIT_REFUSED, f"{path}/{name} is not empty ({first.name}): the disk holds data; "
                                      "changing its UUID would orphan it")


def _replace(dir_fd: int, content: bytes, old: os.stat_result) -> None:
    tmp, fd = _create_temp(dir_fd)
    renamed = False
    try:
        try:
            # Longhorn's mode (go-common-libs ns.WriteFile, vendored at
            # vendor/github.com/longhorn/go-common-libs/ns/file.go:236 @v1.7.2), whatever the umask
            os.fchmod(fd, 0o644)
            if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(fd, old.st_uid, old.st_gid)
                except PermissionError:
                    pass  # keeping the owner is a courtesy; Longhorn reads the file as root
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        # rename() atomically replaces the directory entry: a reader sees the old or the new file,
        # never none (docs/design.md, invariant 4).
        os.rename(tmp, CFG, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        renamed = True
        os.fsync(dir_fd)
    finally:
        if not renamed:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass


def _create_temp(dir_fd: int) -> tuple[str, int]:
    for _ in range(8):
        name = TMP_PREFIX + secrets.token_hex(8)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC, 0o644,
                         dir_fd=dir_fd)
        except FileExistsError:
            continue
        return name, fd
    raise OSError(errno.EEXIST, "could not pick a free temporary file name")


def _remove_stale_temps(dir_fd: int) -> None:
    """Temporary files of a rewriter that was killed mid-write (we hold the lock, so none is live)."""
    with os.scandir(dir_fd) as entries:
        stale = [e.name for e in entries if _TMP_RE.match(e.name) and e.is_file(follow_symlinks=False)]
    for name in stale:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass


def _report(outcome: Outcome, termination_log: str | None) -> None:
    print(outcome.message, file=sys.stdout if outcome.ok else sys.stderr)
    if not termination_log:
        return
    try:
        # kubelet shows this file as the container's termination message; best effort only.
        with open(termination_log, "w", encoding="utf-8") as f:
            f.write(outcome.message + "\n")
    except OSError:
        pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", required=True, help="the disk directory (as mounted in this pod)")
    p.add_argument("--disk-name", required=True,
                   help="the diskName the cfg must hold (status.diskStatus[<disk>].diskName; "
                        "empty for cfgs written by Longhorn <= v1.5)")
    p.add_argument("--old", required=True, metavar="UUID", help="the diskUUID the cfg must hold now")
    p.add_argument("--new", required=True, metavar="UUID", help="the diskUUID to write")
    p.add_argument("--check", action="store_true",
                   help="write nothing: exit 0 if the cfg already holds --new, 3 if it holds anything else")
    p.add_argument("--termination-log", default=DEFAULT_TERMINATION_LOG, metavar="PATH",
                   help="also write the outcome to this file for kubelet, e.g. /dev/termination-log in the "
                        "rewriter pod (default: nowhere)")


def run(args: argparse.Namespace) -> int:
    outcome = rewrite(args.path, args.disk_name, args.old, args.new, check=args.check)
    _report(outcome, args.termination_log)
    return outcome.code


DESCRIPTION = (__doc__ or "").split("\n\n", 1)[0]  # __doc__ is None under python -OO
EPILOG = """\
exit codes:
  0  written, or the cfg already holds --new
  1  transient I/O error (retry)
  2  usage
  3  refused: the cfg names another disk or UUID, the path is not a directory or is a symlink,
     replicas/ or backing-images/ is not empty, or the file is not a Longhorn disk config;
     with --check: the cfg does not hold --new
  4  the cfg does not exist (it is never created)
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bimguard rewrite-cfg", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
