from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.webhook_target import ServedWebhook


@pytest.fixture(scope="package")
def hook(tmp_path_factory: pytest.TempPathFactory):
    """One real webhook replica (and its emulated API server) for every test of tests/fuzz."""
    with ServedWebhook(Path(tmp_path_factory.mktemp("fuzz-webhook"))) as served:
        yield served
