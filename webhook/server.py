"""The admission webhook's HTTPS server: routing, limits, health, metrics port, shutdown.

- `POST <scope.path>`: AdmissionReview in, AdmissionReview out (webhook.admission). Bodies are
  capped at 6 MiB (413 above: a review carries two objects of up to 3 MiB each).
- `GET /healthz`: the process serves. `GET /readyz`: the index is synced and bimguard's CRDs are
  served; otherwise 503 naming what is missing. Readiness drops first on shutdown.
- Metrics on a port of their own (`/metrics`): plain HTTP, or HTTPS with the serving certificate
  (`metrics_tls`); optionally only for a bearer token the API server says may `get` /metrics
  (`metrics_access`, webhook.scrape_access).
- Slow and greedy clients (`Limits`): at most `max_connections` open connections per port (more
  are closed at once), the TLS handshake within `tls_handshake_timeout`, a request's headers
  within `header_timeout` of its first byte, its body within `body_timeout` (408), and an idle
  keep-alive connection closed after `idle_timeout` -- longer than the 90 s after which
  kube-apiserver's client drops idle connections itself (k8s.io/apimachinery
  pkg/util/net/http.go SetTransportDefaults: IdleConnTimeout), so the server never closes one
  the API server is about to reuse. aiohttp alone would wait an hour for a request's headers.
- Shutdown (SIGTERM): not ready at once, keep serving for `shutdown_delay` while endpoints
  converge (the chart's preStop sleeps too), then stop accepting, let in-flight reviews finish
  and close keep-alive connections, so a rolling upgrade fails no review.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from webhook.admission import Admission
from webhook.metrics import Metrics
from webhook.review import BadReview
from webhook.scrape_access import ScrapeAccess
from webhook.scope import LONGHORN_NODE_STATUS
from webhook.tls import CertSource

log = logging.getLogger("bimguard.webhook.server")

MAX_BODY_BYTES = 6 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one client may hold (seconds, connections); see the module docstring."""

    max_connections: int = 1000
    tls_handshake_timeout: float = 10.0
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    idle_timeout: float = 120.0


class _Guarded(RequestHandler):
    """aiohttp's connection handler with the `Limits` it lacks: a connection over the cap is closed
    at once; bytes of a request whose headers are not complete `header_timeout` later close the
    connection. "Between requests" is from connection start until a handler runs, and again after
    it returned (`_guard` middleware); idle connections are aiohttp's keep-alive timeout's."""

    def __init__(self, manager: Server, *, limits: Limits, counter: list[int], **kwargs: Any) -> None:
        super().__init__(manager, keepalive_timeout=limits.idle_timeout, **kwargs)
        self._limits = limits
        self._counter = counter  # [open connections on this port]
        self._between = True
        self._header_timer: asyncio.TimerHandle | None = None
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._counter[0] += 1
        self._counted = True
        if self._counter[0] > self._limits.max_connections:
            log.warning("connection refused: %d connections open, the limit is %d", self._counter[0] - 1,
                        self._limits.max_connections)
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._counter[0] -= 1
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._between and data and self._header_timer is None:
            self._header_timer = self._loop.call_later(self._limits.header_timeout, self._too_slow)
        super().data_received(data)

    def request_started(self) -> None:
        self._between = False
        self._disarm()

    def request_finished(self) -> None:
        self._between = True

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self._between:
            log.info("connection closed: request headers not complete within %.0f s", self._limits.header_timeout)
            self.force_close()


class _GuardedServer(Server):
    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._counter = [0]

    def __call__(self) -> RequestHandler:
        return _Guarded(self, loop=self._loop, limits=self._limits, counter=self._counter, **self._kwargs)


