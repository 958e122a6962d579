"""A thin async layer over kubernetes_asyncio: objects as plain dicts, errors as three exceptions.

The controller and the leader elector read and write custom objects (Longhorn Nodes, bimguard's
DiskRewrites and PrefixClaims), Pods, Events and Leases. Everything is requested with
`_preload_content=False` and decoded as JSON, so built-in kinds come back as the same dicts the
API server sent (no generated model classes, no datetime conversion). API failures become
`NotFound`, `Conflict` (409 on a resourceVersion precondition; a failed JSON Patch `test` is 422
`Invalid`), `AlreadyExists`, `Forbidden` (403), or `KubeError` for the rest. A request the API
server throttled (429 with Retry-After) is sent again after the wait it names, as client-go does.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, AsyncIterator

import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

Obj = dict[str, Any]
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 30  # seconds; a hung request must not stall a control loop forever
# An API server refuses a request it did not serve -- API Priority and Fairness, or the max-in-flight
# limit, under load -- with 429 and a Retry-After header (seconds), and client-go waits that long
# and sends it again. So do we, a few times, each wait capped. A 5xx is not retried here: the write
# may have been carried out, and the caller is the one that knows whether repeating it is safe.
THROTTLED_RETRIES = 3
MAX_RETRY_AFTER = 5.0


async def api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """A client from the kubeconfig (given, $KUBECONFIG or ~/.kube/config) or, in a pod with
    neither flag given, the in-cluster service account. Raises config.ConfigException with one
    line saying what kubectl would (`stat <path>: no such file or directory`, `context "prod"
    does not exist`), and nothing is logged."""
    cfg = client.Configuration()
    if kubeconfig or context or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        paths = kubeconfig or os.environ.get("KUBECONFIG") or os.path.join("~", ".kube", "config")
        files = [os.path.expanduser(p) for p in paths.split(os.pathsep) if p]
        # kubernetes_asyncio logs a warning and then fails on an empty config when no file exists.
        if not any(os.path.exists(f) for f in files):
            if kubeconfig:
                raise config.ConfigException(f"stat {kubeconfig}: no such file or directory")
            if os.environ.get("KUBECONFIG"):
                raise config.ConfigException(f"stat {paths}: no such file or directory (from $KUBECONFIG)")
            raise config.ConfigException(
                f"no Kubernetes configuration: {files[0]} does not exist, $KUBECONFIG is not set, and there is no "
                f"in-cluster service account (KUBERNETES_SERVICE_HOST is not set): pass --kubeconfig PATH")
        try:
            await config.load_kube_config(config_file=paths, context=context, client_configuration=cfg)
        except Exception as err:  # noqa: BLE001 - the loader raises anything on a malformed file
            raise _config_error(err, paths, context) from None
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except (config.ConfigException, OSError) as err:
            raise _config_error(err, None, None) from None
    return client.ApiClient(configuration=cfg)


@dataclass
class RequestCount:
    """What a client sent to the API server: reads (GET), writes (anything that can change a
    stored object) and checks (access reviews and dry runs, which change nothing)."""

    reads: int = 0
    writes: int = 0
    checks: int = 0


def count_requests(api: client.ApiClient) -> RequestCount:
    """Count every request `api` sends from now on, whichever code sends it."""
    count = RequestCount()
    send = api.rest_client.request

    async def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        query = dict(kwargs.get("query_params") or ())
        if method in ("GET", "HEAD"):
            count.reads += 1
        elif "/apis/authorization.k8s.io/" in url or query.get("dryRun"):
            count.checks += 1
        else:
            count.writes += 1
        return await send(method, url, *args, **kwargs)

    api.rest_client.request = counted  # type: ignore[method-assign]
    return count


def _config_error(err: Exception, paths: str | None, context: str | None) -> config.ConfigException:
    """kubernetes_asyncio's loader errors as kubectl words them, naming the file or the context."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if paths is None:  # in-cluster
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        if "token file does not exist" in text:
            text = (f"in-cluster configuration: open {sa}/token: no such file or directory (the pod has no "
                    f"service account token: automountServiceAccountToken: false?); pass --kubeconfig PATH")
        elif "certification file does not exist" in text:
            text = f"in-cluster configuration: open {sa}/ca.crt: no such file or directory; pass --kubeconfig PATH"
        else:
            text = f"in-cluster configuration: {text}; pass --kubeconfig PATH"
        return config.ConfigException(text)
    detail = text.removeprefix("Invalid kube-config file. ")
    if isinstance(err, OSError):
        return config.ConfigException(f"{err.filename or paths}: {err.strerror or err}")
    if isinstance(err, yaml.YAMLError):
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or detail
        return config.ConfigException(f'error loading config file "{paths}":{where} {problem}')
    if isinstance(err, (AttributeError, TypeError)):  # an empty file, or YAML that is not a mapping
        return config.ConfigException(
            f'error loading config file "{paths}": not a kubeconfig (empty, or not a mapping)')
    if detail.startswith("Expected object with name ") and detail.endswith(" list"):
        name, _, where = detail.removeprefix("Expected object with name ").rpartition(" in ")
        kind = where.split("/")[-1].split("[")[0].removesuffix(" list").rstrip("s")
        if kind == "context" or name == context:
            return config.ConfigException(f'context "{name}" does not exist')
        return config.ConfigException(f'{kind} "{name}" does not exist (in {paths})')
    if detail.startswith("Expected key current-context"):
        return config.ConfigException(f"current-context is not set in {paths}: pass --context NAME")
    return config.ConfigException(f"invalid kubeconfig {paths}: {detail}")


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409 Conflict: the object changed since it was read (resourceVersion precondition)."""


class AlreadyExists(KubeError):
    pass


class Invalid(KubeError):
    """422: includes a JSON Patch whose `test` operation failed."""


class Forbidden(KubeError):
    """403: RBAC, or an admission webhook's refusal with that code (Longhorn's node validator
    answers 403 while a Node's spec and status disk sets differ)."""


