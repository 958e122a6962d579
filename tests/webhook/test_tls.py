"""The webhook's TLS context over real loopback TLS: protocol floor, names, hot reload, files mode."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509

from webhook.certs import Material, fresh, issue_serving, Policy, service_dns_names
from webhook.tls import FileCerts, InvalidCertificate, ServingContext, load_chain, server_context

NAMES = service_dns_names("bimguard", "longhorn-system")
HOST = "bimguard.longhorn-system.svc"


def material() -> Material:
    return fresh(datetime.now(timezone.utc), Policy(), NAMES)


def reissue(m: Material) -> Material:
    cert, key = issue_serving(m.ca, NAMES, datetime.now(timezone.utc), timedelta(days=365))
    return Material(m.ca, cert, key)


async def serve(ctx: ssl.SSLContext):
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


@pytest.fixture
async def https():
    """serve(ctx) -> port; every server is cleaned up after the test."""
    runners: list[web.AppRunner] = []

    async def start(ctx: ssl.SSLContext) -> int:
        runner, port = await serve(ctx)
        runners.append(runner)
        return port

    yield start
    for r in runners:
        await r.cleanup()


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca_pem.decode())


class Conn:
    """One TLS connection speaking HTTP/1.1 keep-alive by hand, so 'the same connection' is certain."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext, hostname: str = HOST) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=hostname)
        return cls(reader, writer)

    @property
    def serial(self) -> int:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number

    async def get(self) -> bytes:
        self.writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ssl.SSLError, ConnectionError):
            pass


async def test_handshake_verifies_ca_and_service_name_and_refuses_other_names(https):
    m = material()
    serving = ServingContext()
    serving.load(*m.serving_pem)
    port = await https(serving.context)
    for name in NAMES:
        conn = await Conn.open(port, client_context(m.bundle_pem), name)
        assert await conn.get() == b"ok"
        assert conn.serial == m.serving_cert.serial_number
        assert conn.writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        await conn.close()
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|match"):
        await Conn.open(port, client_context(m.bundle_pem), "bimguard.default.svc")
    other = material()  # a different CA: the chain must not verify
    with pytest.raises(ssl.SSLCertVerificationError):
        await Conn.open(port, client_context(other.bundle_pem), HOST)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
async def test_tls12_client_accepted_and_tls11_client_refused(https):
    m = material()
    serving = ServingContext()
    serving.load(*m.serving_pem)
    port = await https(serving.context)

    tls12 = client_context(m.bundle_pem)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    conn = await Conn.open(port, tls12)
    assert conn.writer.get_extra_info("ssl_object").version() == "TLSv1.2"
    assert await conn.get() == b"ok"
    await conn.close()

    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    try:
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot build a TLS 1.1 client")
    # Control: the same client does get through to a server that allows TLS 1.1, so the refusal
    # below is the webhook context's doing and not this machine's OpenSSL policy.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("ALL:@SECLEVEL=0")
    load_chain(permissive, *m.serving_pem)
    control_port = await https(permissive)
    try:
        control = await Conn.open(control_port, old)
    except (ssl.SSLError, ConnectionError):
        pytest.skip("this OpenSSL refuses TLS 1.1 on both ends; the floor cannot be observed")
    assert control.writer.get_extra_info("ssl_object").version() == "TLSv1.1"
    await control.close()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await Conn.open(port, old)


def test_server_context_settings():
    ctx = server_context()
    assert ctx.protocol == ssl.PROTOCOL_TLS_SERVER
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["aead"] and c["kea"] == "kx-ecdhe" for c in tls12)


async def test_hot_reload_keeps_open_connections_and_serves_new_cert_to_new_ones(https):
    m1 = material()
    m2 = reissue(m1)
    serving = ServingContext()
    serving.load(*m1.serving_pem)
    port = await https(serving.context)
    ca = client_context(m1.bundle_pem)

    kept = await Conn.open(port, ca)
    assert await kept.get() == b"ok"
    assert kept.serial == m1.serving_cert.serial_number

    assert serving.load(*m2.serving_pem) is True
    assert serving.load(*m2.serving_pem) is False  # same pair: nothing to do

    assert await kept.get() == b"ok"  # the keep-alive connection is untouched
    assert kept.serial == m1.serving_cert.serial_number
    fresh_conn = await Conn.open(port, ca)
    assert fresh_conn.serial == m2.serving_cert.serial_number
    assert await fresh_conn.get() == b"ok"
    assert await kept.get() == b"ok"
    await kept.close()
    await fresh_conn.close()


async def test_a_mismatched_pair_never_reaches_the_live_context(https):
    m1, other = material(), material()
    serving = ServingContext()
    serving.load(*m1.serving_pem)
    port = await https(serving.context)
    cert_pem, _ = reissue(m1).serving_pem
    _, wrong_key = other.serving_pem
    with pytest.raises(InvalidCertificate, match="does not match"):
        serving.load(cert_pem, wrong_key)
    with pytest.raises(InvalidCertificate):
        serving.load(b"not a certificate", wrong_key)
    conn = await Conn.open(port, client_context(m1.bundle_pem))
    assert conn.serial == m1.serving_cert.serial_number
    assert await conn.get() == b"ok"
    await conn.close()


class RecordingContext(ssl.SSLContext):
    """Records how the files handed to load_cert_chain look while OpenSSL reads them."""

    seen: list[tuple[str, int, int]]

    def load_cert_chain(self, certfile, keyfile=None, password=None):  # type: ignore[override]
        for path in (certfile, keyfile):
            self.seen.append((path, stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode),
                              stat.S_IMODE(os.stat(path).st_mode)))
        return super().load_cert_chain(certfile, keyfile, password)


