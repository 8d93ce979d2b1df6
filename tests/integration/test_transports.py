"""Each transport (h1, pyreqwest, aiohttp) against real loopback servers: the same contract on both.

No redirect followed, the body bound (declared, chunked, exactly at it), total and connect
timeouts, refused connections, case-insensitive headers, no cookies kept, TLS verified by default
and `http.ca_bundle` trusted, and no secret of a URL in any error text.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.app import Relay
from service.config import HttpConfig, parse_config
from service.core.exchange import VendorRequest
from service.delivery.h1 import H1Transport
from service.delivery.transport import (
    MAX_BODY_BYTES,
    AiohttpTransport,
    Transport,
    make_transport,
)
from service.delivery.transport_reqwest import PyreqwestTransport
from service.errors import ConfigError, VendorTimeout, VendorUnreachable
from service.net import free_port
from tests.transports import TRANSPORTS, plain_vendor, transport_for

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[..., Awaitable[TestServer]]


@pytest.fixture(params=TRANSPORTS)
def kind(request: pytest.FixtureRequest) -> str:
    """The transport under test."""
    return str(request.param)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start loopback servers routing every path to one handler; all closed at the end."""
    servers: list[TestServer] = []

    async def start(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> TestServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(ssl=ssl_context)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def transports() -> AsyncIterator[Callable[..., Transport]]:
    """Build transports (as `transport_for`); every one is closed at the end."""
    made: list[Transport] = []

    def build(*args: Any, **kwargs: Any) -> Transport:
        made.append(transport_for(*args, **kwargs))
        return made[-1]

    yield build
    for transport in made:
        await transport.aclose()


def post(url: str) -> VendorRequest:
    """A small JSON POST, as an adapter builds one."""
    return VendorRequest("POST", url, {"Content-Type": "application/json"}, b'{"goal": "x"}')


def url_of(server: TestServer, path: str = "/goal") -> str:
    """The plain-HTTP URL of a path on a test server."""
    return str(server.make_url(path))


async def test_a_redirect_is_returned_as_the_answer_and_never_followed(
    kind: str, serve: Serve, transports: Callable[..., Transport]
) -> None:
    """A 307 comes back as the answer, its Location readable; the target receives nothing."""
    reached: list[str] = []

    async def target(request: web.Request) -> web.StreamResponse:
        reached.append(request.path)
        return web.Response(text="ok")

    other = await serve(target)

    async def redirect(request: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": url_of(other, "/steal")})

    server = await serve(redirect)
    response = await transports(kind).send(post(url_of(server)))
    assert response.status == 307
    assert response.headers.get("Location") == url_of(other, "/steal")
    await asyncio.sleep(0.1)
    assert reached == []


async def test_an_answer_declaring_more_than_the_limit_fails_without_waiting_for_it(
    kind: str, serve: Serve, transports: Callable[..., Transport]
) -> None:
    """A declared Content-Length over the limit fails at once, not after reading or a timeout."""

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(10 * MAX_BODY_BYTES)})
        await response.prepare(request)
        await response.write(b"x" * (MAX_BODY_BYTES // 2))
        await asyncio.sleep(5)  # the rest comes late: only the declaration can fail it fast
        return response

    server = await serve(huge)
    started_s = time.monotonic()
    with pytest.raises(VendorUnreachable, match="over the 65536-byte limit"):
        await transports(kind, timeout_s=4).send(post(url_of(server)))
    assert time.monotonic() - started_s < 2.0


async def test_a_chunked_answer_over_the_limit_is_cut_off(
    kind: str, serve: Serve, transports: Callable[..., Transport]
) -> None:
    """A chunked body (no length declared) is read up to the limit, then the exchange fails."""

    async def flood(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(64):  # 4 MiB in 64 KiB chunks
            await response.write(b"x" * 65536)
        return response

    server = await serve(flood)
    with pytest.raises(VendorUnreachable, match="over the 65536-byte limit"):
        await transports(kind).send(post(url_of(server)))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_answer_exactly_at_the_limit_is_read_whole(
    kind: str, serve: Serve, transports: Callable[..., Transport], chunked: bool
) -> None:
    """MAX_BODY_BYTES bytes, declared or chunked in pieces, arrive intact."""
    body = bytes(range(256)) * (MAX_BODY_BYTES // 256)

    async def exact(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=body)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 10_000):
            await response.write(body[start : start + 10_000])
        return response

    server = await serve(exact)
    response = await transports(kind).send(post(url_of(server)))
    assert (response.status, response.body) == (200, body)
    assert isinstance(response.body, bytes)


async def test_no_answer_within_timeout_s_is_a_vendor_timeout(
    kind: str, serve: Serve, transports: Callable[..., Transport]
) -> None:
    """A vendor that never answers is a VendorTimeout after timeout_s, not a hang."""

    async def silent(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(10)
        return web.Response()

    server = await serve(silent)
    started_s = time.monotonic()
    with pytest.raises(VendorTimeout):
        await transports(kind, timeout_s=0.5).send(post(url_of(server)))
    assert 0.4 < time.monotonic() - started_s < 3.0


async def test_a_stalled_connect_is_a_vendor_timeout_after_connect_timeout_s(
    kind: str, transports: Callable[..., Transport]
) -> None:
    """A TLS peer that accepts TCP but never completes the handshake times out at
    connect_timeout_s, well inside timeout_s."""
    accepted: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # held open, never answered

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = transports(kind, timeout_s=20, connect_timeout_s=0.5)
    started_s = time.monotonic()
    try:
        with pytest.raises(VendorTimeout):
            await transport.send(post(f"https://127.0.0.1:{port}/goal"))
    finally:
        for writer in accepted:
            writer.close()
        server.close()
    assert time.monotonic() - started_s < 5.0


async def test_a_refused_connection_is_vendor_unreachable(
    kind: str, transports: Callable[..., Transport]
) -> None:
    """Nothing listening on the port: VendorUnreachable (retriable), at once."""
    with pytest.raises(VendorUnreachable) as caught:
        await transports(kind).send(post(f"http://127.0.0.1:{free_port()}/goal"))
    assert caught.value.retriable


async def test_answer_headers_are_read_case_insensitively(
    kind: str, serve: Serve, transports: Callable[..., Transport]
) -> None:
    """`Retry-After` and `Location` are found whatever case the vendor wrote them in."""

    async def odd_case(request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, headers={"rEtRy-aFtEr": "7", "LOCATION": "/x"})

    server = await serve(odd_case)
    response = await transports(kind).send(post(url_of(server)))
    assert response.headers.get("Retry-After") == "7"
    assert response.headers.get("retry-after") == "7"
    assert response.headers.get("Location") == "/x"
    assert response.headers.get("X-Absent") is None


async def test_a_vendors_cookie_is_never_sent_back(
    kind: str, serve: Serve, transports: Callable[..., Transport]
) -> None:
    """Set-Cookie in an answer is ignored: the next request carries no Cookie header."""
    cookies: list[str | None] = []

    async def setter(request: web.Request) -> web.StreamResponse:
        cookies.append(request.headers.get("Cookie"))
        return web.Response(headers={"Set-Cookie": "session=abc; Path=/"})

    server = await serve(setter)
    transport = transports(kind)
    # By name: aiohttp's default cookie jar would ignore cookies of an IP-address host anyway.
    url = f"http://localhost:{server.port}/goal"
    for _ in range(2):
        assert (await transport.send(post(url))).status == 200
    assert cookies == [None, None]


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    """A throwaway CA that no system trusts."""
    return trustme.CA()


@pytest.fixture
async def tls_server(serve: Serve, certificate_authority: trustme.CA) -> TestServer:
    """A loopback HTTPS server whose certificate (for 127.0.0.1) the throwaway CA issued."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1").configure_cert(context)

    async def ok(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    return await serve(ok, ssl_context=context)


def https_url(server: TestServer) -> str:
    """The HTTPS URL of /goal on a TLS test server."""
    return f"https://127.0.0.1:{server.port}/goal"


async def test_a_server_certificate_no_trusted_root_issued_is_refused_by_default(
    kind: str, tls_server: TestServer, transports: Callable[..., Transport]
) -> None:
    """TLS is verified by default: an unknown issuer is VendorUnreachable, nothing is sent."""
    with pytest.raises(VendorUnreachable):
        await transports(kind).send(post(https_url(tls_server)))


async def test_a_server_certificate_is_accepted_with_its_ca_in_ca_bundle(
    kind: str,
    tls_server: TestServer,
    certificate_authority: trustme.CA,
    transports: Callable[..., Transport],
    tmp_path: Path,
) -> None:
    """With the issuing CA in `http.ca_bundle` (after another root), the vendor is reached."""
    bundle = tmp_path / "vendors-ca.pem"
    other = trustme.CA().cert_pem.bytes()
    bundle.write_bytes(other + certificate_authority.cert_pem.bytes())
    transport = transports(kind, ca_bundle=str(bundle))
    response = await transport.send(post(https_url(tls_server)))
    assert (response.status, response.body) == (200, b"ok")


async def test_a_hostname_the_certificate_does_not_name_is_refused_even_with_ca_bundle(
    kind: str,
    serve: Serve,
    certificate_authority: trustme.CA,
    transports: Callable[..., Transport],
    tmp_path: Path,
) -> None:
    """A certificate from a trusted CA for another name is still refused."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("vendor.example").configure_cert(context)

    async def ok(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    server = await serve(ok, ssl_context=context)
    bundle = tmp_path / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(bundle))
    with pytest.raises(VendorUnreachable):
        await transports(kind, ca_bundle=str(bundle)).send(post(https_url(server)))


SECRET_PASSWORD = "pw-Xk29-never-shown"
SECRET_KEY = "key-Lm83-never-shown"


async def test_secrets_in_the_url_never_appear_in_the_error_text(
    kind: str,
    tls_server: TestServer,
    serve: Serve,
    transports: Callable[..., Transport],
) -> None:
    """Userinfo and query (where vendors put keys) appear in no error: refused, TLS, timeout."""

    async def silent(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(10)
        return web.Response()

    slow = await serve(silent)
    secret = f"user:{SECRET_PASSWORD}@"
    query = f"?api_key={SECRET_KEY}&token={SECRET_KEY}"
    urls = [
        f"http://{secret}127.0.0.1:{free_port()}/goal{query}",
        f"https://{secret}127.0.0.1:{tls_server.port}/goal{query}",
        f"http://{secret}127.0.0.1:{slow.port}/goal{query}",
    ]
    transport = transports(kind, timeout_s=0.5)
    for url in urls:
        with pytest.raises((VendorUnreachable, VendorTimeout)) as caught:
            await transport.send(post(url))
        text = f"{caught.value} {caught.value!r}"
        assert SECRET_PASSWORD not in text and SECRET_KEY not in text, text


async def test_each_vendor_gets_the_transport_it_or_the_http_section_names() -> None:
    """A vendor's own `transport` wins; without one, `http.transport` (h1 by default)."""
    default, chosen = HttpConfig(), HttpConfig(transport="aiohttp")
    made = [
        make_transport("a", plain_vendor(), default),
        make_transport("b", plain_vendor(), chosen),
        make_transport("c", plain_vendor(transport="pyreqwest"), chosen),
        make_transport("d", plain_vendor(transport="aiohttp"), default),
        make_transport("e", plain_vendor(transport="h1"), chosen),
    ]
    for transport in made:
        await transport.aclose()
    kinds = [type(t) for t in made]
    assert kinds == [
        H1Transport,
        AiohttpTransport,
        PyreqwestTransport,
        AiohttpTransport,
        H1Transport,
    ]


async def test_a_ca_bundle_gone_by_start_is_a_config_error_naming_the_field(
    tmp_path: Path, certificate_authority: trustme.CA
) -> None:
    """A bundle valid at load but removed before the relay starts stops the start (before Kafka
    is even tried) with a problem naming `http.ca_bundle`."""
    bundle = tmp_path / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(bundle))
    config = parse_config(
        {
            "kafka": {"bootstrap_servers": [f"127.0.0.1:{free_port()}"], "topics": ["t"]},
            "http": {"ca_bundle": str(bundle)},
            "vendors": {"v": {"protocol": "webhook", "base_url": "https://127.0.0.1", "path": "/"}},
        },
        {},
    )
    bundle.unlink()
    relay = Relay(config)
    try:
        with pytest.raises(ConfigError, match=r"^http\.ca_bundle: cannot read .*ca\.pem"):
            await relay.start_shared()
    finally:
        await relay.close()
    bundle.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"http\.ca_bundle: .* holds no PEM certificate"):
        make_transport("v", plain_vendor(transport="aiohttp"), HttpConfig(ca_bundle=str(bundle)))
