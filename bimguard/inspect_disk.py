"""`bimguard inspect-disk`: list what a Longhorn disk directory holds, changing nothing.

Runs on the disk's node in a short-lived pod with the disk directory mounted read-only (like
`rewrite-cfg`, standard library only). The repair asks before it changes a disk's UUID: a
directory under ``replicas/`` or ``backing-images/`` that no Longhorn object accounts for is data
that would become an orphan (Longhorn names replica data ``<path>/replicas/<volume>-<8 chars>``
and backing-image files ``<path>/backing-images/<name>-<uuid>/``, lm v1.7.2 types/types.go:104-105,
389-398).

Output (standard output, and the termination message file when ``--termination-log`` is given):
one line of JSON ``{"replicas": [...], "backingImages": [...], "truncated": false}`` with the
subdirectory names, sorted, at most ``--max`` of each (the termination message is capped at 4 KiB
by the kubelet). Exit 0 when listed; 4 when the path is not a directory; 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_OK, EXIT_USAGE, EXIT_MISSING = 0, 2, 4
SUBDIRS = (("replicas", "replicas"), ("backingImages", "backing-images"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", required=True, help="the disk directory (the mount of its hostPath)")
    p.add_argument("--max", type=int, default=40, help="names listed per subdirectory (default %(default)s)")
    p.add_argument("--termination-log", metavar="FILE",
                   help="also write the result there (the pod's terminationMessagePath); not written by default")


def inspect(path: str, limit: int) -> dict[str, object]:
    out: dict[str, object] = {"truncated": False}
    for key, sub in SUBDIRS:
        names: list[str] = []
        try:
            with os.scandir(os.path.join(path, sub)) as it:
                names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            pass
        if len(names) > limit:
            out["truncated"] = True
            out[f"{key}Count"] = len(names)
            names = names[:limit]
        out[key] = names
    return out


def run(args: argparse.Namespace) -> int:
    if args.max < 1:
        print("bimguard inspect-disk: --max must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if not os.path.isdir(args.path):
        print(f"bimguard inspect-disk: {args.path} is not a directory", file=sys.stderr)
        if args.termination_log:
            _write(args.termination_log, f"{args.path} is not a directory")
        return EXIT_MISSING
    text = json.dumps(inspect(args.path, args.max), separators=(",", ":"), sort_keys=True)
    print(text)
    if args.termination_log:
        _write(args.termination_log, text)
    return EXIT_OK


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text[:4096])
    except OSError as err:
        print(f"bimguard inspect-disk: could not write {path}: {err}", file=sys.stderr)