def test_key_files_are_private_and_removed(tmp_path: Path):
    ctx = RecordingContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.seen = []
    serving = ServingContext(ctx, tmp_dir=str(tmp_path))
    serving.load(*material().serving_pem)
    assert len(ctx.seen) == 2
    for path, dir_mode, file_mode in ctx.seen:
        assert dir_mode == 0o700 and file_mode == 0o600, (path, oct(dir_mode), oct(file_mode))
        assert not os.path.exists(path)
    assert list(tmp_path.iterdir()) == []


async def test_file_certs_reload_on_change_and_skip_half_updates(https, tmp_path: Path):
    m1 = material()
    m2 = reissue(m1)
    cert_file, key_file, ca_file = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt"
    cert_file.write_bytes(m1.serving_pem[0])
    key_file.write_bytes(m1.serving_pem[1])
    ca_file.write_bytes(m1.bundle_pem)
    source = FileCerts(cert_file, key_file, ca_file=ca_file, poll_interval=0.02)
    await source.start()
    try:
        assert source.ca_bundle_pem == m1.bundle_pem
        assert source.certificate.serial_number == m1.serving_cert.serial_number
        assert 364 * 86400 < source.cert_expiry_seconds() <= 365 * 86400
        port = await https(source.ssl_context)
        ca = client_context(m1.bundle_pem)
        kept = await Conn.open(port, ca)

        # Half an update: the new certificate next to the old key. Must be skipped.
        cert_file.write_bytes(m2.serving_pem[0])
        await asyncio.sleep(0.1)
        probe = await Conn.open(port, ca)
        assert probe.serial == m1.serving_cert.serial_number
        await probe.close()

        key_file.write_bytes(m2.serving_pem[1])
        for _ in range(100):
            if source.certificate.serial_number == m2.serving_cert.serial_number:
                break
            await asyncio.sleep(0.02)
        probe = await Conn.open(port, ca)
        assert probe.serial == m2.serving_cert.serial_number
        await probe.close()
        assert kept.serial == m1.serving_cert.serial_number and await kept.get() == b"ok"
        await kept.close()
    finally:
        await source.stop()


async def test_file_certs_refuse_to_start_without_a_usable_pair(tmp_path: Path):
    m, other = material(), material()
    (tmp_path / "tls.crt").write_bytes(m.serving_pem[0])
    (tmp_path / "tls.key").write_bytes(other.serving_pem[1])
    with pytest.raises(InvalidCertificate):
        await FileCerts(tmp_path / "tls.crt", tmp_path / "tls.key").start()
    with pytest.raises(InvalidCertificate):
        await FileCerts(tmp_path / "missing.crt", tmp_path / "missing.key").start()


def rsa_pair(m: Material) -> tuple[bytes, bytes, x509.Certificate]:
    """A serving certificate with an RSA key, signed by `m`'s CA (as cert-manager may issue)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    ec_cert, _ = issue_serving(m.ca, NAMES, datetime.now(timezone.utc), timedelta(days=365))
    key = rsa.generate_private_key(65537, 2048)
    builder = x509.CertificateBuilder().subject_name(ec_cert.subject).issuer_name(ec_cert.issuer) \
        .public_key(key.public_key()).serial_number(x509.random_serial_number()) \
        .not_valid_before(ec_cert.not_valid_before_utc).not_valid_after(ec_cert.not_valid_after_utc)
    for ext in ec_cert.extensions:
        if not isinstance(ext.value, (x509.SubjectKeyIdentifier, x509.KeyUsage)):
            builder = builder.add_extension(ext.value, ext.critical)
    cert = builder.sign(m.ca.key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, cert


async def test_switching_key_algorithm_never_serves_the_old_certificate(https):
    """OpenSSL keeps one certificate per key type in a context; an RSA -> ECDSA renewal must not
    leave the old RSA certificate behind for clients that only offer RSA suites."""
    m = material()
    rsa_cert_pem, rsa_key_pem, rsa_cert = rsa_pair(m)
    serving = ServingContext()
    serving.load(rsa_cert_pem, rsa_key_pem)
    port = await https(serving.context)
    ca = client_context(m.bundle_pem)
    kept = await Conn.open(port, ca)
    assert kept.serial == rsa_cert.serial_number

    serving.load(*m.serving_pem)  # now ECDSA
    for hostname in (HOST, None):  # with and without SNI
        ctx = client_context(m.bundle_pem)
        if hostname is None:
            ctx.check_hostname = False
        conn = await Conn.open(port, ctx, hostname)
        assert conn.serial == m.serving_cert.serial_number
        assert await conn.get() == b"ok"
        await conn.close()
    rsa_only = client_context(m.bundle_pem)
    rsa_only.maximum_version = ssl.TLSVersion.TLSv1_2
    rsa_only.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    try:
        conn = await Conn.open(port, rsa_only)
    except (ssl.SSLError, ConnectionError):
        pass  # refused: right, there is no RSA certificate any more
    else:
        assert conn.serial != rsa_cert.serial_number, "the replaced RSA certificate is still served"
        await conn.close()
    assert await kept.get() == b"ok" and kept.serial == rsa_cert.serial_number

    back_pem, back_key, back_cert = rsa_pair(m)  # and back to RSA, then a same-type renewal
    serving.load(back_pem, back_key)
    conn = await Conn.open(port, ca)
    assert conn.serial == back_cert.serial_number
    await conn.close()
    again_pem, again_key, again_cert = rsa_pair(m)
    serving.load(again_pem, again_key)
    conn = await Conn.open(port, ca)
    assert conn.serial == again_cert.serial_number
    await conn.close()
    await kept.close()
