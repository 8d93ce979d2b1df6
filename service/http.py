"""Health and telemetry endpoints: / (the list) /livez /readyz /metrics for anyone, /status by
choice.

`http.status_access` decides who may read /status: `loopback` (the default: clients on
127.0.0.1 or ::1 only, which includes `kubectl port-forward`), `token` (a client sending
`Authorization: Bearer <token>`, the token read from the environment variable named by
`http.status_token_env` at start), or `any`. Everything /status serves is redacted.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.config import HttpConfig
from service.core.redact import redact
from service.errors import ConfigError

if TYPE_CHECKING:
    from service.app import Relay

Handler = Callable[[web.Request], Awaitable[web.Response]]
# What `/` lists: every endpoint and what it answers.
ENDPOINTS = {
    "/": "this list",
    "/livez": "200 while the event loop runs",
    "/readyz": "200 when every pipeline is in its group; 503 with the reasons otherwise",
    "/metrics": "Prometheus metrics",
    "/status": "per-vendor state, last delivery and error with times, the last minute's "
    "deliveries, uptime (see http.status_access)",
}


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _redacted(node: Any) -> Any:
    """A JSON-ready copy with every string redacted (errors, partitions, names)."""
    if isinstance(node, Mapping):
        return {str(k): _redacted(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_redacted(v) for v in node]
    return redact(node) if isinstance(node, str) else node


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


def status_token(http: HttpConfig, env: Mapping[str, str] | None = None) -> bytes | None:
    """The /status bearer token for `status_access: token` (ConfigError when it is not set)."""
    if http.status_access != "token":
        return None
    token = (os.environ if env is None else env).get(http.status_token_env, "")
    if not token.strip():
        raise ConfigError(
            [f"http.status_token_env: environment variable {http.status_token_env} is not set"]
        )
    return token.encode()


def guard_status(http: HttpConfig, handler: Handler, token: bytes | None) -> Handler:
    """`handler` served only to the clients `http.status_access` admits; 403/401 to others."""

    async def guarded(request: web.Request) -> web.Response:
        if http.status_access == "loopback" and not _is_loopback(request.remote):
            return _json({"error": "/status is served to loopback clients only"}, status=403)
        if http.status_access == "token":
            sent = request.headers.get("Authorization", "")
            scheme, _, value = sent.partition(" ")
            if (
                token is None
                or scheme.lower() != "bearer"
                or not hmac.compare_digest(value.strip().encode(), token)
            ):
                return web.Response(
                    status=401,
                    body=b'{"error":"bearer token required"}',
                    content_type="application/json",
                    headers={"WWW-Authenticate": 'Bearer realm="status"'},
                )
        return await handler(request)

    return guarded


def make_app(relay: Relay, env: Mapping[str, str] | None = None) -> web.Application:
    """The aiohttp application serving the relay's health, metrics and status."""
    http = relay.config.http
    token = status_token(http, env)

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
        return _json(_redacted(relay.status()))

    async def index(request: web.Request) -> web.Response:
        return _json({"endpoints": ENDPOINTS})

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", guard_status(http, status, token))
    return app


async def start_http(relay: Relay, host: str, port: int) -> web.AppRunner:
    """Serve the endpoints; the caller cleans the runner up on shutdown."""
    runner = web.AppRunner(make_app(relay), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