def translate(exc: ApiException) -> KubeError:
    return _error(int(exc.status or 0), exc.reason, exc.body)


def _error(status: int, http_reason: Any, raw: Any) -> KubeError:
    """A metav1.Status body (or anything else) as the exception a caller acts on."""
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8", "replace")
    reason, message = str(http_reason or ""), str(raw or "")
    try:
        body = json.loads(raw or "{}")
        reason = body.get("reason", reason) or reason
        message = body.get("message", message) or message
    except (ValueError, TypeError, AttributeError):
        pass
    if status == 404:
        return NotFound(status, reason, message)
    if status == 409 and reason == "AlreadyExists":
        return AlreadyExists(status, reason, message)
    if status == 409:
        return Conflict(status, reason, message)
    if status == 422:
        return Invalid(status, reason, message)
    if status == 403:
        return Forbidden(status, reason, message)
    return KubeError(status, reason, message)


def retry_after(status: int, header: str | None) -> float | None:
    """Seconds to wait before sending a throttled request again (429 with a Retry-After in whole
    seconds, RFC 9110 §10.2.3), or None: not throttled, or no usable header."""
    if status != 429 or not header:
        return None
    try:
        seconds = int(header.strip())
    except ValueError:
        return None
    return min(max(seconds, 0), MAX_RETRY_AFTER)


