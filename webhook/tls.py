"""The webhook's TLS: a server `ssl.SSLContext` whose certificate is swapped without a restart.

Where the certificate comes from is a `CertSource`: `SelfManagedCerts` (webhook/certs.py, a CA
and serving certificate kept in a Secret) or `FileCerts` (here: `--tls-cert-file` /
`--tls-key-file`, e.g. a cert-manager Secret mounted as a volume). Both hand the server one
`ssl_context` for its whole life and reload the chain into that same object:
`SSLContext.load_cert_chain` affects only handshakes that start afterwards, so open keep-alive
connections (kube-apiserver keeps them) carry on with the certificate they negotiated.
One exception: OpenSSL keeps a certificate per key algorithm, so a pair of another algorithm
(RSA -> ECDSA) goes into a fresh context that the live one's SNI callback hands every new
handshake to; otherwise the replaced certificate would still be served to some clients.

A new pair is checked before it touches the live context: parsed with `cryptography`, the key
matched against the certificate, and loaded into a scratch context first. Loading a
certificate whose key does not match into a live OpenSSL context drops its key and would break
every later handshake, and kubelet's or cert-manager's updates of mounted files are not atomic
across the two files. A pair that fails the checks is ignored (logged without content) and the
old one keeps serving.

`load_cert_chain` only reads files, so each load writes the pair into a fresh private temporary
directory (0700, files 0600, O_EXCL|O_NOFOLLOW) that is removed as soon as OpenSSL has read it.
Keys are never logged: log lines name certificates by serial, SHA-256 fingerprint and expiry.

Public API:
    server_context() -> ssl.SSLContext           # TLS >= 1.2, no compression, AEAD + ECDHE only
    ServingContext(context=None)                  # .context, .certificate, .load(cert_pem, key_pem)
    class CertSource                              # start(), stop(), ssl_context, certificate,
                                                  # not_after, ca_bundle_pem, cert_expiry_seconds()
    FileCerts(cert_file, key_file, *, ca_file=None, poll_interval=10.0)
    InvalidCertificate                            # a pair that cannot serve (message has no key material)
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import logging
import os
import ssl
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

log = logging.getLogger("bimguard.webhook.tls")

# TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 suites are all AEAD and fixed by
# OpenSSL). Covers Go's crypto/tls client in kube-apiserver with ECDSA and RSA certificates.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


class InvalidCertificate(ValueError):
    """A certificate/key pair that cannot serve. The message never contains key material."""


def server_context() -> ssl.SSLContext:
    """A server context with the webhook's protocol settings and no certificate yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers(TLS12_CIPHERS)
    return ctx


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()[:16]


def describe(cert: x509.Certificate) -> str:
    """How a certificate appears in logs: never its key, never its PEM."""
    return (f"serial={cert.serial_number:x} sha256={fingerprint(cert)} "
            f"notAfter={cert.not_valid_after_utc.isoformat()}")


def parse_pair(cert_pem: bytes, key_pem: bytes) -> x509.Certificate:
    """The leaf certificate of a PEM chain after checking that `key_pem` is its private key."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise InvalidCertificate("certificate is not valid PEM") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        # The library's message could quote input; never pass it on.
        raise InvalidCertificate("private key is not a valid unencrypted PEM key") from None
    leaf = chain[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise InvalidCertificate(f"private key does not match the certificate ({describe(leaf)})")
    return leaf


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes, tmp_dir: str | None = None) -> None:
    """`ctx.load_cert_chain` from memory, via files that exist only while OpenSSL reads them."""
    with tempfile.TemporaryDirectory(prefix="bimguard-tls-", dir=tmp_dir) as d:  # mkdtemp: 0700
        cert_path, key_path = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        _write_private(cert_path, cert_pem)
        _write_private(key_path, key_pem)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as e:
            raise InvalidCertificate(f"OpenSSL refused the pair: {e.reason or e.library}") from None


def _key_slot(key: object) -> str:
    """Which of OpenSSL's per-algorithm certificate slots a key occupies in an SSL_CTX."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ec"
    return type(key).__name__


