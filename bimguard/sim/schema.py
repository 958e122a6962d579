"""Structural-schema pruning and validation for the emulated API server (pure functions).

Follows apiextensions-apiserver:
- pruning: `pkg/apiserver/schema/pruning/algorithm.go` — fields not declared in `properties` are
  dropped unless `x-kubernetes-preserve-unknown-fields` is set; `metadata` at the root is pruned
  to ObjectMeta's fields; `apiVersion`/`kind`/`metadata` are always kept at the root. The paths
  of dropped fields become the `unknown field "..."` warnings / strict-decoding errors
  (`pkg/registry/customresource/strategy.go`, `fieldValidation`).
- defaulting: `pkg/apiserver/schema/defaulting/algorithm.go` (schema `default`s, custom resources only);
- validation: `pkg/apiserver/validation/validation.go` `kubeOpenAPIResultToFieldErrors` — type
  errors are `FieldValueTypeInvalid`, missing required fields `FieldValueRequired`, enum
  violations `FieldValueNotSupported`, everything else `FieldValueInvalid`.

A schema here is the plain dict of a CRD's `openAPIV3Schema`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

Schema = dict[str, Any]

# metav1.ObjectMeta JSON field names (k8s.io/apimachinery/pkg/apis/meta/v1/types.go).
OBJECT_META_FIELDS = frozenset(
    {
        "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
        "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
        "annotations", "ownerReferences", "finalizers", "managedFields",
    }
)


@dataclass(frozen=True)
class FieldError:
    """One `field.Error`, rendered like k8s.io/apimachinery/pkg/util/validation/field/errors.go."""

    reason: str  # FieldValueInvalid | FieldValueRequired | FieldValueNotSupported | FieldValueTypeInvalid | FieldValueForbidden
    field: str
    detail: str
    value: Any = None

    @property
    def body(self) -> str:
        if self.reason == "FieldValueRequired":
            return "Required value" + (f": {self.detail}" if self.detail else "")
        if self.reason == "FieldValueForbidden":
            return "Forbidden" + (f": {self.detail}" if self.detail else "")
        if self.reason == "FieldValueNotSupported":
            return f"Unsupported value: {_show(self.value)}: supported values: {self.detail}"
        return f"Invalid value: {_show(self.value)}: {self.detail}"

    def cause(self) -> dict:
        return {"reason": self.reason, "message": self.body, "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (dict, list)):
        return '"object"' if isinstance(value, dict) else '"array"'
    if value is None:
        return '"null"'
    return json.dumps(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- pruning ---------------------------------------------------------------------------------


def prune(obj: dict, schema: Schema | None) -> tuple[dict, list[str]]:
    """Return (pruned copy, dotted paths of the dropped fields) for a whole object."""
    if schema is None:
        return obj, []
    dropped: list[str] = []
    out: dict = {}
    props = schema.get("properties", {})
    for key, value in obj.items():
        if key in ("apiVersion", "kind"):
            out[key] = value
        elif key == "metadata":
            out[key] = _prune_metadata(value, dropped)
        elif key in props:
            out[key] = _prune(value, props[key], key, dropped)
        elif schema.get("x-kubernetes-preserve-unknown-fields"):
            out[key] = value
        else:
            dropped.append(key)
    return out, dropped


def _prune_metadata(meta: Any, dropped: list[str]) -> Any:
    if not isinstance(meta, dict):
        return meta
    out = {}
    for key, value in meta.items():
        if key in OBJECT_META_FIELDS:
            out[key] = value
        else:
            dropped.append(f"metadata.{key}")
    return out


def _prune(value: Any, schema: Schema, path: str, dropped: list[str]) -> Any:
    if isinstance(value, dict):
        if schema.get("x-kubernetes-embedded-resource"):
            return {**value} if schema.get("x-kubernetes-preserve-unknown-fields") else value
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
        if props is None and addl is None:
            # No structure declared: everything is unknown unless preserved.
            if preserve:
                return value
            for key in value:
                dropped.append(_join(path, key))
            return {}
        out = {}
        for key, item in value.items():
            if props is not None and key in props:
                out[key] = _prune(item, props[key], _join(path, key), dropped)
            elif isinstance(addl, dict):
                out[key] = _prune(item, addl, _join(path, key), dropped)
            elif addl is True or preserve:
                out[key] = item
            else:
                dropped.append(_join(path, key))
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_prune(item, schema["items"], f"{path}[{i}]", dropped) for i, item in enumerate(value)]
    return value


# --- defaulting ------------------------------------------------------------------------------


def apply_defaults(obj: dict, schema: Schema | None) -> dict:
    """Structural defaulting (pkg/apiserver/schema/defaulting/algorithm.go): a missing property,
    or a null one that is not nullable, gets its schema `default`; applied below every value
    present. Returns a new object; metadata is left alone."""
    if schema is None:
        return obj
    out = dict(obj)
    for key, sub in (schema.get("properties") or {}).items():
        if key in ("metadata", "apiVersion", "kind"):
            continue
        out_value = _defaulted(out.get(key, _MISSING), sub)
        if out_value is not _MISSING:
            out[key] = out_value
    return out


_MISSING = object()


def _defaulted(value: Any, schema: Schema) -> Any:
    if (value is _MISSING or (value is None and not schema.get("nullable"))) and "default" in schema:
        value = json.loads(json.dumps(schema["default"]))
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            sub = props.get(key) if key in props else (addl if isinstance(addl, dict) else None)
            out[key] = _defaulted(item, sub) if sub else item
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = _defaulted(_MISSING, sub)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_defaulted(item, schema["items"]) for item in value]
    return value


# --- validation ------------------------------------------------------------------------------

_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return _TYPE_NAMES.get(type(value), "unknown")


def _type_ok(value: Any, schema: Schema) -> bool:
    expected = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    if not expected:
        return True
    actual = _json_type(value)
    if expected == actual:
        return True
    if expected == "number" and actual == "integer":
        return True
    # Numbers that went through float formatting (support bundles print 1.073741824e+10) are
    # still integers to the Go JSON decoder when they are whole.
    if expected == "integer" and actual == "number" and float(value).is_integer():
        return True
    return False


def validate(obj: dict, schema: Schema | None) -> list[FieldError]:
    """Validate a whole object (after pruning) against its structural schema."""
    if schema is None:
        return []
    errors: list[FieldError] = []
    props = schema.get("properties", {})
    for key, sub in props.items():
        if key in ("metadata", "apiVersion", "kind"):
            continue  # ObjectMeta is validated by the generic metadata rules, not the schema
        if key in obj:
            _validate(obj[key], sub, key, errors)
    for key in schema.get("required", []):
        if key not in obj:
            errors.append(FieldError("FieldValueRequired", key, ""))
    return errors


def _validate(value: Any, schema: Schema, path: str, errors: list[FieldError]) -> None:
    if value is None:
        if schema.get("nullable"):
            return
        if not schema.get("type") and not schema.get("x-kubernetes-int-or-string"):
            return
        errors.append(FieldError("FieldValueTypeInvalid", path, f"{path} in body must be of type {schema.get('type') or 'string'}: \"null\"", ""))
        return
    if not _type_ok(value, schema):
        expected = "integer or string" if schema.get("x-kubernetes-int-or-string") else schema.get("type")
        errors.append(
            FieldError("FieldValueTypeInvalid", path, f"{path} in body must be of type {expected}: \"{_json_type(value)}\"", _json_type(value))
        )
        return
    if "enum" in schema and not any(value == e and type(value) is type(e) for e in schema["enum"]):
        supported = ", ".join(json.dumps(e) for e in schema["enum"])
        errors.append(FieldError("FieldValueNotSupported", path, supported, value))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key in value:
                _validate(value[key], sub, _join(path, key), errors)
        addl = schema.get("additionalProperties")
        if isinstance(addl, dict):
            for key, item in value.items():
                if key not in props:
                    _validate(item, addl, _join(path, key), errors)
        for key in schema.get("required", []):
            if key not in value:
                errors.append(FieldError("FieldValueRequired", _join(path, key), ""))
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(FieldError("FieldValueTooMany", path, f"must have at most {schema['maxProperties']} items", value))
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _validate(item, items, f"{path}[{i}]", errors)
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(FieldError("FieldValueTooMany", path, f"must have at most {schema['maxItems']} items", value))
    elif isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(FieldError("FieldValueTooLong", path, f"may not be more than {schema['maxLength']} bytes", value))
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(FieldError("FieldValueInvalid", path, f"{path} in body should be at least {schema['minLength']} chars long", value))
        # kube-openapi validate (pattern.go): Go's regexp (RE2); the patterns CRDs here use mean the
        # same in Python's `re`.
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            errors.append(FieldError("FieldValueInvalid", path, f"{path} in body should match '{schema['pattern']}'", value))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(FieldError("FieldValueInvalid", path, f"{path} in body should be greater than or equal to {schema['minimum']}", value))
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(FieldError("FieldValueInvalid", path, f"{path} in body should be less than or equal to {schema['maximum']}", value))
