"""Hypothesis strategies for the files `bimguard scan` reads: kubectl dumps and support bundles.

Generated from the project's realistic samples (examples/collision-dump.json and the support
bundle under tests/fixtures/longhorn/samples/support-bundle) by mutating their object trees
(a value replaced by arbitrary JSON, a key dropped, a type changed, names with `/`, `~` and
unicode), by building objects from scratch, and by damaging the encoded bytes (cut short, bytes
flipped, NULs, another encoding). Dumps: a JSON List, a JSON array, single objects, YAML (one or
many documents, anchors and aliases, tags), UTF-16 or with a BOM, a directory of such files,
standard input. Bundles: a zip or an extracted directory laid out as support-bundle-kit writes it
(`yamls/namespaced/<ns>/longhorn.io/<version>/<resource>.yaml`, "" and nulls as the string
"null", numbers as floats), with members missing, misnamed, damaged, or the zip itself damaged.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml
from hypothesis import strategies as st

from tests.fuzz.review_strategies import any_json, disk_names
from tests.fuzz.scan_target import BUNDLE_SEED, DUMP_SEED, Input

SEED_OBJECTS: list[dict[str, Any]] = json.loads(DUMP_SEED.read_text())["items"]
BUNDLE_MEMBERS: dict[str, bytes] = {
    str(p.relative_to(BUNDLE_SEED.parent)): p.read_bytes() for p in sorted(BUNDLE_SEED.rglob("*")) if p.is_file()}
RESOURCES = ("nodes", "replicas", "backingimages", "backingimagemanagers", "settings")


# -- object trees ---------------------------------------------------------------------------------

def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _replace(root: Any, path: tuple, new: Any, delete: bool = False) -> Any:
    if not path:
        return new
    cur = root
    for key in path[:-1]:
        cur = cur[key]
    if delete:
        del cur[path[-1]]
    else:
        cur[path[-1]] = new
    return root


@st.composite
def mutated(draw: st.DrawFn, value: Any, max_edits: int = 3) -> Any:
    """`value` with a few random edits anywhere in its tree."""
    value = copy.deepcopy(value)
    for _ in range(draw(st.integers(0, max_edits))):
        paths = _paths(value)
        path = draw(st.sampled_from(paths))
        how = draw(st.integers(0, 6))
        if how == 0 and path:
            value = _replace(value, path, None, delete=True)
        elif how == 1:
            value = _replace(value, path, draw(any_json))
        elif how == 2:
            value = _replace(value, path, None)
        elif how == 3 and path and isinstance(path[-1], str):  # rename a key: disk names with / ~ unicode
            parent = value
            for key in path[:-1]:
                parent = parent[key]
            parent[draw(disk_names)] = parent.pop(path[-1])
        elif how == 4:
            value = _replace(value, path, draw(st.sampled_from(["", "null", "0", "1e+10", "true", "~", "-"])))
        elif how == 5:
            value = _replace(value, path, draw(st.sampled_from([1.073741824e+10, -1, 2**70, True, [], {}])))
        else:
            value = _replace(value, path, draw(st.text(max_size=40)))
    return value


@st.composite
def objects(draw: st.DrawFn) -> Any:
    how = draw(st.integers(0, 9))
    if how <= 5:
        return draw(mutated(draw(st.sampled_from(SEED_OBJECTS))))
    if how <= 7:
        return draw(st.sampled_from(SEED_OBJECTS))
    if how == 8:
        return draw(st.fixed_dictionaries({"apiVersion": st.sampled_from(["longhorn.io/v1beta2", "longhorn.io/v1beta1",
                                                                          "v1", ""]),
                                            "kind": st.sampled_from(["Node", "Replica", "BackingImage", "Setting",
                                                                     "BackingImageManager", "List", "Pod"])},
                                           optional={"metadata": any_json, "spec": any_json, "status": any_json}))
    return draw(any_json)


# -- dumps -----------------------------------------------------------------------------------------

def _billion_laughs(levels: int) -> bytes:
    lines = ["a0: &a0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append(f"kind: Node\napiVersion: longhorn.io/v1beta2\nmetadata: {{name: n}}\nspec: *a{levels - 1}")
    return "\n".join(lines).encode()


@st.composite
def encoded(draw: st.DrawFn, items: list[Any]) -> tuple[bytes, str]:
    """(bytes, file suffix)."""
    how = draw(st.integers(0, 11))
    if how <= 2:
        doc = {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}
        return json.dumps(doc, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 2, 4]))).encode(), ".json"
    if how == 3:
        return json.dumps(items).encode(), ".json"
    if how == 4:
        return b"\n".join(json.dumps(o).encode() for o in items), ".json"  # objects one after the other
    if how <= 6:
        return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}, allow_unicode=True).encode(), ".yaml"
    if how == 7:
        return yaml.safe_dump_all(items, allow_unicode=draw(st.booleans())).encode(), ".yml"
    if how == 8:  # PowerShell's > writes UTF-16; some editors a BOM
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        return draw(st.sampled_from([text.encode("utf-16"), b"\xef\xbb\xbf" + text.encode(),
                                     text.encode("utf-16-be"), text.encode("utf-32")])), ".json"
    if how == 9:  # YAML features a dump never has: tags, anchors, aliases, merge keys
        return draw(st.sampled_from([
            b"!!python/object/apply:os.system ['true']\n", b"--- !!binary aGVsbG8=\n",
            b"a: &x {kind: Node}\nb: *x\n", b"<<: {kind: Node}\napiVersion: longhorn.io/v1beta2\n",
            b"? [complex, key]\n: value\n", b"--- *undefined\n", _billion_laughs(draw(st.integers(2, 9))),
            b"kind: List\napiVersion: v1\nitems:\n- &n {kind: Node, apiVersion: longhorn.io/v1beta2, metadata: {name: a}}\n- *n\n",
        ])), ".yaml"
    if how == 10:
        return draw(st.binary(max_size=300)), draw(st.sampled_from([".json", ".yaml", ".txt", ""]))
    return draw(st.text(max_size=300)).encode(), draw(st.sampled_from([".json", ".yaml"]))


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    how = draw(st.integers(0, 7))
    if how <= 3 or not data:
        return data
    if how == 4:
        return data[: draw(st.integers(0, len(data)))]
    if how == 5:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    if how == 6:
        i = draw(st.integers(0, len(data)))
        return data[:i] + draw(st.sampled_from([b"\x00", b"\xff\xfe", b"\xc3", b"\t", b"\r", b"\"", b"{", b"]", b"- "])) + data[i:]
    return data + draw(st.sampled_from([b"\x00" * 8, b"garbage", b"}", b"\n---\n", b"\n...\n"]))


@st.composite
def dump_inputs(draw: st.DrawFn) -> Input:
    layout = draw(st.sampled_from(["file"] * 6 + ["dir", "stdin"]))
    if layout == "dir":
        files = []
        for i in range(draw(st.integers(0, 3))):
            data, suffix = draw(encoded(draw(st.lists(objects(), max_size=4))))
            name = draw(st.sampled_from([f"part{i}{suffix}", f"sub/part{i}{suffix}", f"part{i}.txt", f"x{i}.yml"]))
            files.append((name, draw(damaged(data))))
        return Input("--from-dump", "dir", tuple(files))
    data, suffix = draw(encoded(draw(st.lists(objects(), max_size=6))))
    return Input("--from-dump", layout, ((f"dump{suffix}", draw(damaged(data))),), suffix)


# -- support bundles -------------------------------------------------------------------------------

def _sbk(value: Any) -> Any:
    """support-bundle-kit's rendering: "" and null -> "null", integers -> floats."""
    if isinstance(value, dict):
        return {k: _sbk(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_sbk(v) for v in value]
    if value is None or value == "":
        return "null"
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@st.composite
def bundle_members(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    how = draw(st.integers(0, 4))
    if how == 0:  # the sample bundle, some members damaged
        return [(name, draw(damaged(data)) if name.endswith(".yaml") else data) for name, data in BUNDLE_MEMBERS.items()]
    top = draw(st.sampled_from(["supportbundle_x_2025-03-01T14-02-11Z/", "", "a/b/"]))
    members = []
    for res in draw(st.lists(st.sampled_from(RESOURCES + ("volumes", "NODES", "nodes.yaml")), max_size=5, unique=True)):
        ns = draw(st.sampled_from(["longhorn-system", "other", "longhorn-system"]))
        ver = draw(st.sampled_from(["v1beta2", "v1beta1", "v1"]))
        items = draw(st.lists(objects(), max_size=4))
        if draw(st.booleans()):
            items = [_sbk(i) for i in items]
        if how == 1:
            data, _ = draw(encoded(items))
        else:
            data = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}, allow_unicode=True).encode()
        members.append((f"{top}yamls/namespaced/{ns}/longhorn.io/{ver}/{res}.yaml", draw(damaged(data))))
    if draw(st.booleans()):
        members.append((f"{top}logs/longhorn-system/x.log", b"log line\n"))
    return members


@st.composite
def bundle_inputs(draw: st.DrawFn) -> tuple[Input, tuple[int | None, list[tuple[int, int]]] | None]:
    layout = draw(st.sampled_from(["zip", "zip", "zip", "dir", "file"]))
    if layout == "file":  # not a bundle at all: a dump, junk, an empty file
        data, suffix = draw(encoded(draw(st.lists(objects(), max_size=3))))
        return Input("--support-bundle", "file", (("f", draw(damaged(data))),), draw(st.sampled_from([suffix, ".zip"]))), None
    members = tuple(draw(bundle_members()))
    damage = None
    if layout == "zip" and draw(st.integers(0, 3)) == 0:
        damage = (draw(st.none() | st.integers(0, 1 << 16)),
                  draw(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4)))
    return Input("--support-bundle", layout, members, ".zip"), damage
