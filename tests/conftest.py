from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest
from hypothesis import settings

from bimguard.sim.apiserver import ApiServer

# No per-example deadline: the suite runs in 4 workers on 2 cores, where a loaded moment made a
# 200 ms deadline fail a property that holds. Hangs are caught by pytest-timeout instead.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")

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
