from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def sample(fixtures: Path) -> dict:
    """The sample AdmissionReview of a first-recorded disk (tests/fixtures/longhorn/samples/admission)."""
    return json.loads((fixtures / "longhorn/samples/admission/nodes-status-first-record.request.json").read_text())
