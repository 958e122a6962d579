"""The shared informer cache: list+watch, catching up after dropped watches and compaction."""

from __future__ import annotations

import asyncio
from typing import Any


from bimguard.sim.apiserver import ApiServer
from bimguard.sim.clock import SimClock
from bimguard.sim.longhorn.informer import Caches
from bimguard.sim.longhorn.kube import LonghornClient


def _setting(name: str, value: str) -> dict[str, Any]:
    return {"kind": "Setting", "metadata": {"name": name}, "value": value}


async def test_cache_follows_writes_and_recovers_from_dropped_watches_and_compaction(api: ApiServer) -> None:
    events: list[tuple[str, Any]] = []
    client = LonghornClient(api.url, component="test")
    caches = Caches(client, ("settings",), SimClock(0.01), lambda p, o: events.append((p, o)))
    caches.start()
    try:
        await caches.wait_synced()
        written = await client.create("settings", _setting("a", "1"))
        await caches.verify("settings", written)  # returns once the cache has our write
        assert (await caches.get("settings", "a"))["value"] == "1"
        assert any(o and o["metadata"]["name"] == "a" for _, o in events)

        api.faults.drop_watches()
        api.faults.compact()
        api.store.create("longhorn.io/v1beta2/settings", {"apiVersion": "longhorn.io/v1beta2", **_setting("b", "2"),
                                                          "metadata": {"name": "b", "namespace": "longhorn-system"}})

        async def seen() -> None:
            while await caches.get_or_none("settings", "b") is None:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(seen(), 5)
        # lists are shared references; gets are copies that may be mutated freely
        got = await caches.get("settings", "a")
        got["value"] = "changed"
        assert (await caches.get("settings", "a"))["value"] == "1"
        await client.delete("settings", "a")
        await caches.verify("settings", None, "a")
        assert await caches.get_or_none("settings", "a") is None
        assert sorted(o["metadata"]["name"] for o in await caches.list("settings")) == ["b"]
    finally:
        await caches.stop()
        await client.close()
