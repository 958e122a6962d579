"""The admission webhook's HTTPS server: routing, limits, health, metrics port, shutdown.

- `POST <scope.path>`: AdmissionReview in, AdmissionReview out (webhook.admission). Bodies are
  capped at 6 MiB (413 above: a review carries two objects of up to 3 MiB each).
- `GET /healthz`: the process serves. `GET /readyz`: the index is synced and bimguard's CRDs are
  served; otherwise 503 naming what is missing. Readiness drops first on shutdown.
- Metrics on a separate plain-HTTP port (`/metrics`).
- Shutdown (SIGTERM): not ready at once, keep serving for `shutdown_delay` while endpoints
  converge (the chart's preStop sleeps too), then stop accepting, let in-flight reviews finish
  and close keep-alive connections, so a rolling upgrade fails no review.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from webhook.admission import Admission
from webhook.metrics import Metrics
from webhook.review import BadReview
from webhook.scope import LONGHORN_NODE_STATUS
from webhook.tls import CertSource

log = logging.getLogger("bimguard.webhook.server")

MAX_BODY_BYTES = 6 * 1024 * 1024


class WebhookServer:
    def __init__(self, admission: Admission, certs: CertSource, metrics: Metrics, *,
                 not_ready: Callable[[], str | None], host: str = "0.0.0.0", port: int = 9443,
                 metrics_host: str | None = None, metrics_port: int = 9090, shutdown_delay: float = 5.0,
                 in_flight_timeout: float = 10.0) -> None:
        self.admission = admission
        self.certs = certs
        self.metrics = metrics
        self._not_ready = not_ready
        self.host, self.port = host, port
        self.metrics_host, self.metrics_port = metrics_host or host, metrics_port
        self.shutdown_delay = shutdown_delay
        self.in_flight_timeout = in_flight_timeout
        self.draining = False
        self._runners: list[web.AppRunner] = []
        self._reviews = metrics.reviews
        self.bound_port = 0
        self.bound_metrics_port = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(LONGHORN_NODE_STATUS.path, self._mutate)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        # No access log: one line per routine review is noise at Longhorn's write rate.
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=self.in_flight_timeout)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self.certs.ssl_context, backlog=1024)
        await site.start()
        self.bound_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runners.append(runner)
        mrunner = web.AppRunner(self.metrics_app(), access_log=None)
        await mrunner.setup()
        msite = web.TCPSite(mrunner, self.metrics_host, self.metrics_port)
        await msite.start()
        self.bound_metrics_port = msite._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runners.append(mrunner)

    async def stop(self) -> None:
        """Graceful: not ready first, serve through the delay, then drain and close."""
        self.draining = True
        await asyncio.sleep(self.shutdown_delay)
        for runner in self._runners:
            await runner.cleanup()  # stops listening, waits for in-flight handlers, closes idle keep-alives
        self._runners.clear()

    async def _mutate(self, request: web.Request) -> web.Response:
        reviews = self._reviews
        reviews.in_flight += 1
        start = time.perf_counter()
        code = 200
        try:
            body = await request.read()  # raises 413 above client_max_size
            try:
                out = await self.admission.handle(body)
            except BadReview as err:
                code = 400
                return web.Response(status=400, text=f"{err}\n")
            return web.Response(body=out, content_type="application/json")
        except web.HTTPException as err:
            code = err.status
            raise
        finally:
            reviews.done(code, time.perf_counter() - start)
            reviews.in_flight -= 1

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="shutting down\n")
        why = self._not_ready()
        if why:
            return web.Response(status=503, text=f"not ready: {why}\n")
        return web.Response(text="ok\n")

    async def _metrics(self, _request: web.Request) -> web.Response:
        idx = self.admission.index
        self.metrics.set_occupancy(len(idx.occupied()))
        self.metrics.full_hash.set(0 if idx.prefix_naming else 1)
        try:
            self.metrics.cert_expiry.set(self.certs.not_after.timestamp())
        except Exception:  # no certificate loaded yet
            pass
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
