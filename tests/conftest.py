from __future__ import annotations

import os
from pathlib import Path
from typing import AsyncIterator

import pytest

from bimguard.sim.apiserver import ApiServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared() -> Path:
    """The project's shared material (Longhorn CRDs and samples), beside the checkout."""
    path = Path(os.environ.get("BIMGUARD_SHARED", REPO.parent / "shared"))
    if not (path / "longhorn" / "samples").is_dir():
        pytest.fail(f"shared material not found at {path}; set BIMGUARD_SHARED")
    return path


@pytest.fixture
async def api() -> AsyncIterator[ApiServer]:
    """A started emulated API server on a loopback port."""
    server = ApiServer()
    await server.start()
    yield server
    await server.stop()
