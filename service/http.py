"""Health and telemetry endpoints: /livez /readyz /metrics /status."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from service.app import Relay


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def make_app(relay: Relay) -> web.Application:
    """The aiohttp application serving the relay's health, metrics and status."""

    async def livez(request: web.Request) -> web.Response:
        # Answering at all proves the event loop runs; an open breaker is not a liveness issue.
        return _json({"live": True})

    async def readyz(request: web.Request) -> web.Response:
        reasons = relay.not_ready_reasons()
        if reasons:
            return _json({"ready": False, "reasons": reasons}, status=503)
        return _json({"ready": True})

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(relay.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(request: web.Request) -> web.Response:
        return _json(relay.status())

    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    return app


async def start_http(relay: Relay, host: str, port: int) -> web.AppRunner:
    """Serve the endpoints; the caller cleans the runner up on shutdown."""
    runner = web.AppRunner(make_app(relay), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
