"""Read a kubectl dump: a file, a directory of files, or standard input ("-")."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path
from typing import BinaryIO

from bimguard.decode import InputError, decode_document
from bimguard.inventory import Inventory

DUMP_SUFFIXES = (".json", ".yaml", ".yml")


# Files at least this large are mapped instead of read: a 300 MB dump then needs no read pass and
# no private copy (the scan of it got 0.3-1.3 s faster, bench/scan_bench.py). Pipes and process
# substitution (fstat size 0) are read. The one cost: a file truncated by another process while
# it is being scanned ends the scan with SIGBUS instead of an error message.
MAP_FROM_BYTES = 1 << 20


def _read(path: Path) -> bytes | memoryview:
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size >= MAP_FROM_BYTES:
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
        decode_document(stream.read(), "<stdin>", inv)
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
        for file in files:
            decode_document(_read(file), str(file), inv)
        return inv
    decode_document(_read(root), str(root), inv)
    return inv
