"""Every end-to-end run is also a check that no log line of bimguard, at any level, carries key
material or a credential (issue 11; docs/security.md "Secrets in logs").

The product's loggers (`bimguard.*` but the emulator's `bimguard.sim.*`) are captured at DEBUG
for the whole test; afterwards no captured line -- message, extra fields, traceback -- may hold a
PEM block, the base64 DER opening of a private key, or any bearer token the emulator was told
about (its kubeconfigs' and `add_user`'s). The repair's subprocess output is scanned the same way
by tests/e2e/repair_env.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from bimguard.sim.apiserver import ApiServer

#: What key material looks like in text: PEM armour, and the base64 DER openings of EC (SEC 1),
#: PKCS#8 and PKCS#1 RSA private keys.
KEY_MATERIAL = re.compile(r"-----BEGIN|PRIVATE KEY|MHcCAQEE|MIGHAgEA|MII[A-Za-z0-9+/]{3}IBA(?:DAN|AK)")


def leaks(text: str, tokens: set[str]) -> list[str]:
    found = [m.group(0) for m in KEY_MATERIAL.finditer(text)]
    found += [f"token {t[:3]}..." for t in tokens if t in text]
    return found


@pytest.fixture(autouse=True)
def no_secret_in_any_log_line(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    tokens: set[str] = {"sim-token"}
    add_user, kubeconfig = ApiServer.add_user, ApiServer.kubeconfig

    def noting_add_user(self: ApiServer, token: str, *args: object, **kwargs: object) -> None:
        tokens.add(token)
        add_user(self, token, *args, **kwargs)  # type: ignore[arg-type]

    def noting_kubeconfig(self: ApiServer, path: object, token: str = "sim-token") -> None:
        tokens.add(token)
        kubeconfig(self, path, token)  # type: ignore[arg-type]

    monkeypatch.setattr(ApiServer, "add_user", noting_add_user)
    monkeypatch.setattr(ApiServer, "kubeconfig", noting_kubeconfig)
    # set_level also sets the capturing handler's level: the emulator's INFO first, DEBUG last.
    caplog.set_level(logging.INFO, logger="bimguard.sim")  # the emulator's chatter, not the product's
    caplog.set_level(logging.DEBUG, logger="bimguard")
    yield tokens
    bad = []
    for record in caplog.records:
        if record.name.startswith("bimguard.sim"):
            continue
        text = record.getMessage() + " " + " ".join(f"{k}={v}" for k, v in vars(record).items()
                                                    if k not in ("msg", "args", "message"))
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        found = leaks(text, tokens)
        if found:
            bad.append(f"{record.name} {record.levelname}: {found}")
    assert not bad, f"log lines with key material or a token: {bad[:5]}"
