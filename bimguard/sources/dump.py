"""Read a kubectl dump: a file, a directory of files, or standard input ("-")."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import BinaryIO

from bimguard.decode import InputError, decode_document
from bimguard.inventory import Inventory

DUMP_SUFFIXES = (".json", ".yaml", ".yml")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
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
