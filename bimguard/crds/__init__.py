"""bimguard's CustomResourceDefinitions, shipped with the package so that installed commands
(`bimguard demo`) have them without a checkout. The Helm chart installs the same files from
charts/bimguard/crds/; tests/test_standalone.py keeps the two copies identical."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml


def documents() -> list[dict[str, Any]]:
    """Each CRD as a dict, in name order; never empty (a broken install says so)."""
    files = sorted((f for f in resources.files(__name__).iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
    if not files:
        raise RuntimeError(f"bimguard's CRDs are missing from {resources.files(__name__)}: reinstall bimguard")
    return [yaml.safe_load(f.read_text()) for f in files]
