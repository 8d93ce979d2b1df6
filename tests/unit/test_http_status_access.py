"""The HTTP server: health for anyone, /status by `http.status_access`, and no secret in it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from unittest import mock

import msgspec
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from prometheus_client import CollectorRegistry

from service.config import HttpConfig
from service.errors import ConfigError
from service.http import guard_status, make_app

SECRET = "Zq9-SECRET-4711-xyz"


def fake_relay(http: HttpConfig) -> Any:
    """A relay with one failing vendor whose last error quotes its API key and a bearer token."""
    status = {
        "version": "t",
        "ready": True,
        "vendors": {
            "conductrics": {
                "last_error": f"unreachable: POST https://c.example/ac/v3/agent-api?apikey={SECRET}",
                "detail": [f"Authorization: Bearer {SECRET}", f"<ApiKey>{SECRET}"],
            }
        },
    }
    return SimpleNamespace(
        config=SimpleNamespace(http=http),
        metrics=SimpleNamespace(registry=CollectorRegistry()),
        not_ready_reasons=lambda: {},
        status=lambda: status,
    )


async def _get(http: HttpConfig, path: str, env: dict[str, str], **headers: str) -> Any:
    client = TestClient(TestServer(make_app(fake_relay(http), env)))
    await client.start_server()
    try:
        resp = await client.get(path, headers=headers)
        return resp.status, await resp.read()
    finally:
        await client.close()


async def test_status_carries_no_secret_in_any_field() -> None:
    """Every string /status serves goes through the redaction."""
    status, body = await _get(HttpConfig(status_access="any"), "/status", {})
    assert status == 200
    assert SECRET not in body.decode() and "4711" not in body.decode()
    assert orjson.loads(body)["vendors"]["conductrics"]["last_error"].endswith("apikey=***")


async def test_health_and_metrics_stay_open_whatever_the_status_access() -> None:
    """/livez /readyz /metrics need no token."""
    http = HttpConfig(status_access="token")
    for path in ("/livez", "/readyz", "/metrics"):
        status, _ = await _get(http, path, {"RELAY_STATUS_TOKEN": "t0ken-abc"})
        assert status == 200, path


async def test_token_access_needs_the_bearer_token_from_the_environment() -> None:
    """Without the token: 401; with a wrong one: 401; with the right one: the status."""
    http = HttpConfig(status_access="token", status_token_env="MY_TOKEN")
    env = {"MY_TOKEN": "t0ken-abc"}
    assert (await _get(http, "/status", env))[0] == 401
    assert (await _get(http, "/status", env, Authorization="Bearer wrong"))[0] == 401
    assert (await _get(http, "/status", env, Authorization="Bearer t0ken-abc"))[0] == 200


def test_token_access_without_the_variable_refuses_to_start() -> None:
    """A token mode with no token set is a config error at start, not an open endpoint."""
    with pytest.raises(ConfigError) as caught:
        make_app(fake_relay(HttpConfig(status_access="token")), {})
    assert "RELAY_STATUS_TOKEN" in caught.value.problems[0]


def _request_from(peer: str) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    return make_mocked_request("GET", "/status", transport=transport)


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [("127.0.0.1", True), ("::1", True), ("10.1.2.3", False), ("192.0.2.7", False)],
)
async def test_loopback_access_serves_only_loopback_clients(peer: str, allowed: bool) -> None:
    """The default `loopback` answers 403 to any other client address."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="status")

    guarded = guard_status(HttpConfig(), handler, None)
    response = await guarded(_request_from(peer))
    assert (response.status == 200) is allowed


def test_status_access_defaults_to_loopback_and_is_validated() -> None:
    """The default serves details only locally; an unknown mode is a config error."""
    assert HttpConfig().status_access == "loopback"
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"status_access": "public"}, HttpConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"status_token_env": "not a name"}, HttpConfig)
