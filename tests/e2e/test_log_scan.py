"""The log scan every end-to-end test runs (tests/e2e/conftest.py) can see what it looks for: a
private key as PEM or as base64 DER, a token the emulator knows, and DEBUG lines of the product."""

from __future__ import annotations

import base64
import logging

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.e2e.conftest import leaks


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP256R1()),
                                 rsa.generate_private_key(public_exponent=65537, key_size=2048)], ids=["ec", "rsa"])
@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8])
def test_key_material_is_found_in_any_form(key: object, fmt: serialization.PrivateFormat) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())  # type: ignore[attr-defined]
    der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())  # type: ignore[attr-defined]
    assert leaks(f"loaded {pem.decode()}", set())
    assert leaks(f"data={base64.b64encode(der).decode()}", set())
    assert leaks("Authorization: Bearer repair-token", {"repair-token"})
    assert not leaks("certificate serial=1f sha256=ab12 notAfter=2027-01-01", {"repair-token"})


def test_the_scan_captures_debug_lines(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("bimguard.webhook.admission").debug("a debug line")
    assert [r.getMessage() for r in caplog.records] == ["a debug line"]