class ServingContext:
    """One server SSLContext for the process's life; `load` swaps its chain for new handshakes.

    OpenSSL keeps one certificate per key algorithm in a context: loading an ECDSA pair over an
    RSA one leaves the RSA certificate in place and still served to clients that ask for RSA
    (e.g. cert-manager switching `privateKey.algorithm`). So when the algorithm changes, the
    pair goes into a fresh context and the live one's SNI callback (called for every handshake,
    with or without SNI) moves each new connection onto it.
    """

    def __init__(self, context: ssl.SSLContext | None = None, tmp_dir: str | None = None) -> None:
        self.context = context if context is not None else server_context()
        self.certificate: x509.Certificate | None = None
        self._tmp_dir = tmp_dir
        self._loaded: tuple[bytes, bytes] | None = None
        self._slot: str | None = None
        self._target = self.context  # where the current pair lives

    def __repr__(self) -> str:
        cert = describe(self.certificate) if self.certificate is not None else "none"
        return f"ServingContext({cert})"

    def load(self, cert_pem: bytes, key_pem: bytes) -> bool:
        """Serve this pair from the next handshake on. False if it is already served.

        Raises InvalidCertificate (the live context unchanged) for a pair that cannot serve.
        """
        if self._loaded == (cert_pem, key_pem):
            return False
        leaf = parse_pair(cert_pem, key_pem)
        slot = _key_slot(serialization.load_pem_private_key(key_pem, password=None))
        # A dry run on a scratch context: a pair OpenSSL rejects must never reach the live one.
        scratch = server_context()
        load_chain(scratch, cert_pem, key_pem, self._tmp_dir)
        if self._slot is not None and slot != self._slot:
            self._target = scratch
            self.context.sni_callback = self._switch
        else:
            load_chain(self._target, cert_pem, key_pem, self._tmp_dir)
        self.certificate, self._loaded, self._slot = leaf, (cert_pem, key_pem), slot
        return True

    def _switch(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext) -> None:
        if self._target is not self.context:
            conn.context = self._target


class CertSource(abc.ABC):
    """Where the serving certificate comes from; the server only sees `ssl_context`."""

    def __init__(self, tmp_dir: str | None = None) -> None:
        self._serving = ServingContext(tmp_dir=tmp_dir)
        self._task: asyncio.Task[None] | None = None  # the watcher start() runs

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the first certificate (raise if there is none) and begin watching for changes."""

    async def stop(self) -> None:
        """Stop watching; the context keeps serving the last certificate."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return self._serving.context

    @property
    def certificate(self) -> x509.Certificate:
        if self._serving.certificate is None:
            raise RuntimeError("no certificate loaded yet: call start() first")
        return self._serving.certificate

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    @abc.abstractmethod
    def ca_bundle_pem(self) -> bytes:
        """The PEM CA certificates clients must trust; empty if the source does not know them."""

    def cert_expiry_seconds(self, now: datetime | None = None) -> float:
        """Seconds until the served certificate expires (negative once expired): the metrics gauge."""
        now = now or datetime.now(timezone.utc)
        return (self.not_after - now).total_seconds()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._serving!r})"


class FileCerts(CertSource):
    """Certificate and key from files someone else renews (cert-manager, a mounted Secret).

    The files are polled (content hash, so kubelet's symlink swaps and in-place writes alike are
    seen); a changed pair is loaded when it is valid, a broken or half-updated one is skipped
    until a later poll sees a good pair. `ca_file` (e.g. the mounted Secret's `ca.crt`) only
    feeds `ca_bundle_pem`; in this mode cert-manager's CA injector usually owns `caBundle`.
    """

    def __init__(self, cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str], *,
                 ca_file: str | os.PathLike[str] | None = None, poll_interval: float = 10.0,
                 tmp_dir: str | None = None) -> None:
        super().__init__(tmp_dir)
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self.ca_file = Path(ca_file) if ca_file is not None else None
        self.poll_interval = poll_interval
        self._seen: bytes | None = None  # digest of the last pair tried, good or bad
        self._ca_pem = b""

    @property
    def ca_bundle_pem(self) -> bytes:
        return self._ca_pem

    async def start(self) -> None:
        if not self.reload():
            raise InvalidCertificate(f"no usable certificate in {self.cert_file} / {self.key_file}")
        self._task = asyncio.create_task(self._poll(), name="bimguard-tls-files")

    def reload(self) -> bool:
        """Read the files once; load the pair if it changed and is valid. True if it now serves."""
        try:
            cert_pem, key_pem = self.cert_file.read_bytes(), self.key_file.read_bytes()
            ca_pem = self.ca_file.read_bytes() if self.ca_file is not None else b""
        except OSError as e:
            log.warning("cannot read TLS files: %s (%s)", e.strerror, e.filename)
            return self._serving.certificate is not None
        self._ca_pem = ca_pem
        digest = hashlib.sha256(len(cert_pem).to_bytes(8, "big") + cert_pem + key_pem).digest()
        if digest == self._seen:
            return self._serving.certificate is not None
        self._seen = digest
        try:
            if self._serving.load(cert_pem, key_pem):
                log.info("serving certificate from %s: %s", self.cert_file, describe(self.certificate))
        except InvalidCertificate as e:
            # Typically the two files caught mid-update; the next poll sees the finished pair.
            log.warning("ignoring TLS files %s / %s: %s", self.cert_file, self.key_file, e)
        return self._serving.certificate is not None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                self.reload()
            except Exception:  # never let the watcher die: the old certificate keeps serving
                log.exception("TLS file poll failed")
