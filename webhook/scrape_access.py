"""Who may read /metrics when `--metrics-authorization` is on: a bearer token that the API server
authenticates (TokenReview, authentication.k8s.io/v1) and authorizes for `get` on the
non-resource URL `/metrics` (SubjectAccessReview, authorization.k8s.io/v1) -- what kube-rbac-proxy
and controller-runtime's metrics filter (`filters.WithAuthenticationAndAuthorization`) do, so a
scraper is granted access with ordinary RBAC (a ClusterRole with `nonResourceURLs: ["/metrics"]`,
which the chart renders as `<...>-metrics-reader`).

Answers are kept for `ttl` seconds per token (its SHA-256, never the token), so a scrape every few
seconds costs the API server two reviews a minute at most. Nothing here logs a token.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from kubernetes_asyncio import client

log = logging.getLogger("bimguard.webhook.metrics")

PATH = "/metrics"


class ScrapeAccess:
    def __init__(self, api_client: client.ApiClient, *, ttl: float = 30.0, max_entries: int = 256) -> None:
        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, int, str]] = {}  # sha256(token) -> (expires, status, why)

    async def check(self, authorization: str) -> tuple[int, str]:
        """(200, "") to serve; (401, why) without a valid token; (403, why) for a token not allowed
        to get /metrics; (503, why) when the API server cannot be asked."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return 401, "a bearer token is required"
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]
        try:
            status, why = await self._review(token)
        except Exception as err:  # noqa: BLE001 - the API server's trouble is not the scraper's answer to cache
            log.warning("cannot review a metrics scraper's token: %s", type(err).__name__)
            return 503, "cannot reach the API server to review the token"
        if len(self._cache) >= self.max_entries:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
        self._cache[key] = (now + self.ttl, status, why)
        return status, why

    async def _review(self, token: str) -> tuple[int, str]:
        review: Any = await self._authn.create_token_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
            _request_timeout=10)
        st = review.status
        if st is None or not st.authenticated or st.user is None:
            return 401, "the token is not valid"
        user = st.user
        sar: Any = await self._authz.create_subject_access_review({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user.username, "groups": list(user.groups or []), "uid": user.uid or "",
                     "extra": {k: list(v) for k, v in (user.extra or {}).items()},
                     "nonResourceAttributes": {"path": PATH, "verb": "get"}}}, _request_timeout=10)
        if sar.status is not None and sar.status.allowed:
            return 200, ""
        return 403, f"{user.username} may not get {PATH}"
