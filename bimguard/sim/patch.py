"""JSON Patch (RFC 6902) and JSON Merge Patch (RFC 7386) for the emulated API server.

Pure functions over plain JSON values (dict/list/str/int/float/bool/None). Inputs are never
mutated; results share no mutable structure with the inputs that a later write could disturb
because the store never mutates stored objects in place.

Errors are raised as `PatchError`; the API layer maps them to the status codes kube-apiserver
uses (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go `applyJSPatch`: an undecodable
patch is 400 BadRequest, a patch that fails to apply, e.g. a failed `test`, is 422 via
`NewGenericServerResponse(StatusUnprocessableEntity, ...)`).
"""

from __future__ import annotations

import copy
from typing import Any

JSON = Any


class PatchError(Exception):
    """A patch could not be decoded (`decode=True`) or applied."""

    def __init__(self, message: str, *, decode: bool = False) -> None:
        super().__init__(message)
        self.decode = decode


def _unescape(token: str) -> str:
    # RFC 6901: ~1 before ~0, so "~01" decodes to "~1", not "/".
    return token.replace("~1", "/").replace("~0", "~")


def parse_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"JSON pointer {pointer!r} must start with /")
    return [_unescape(t) for t in pointer[1:].split("/")]


def _index(container: list, token: str, *, for_add: bool) -> int:
    if token == "-" and for_add:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"invalid array index {token!r}")
    i = int(token)
    limit = len(container) if for_add else len(container) - 1
    if i > limit:
        raise PatchError(f"array index {i} out of bounds")
    return i


def _walk(doc: JSON, tokens: list[str], pointer: str) -> JSON:
    """The value at `tokens`; PatchError naming `pointer` when any step is missing."""
    node = doc
    for t in tokens:
        if isinstance(node, dict):
            if t not in node:
                raise PatchError(f"doc is missing path: {pointer}")
            node = node[t]
        elif isinstance(node, list):
            node = node[_index(node, t, for_add=False)]
        else:
            raise PatchError(f"doc is missing path: {pointer}")
    return node


def _parent(doc: JSON, tokens: list[str]) -> JSON:
    return _walk(doc, tokens[:-1], f"/{'/'.join(tokens)}")


def get_path(doc: JSON, pointer: str) -> JSON:
    return _walk(doc, parse_pointer(pointer), pointer)


def _add(doc: JSON, tokens: list[str], value: JSON) -> JSON:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, for_add=True), value)
    else:
        raise PatchError("cannot add to a scalar")
    return doc


def _remove(doc: JSON, tokens: list[str]) -> tuple[JSON, JSON]:
    if not tokens:
        raise PatchError("cannot remove the document root")
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"unable to remove nonexistent key: {last}: missing value")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, for_add=False))
    raise PatchError("cannot remove from a scalar")


def _equal(a: JSON, b: JSON) -> bool:
    # JSON equality: 1 == 1.0, but True is not 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def decode_json_patch(patch: JSON) -> list[dict]:
    """Validate the shape of an RFC 6902 document (errors here are 400s in kube-apiserver)."""
    if not isinstance(patch, list):
        raise PatchError("json: cannot unmarshal object into Go value of type jsonpatch.Patch", decode=True)
    ops = []
    for op in patch:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise PatchError("invalid JSON patch operation", decode=True)
        if op["op"] not in ("add", "remove", "replace", "move", "copy", "test"):
            raise PatchError(f"Unexpected kind: {op['op']}", decode=True)
        if not isinstance(op.get("path"), str):
            raise PatchError(f"operation {op['op']} is missing path", decode=True)
        if op["op"] in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {op['op']} is missing value", decode=True)
        if op["op"] in ("move", "copy") and not isinstance(op.get("from"), str):
            raise PatchError(f"operation {op['op']} is missing from", decode=True)
        ops.append(op)
    return ops


def apply_json_patch(doc: JSON, patch: JSON) -> JSON:
    """Apply an RFC 6902 patch atomically; returns a new document."""
    ops = decode_json_patch(patch)
    out = copy.deepcopy(doc)
    for op in ops:
        kind, tokens = op["op"], parse_pointer(op["path"])
        if kind == "add":
            out = _add(out, tokens, copy.deepcopy(op["value"]))
        elif kind == "remove":
            out, _ = _remove(out, tokens)
        elif kind == "replace":
            get_path(out, op["path"])  # must exist (RFC 6902 4.3)
            if tokens:
                out, _ = _remove(out, tokens)
            out = _add(out, tokens, copy.deepcopy(op["value"]))
        elif kind == "move":
            if op["path"].startswith(op["from"] + "/"):
                raise PatchError("cannot move a value into one of its children")
            out, value = _remove(out, parse_pointer(op["from"]))
            out = _add(out, tokens, value)
        elif kind == "copy":
            out = _add(out, tokens, copy.deepcopy(get_path(out, op["from"])))
        elif kind == "test":
            try:
                current = get_path(out, op["path"])
            except PatchError:
                current = None
                if op["value"] is not None:
                    raise PatchError(f"testing value {op['path']} failed: test failed") from None
            if not _equal(current, op["value"]):
                raise PatchError(f"testing value {op['path']} failed: test failed")
    return out


def apply_merge_patch(doc: JSON, patch: JSON) -> JSON:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


def apply_strategic_merge_patch(doc: JSON, patch: JSON) -> JSON:
    """An approximation of strategic merge patch for built-in types only.

    Real SMP merges lists by merge keys taken from Go struct tags; this emulator has no such
    metadata, so it applies a merge patch after stripping SMP directives (`$patch`,
    `$setElementOrder/...`, `$retainKeys`, `$deleteFromPrimitiveList/...`). Lists are replaced.
    """
    return apply_merge_patch(doc, _strip_directives(patch))


def _strip_directives(patch: JSON) -> JSON:
    if isinstance(patch, dict):
        if patch.get("$patch") == "delete":
            return None
        return {k: _strip_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [_strip_directives(v) for v in patch if not (isinstance(v, dict) and v.get("$patch") == "delete")]
    return patch
