"""Argument types shared by every command (`type=` of `add_argument`), and the flags of the on-node
pods that the webhook and the repair both start.

Each one turns the flag's text into a number or raises `argparse.ArgumentTypeError` with a
message that says what is accepted, so argparse prints one line naming the flag and exits 2:

    bimguard sim serve: error: argument --port: 99999 is not a port number (0-65535; 0 picks a free port)

Standard library only: `bimguard/sim/serve.py` and `jobs/demo.py` import it too.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

__all__ = ["positive_int", "non_negative_int", "positive_float", "port_number", "seconds", "tolerations",
           "add_rewriter_pod_arguments"]


def _int(text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1 (a count, a page size)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """A whole number of at least 0 (a seed, a count that may be zero)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0: rejects 0, negatives, nan and inf (a scale, a factor)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def port_number(text: str) -> int:
    """A TCP port, 0-65535 (0: let the system pick a free one)."""
    try:
        value = int(text.strip(), 10)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0 picks a free port)")
    return value


_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")


def seconds(text: str) -> float:
    """A positive, finite duration: plain seconds (`30`, `2.5`) or kubectl's form (`30s`, `1m30s`, `500ms`)."""
    t = text.strip()
    try:
        value = float(t)
    except ValueError:
        parts = _DURATION_RE.findall(t)
        if not parts or "".join(n + u for n, u in parts) != t:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration (seconds, or a number with a unit: 30s, 1m30s, 500ms)") from None
        value = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite duration above 0")
    return value


_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def tolerations(text: str) -> tuple[dict[str, Any], ...]:
    """A JSON list of Kubernetes tolerations (`[{"operator": "Exists"}]`, `[]` for none)."""
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON (a list of tolerations)") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) and set(t) <= _TOLERATION_KEYS for t in value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of tolerations (objects with {', '.join(sorted(_TOLERATION_KEYS))})")
    return tuple(value)


def add_rewriter_pod_arguments(p: argparse.ArgumentParser, records_namespace: str = "--namespace") -> None:
    """Where and how the on-node rewriter (and inspector) pods run; the chart passes all of them."""
    p.add_argument("--rewriter-namespace", metavar="NAMESPACE",
                   help=f"namespace of the on-node pods, the one that must allow privileged pods "
                        f"(default: {records_namespace})")
    p.add_argument("--rewriter-priority-class", metavar="NAME", help="priorityClassName of the on-node pods")
    p.add_argument("--rewriter-image-pull-secret", action="append", default=[], metavar="NAME",
                   help="imagePullSecret of the on-node pods, in the rewriter namespace (repeatable)")
    p.add_argument("--rewriter-tolerations", type=tolerations, metavar="JSON",
                   help='tolerations of the on-node pods as a JSON list (default: every taint, [{"operator": "Exists"}])')
