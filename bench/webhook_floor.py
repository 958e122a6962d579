#!/usr/bin/env python3
"""The framework floor for bench/webhook_bench.py: a bare aiohttp HTTPS server on `/mutate`.

Same TLS settings as the webhook (`webhook.tls.server_context()`, same certificate), same
`web.TCPSite` with `backlog=1024`, no access log, body read in full (receiving 35 KB is part of
what any handler pays), then a fixed AdmissionReview response: no JSON parsing, no metrics, no
index. Whatever the real server does above this is bimguard's own cost.

    .venv/bin/python bench/webhook_floor.py --cert tls.crt --key tls.key [--port 0]

Prints one JSON line `{"port": N}` on stdout once it listens; stops on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from webhook.tls import ServingContext  # noqa: E402

RESPONSE = (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":'
            b'{"uid":"00000000-0000-0000-0000-000000000000","allowed":true}}')


async def mutate(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=RESPONSE, content_type="application/json")


async def serve(cert: Path, key: Path, host: str, port: int) -> None:
    serving = ServingContext()
    serving.load(cert.read_bytes(), key.read_bytes())
    app = web.Application(client_max_size=6 * 1024 * 1024)
    app.router.add_post("/mutate", mutate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=serving.context, backlog=1024)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"port": bound}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cert", type=Path, required=True)
    ap.add_argument("--key", type=Path, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    asyncio.run(serve(args.cert, args.key, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
