"""Fixtures for the emulated API server: a started `ApiServer` and a kubernetes_asyncio client
talking to it over real loopback HTTP.

Named `sim_api` / `kube_client` so test modules that define their own `api` fixture keep it.
"""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest
from kubernetes_asyncio import client, config

from bimguard.sim.apiserver import ApiServer


@pytest.fixture
async def sim_api() -> AsyncIterator[ApiServer]:
    server = ApiServer()
    await server.start()
    server.bookmark_interval = 0.2
    yield server
    await server.stop()


@pytest.fixture
def sim_kubeconfig(sim_api: ApiServer, tmp_path: Path) -> Path:
    path = tmp_path / "sim.kubeconfig"
    sim_api.kubeconfig(path)
    return path


@pytest.fixture
async def kube_client(sim_kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    """An ApiClient configured from the kubeconfig the server wrote (the path real users take)."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(sim_kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        yield api_client
