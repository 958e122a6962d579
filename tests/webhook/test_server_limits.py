"""The real WebhookServer (webhook/server.py) on loopback TLS, against clients that behave badly:
what the API server's view of the webhook must survive.

- TLS 1.0 and 1.1 are refused, 1.2 and 1.3 are served, and a client that verifies as kube-apiserver
  does (the caBundle as its only CA pool, ServerName `<service>.<namespace>.svc`) accepts the
  certificate; for another name, or another CA, it does not;
- a request body above the cap is refused (413) without being read whole;
- slow-loris clients (headers that never end, a body that never comes) are disconnected and do not
  keep the server from answering others; connections above the cap are closed at once, and the
  server serves again once they are gone; idle keep-alive connections are kept meanwhile.

Timeouts are shortened (`Limits`) so that the test is quick; every wait is for an outcome (a
closed connection, a status), with a generous bound, never a measurement of time.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from webhook.admission import Admission
from webhook.certs import Material, Policy, fresh, service_dns_names
from webhook.index import ClusterIndex
from webhook.metrics import Metrics
from webhook.records_api import RecordsApi
from webhook.server import MAX_BODY_BYTES, Limits, WebhookServer
from webhook.tls import FileCerts

SERVICE, NAMESPACE = "bg-bimguard", "bimguard-system"
HOST = f"{SERVICE}.{NAMESPACE}.svc"  # what kube-apiserver puts in ServerName for clientConfig.service
LIMITS = Limits(max_connections=8, tls_handshake_timeout=1.0, header_timeout=0.5, body_timeout=0.5, idle_timeout=60)


@dataclass
class Running:
    server: WebhookServer
    material: Material

    @property
    def port(self) -> int:
        return self.server.bound_port

    def client_context(self, name_check: bool = True) -> ssl.SSLContext:
        """kube-apiserver's webhook client: the caBundle as the only root, the Service's name checked."""
        ctx = ssl.create_default_context(cadata=self.material.bundle_pem.decode())
        ctx.check_hostname = name_check
        return ctx


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    m = fresh(datetime.now(timezone.utc), Policy(), service_dns_names(SERVICE, NAMESPACE))
    cert, key = m.serving_pem
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    certs = FileCerts(tmp_path / "tls.crt", tmp_path / "tls.key")
    await certs.start()
    api_client = client.ApiClient()  # never called: no review here reaches the API
    admission = Admission(ClusterIndex(), RecordsApi(api_client, NAMESPACE, "longhorn-system"), Metrics(),
                          ready=lambda: None)
    server = WebhookServer(admission, certs, admission.metrics, not_ready=lambda: None, host="127.0.0.1", port=0,
                           metrics_port=0, shutdown_delay=0, limits=LIMITS)
    await server.start()
    try:
        yield Running(server, m)
    finally:
        await server.stop()
        await certs.stop()
        await api_client.close()


async def get_healthz(r: Running, ctx: ssl.SSLContext | None = None, host: str = HOST) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port, ssl=ctx or r.client_context(),
                                                   server_hostname=host)
    try:
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, bound: float = 15.0) -> bytes:
    """What the server sent before closing (b"" if nothing); fails if it never closes."""
    return await asyncio.wait_for(reader.read(), bound)


# -- TLS as kube-apiserver sees it -----------------------------------------------------------------

@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
async def test_tls_12_and_13_are_served_to_a_client_that_verifies_like_kube_apiserver(running: Running,
                                                                                      version: str) -> None:
    ctx = running.client_context()
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port, ssl=ctx, server_hostname=HOST)
    assert writer.get_extra_info("ssl_object").version() == version.replace("_", ".")
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    assert (await closed_by_server(reader)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_the_certificate_names_are_checked(running: Running) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|match"):
        await get_healthz(running, host=f"{SERVICE}.default.svc")
    other = fresh(datetime.now(timezone.utc), Policy(), service_dns_names(SERVICE, NAMESPACE))
    with pytest.raises(ssl.SSLCertVerificationError):
        await get_healthz(running, ctx=ssl.create_default_context(cadata=other.bundle_pem.decode()))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
async def test_tls_10_and_11_are_refused(running: Running, version: str) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    try:
        old.minimum_version = old.maximum_version = getattr(ssl.TLSVersion, version)
        old.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip(f"this OpenSSL cannot build a {version} client")
    # Control: this client does complete a handshake with a server that allows the version, so the
    # refusal below is the webhook's doing and not this machine's OpenSSL policy.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("ALL:@SECLEVEL=0")
    from webhook.tls import load_chain

    load_chain(permissive, *running.material.serving_pem)
    control = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=permissive)
    try:
        cport = control.sockets[0].getsockname()[1]
        try:
            _, w = await asyncio.open_connection("127.0.0.1", cport, ssl=old)
        except (ssl.SSLError, ConnectionError):
            pytest.skip(f"this OpenSSL refuses {version} on both ends; the floor cannot be observed")
        w.close()
    finally:
        control.close()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.open_connection("127.0.0.1", running.port, ssl=old)


# -- size and slow clients --------------------------------------------------------------------------

async def test_a_body_above_the_cap_is_refused(running: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port, ssl=running.client_context(),
                                                   server_hostname=HOST)
    size = MAX_BODY_BYTES + 1024 * 1024
    writer.write(f"POST /mutate HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {size}\r\n\r\n".encode())
    chunk = b" " * (256 * 1024)
    try:
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass  # the server may stop reading once it has answered
    head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 15)
    assert head.startswith(b"HTTP/1.1 413"), head
    writer.close()


async def test_slow_loris_headers_are_cut_off_and_others_are_served(running: Running) -> None:
    slow = []
    for _ in range(LIMITS.max_connections - 2):
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port, ssl=running.client_context(),
                                                       server_hostname=HOST)
        writer.write(f"POST /mutate HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode())  # headers never end
        await writer.drain()
        slow.append((reader, writer))
    # While they hang, a well-behaved client is answered.
    assert (await get_healthz(running)).startswith(b"HTTP/1.1 200")
    # Each slow connection is closed by the server, with nothing answered.
    for reader, writer in slow:
        assert await closed_by_server(reader) == b""
        writer.close()
    assert (await get_healthz(running)).startswith(b"HTTP/1.1 200")


async def test_a_body_that_never_comes_gets_408(running: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port, ssl=running.client_context(),
                                                   server_hostname=HOST)
    writer.write(f"POST /mutate HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\n{{\"a\":".encode())
    await writer.drain()
    answer = await closed_by_server(reader)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    writer.close()


async def test_connections_above_the_cap_are_closed_at_once(running: Running) -> None:
    """Idle keep-alive connections (as kube-apiserver keeps them) stay open; one more than the cap is
    closed before it is served; when they go, the server serves new ones."""
    held = []
    for _ in range(LIMITS.max_connections):
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port, ssl=running.client_context(),
                                                       server_hostname=HOST)
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())  # keep-alive
        await writer.drain()
        assert (await asyncio.wait_for(reader.readuntil(b"ok\n"), 10)).startswith(b"HTTP/1.1 200")
        held.append((reader, writer))
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port, ssl=running.client_context(),
                                                   server_hostname=HOST)
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    try:
        await writer.drain()
        over = await closed_by_server(reader)
    except ConnectionError:
        over = b""
    assert over == b"", over
    writer.close()
    # The held ones are still usable ...
    r0, w0 = held[0]
    w0.write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    assert (await asyncio.wait_for(r0.readuntil(b"ok\n"), 10)).startswith(b"HTTP/1.1 200")
    # ... and once they are gone, newcomers are served.
    for _, w in held:
        w.close()
        await w.wait_closed()
    for _ in range(50):
        answer = await get_healthz(running)
        if answer:
            break
        await asyncio.sleep(0.1)  # the server notices the closes on its next loop turns
    assert answer.startswith(b"HTTP/1.1 200")