class _GuardedRunner(web.AppRunner):
    """An AppRunner whose connections are `_Guarded` (aiohttp's Application._make_handler, with
    our handler class)."""

    def __init__(self, app: web.Application, *, limits: Limits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> Server:
        default = await super()._make_server()  # starts the app up and freezes it
        return _GuardedServer(default.request_handler, request_factory=default.request_factory,
                              handler_cancellation=default.handler_cancellation, loop=asyncio.get_running_loop(),
                              limits=self._limits, **default._kwargs)


class _GuardedSite(web.TCPSite):
    """A TCPSite with a TLS handshake timeout (asyncio's default is 60 s)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, ssl_context: ssl.SSLContext | None,
                 handshake_timeout: float, backlog: int = 1024) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=backlog)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        self._runner._reg_site(self)  # what BaseSite.start does, then our create_server
        server = self._runner.server
        assert server is not None
        extra = {"ssl_handshake_timeout": self._handshake_timeout} if self._ssl_context else {}
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port, **extra)

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]


@web.middleware
async def _guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) \
        -> web.StreamResponse:
    protocol = request.protocol
    if isinstance(protocol, _Guarded):
        protocol.request_started()
    try:
        return await handler(request)
    finally:
        if isinstance(protocol, _Guarded):
            protocol.request_finished()


class WebhookServer:
    def __init__(self, admission: Admission, certs: CertSource, metrics: Metrics, *,
                 not_ready: Callable[[], str | None], host: str = "0.0.0.0", port: int = 9443,
                 metrics_host: str | None = None, metrics_port: int = 9090, shutdown_delay: float = 5.0,
                 in_flight_timeout: float = 10.0, limits: Limits = Limits(), metrics_tls: bool = False,
                 metrics_access: ScrapeAccess | None = None) -> None:
        self.admission = admission
        self.certs = certs
        self.metrics = metrics
        self._not_ready = not_ready
        self.host, self.port = host, port
        self.metrics_host, self.metrics_port = metrics_host or host, metrics_port
        self.shutdown_delay = shutdown_delay
        self.in_flight_timeout = in_flight_timeout
        self.limits = limits
        self.metrics_tls = metrics_tls
        self.metrics_access = metrics_access
        self.draining = False
        self._runners: list[web.AppRunner] = []
        self._reviews = metrics.reviews
        self.bound_port = 0
        self.bound_metrics_port = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_guard])
        app.router.add_post(LONGHORN_NODE_STATUS.path, self._mutate)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[_guard])
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        # No access log: one line per routine review is noise at Longhorn's write rate.
        runner = _GuardedRunner(self.app(), limits=self.limits, access_log=None, shutdown_timeout=self.in_flight_timeout)
        await runner.setup()
        site = _GuardedSite(runner, self.host, self.port, ssl_context=self.certs.ssl_context,
                            handshake_timeout=self.limits.tls_handshake_timeout)
        await site.start()
        self.bound_port = site.bound_port
        self._runners.append(runner)
        mrunner = _GuardedRunner(self.metrics_app(), limits=self.limits, access_log=None)
        await mrunner.setup()
        msite = _GuardedSite(mrunner, self.metrics_host, self.metrics_port,
                             ssl_context=self.certs.ssl_context if self.metrics_tls else None,
                             handshake_timeout=self.limits.tls_handshake_timeout)
        await msite.start()
        self.bound_metrics_port = msite.bound_port
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
            try:
                if request.content.is_eof():  # the whole body arrived with the headers (the usual case)
                    body = await request.read()  # raises 413 above client_max_size
                else:
                    async with asyncio.timeout(self.limits.body_timeout):
                        body = await request.read()
            except TimeoutError:
                code = 408
                log.info("request body not complete within %.0f s; connection closed", self.limits.body_timeout)
                resp = web.Response(status=408, text="request body too slow\n")
                resp.force_close()
                return resp
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

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics_access is not None:
            status, why = await self.metrics_access.check(request.headers.get("Authorization", ""))
            if status != 200:
                headers = {"WWW-Authenticate": 'Bearer realm="bimguard metrics"'} if status == 401 else {}
                return web.Response(status=status, text=f"{why}\n", headers=headers)
        idx = self.admission.index
        self.metrics.set_occupancy(len(idx.occupied()))
        self.metrics.full_hash.set(0 if idx.prefix_naming else 1)
        try:
            self.metrics.cert_expiry.set(self.certs.not_after.timestamp())
        except Exception:  # no certificate loaded yet
            pass
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
