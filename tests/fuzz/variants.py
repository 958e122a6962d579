"""Cheap variants of hypothesis-drawn inputs, for the volume of bench/fuzz_bench.py.

Hypothesis draws ~50-80 structured examples a second here; the bounded run needs 100,000 per
target. Each drawn example is therefore followed by variants made with a seeded `random.Random`
in well under a millisecond, each of which keeps what the oracle needs to know about it:

- a well-formed review stays well-formed: its uid, node name, disk names (keys of spec.disks,
  status.diskStatus and oldObject alike), disk UUIDs and JSON encoding are drawn again from the
  same kinds of values (names with `/`, `~`, unicode, up to 253 characters; UUIDs fresh, taken,
  clones, upper-case, empty, not UUIDs);
- any other body (malformed, or a file for the scanner) gets byte-level damage (flips, insertions,
  deletions, truncation, duplicated slices) and is judged by the oracle that holds for every
  input: for the server `ANY_BODY`, for the scanner the same verdict-or-one-line rule as always.
"""

from __future__ import annotations

import copy
import json
import random
import uuid as uuidlib
from typing import Any

from tests.fuzz.scan_target import Input
from tests.fuzz.webhook_target import HELD_UUIDS, Expect

# Whatever a body is, the answer is 200 allowing (a patch that applies), 400 or 413, never more.
ANY_BODY = Expect(False, (400, 413), maybe_allowed=True, patch_ok=True)

DISK_NAMES = ["default-disk-d4d8a5ad0ab94cae", "disk-nvme2", "a/b", "~", "~1", "/", "a~0/b~1", "日本語ディスク", "disk 1",
              ".", "..", "emoji-😀", "x" * 200, "UPPER", "null", "-", "\u0000nul", "tab\t", "ǝɯɐu", "\u202eRTL", "‮", "\\"]
LABEL = "abcdefghijklmnopqrstuvwxyz0123456789"


def _text(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.6:
            out.append(rng.choice(LABEL + "/~-_.  "))
        elif r < 0.9:
            out.append(chr(rng.randrange(0x80, 0xD7FF)))
        else:
            out.append(chr(rng.randrange(0xE000, 0x10FFFF)))
    return "".join(out)


def node_name(rng: random.Random) -> str:
    if rng.random() < 0.3:  # long: past the 63 characters a label value may have
        labels = [("".join(rng.choice(LABEL) for _ in range(rng.randint(1, 63)))) for _ in range(rng.randint(2, 8))]
        name = ".".join(labels)[:253].strip(".-")
        return name or "n"
    return rng.choice(["worker-1", "worker-2", "ip-10-0-3-17.eu-west-1.compute.internal", "n", "a" * 63])


def disk_name(rng: random.Random) -> str:
    return rng.choice(DISK_NAMES) if rng.random() < 0.5 else _text(rng, rng.randint(1, 30))


def disk_uuid(rng: random.Random) -> str | None:
    fresh = str(uuidlib.UUID(int=rng.getrandbits(128), version=4))
    kind = rng.randrange(10)
    if kind <= 2:
        return fresh
    if kind <= 4:
        return rng.choice(HELD_UUIDS)[:4] + fresh[4:]
    if kind == 5:
        return rng.choice(HELD_UUIDS)
    if kind == 6:
        return fresh.upper()
    if kind == 7:
        return rng.choice(["", None])
    return _text(rng, rng.randint(0, 40))


def _rekey(d: Any, mapping: dict[str, str]) -> Any:
    if not isinstance(d, dict):
        return d
    return {mapping.get(k, k): v for k, v in d.items()}


def respin_review(doc: dict[str, Any], rng: random.Random) -> tuple[dict[str, Any], bytes]:
    """Another well-formed review of the same shape (see the module docstring)."""
    doc = copy.deepcopy(doc)
    req = doc["request"]
    req["uid"] = str(uuidlib.UUID(int=rng.getrandbits(128), version=4)) if rng.random() < 0.7 else \
        _text(rng, rng.randint(1, 40))
    name = node_name(rng)
    if isinstance(req.get("name"), str):
        req["name"] = name
    objs = [o for o in (req.get("object"), req.get("oldObject")) if isinstance(o, dict)]
    names: set[str] = set()
    for o in objs:
        if isinstance(o.get("metadata"), dict) and isinstance(o["metadata"].get("name"), str):
            o["metadata"]["name"] = name
        for part, key in (("spec", "disks"), ("status", "diskStatus")):
            if isinstance(o.get(part), dict) and isinstance(o[part].get(key), dict):
                names |= set(o[part][key])
    fresh: list[str] = []
    while len(fresh) < len(names):
        n = disk_name(rng)
        if n not in fresh:
            fresh.append(n)
    mapping = dict(zip(sorted(names), fresh))
    for o in objs:
        for part, key in (("spec", "disks"), ("status", "diskStatus")):
            if isinstance(o.get(part), dict) and isinstance(o[part].get(key), dict):
                o[part][key] = _rekey(o[part][key], mapping)
    new = (req.get("object") or {}).get("status") if isinstance(req.get("object"), dict) else None
    old = (req.get("oldObject") or {}).get("status") if isinstance(req.get("oldObject"), dict) else None
    new_disks = new.get("diskStatus") if isinstance(new, dict) and isinstance(new.get("diskStatus"), dict) else {}
    old_disks = old.get("diskStatus") if isinstance(old, dict) and isinstance(old.get("diskStatus"), dict) else {}
    for d, entry in new_disks.items():
        if isinstance(entry, dict) and "diskUUID" in entry:
            entry["diskUUID"] = disk_uuid(rng)
            prev = old_disks.get(d)
            if isinstance(prev, dict) and prev.get("diskUUID"):
                prev["diskUUID"] = entry["diskUUID"] if rng.random() < 0.5 else disk_uuid(rng)
    how = rng.randrange(3)
    if how == 0:
        body = json.dumps(doc, ensure_ascii=True).encode()
    elif how == 1:
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    else:
        body = json.dumps(doc, ensure_ascii=False, indent=rng.randint(0, 2)).encode()
    return doc, body


def damage_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        how = rng.randrange(6)
        pos = rng.randint(0, len(out)) if out else 0
        if how == 0 and out:
            out[min(pos, len(out) - 1)] = rng.randrange(256)
        elif how == 1:
            out[pos:pos] = rng.choice([b"\x00", b"\xff", b"\xc3", b"{", b"}", b"[", b"]", b'"', b"\\", b":", b",",
                                       b"- ", b"\n", b"\t", b"&a", b"*a", b"!!", b"\xef\xbb\xbf", b"\\u0000"])
        elif how == 2 and out:
            del out[pos:pos + rng.randint(1, 16)]
        elif how == 3:
            del out[pos:]
        elif how == 4 and out:
            start = rng.randrange(len(out))
            out[pos:pos] = out[start:start + rng.randint(1, 256)]
        else:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(out)


def damage_input(inp: Input, rng: random.Random) -> Input:
    """The same files, one of them damaged (the scanner's oracle holds for any input)."""
    if not inp.files:
        return inp
    files = list(inp.files)
    i = rng.randrange(len(files))
    files[i] = (files[i][0], damage_bytes(files[i][1], rng))
    return Input(inp.option, inp.layout, tuple(files), inp.suffix)
