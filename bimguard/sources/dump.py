"""Read a kubectl dump: a file, a directory of files, or standard input ("-")."""

from __future__ import annotations

import mmap
import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO

from bimguard.decode import InputError, decode_document
from bimguard.inventory import Inventory

DUMP_SUFFIXES = (".json", ".yaml", ".yml")
STDIN = "standard input"

# Files at least this large are mapped instead of read: a 300 MB dump then needs no read pass and
# no private copy (the scan of it got 0.3-1.3 s faster, bench/scan_bench.py). Pipes and process
# substitution (fstat size 0) are read. The one cost: a file truncated by another process while
# it is being scanned ends the scan with SIGBUS instead of an error message.
MAP_FROM_BYTES = 1 << 20

# The largest dump read, file or stream: 4 GiB is ~400,000 Longhorn Nodes with their replicas
# (the 20,000-node benchmark dump is 299 MB), and a scan needs about twice its input in memory.
# A file past it is refused before reading; a stream (a pipe, standard input, /dev/zero) when it
# gets there.
MAX_DUMP_BYTES = 4 << 30
_CHUNK = 1 << 20


def too_large(source: str, limit: int = MAX_DUMP_BYTES) -> InputError:
    return InputError(f"{source}: larger than {limit / (1 << 30):g} GiB, the most a dump may have "
                      f"(bimguard.sources.dump.MAX_DUMP_BYTES): is this really a kubectl dump?")


def read_stream(stream: BinaryIO, source: str, limit: int | None = None) -> bytes:
    """All of a stream, refusing more than `limit` bytes (MAX_DUMP_BYTES); stops at the first
    chunk when it is binary data (/dev/zero, an image) rather than reading up to the limit."""
    limit = MAX_DUMP_BYTES if limit is None else limit
    buf = bytearray()
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            return bytes(buf)
        if not buf and b"\0" in chunk[:4096] and not chunk.startswith((b"\xff\xfe", b"\xfe\xff", b"PK\x03\x04")):
            raise InputError(f"{source}: binary data (NUL bytes), not a JSON or YAML dump")
        if len(buf) + len(chunk) > limit:
            raise too_large(source, limit)
        buf += chunk


def _read(path: Path) -> bytes | memoryview:
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):  # a FIFO, /dev/stdin, a character device
                return read_stream(f, str(path))
            if st.st_size > MAX_DUMP_BYTES:
                raise too_large(str(path))
            if st.st_size >= MAP_FROM_BYTES:
                return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
            return f.read()
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from None


def read_dump(path: str, stdin: BinaryIO | None = None) -> Inventory:
    inv = Inventory()
    if path == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        try:
            data = read_stream(stream, STDIN)
        except OSError as err:
            raise InputError(f"{STDIN}: cannot read: {err.strerror or err}") from None
        decode_document(data, STDIN, inv)
        return inv
    root = Path(path)
    if not root.exists():
        raise InputError(f"{path}: no such file or directory")
    if root.is_dir():
        files = sorted(
            Path(dirpath) / name
            for dirpath, _, names in os.walk(root)
            for name in names
            if name.endswith(DUMP_SUFFIXES)
        )
        if not files:
            raise InputError(f"{path}: a directory with no {'/'.join(DUMP_SUFFIXES)} files")
        total = 0
        for file in files:
            data = _read(file)
            total += len(data)
            if total > MAX_DUMP_BYTES:
                raise too_large(path)
            decode_document(data, str(file), inv)
        return inv
    decode_document(_read(root), str(root), inv)
    return inv
