"""Decoding kubectl/Kubernetes output (JSON or YAML) into an Inventory. Pure: bytes in.

Accepts what `kubectl get ... -o json|yaml` prints (a List), multi-document YAML, single
objects and JSON arrays. Objects outside the longhorn.io group (a Kubernetes `v1 Node` is not a
Longhorn Node) and kinds the scan does not need are ignored; a Longhorn object whose fields have
the wrong shape is recorded as skipped and the rest is used. A document that cannot be parsed
at all raises `InputError`.

YAML (support bundles, `kubectl -o yaml`) is read by libyaml's parser through PyYAML's C
binding when it is there (the pure-Python parser otherwise), and the objects are built straight
from its events (`_load_yaml`): what PyYAML's own composer and constructor cost is two thirds of
the time and five times the memory of a large file. Anything that building does not cover
(explicit tags, merge keys, complex keys) is handed to `yaml.load_all` with the same loader.
"""

from __future__ import annotations

from typing import Any, Iterable

import msgspec
import yaml

from bimguard import objects as wire
from bimguard.inventory import Inventory

try:  # libyaml's parser is ~5x faster; PyYAML wheels ship it, but a source build may not.
    _YamlLoader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _YamlLoader = yaml.SafeLoader


class InputError(Exception):
    """Input that cannot be used at all; the message names the source and the problem."""


class _ListMeta(msgspec.Struct):
    # `continue` is a Python keyword; msgspec maps the JSON name onto this field.
    continue_: str | None = msgspec.field(default="", name="continue")


class _Envelope(msgspec.Struct):
    kind: str | None = ""
    items: list[msgspec.Raw] | None = None
    metadata: _ListMeta | None = None


class _TypedList(msgspec.Struct, gc=False):
    kind: str | None = ""
    items: list[wire.Node | wire.Replica | wire.BackingImage | wire.BackingImageManager | wire.Setting] | None = None
    metadata: _ListMeta | None = None


_ENVELOPE = msgspec.json.Decoder(_Envelope)
# One pass over a List of only well-formed Longhorn objects is ~2x faster than routing each item
# through msgspec.Raw; anything else (other kinds, a malformed object) takes the per-item path.
_TYPED_LIST = msgspec.json.Decoder(_TypedList)
_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])
_HEAD = msgspec.json.Decoder(wire.Head)
_DECODERS = {kind: msgspec.json.Decoder(t) for kind, t in wire.KINDS.items()}


def _longhorn_type(api_version: str | None, kind: str | None) -> str | None:
    """The wire kind to decode an object as, or None when the scan does not need it (also when
    apiVersion or kind is not a string: YAML `apiVersion: 1.0` is a float, and such an object is
    no Longhorn object)."""
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return None
    group = api_version.partition("/")[0] if "/" in api_version else ""
    if group != wire.LONGHORN_GROUP or kind not in wire.KINDS:
        return None
    return kind


