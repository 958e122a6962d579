"""Read a live cluster through the Kubernetes API, page by page.

Uses kubernetes_asyncio's CustomObjectsApi but takes each page as raw bytes and decodes it with
the same typed decoder as a dump, so a live scan and a scan of `kubectl get -o json` of the same
cluster see exactly the same objects.
"""

from __future__ import annotations

import json

import aiohttp
from kubernetes_asyncio import client, config

from bimguard import kube
from bimguard.decode import InputError, decode_json
from bimguard.inventory import Inventory
from bimguard.objects import LONGHORN_GROUP, PLURALS

LONGHORN_VERSION = "v1beta2"
# A continue token expires when the API server compacts its history (410); start that resource
# over a few times before giving up.
_RESTARTS = 3
_REQUEST_TIMEOUT = 60


async def _api_client(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    try:
        return await kube.api_client(kubeconfig, context)
    except config.ConfigException as err:  # already one line, worded like kubectl's
        raise InputError(str(err)) from None


def _status_message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message") or "")
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")


async def _list_all(api: client.CustomObjectsApi, namespace: str, plural: str, page_size: int,
                    host: str) -> Inventory | None:
    """Every object of one resource, or None when the resource is not served."""
    for _ in range(_RESTARTS):
        part, token = Inventory(), ""
        source = f"{host} {plural}.{LONGHORN_GROUP}"
        while True:
            kwargs = {"limit": page_size, "_preload_content": False, "_request_timeout": _REQUEST_TIMEOUT}
            if token:
                kwargs["_continue"] = token
            resp = await api.list_namespaced_custom_object(LONGHORN_GROUP, LONGHORN_VERSION, namespace, plural, **kwargs)
            body = await resp.read()
            if resp.status == 404:
                return None
            if resp.status == 410:
                break  # continue token expired: list this resource again from the start
            if resp.status >= 400:
                raise InputError(f"{source}: HTTP {resp.status}: {_status_message(body)}")
            token = decode_json(body, source, part)
            if not token:
                return part
    raise InputError(f"{plural}.{LONGHORN_GROUP}: the listing kept expiring (410 Gone); retry with a larger --page-size")


async def read_live(
    *, kubeconfig: str | None, context: str | None, namespace: str, page_size: int = 500
) -> Inventory:
    api_client = await _api_client(kubeconfig, context)
    host = api_client.configuration.host
    inv = Inventory()
    try:
        api = client.CustomObjectsApi(api_client)
        for kind, plural in PLURALS.items():
            part = await _list_all(api, namespace, plural, page_size, host)
            if part is None:
                if kind == "Node":
                    raise InputError(
                        f"{host}: nodes.{LONGHORN_GROUP}/{LONGHORN_VERSION} is not served: is Longhorn installed?"
                    )
                continue
            inv.merge(part)
    except aiohttp.ClientError as err:
        raise InputError(f"cannot reach the Kubernetes API at {host}: {err}") from None
    except TimeoutError:
        raise InputError(f"the Kubernetes API at {host} did not answer within {_REQUEST_TIMEOUT} s") from None
    finally:
        await api_client.close()
    return inv
