from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def sample(shared: Path) -> dict:
    """The shared AdmissionReview of a first-recorded disk (shared/longhorn/samples/admission)."""
    return json.loads((shared / "longhorn/samples/admission/nodes-status-first-record.request.json").read_text())