def _short(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _is_list(kind: str | None) -> bool:
    return bool(kind) and kind.endswith("List")  # type: ignore[union-attr]


_JSON_TYPES = {ord("{"): "an object", ord("["): "an array", ord('"'): "a string", ord("t"): "a boolean",
               ord("f"): "a boolean", ord("n"): "null"}


def _json_type(raw: msgspec.Raw) -> str:
    first = bytes(memoryview(raw)[:1])
    return _JSON_TYPES.get(first[0], "a number") if first else "nothing"


def decode_json(data: bytes | memoryview, source: str, inv: Inventory) -> str:
    """Add the objects of one JSON document; returns a List's `metadata.continue` token."""
    stripped = bytes(data[:64]).lstrip()
    if stripped.startswith(b"{"):
        try:
            typed = _TYPED_LIST.decode(data)
        except msgspec.ValidationError:
            pass  # not only well-formed Longhorn objects: take the per-item path below
        except msgspec.DecodeError as err:
            raise InputError(f"{source}: not valid JSON: {_short(err)}") from None
        else:
            if _is_list(typed.kind):
                items = typed.items or ()
                inv.objects += len(items)
                for obj in items:
                    if _longhorn_type(obj.apiVersion, type(obj).__name__):
                        inv.add(obj, source)
                    else:
                        inv.ignore(obj.apiVersion, type(obj).__name__)
                return (typed.metadata.continue_ or "") if typed.metadata else ""
    token = ""
    what = "item"
    try:
        if stripped.startswith(b"["):
            items: Iterable[msgspec.Raw] = _ARRAY.decode(data)
        else:
            env = _ENVELOPE.decode(data)
            if _is_list(env.kind):
                items = env.items or []
            else:
                items, what = [msgspec.Raw(data)], "document"
            token = (env.metadata.continue_ or "") if env.metadata else ""
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise InputError(f"{source}: not valid JSON: {_short(err)}") from None
    for i, raw in enumerate(items, 1):
        inv.objects += 1
        try:
            head = _HEAD.decode(raw)
        except msgspec.ValidationError as err:
            kind = _json_type(raw)
            error = (f"not a Kubernetes object: {_short(err)}" if kind == "an object"
                     else f"{kind}, not a Kubernetes object")
            inv.skip(source, what, f"#{i}", error)
            continue
        except msgspec.DecodeError as err:  # (ValidationError is a DecodeError: it goes first)
            # Splitting a document into raw items does not look inside strings: a byte that is not
            # UTF-8 is found only here, and makes the whole file invalid JSON (RFC 8259 §8.1).
            raise InputError(f"{source}: not valid JSON: {what} #{i}: {_short(err)}") from None
        kind = _longhorn_type(head.apiVersion, head.kind)
        if kind is None:
            inv.ignore(head.apiVersion, head.kind)
            continue
        try:
            inv.add(_DECODERS[kind].decode(raw), source)
        except msgspec.ValidationError as err:
            # `"name": null` decodes to None; the report's skipped[].name is a string
            inv.skip(source, kind, (head.metadata.name if head.metadata else None) or "?", _short(err))
        except msgspec.DecodeError as err:  # see above: e.g. a byte that is not UTF-8 deeper in the item
            raise InputError(f"{source}: not valid JSON: {what} #{i}: {_short(err)}") from None
    return token


def denull(value: Any) -> Any:
    """Undo support-bundle-kit's rewriting of "" and null into the string "null"
    (rancher/support-bundle-kit `pkg/manager/collectors/common.go:61-68 @v0.0.45`)."""
    if isinstance(value, dict):
        return {k: denull(v) for k, v in value.items()}
    if isinstance(value, list):
        return [denull(v) for v in value]
    if value == "null":
        return ""
    return value


def _python_type(value: Any) -> str:
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if value is None:
        return "null"
    return f"a {type(value).__name__} ({value!r})"


def add_object(obj: Any, source: str, inv: Inventory, *, bundle: bool = False, what: str = "object",
               index: int = 0) -> None:
    """Add one already-parsed object (a dict from YAML or a live response); `what` and `index`
    (1-based: "document", "item") name it when it is not an object at all."""
    inv.objects += 1
    if not isinstance(obj, dict):
        inv.skip(source, what, f"#{index}" if index else "?", f"{_python_type(obj)}, not a Kubernetes object")
        return
    kind = _longhorn_type(obj.get("apiVersion"), obj.get("kind"))
    if kind is None:
        api_version, k = obj.get("apiVersion"), obj.get("kind")
        inv.ignore(api_version if isinstance(api_version, str) else "", k if isinstance(k, str) else "")
        return
    if bundle:
        obj = denull(obj)
    try:
        inv.add(msgspec.convert(obj, wire.KINDS[kind]), source)
    except msgspec.ValidationError as err:
        meta = obj.get("metadata")
        name = meta.get("name", "?") if isinstance(meta, dict) else "?"
        inv.skip(source, kind, str(name), _short(err))


class _Unusual(Exception):
    """YAML that `_load_yaml` does not build itself; PyYAML's constructor does."""


_RESOLVERS = yaml.resolver.Resolver.yaml_implicit_resolvers
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_BUILT_IN = {f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float", "timestamp")}
_E = yaml.events


def _plain(value: str, memo: dict[str, Any]) -> Any:
    """A plain (unquoted, untagged) scalar as SafeLoader resolves and constructs it."""
    resolvers = _RESOLVERS.get(value[:1])
    if resolvers is None:  # most strings: no implicit type starts with this character
        return value
    try:
        return memo[value]
    except KeyError:
        pass
    for tag, regexp in resolvers:
        if regexp.match(value):
            if tag not in _BUILT_IN:  # the merge key `<<`, `=`
                raise _Unusual(tag)
            result = _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, yaml.ScalarNode(tag, value))
            break
    else:
        result = value
    if len(memo) < 65536:
        memo[value] = result
    return result


def _load_yaml(data: str | bytes, *, bundle: bool) -> list[Any]:
    """Every document, as `list(yaml.load_all(data, Loader=SafeLoader))` gives them, built from
    the parser's events. With `bundle`, string values "null" are "" (see `denull`). Raises
    yaml.YAMLError like load_all, or _Unusual for what only PyYAML's constructor builds."""
    loader = _YamlLoader(data)
    next_event = loader.get_event
    scalar, map_start, map_end, seq_start, seq_end = (_E.ScalarEvent, _E.MappingStartEvent, _E.MappingEndEvent,
                                                      _E.SequenceStartEvent, _E.SequenceEndEvent)
    alias, doc_start, doc_end, stream_end = _E.AliasEvent, _E.DocumentStartEvent, _E.DocumentEndEvent, _E.StreamEndEvent
    no_key: Any = _Unusual  # a sentinel: the next scalar in a mapping is a key
    memo: dict[str, Any] = {}
    docs: list[Any] = []
    anchors: dict[str, Any] = {}
    stack: list[tuple[Any, Any]] = []
    node: Any = None  # the container being filled: a dict or a list, None at the top
    key: Any = no_key
    root: Any = None
    try:
        while True:
            ev = next_event()
            t = type(ev)
            if t is scalar:
                if ev.tag is not None and ev.tag != "!":
                    raise _Unusual(ev.tag)
                value = _plain(ev.value, memo) if ev.implicit[0] else ev.value
                if ev.anchor is not None:
                    if ev.anchor in anchors:
                        raise _Unusual("a duplicate anchor")  # PyYAML words the error
                    anchors[ev.anchor] = value
            elif t is map_start or t is seq_start:
                if ev.tag is not None and ev.tag != "!":
                    raise _Unusual(ev.tag)
                value = {} if t is map_start else []
                if ev.anchor is not None:
                    if ev.anchor in anchors:
                        raise _Unusual("a duplicate anchor")
                    anchors[ev.anchor] = value
                if node is None:
                    root = value
                elif type(node) is dict:
                    if key is no_key:
                        raise _Unusual("a mapping or sequence as a key")
                    node[key] = value
                else:
                    node.append(value)
                stack.append((node, key))
                node, key = value, no_key
                continue
            elif t is map_end or t is seq_end:
                node, key = stack.pop()
                key = no_key
                continue
            elif t is alias:
                try:
                    value = anchors[ev.anchor]
                except KeyError:
                    raise _Unusual("an undefined alias") from None  # PyYAML words the error
            elif t is doc_start:
                root, anchors = None, {}
                continue
            elif t is doc_end:
                docs.append("" if bundle and type(root) is str and root == "null" else root)
                continue
            elif t is stream_end:
                return docs
            else:  # StreamStartEvent
                continue
            # a scalar or an alias: a key, a value or an item
            if node is None:
                root = value
            elif type(node) is dict:
                if key is no_key:
                    if type(value) is dict or type(value) is list:
                        raise _Unusual("a mapping or sequence as a key")
                    key = value
                else:
                    node[key] = "" if bundle and type(value) is str and value == "null" else value
                    key = no_key
            else:
                node.append("" if bundle and type(value) is str and value == "null" else value)
    finally:
        loader.dispose()


def decode_yaml(text: str | bytes, source: str, inv: Inventory, *, bundle: bool = False) -> None:
    try:
        try:
            docs = _load_yaml(text, bundle=bundle)
            bundle = False  # "null" is already undone
        except _Unusual:
            docs = list(yaml.load_all(text, Loader=_YamlLoader))
    except yaml.reader.ReaderError as err:
        raise InputError(f"{source}: not UTF-8 text ({err.reason} at byte {err.position}): "
                         f"save it as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(err, "problem", None) or _short(err)
        raise InputError(f"{source}: not valid YAML{where}: {problem}") from None
    for n, doc in enumerate(docs, 1):
        if doc is None:
            continue
        if isinstance(doc, dict) and str(doc.get("kind") or "").endswith("List"):
            items = doc.get("items") or []
            if not isinstance(items, list):
                raise InputError(f"{source}: a List whose items is not a list")
            for i, item in enumerate(items, 1):
                add_object(item, source, inv, bundle=bundle, what="item", index=i)
        else:
            add_object(doc, source, inv, bundle=bundle, what="document", index=n)


def decode_document(data: bytes | memoryview, source: str, inv: Inventory) -> None:
    """JSON when it looks like JSON, else YAML (JSON is YAML, but JSON errors read better)."""
    head = bytes(data[:4096])
    if head.startswith(b"PK\x03\x04"):
        raise InputError(f"{source}: a zip archive, not a JSON or YAML dump: for a support bundle use --support-bundle")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a BOM: what PowerShell's `>` writes
        try:
            data = str(data, "utf-16").encode()
        except UnicodeDecodeError as err:
            raise InputError(f"{source}: not valid UTF-16 text: {err.reason}") from None
        head = bytes(data[:4096])
    if b"\x00" in head:
        raise InputError(f"{source}: binary data (NUL bytes), not a JSON or YAML dump")
    if head.startswith(b"\xef\xbb\xbf"):  # a BOM some Windows editors add
        data = data[3:]
        head = head[3:]
    head = head.lstrip()
    if head.startswith((b"{", b"[")):
        decode_json(data, source, inv)
        return
    decode_yaml(bytes(data), source, inv)
