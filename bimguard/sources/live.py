"""Read a live cluster through the Kubernetes API, page by page.

Uses kubernetes_asyncio's CustomObjectsApi but takes each page as raw bytes and decodes it with
the same typed decoder as a dump, so a live scan and a scan of `kubectl get -o json` of the same
cluster see exactly the same objects.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

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
# Seconds one list request may take (`--request-timeout`): a server that accepts the connection
# and never answers must not hang the scan.
DEFAULT_REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class LiveScan:
    inventory: Inventory
    server: str  # the API server's URL
    context: str | None  # the kubeconfig context, or None for the in-cluster service account


async def _api_client(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    try:
        return await kube.api_client(kubeconfig, context)
    except config.ConfigException as err:  # already one line, worded like kubectl's
        raise InputError(str(err)) from None


def _context_name(kubeconfig: str | None, context: str | None) -> str | None:
    """The context kube.api_client used: --context, else the kubeconfig's current-context, or
    None when it took the in-cluster service account (in a pod, neither flag given)."""
    if context:
        return context
    if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    paths = kubeconfig or os.environ.get("KUBECONFIG") or os.path.join("~", ".kube", "config")
    try:
        _, current = config.list_kube_config_contexts(paths)
        return str(current["name"]) if current else None
    except Exception:  # noqa: BLE001 - only a label for the report; api_client already read the file
        return None


def _status_message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message") or "")
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")


async def _list_all(api: client.CustomObjectsApi, namespace: str, plural: str, page_size: int,
                    host: str, timeout: float) -> Inventory | None:
    """Every object of one resource, or None when the resource is not served."""
    for _ in range(_RESTARTS):
        part, token = Inventory(), ""
        source = f"{host} {plural}.{LONGHORN_GROUP}"
        while True:
            kwargs = {"limit": page_size, "_preload_content": False, "_request_timeout": timeout}
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


async def scan_live(*, kubeconfig: str | None, context: str | None, namespace: str, page_size: int = 500,
                    request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> LiveScan:
    """Every object the scan needs from Longhorn's namespace, and which cluster they came from."""
    api_client = await _api_client(kubeconfig, context)
    host = api_client.configuration.host
    inv = Inventory()
    try:
        api = client.CustomObjectsApi(api_client)
        for kind, plural in PLURALS.items():
            part = await _list_all(api, namespace, plural, page_size, host, request_timeout)
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
        raise InputError(f"the Kubernetes API at {host} did not answer within {request_timeout:g} s "
                         f"(--request-timeout)") from None
    finally:
        await api_client.close()
    return LiveScan(inv, host, _context_name(kubeconfig, context))


async def read_live(*, kubeconfig: str | None, context: str | None, namespace: str, page_size: int = 500,
                    request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> Inventory:
    """The inventory alone (see scan_live)."""
    return (await scan_live(kubeconfig=kubeconfig, context=context, namespace=namespace, page_size=page_size,
                            request_timeout=request_timeout)).inventory
