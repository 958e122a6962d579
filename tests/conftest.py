from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from bimguard.sim.apiserver import ApiServer

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The test data kept in the repository: Longhorn sample objects (tests/fixtures; where each
    file comes from is in tests/fixtures/README.md)."""
    return FIXTURES


@pytest.fixture
async def api() -> AsyncIterator[ApiServer]:
    """A started emulated API server on a loopback port."""
    server = ApiServer()
    await server.start()
    yield server
    await server.stop()
