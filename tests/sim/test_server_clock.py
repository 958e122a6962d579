"""The emulated API server's own clock (`ApiServer.clock`): what it stamps and what it says the
time is, shifted by `skew` as an unsynchronised server's clock would be."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import aiohttp

from bimguard.sim.apiserver import ApiServer


def _age(stamp: str) -> float:
    return datetime.now(timezone.utc).timestamp() - datetime.fromisoformat(stamp).timestamp()


async def test_skew_moves_creation_timestamps_and_the_date_header(api: ApiServer) -> None:
    api.clock.skew = -120.0
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{api.url}/api/v1/namespaces", json={"metadata": {"name": "skewed"}}) as resp:
            assert resp.status == 201
            created = (await resp.json())["metadata"]["creationTimestamp"]
            date = parsedate_to_datetime(resp.headers["Date"])
        assert 119 <= _age(created) <= 123
        assert 118 <= datetime.now(timezone.utc).timestamp() - date.timestamp() <= 122
        # Streams too: the header goes out before the first event.
        async with s.get(f"{api.url}/api/v1/namespaces?watch=true&timeoutSeconds=1") as resp:
            assert 118 <= datetime.now(timezone.utc).timestamp() - parsedate_to_datetime(resp.headers["Date"]).timestamp()
    api.clock.skew = 0.0
    assert abs(_age(api.store.clock().strftime("%Y-%m-%dT%H:%M:%S.%fZ"))) < 2
