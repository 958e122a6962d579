"""What happened to every `longhorn-disk.cfg` on the simulated hosts, as the kernel saw it.

docs/design.md, invariant 4: a disk's cfg is never absent, not even for a moment (when Longhorn's
disk monitor cannot stat it, it writes a new random UUID: controller/monitor/disk_monitor.go:264-296
@v1.7.2), and it is only ever replaced whole (a temporary file renamed over it). Longhorn's own
poll cannot prove either: it looks every 30 seconds. :class:`CfgWatch` asks the kernel instead
(inotify, through libc) for every directory under a cluster's host root, so a test can judge the
invariant from the emulator's own record, like :class:`bimguard.sim.history.History` for the API
server's objects:

- ``removed``: the cfg's directory entry went away (unlink, or renamed away): the file was absent;
- ``written``: the cfg was modified in place after it had been written whole (not a rename over it);
- ``created`` (first write, Longhorn's ``O_EXCL`` create) and ``replaced`` (a rename over it) are
  the legitimate changes.

Linux only (inotify); watches are added for directories as they appear. If the kernel's event
queue overflowed, ``overflowed`` is set and the record is incomplete.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from bimguard.sim.longhorn.disks import DISK_CONFIG_FILE

_IN_MODIFY = 0x00000002
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_FROM = 0x00000040
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE = 0x00000200
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_ISDIR = 0x40000000
_IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE | _IN_ONLYDIR
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


@dataclass(frozen=True)
class CfgEvent:
    seq: int  # order of observation
    disk_dir: Path
    kind: str  # created | replaced | removed | written


class CfgWatch:
    """Records cfg events under `root` from `start()` (on the running event loop) until `close()`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.events: list[CfgEvent] = []
        self.overflowed = False
        self._fd = -1
        self._dirs: dict[int, Path] = {}
        self._creating: set[Path] = set()  # cfgs between their create and the close of that write
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._fd = fd
        self.root.mkdir(parents=True, exist_ok=True)
        self._watch_tree(self.root, announce=False)
        asyncio.get_running_loop().add_reader(fd, self._read)

    def flush(self) -> None:
        """Record what the kernel has queued: a change is queued when its system call returns, so
        after `flush()` every change made before it is in `events`."""
        self._read()

    def close(self) -> None:
        if self._fd >= 0:
            self._read()
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> CfgWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the invariants ask ------------------------------------------------------------
    def absences(self) -> list[CfgEvent]:
        return [e for e in self.events if e.kind == "removed"]

    def in_place_writes(self) -> list[CfgEvent]:
        return [e for e in self.events if e.kind == "written"]

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e.kind == kind)

    # -- the kernel's side -------------------------------------------------------------------
    def _add(self, directory: Path) -> None:
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _MASK)
        if wd >= 0:
            self._dirs[wd] = directory
        # < 0: gone again already, or not a directory; nothing inside it to watch

    def _watch_tree(self, top: Path, *, announce: bool) -> None:
        """Watch `top` and every directory below it. A directory that appeared with files in it
        (created and filled before its watch existed) has its cfg recorded as created."""
        for current, subdirs, files in os.walk(top):
            self._add(Path(current))
            if announce and DISK_CONFIG_FILE in files:
                self._note(Path(current), "created")

    def _note(self, disk_dir: Path, kind: str) -> None:
        self.events.append(CfgEvent(len(self.events), disk_dir, kind))

    def _read(self) -> None:
        while self._fd >= 0:
            try:
                buf = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return
            if not buf:
                return
            offset = 0
            while offset < len(buf):
                wd, mask, _cookie, length = _HEADER.unpack_from(buf, offset)
                raw = buf[offset + _HEADER.size:offset + _HEADER.size + length].rstrip(b"\0")
                offset += _HEADER.size + length
                self._event(wd, mask, os.fsdecode(raw))

    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & _IN_Q_OVERFLOW:
            self.overflowed = True
            return
        if mask & _IN_IGNORED:
            self._dirs.pop(wd, None)
            return
        directory = self._dirs.get(wd)
        if directory is None:
            return
        if mask & _IN_ISDIR:
            if mask & (_IN_CREATE | _IN_MOVED_TO):
                self._watch_tree(directory / name, announce=True)
            return
        if name != DISK_CONFIG_FILE:
            return
        if mask & _IN_CREATE:
            self._creating.add(directory)
            self._note(directory, "created")
        elif mask & _IN_MOVED_TO:
            self._note(directory, "replaced")
        elif mask & (_IN_DELETE | _IN_MOVED_FROM):
            self._creating.discard(directory)
            self._note(directory, "removed")
        elif mask & _IN_CLOSE_WRITE:
            self._creating.discard(directory)
        elif mask & _IN_MODIFY and directory not in self._creating:
            self._note(directory, "written")