class ServerClock:
    """The API server's clock, as its responses' `Date` headers tell it.

    Ages of API objects (a record's grace, a claim's staleness, a pod's start-up time) must be
    measured on the clock that stamped them: `creationTimestamp` is set by the API server, and a
    pod's clock can be minutes off the server's. Every response of kube-apiserver carries a `Date`
    header (Go's net/http adds one to each response, net/http/server.go `chunkWriter.writeHeader`):
    the server's time when it answered, truncated to the second. `now()` is that time carried on
    with the local monotonic clock since the latest response arrived -- never more than the
    server's real time (a lower bound, off by at most one second plus the request's latency), so
    an age computed from it errs on the young side and no grace period comes out shorter than
    configured. Until a response with a readable `Date` arrived, the local wall clock stands in.
    """

    def __init__(self) -> None:
        self._anchor: tuple[float, float] | None = None  # (server seconds, local monotonic)
        self._last_header = ""

    def observe(self, date: str | None) -> None:
        """Record a response's `Date` header (RFC 7231 IMF-fixdate) as seen now."""
        if not date:
            return
        received = time.monotonic()
        if date != self._last_header or self._anchor is None:
            try:
                parsed = parsedate_to_datetime(date)
            except (TypeError, ValueError, IndexError):
                return
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            self._last_header = date
            self._anchor = (parsed.timestamp(), received)
        # The same header again (a second not yet over): the older anchor is the better bound.

    @property
    def synced(self) -> bool:
        return self._anchor is not None

    def now(self) -> float:
        """POSIX seconds on the API server's clock (see the class docstring)."""
        if self._anchor is None:
            return time.time()
        server, at = self._anchor
        return server + (time.monotonic() - at)

    def rfc3339(self) -> str:
        """`now()` as the API server writes times (RFC 3339, UTC, microseconds)."""
        return datetime.fromtimestamp(self.now(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def age(self, stamp: str | None) -> float | None:
        """Seconds since `stamp` (an RFC 3339 time on the server's clock), never more than the real
        age: a whole-second stamp (creationTimestamp) may stand for any moment of its second, so
        the end of that second is taken. None if `stamp` is empty or not a time."""
        if not stamp:
            return None
        try:
            t = datetime.fromisoformat(stamp).timestamp()  # Python 3.11 reads RFC 3339's "Z"
        except ValueError:
            return None
        if "." not in stamp:
            t += 1.0
        return self.now() - t


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource as the REST paths name it; group "" is core/v1."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


PODS = Resource("", "v1", "pods")
EVENTS = Resource("", "v1", "events")
LEASES = Resource("coordination.k8s.io", "v1", "leases")


class Kube:
    """Dict-in, dict-out access to any namespaced resource through one ApiClient (not owned)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.clock = ServerClock()
        self.throttled = 0  # requests sent again after a 429 told us when
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)

    # Every call goes through here: one place for timeouts, throttling, decoding and error mapping.
    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        for attempt in range(THROTTLED_RETRIES + 1):
            try:
                resp = await fn(*args, _preload_content=False, **kwargs)
            except ApiException as exc:
                raise translate(exc) from None
            self.clock.observe(resp.headers.get("Date"))
            try:
                raw = await resp.read()
            finally:
                resp.release()
            # Without preloading, kubernetes_asyncio hands back error responses too.
            if 200 <= resp.status <= 299:
                return json.loads(raw) if raw else {}
            wait = retry_after(resp.status, resp.headers.get("Retry-After"))
            if wait is None or attempt == THROTTLED_RETRIES:
                raise _error(resp.status, resp.reason, raw)
            self.throttled += 1
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    def _generic(self, res: Resource, verb: str) -> tuple[Any, tuple[Any, ...]]:
        """(bound method, leading args) for a verb; built-ins use their typed API objects."""
        if res == PODS:
            return getattr(self.core, {"get": "read_namespaced_pod", "list": "list_namespaced_pod",
                                       "create": "create_namespaced_pod", "replace": "replace_namespaced_pod",
                                       "delete": "delete_namespaced_pod"}[verb]), ()
        if res == EVENTS:
            return getattr(self.core, {"get": "read_namespaced_event", "list": "list_namespaced_event",
                                       "create": "create_namespaced_event", "replace": "replace_namespaced_event",
                                       "delete": "delete_namespaced_event"}[verb]), ()
        if res == LEASES:
            return getattr(self.coordination, {"get": "read_namespaced_lease", "list": "list_namespaced_lease",
                                               "create": "create_namespaced_lease",
                                               "replace": "replace_namespaced_lease",
                                               "delete": "delete_namespaced_lease"}[verb]), ()
        return getattr(self.custom, {"get": "get_namespaced_custom_object", "list": "list_namespaced_custom_object",
                                     "create": "create_namespaced_custom_object",
                                     "replace": "replace_namespaced_custom_object",
                                     "delete": "delete_namespaced_custom_object"}[verb]), (
            res.group, res.version)

    async def get(self, res: Resource, namespace: str, name: str) -> Obj:
        fn, lead = self._generic(res, "get")
        if lead:
            return await self._call(fn, *lead, namespace, res.plural, name)
        return await self._call(fn, name, namespace)

    async def get_or_none(self, res: Resource, namespace: str, name: str) -> Obj | None:
        try:
            return await self.get(res, namespace, name)
        except NotFound:
            return None

    async def list(self, res: Resource, namespace: str, label_selector: str | None = None) -> Obj:
        """The whole list object (items and metadata.resourceVersion)."""
        fn, lead = self._generic(res, "list")
        kwargs: dict[str, Any] = {}
        if label_selector:
            kwargs["label_selector"] = label_selector
        if lead:
            return await self._call(fn, *lead, namespace, res.plural, **kwargs)
        return await self._call(fn, namespace, **kwargs)

    async def items(self, res: Resource, namespace: str, label_selector: str | None = None) -> list[Obj]:
        return list((await self.list(res, namespace, label_selector)).get("items") or [])

    async def create(self, res: Resource, namespace: str, body: Obj, *, dry_run: bool = False) -> Obj:
        """POST; with `dry_run` the API server admits and validates it but stores nothing."""
        fn, lead = self._generic(res, "create")
        kwargs: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        if lead:
            return await self._call(fn, *lead, namespace, res.plural, body, **kwargs)
        return await self._call(fn, namespace, body, **kwargs)

    async def replace(self, res: Resource, namespace: str, body: Obj) -> Obj:
        """PUT with the body's metadata.resourceVersion: 409 `Conflict` if it changed meanwhile."""
        name = body["metadata"]["name"]
        fn, lead = self._generic(res, "replace")
        if lead:
            return await self._call(fn, *lead, namespace, res.plural, name, body)
        return await self._call(fn, name, namespace, body)

    async def replace_status(self, res: Resource, namespace: str, body: Obj) -> Obj:
        """PUT .../<name>/status (custom resources only), RV-guarded like `replace`."""
        return await self._call(self.custom.replace_namespaced_custom_object_status, res.group, res.version,
                                namespace, res.plural, body["metadata"]["name"], body)

    async def json_patch_status(self, res: Resource, namespace: str, name: str, ops: list[Obj]) -> Obj:
        """RFC 6902 JSON Patch on the status subresource (custom resources only)."""
        return await self._call(self.custom.patch_namespaced_custom_object_status, res.group, res.version,
                                namespace, res.plural, name, ops, _content_type=JSON_PATCH)

    async def delete(self, res: Resource, namespace: str, name: str, *, resource_version: str | None = None,
                     uid: str | None = None, grace_period_seconds: int | None = None) -> bool:
        """Delete; False if it was already gone. Preconditions make it a compare-and-delete."""
        fn, lead = self._generic(res, "delete")
        body: Obj = {"apiVersion": "v1", "kind": "DeleteOptions"}
        pre: Obj = {}
        if resource_version:
            pre["resourceVersion"] = resource_version
        if uid:
            pre["uid"] = uid
        if pre:
            body["preconditions"] = pre
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        try:
            if lead:
                await self._call(fn, *lead, namespace, res.plural, name, body=body)
            else:
                await self._call(fn, name, namespace, body=body)
        except NotFound:
            return False
        return True

    async def watch(self, res: Resource, namespace: str, resource_version: str, *, label_selector: str | None = None,
                    timeout_seconds: int = 300) -> AsyncIterator[tuple[str, Obj]]:
        """Raw watch events (type, object) from `resource_version` until the server ends the stream.

        A 410 arrives as an ("ERROR", Status) event; reconnecting (and relisting) is the caller's job.
        """
        fn, lead = self._generic(res, "list")
        kwargs: dict[str, Any] = {"watch": True, "resource_version": resource_version,
                                  "timeout_seconds": timeout_seconds, "allow_watch_bookmarks": True,
                                  "_preload_content": False, "_request_timeout": timeout_seconds + 30}
        if label_selector:
            kwargs["label_selector"] = label_selector
        try:
            if lead:
                resp = await fn(*lead, namespace, res.plural, **kwargs)
            else:
                resp = await fn(namespace, **kwargs)
        except ApiException as exc:
            raise translate(exc) from None
        if not 200 <= resp.status <= 299:
            try:
                raw = await resp.read()
            finally:
                resp.release()
            raise _error(resp.status, resp.reason, raw)
        # Split lines ourselves: aiohttp's line iterator refuses lines above its buffer limit
        # (128 KiB), and one event carries a whole object (a Longhorn Node with many disks).
        buf = b""
        try:
            async for chunk in resp.content.iter_any():
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        ev = json.loads(line)
                        yield str(ev.get("type") or ""), ev.get("object") or {}
            if buf.strip():
                ev = json.loads(buf)
                yield str(ev.get("type") or ""), ev.get("object") or {}
        finally:
            resp.release()
