"""H1Transport against real loopback servers: aiohttp.web for well-behaved vendors, raw asyncio
servers for misbehaving ones. Each test runs on asyncio's loop and on uvloop (see conftest)."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import re
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.app import Relay
from service.config import parse_config
from service.core.exchange import VendorRequest
from service.core.proxy import ProxyConfig, ProxyPolicy, proxy_policy
from service.delivery import h1 as h1_module
from service.delivery.h1 import MAX_HEADER_COUNT, H1Transport, tls_context
from service.errors import VendorTimeout, VendorUnreachable
from service.net import free_port
from tests import wire_server as wire
from tests.proxy_server import ProxyServer
from tests.wire_server import Reply as WireReply
from tests.wire_server import wire_server

LIMIT = 1024  # the body limit every test transport uses


def transport(**overrides: float | int | ssl.SSLContext | None) -> H1Transport:
    """A transport with short bounds (each test overrides what it is about)."""
    options: dict[str, float | int | ssl.SSLContext | None] = {
        "pool_size": 4,
        "timeout_s": 2.0,
        "connect_timeout_s": 1.0,
        "max_body_bytes": LIMIT,
    }
    options.update(overrides)
    return H1Transport("acme", **options)  # type: ignore[arg-type]


def post(url: str, body: bytes = b"{}", headers: dict[str, str] | None = None) -> VendorRequest:
    """A POST as the adapters build them."""
    return VendorRequest("POST", url, headers or {"Content-Type": "application/json"}, body)


@pytest.fixture
async def h1() -> AsyncIterator[H1Transport]:
    """A transport closed after the test."""
    made = transport()
    yield made
    await made.aclose()


# -- a well-behaved vendor: aiohttp.web -------------------------------------------------------


@dataclass
class Web:
    """A started aiohttp server and the client ports (one per TCP connection) it has seen."""

    url: str
    peers: list[int] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def connections(self) -> int:
        """Distinct TCP connections that carried a request."""
        return len(set(self.peers))


WebFactory = Callable[
    [list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]]], Awaitable[Web]
]


@pytest.fixture
async def web_server() -> AsyncIterator[WebFactory]:
    """Start aiohttp apps (routes: method, path, handler) on loopback; stopped after the test."""
    runners: list[web.AppRunner] = []

    async def start(
        routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]],
    ) -> Web:
        port = free_port()
        server = Web(f"http://127.0.0.1:{port}")

        @web.middleware
        async def count(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            assert request.transport is not None
            server.peers.append(request.transport.get_extra_info("peername")[1])
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                return await handler(request)
            finally:
                server.in_flight -= 1

        app = web.Application(middlewares=[count])
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


async def echo(request: web.Request) -> web.Response:
    """200 with a body naming what arrived."""
    body = await request.read()
    seen = f"{request.method} {request.path_qs} {request.headers.get('Content-Type')} ".encode()
    return web.Response(body=seen + body, headers={"X-Host": request.host})


# -- a misbehaving vendor: raw asyncio server ------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What the raw server does with one request."""

    data: bytes = b""
    close: bool = False  # close the connection after writing `data` (or instead of answering)
    hang: bool = False  # never answer
    delay_s: float = 0.0  # wait this long before writing (or closing)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawServer:
    """A loopback TCP server answering each request (by connection and request number) with
    scripted bytes; it counts connections and keeps every request it read."""

    def __init__(self, script: Callable[[int, int], Reply]) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_peer = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RawServer:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener and every connection."""
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_no = self.connections
        self.connections += 1
        self._writers.append(writer)
        try:
            for req_no in range(1_000_000):
                request = await read_request(reader)
                if request is None:
                    self.closed_by_peer.set()
                    return
                self.requests.append(request)
                reply = self.script(conn_no, req_no)
                if reply.hang:
                    await asyncio.Event().wait()
                await asyncio.sleep(reply.delay_s)
                writer.write(reply.data)
                await writer.drain()
                if reply.close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head and Content-Length body), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


@pytest.fixture
async def raw_server() -> AsyncIterator[
    Callable[[Callable[[int, int], Reply]], Awaitable[RawServer]]
]:
    """Start raw servers; stopped after the test."""
    started: list[RawServer] = []

    async def start(script: Callable[[int, int], Reply]) -> RawServer:
        server = await RawServer(script).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


RawFactory = Callable[[Callable[[int, int], Reply]], Awaitable[RawServer]]


def always(data: bytes, *, close: bool = False) -> Callable[[int, int], Reply]:
    """The same reply to every request."""
    return lambda conn, req: Reply(data, close=close)


# -- answers ----------------------------------------------------------------------------------


async def test_a_200_arrives_with_its_body_and_the_request_as_sent(
    web_server: WebFactory, h1: H1Transport
) -> None:
    """Method, path, query, headers and body reach the vendor; status, headers, body come back."""
    server = await web_server([("POST", "/goal", echo)])
    response = await h1.send(post(f"{server.url}/goal?a=1&b=%20x", b'{"v":1}'))
    assert response.status == 200
    assert response.body == b'POST /goal?a=1&b=%20x application/json {"v":1}'
    assert response.headers["X-Host"] == server.url.removeprefix("http://")


async def test_sequential_requests_share_one_keep_alive_connection(
    web_server: WebFactory, h1: H1Transport
) -> None:
    """Twenty requests one after another travel on a single TCP connection."""
    server = await web_server([("POST", "/goal", echo)])
    for i in range(20):
        response = await h1.send(post(f"{server.url}/goal", b"%d" % i))
        assert response.body.endswith(b" %d" % i)
    assert len(server.peers) == 20
    assert server.connections == 1


async def test_the_pool_never_exceeds_pool_size_under_50_concurrent_sends(
    web_server: WebFactory,
) -> None:
    """50 concurrent sends through a pool of 4: all answered, on at most 4 connections."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.01)
        return await echo(request)

    server = await web_server([("POST", "/goal", slow)])
    pooled = transport(pool_size=4)
    try:
        answers = await asyncio.gather(
            *(pooled.send(post(f"{server.url}/goal", b"%d" % i)) for i in range(50))
        )
    finally:
        await pooled.aclose()
    assert sorted(int(a.body.rsplit(b" ", 1)[1]) for a in answers) == list(range(50))
    assert server.connections == 4
    assert server.max_in_flight == 4


async def test_a_redirect_is_the_answer_and_its_location_is_never_requested(
    web_server: WebFactory, h1: H1Transport
) -> None:
    """A 307 comes back as it is; the Location it names is not visited."""

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": "/trap"})

    async def trap(request: web.Request) -> web.Response:
        raise AssertionError("the redirect was followed")

    server = await web_server([("POST", "/goal", moved), ("POST", "/trap", trap)])
    response = await h1.send(post(f"{server.url}/goal"))
    assert (response.status, response.headers["Location"]) == (307, "/trap")
    assert len(server.peers) == 1


async def test_an_answer_without_a_body_keeps_the_connection(
    web_server: WebFactory, h1: H1Transport
) -> None:
    """A 204 ends at its head; the next request reuses the connection."""

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    server = await web_server([("POST", "/goal", empty)])
    for _ in range(3):
        response = await h1.send(post(f"{server.url}/goal"))
        assert (response.status, response.body) == (204, b"")
    assert server.connections == 1


async def test_a_chunked_answer_is_decoded(web_server: WebFactory, h1: H1Transport) -> None:
    """Transfer-Encoding: chunked is decoded; the connection is reused after it."""

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"ab", b"cd", b"ef"):
            await response.write(part)
        await response.write_eof()
        return response

    server = await web_server([("POST", "/goal", chunked)])
    assert (await h1.send(post(f"{server.url}/goal"))).body == b"abcdef"
    assert (await h1.send(post(f"{server.url}/goal"))).body == b"abcdef"
    assert server.connections == 1


async def test_retry_after_is_read_case_insensitively(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """A lowercase `retry-after` header is found as `Retry-After` and `RETRY-AFTER`."""
    server = await raw_server(
        always(b"HTTP/1.1 429 Too Many\r\nretry-after: 7\r\nContent-Length: 0\r\n\r\n")
    )
    response = await h1.send(post(server.url))
    assert response.status == 429
    assert response.headers.get("Retry-After") == "7"
    assert response.headers.get("RETRY-AFTER") == "7"


async def test_header_values_are_decoded_as_latin_1(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """A header byte above 0x7f is its latin-1 character, not an error."""
    server = await raw_server(
        always(b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 0\r\n\r\n")
    )
    assert (await h1.send(post(server.url))).headers["x-name"] == "café"


async def test_an_informational_answer_is_skipped_for_the_final_one(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """A 103 Early Hints before the 200 is not mistaken for the answer."""
    server = await raw_server(always(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK))
    response = await h1.send(post(server.url))
    assert (response.status, response.body) == (200, b"ok")
    assert "Link" not in response.headers


# -- the body limit ---------------------------------------------------------------------------


async def test_a_declared_length_over_the_limit_fails_before_the_body_arrives(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """Content-Length over the limit fails at once, though the server never sends the body."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1)
    server = await raw_server(lambda conn, req: Reply(head) if conn == 0 else Reply(OK))
    started = time.monotonic()
    with pytest.raises(VendorUnreachable, match="over the 1024-byte limit"):
        await h1.send(post(server.url))
    assert time.monotonic() - started < 1.0  # not the 2 s timeout: nothing was waited for
    assert (await h1.send(post(server.url))).body == b"ok"
    assert server.connections == 2  # the oversized answer's connection was dropped


async def test_a_chunked_body_over_the_limit_fails_and_drops_the_connection(
    web_server: WebFactory, h1: H1Transport
) -> None:
    """A chunked body growing past the limit fails; the next request opens a new connection."""
    sizes = iter([LIMIT + 1, 10])

    async def grow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        remaining = next(sizes)
        while remaining:
            part = min(remaining, 100)
            await response.write(b"x" * part)
            remaining -= part
        await response.write_eof()
        return response

    server = await web_server([("POST", "/goal", grow)])
    with pytest.raises(VendorUnreachable, match="body is over the 1024-byte limit"):
        await h1.send(post(f"{server.url}/goal"))
    assert (await h1.send(post(f"{server.url}/goal"))).body == b"x" * 10
    assert server.connections == 2


@pytest.mark.parametrize("framing", ["content-length", "chunked", "close-delimited"])
async def test_a_body_of_exactly_the_limit_is_accepted(
    raw_server: RawFactory, h1: H1Transport, framing: str
) -> None:
    """LIMIT bytes are fine however the body is framed."""
    body = b"y" * LIMIT
    answers = {
        "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (LIMIT, body),
        "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"200\r\n"
        + body[:512]
        + b"\r\n200\r\n"
        + body[512:]
        + b"\r\n0\r\n\r\n",
        "close-delimited": b"HTTP/1.1 200 OK\r\n\r\n" + body,
    }
    server = await raw_server(always(answers[framing], close=framing == "close-delimited"))
    assert (await h1.send(post(server.url))).body == body


async def test_a_close_delimited_body_over_the_limit_fails(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """A body without framing that runs past the limit fails before the server closes."""
    server = await raw_server(
        lambda conn, req: Reply(b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * (LIMIT + 1))
    )
    with pytest.raises(VendorUnreachable, match="body is over the 1024-byte limit"):
        await h1.send(post(server.url))


# -- the head limit and malformed answers -----------------------------------------------------


async def test_a_huge_header_is_refused(raw_server: RawFactory, h1: H1Transport) -> None:
    """One 70 KiB header value (head over 64 KiB) is refused, not buffered."""
    huge = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\nContent-Length: 0\r\n\r\n"
    server = await raw_server(always(huge))
    with pytest.raises(VendorUnreachable, match="head over 65536 bytes"):
        await h1.send(post(server.url))


async def test_an_endless_head_is_refused_without_waiting_for_its_end(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """100 KiB of a head that never ends fail as soon as they exceed the bound."""
    endless = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (100 * 1024)
    server = await raw_server(always(endless))
    started = time.monotonic()
    with pytest.raises(VendorUnreachable, match="head over 65536 bytes"):
        await h1.send(post(server.url))
    assert time.monotonic() - started < 1.0


async def test_too_many_headers_are_refused(raw_server: RawFactory, h1: H1Transport) -> None:
    """More headers than MAX_HEADER_COUNT, each tiny, are refused."""
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADER_COUNT + 1))
    server = await raw_server(always(b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 0\r\n\r\n"))
    with pytest.raises(VendorUnreachable, match=f"over {MAX_HEADER_COUNT} headers"):
        await h1.send(post(server.url))


async def test_a_garbage_answer_is_unreachable(raw_server: RawFactory, h1: H1Transport) -> None:
    """Bytes that are not HTTP fail as a malformed answer."""
    server = await raw_server(always(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))
    with pytest.raises(VendorUnreachable, match="malformed HTTP answer"):
        await h1.send(post(server.url))


async def test_a_connection_closed_mid_answer_is_unreachable(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """A body cut short by the server closing fails; it is not returned truncated."""
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"
    server = await raw_server(always(short, close=True))
    with pytest.raises(VendorUnreachable, match="closed before the answer was complete"):
        await h1.send(post(server.url))


# -- timeouts and connection failures ---------------------------------------------------------


async def test_no_answer_in_time_is_a_timeout_and_the_connection_is_not_reused(
    raw_server: RawFactory,
) -> None:
    """A server that never answers: VendorTimeout at timeout_s; the next request connects anew."""
    server = await raw_server(lambda conn, req: Reply(hang=True) if conn == 0 else Reply(OK))
    quick = transport(timeout_s=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(VendorTimeout, match=r"no answer from acme within 0\.3s"):
            await quick.send(post(server.url))
        assert 0.25 < time.monotonic() - started < 1.0
        assert (await quick.send(post(server.url))).body == b"ok"
    finally:
        await quick.aclose()
    assert server.connections == 2


async def test_requests_share_one_deadline_sweep_and_none_arms_a_timer_of_its_own(
    raw_server: RawFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timer per request costs ~1 µs to arm and cancel: exchanges' deadlines are checked by
    one sweep per transport, running only while an exchange is in flight; a hang still times
    out close to timeout_s."""
    server = await raw_server(lambda conn, req: Reply(hang=True) if req == 200 else Reply(OK))
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    real_call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any, **kw: Any) -> Any:
        armed.append(when)
        return real_call_at(when, callback, *args, **kw)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    quick = transport(timeout_s=0.3, pool_size=1)
    try:
        for _ in range(200):
            assert (await quick.send(post(server.url))).body == b"ok"
        started = time.monotonic()
        with pytest.raises(VendorTimeout):
            await quick.send(post(server.url))
        assert 0.25 < time.monotonic() - started < 0.3 + 0.1
        assert len(armed) < 40, f"{len(armed)} timers armed for 201 requests"
    finally:
        await quick.aclose()


async def test_a_refused_connection_is_unreachable(h1: H1Transport) -> None:
    """Nobody listening: VendorUnreachable, promptly."""
    with pytest.raises(VendorUnreachable, match=re.escape("could not connect to http://127.0.0.1")):
        await h1.send(post(f"http://127.0.0.1:{free_port()}/goal"))


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose listen queue is full, so a new connection's SYN goes unanswered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):
            filler = socket.socket()
            filler.settimeout(0.2)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                filler.close()
                yield port
                return
            fillers.append(filler)
        pytest.skip("this kernel accepts connections beyond a full listen queue")
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_connect_that_does_not_finish_in_time_is_a_timeout(full_backlog: int) -> None:
    """Connecting is bounded by connect_timeout_s, well inside the total timeout."""
    slow = transport(connect_timeout_s=0.2, timeout_s=5.0)
    started = time.monotonic()
    try:
        with pytest.raises(VendorTimeout, match=re.escape("could not connect to http://127.0.0.1")):
            await slow.send(post(f"http://127.0.0.1:{full_backlog}/goal"))
    finally:
        await slow.aclose()
    assert time.monotonic() - started < 1.0


async def test_waiting_for_a_pool_slot_is_bounded_by_the_timeout(raw_server: RawFactory) -> None:
    """With the only connection busy past its deadline, a send waiting for it times out."""
    server = await raw_server(lambda conn, req: Reply(hang=True))
    single = transport(pool_size=1, timeout_s=5.0)
    try:
        busy = asyncio.ensure_future(single.send(post(server.url)))
        await asyncio.sleep(0.05)
        # The next send's deadline (read per send) ends long before the busy one's.
        single.timeout_s = 0.2
        started = time.monotonic()
        with pytest.raises(VendorTimeout, match="no free connection to acme"):
            await single.send(post(server.url))
        assert 0.15 < time.monotonic() - started < 1.0
        assert not busy.done()
    finally:
        await single.aclose()
    with pytest.raises(VendorUnreachable, match="transport was closed"):
        await busy
    assert server.connections == 1


async def test_a_cancelled_send_closes_its_connection_and_frees_the_slot(
    raw_server: RawFactory,
) -> None:
    """A caller cancelled mid-exchange leaves no half-read connection in the pool."""
    server = await raw_server(lambda conn, req: Reply(hang=True) if conn == 0 else Reply(OK))
    single = transport(pool_size=1)
    try:
        stuck = asyncio.ensure_future(single.send(post(server.url)))
        await asyncio.sleep(0.1)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        assert (await single.send(post(server.url))).body == b"ok"
    finally:
        await single.aclose()
    assert server.connections == 2


async def test_a_send_cancelled_before_its_request_went_out_writes_nothing(
    raw_server: RawFactory,
) -> None:
    """Cancelled in the loop turn that built it, a request never reaches the vendor."""
    server = await raw_server(always(OK))
    single = transport(pool_size=1)
    try:
        assert (await single.send(post(server.url))).body == b"ok"  # a warm connection
        cancelled = asyncio.ensure_future(single.send(post(server.url, b"never")))
        await asyncio.sleep(0)  # the send has built its request and waits for its answer
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert (await single.send(post(server.url, b"after"))).body == b"ok"
    finally:
        await single.aclose()
    assert [request.endswith(b"never") for request in server.requests] == [False, False]


async def test_requests_built_in_one_loop_turn_are_written_together(
    raw_server: RawFactory,
) -> None:
    """Concurrent sends are written back to back by one flush, not one write per task turn."""
    server = await raw_server(always(OK))
    four = transport(pool_size=4)
    flushes = 0
    real_flush = four._flush

    def counting_flush() -> None:
        nonlocal flushes
        flushes += 1
        real_flush()

    try:
        # Four warm connections first.
        await asyncio.gather(*(four.send(post(server.url)) for _ in range(4)))
        four._flush = counting_flush  # type: ignore[method-assign]
        answers = await asyncio.gather(*(four.send(post(server.url)) for _ in range(4)))
    finally:
        await four.aclose()
    assert [answer.body for answer in answers] == [b"ok"] * 4
    assert (flushes, server.connections, len(server.requests)) == (1, 4, 8)


# -- connection reuse and its end -------------------------------------------------------------


async def test_connection_close_makes_the_next_request_open_a_new_connection(
    web_server: WebFactory, h1: H1Transport
) -> None:
    """An answer with `Connection: close` is read whole; its connection is not reused."""

    async def closing(request: web.Request) -> web.Response:
        response = web.Response(text="bye")
        response.force_close()
        return response

    server = await web_server([("POST", "/goal", closing)])
    for _ in range(3):
        assert (await h1.send(post(f"{server.url}/goal"))).body == b"bye"
    assert server.connections == 3


async def test_an_http_1_0_answer_without_keep_alive_is_not_reused(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """HTTP/1.0 without `Connection: keep-alive` means one request per connection."""
    server = await raw_server(always(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    for _ in range(2):
        assert (await h1.send(post(server.url))).body == b"ok"
    assert server.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """A server closing its idle keep-alive connection: the next request connects anew."""
    server = await raw_server(always(OK, close=True))  # answers, keeps quiet, then closes
    assert (await h1.send(post(server.url))).body == b"ok"
    await asyncio.sleep(0.1)  # the EOF arrives while the connection is idle
    assert (await h1.send(post(server.url))).body == b"ok"
    assert server.connections == 2
    assert len(server.requests) == 2


async def test_a_post_the_server_read_is_never_sent_again_when_it_closes_without_answering(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """Written on a reused connection, read, then a close: unreachable, sent once, not twice."""
    server = await raw_server(lambda conn, req: Reply(OK) if req == 0 else Reply(close=True))
    resends: list[int] = []
    h1.on_resend = lambda: resends.append(1)
    assert (await h1.send(post(server.url, b"1"))).body == b"ok"
    with pytest.raises(VendorUnreachable, match="closed before the answer was complete"):
        await h1.send(post(server.url, b"2"))
    assert [r.rpartition(b"\r\n\r\n")[2] for r in server.requests] == [b"1", b"2"]
    assert resends == []


async def test_a_request_not_yet_written_when_its_idle_connection_closes_goes_out_fresh(
    h1: H1Transport,
) -> None:
    """The idle-close race lost before the write: sent once on a fresh connection, counted."""
    resends: list[int] = []
    h1.on_resend = lambda: resends.append(1)
    with wire_server(lambda conn, req: WireReply(OK)) as server:
        await asyncio.gather(h1.send(post(server.url, b"0")), h1.send(post(server.url, b"0")))
        assert server.connections == 2  # both now idle in the pool
        server.close_connections()
        # Blocking on purpose: the FINs reach this host while the loop cannot read them.
        time.sleep(0.2)  # noqa: ASYNC251
        if not isinstance(asyncio.get_running_loop(), uvloop.Loop):
            # asyncio runs the write (queued first) before reading the FINs of the next poll;
            # one turn here puts the reads between taking the connection and writing to it.
            await asyncio.sleep(0)
        assert (await h1.send(post(server.url, b"1"))).body == b"ok"
    assert server.bodies().count(b"1") == 1
    assert server.connections == 3  # the retry connected anew, not to the other dead idle one
    assert resends == [1]


async def test_a_connection_idle_too_long_is_closed_instead_of_reused(
    raw_server: RawFactory, h1: H1Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the idle timeout a connection is not trusted (a NAT may have dropped it silently)."""
    monkeypatch.setattr(h1_module, "IDLE_TIMEOUT_S", 0.05)
    server = await raw_server(always(OK))
    await h1.send(post(server.url))
    await h1.send(post(server.url))
    assert server.connections == 1  # reused while fresh
    await asyncio.sleep(0.1)
    await h1.send(post(server.url))
    assert server.connections == 2
    await asyncio.wait_for(server.closed_by_peer.wait(), 2)  # and the old one was closed


async def test_a_fresh_connection_closed_without_an_answer_is_not_retried(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """On a new connection a silent close is a real failure: no second request is sent."""
    server = await raw_server(lambda conn, req: Reply(close=True))
    with pytest.raises(VendorUnreachable):
        await h1.send(post(server.url))
    assert (server.connections, len(server.requests)) == (1, 1)


async def test_aclose_closes_pooled_connections_and_refuses_later_sends(
    raw_server: RawFactory,
) -> None:
    """After aclose the server sees its connection end, and a send fails as unreachable."""
    server = await raw_server(always(OK))
    closing = transport()
    await closing.send(post(server.url))
    await closing.aclose()
    await asyncio.wait_for(server.closed_by_peer.wait(), 2)
    with pytest.raises(VendorUnreachable, match="closed"):
        await closing.send(post(server.url))


# -- request safety and secrets ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Evil", "v\r\nX-Injected: 1"), ("X-Evil", "v\nX"), ("X-Evil", "v\0"), ("X\r\nA", "v")],
)
async def test_a_header_holding_cr_lf_or_nul_is_refused_before_anything_is_sent(
    raw_server: RawFactory, h1: H1Transport, name: str, value: str
) -> None:
    """Header injection is impossible: the request is refused and no connection is made."""
    server = await raw_server(always(OK))
    with pytest.raises(VendorUnreachable, match="forbidden character"):
        await h1.send(post(server.url, headers={name: value}))
    assert server.connections == 0


async def test_the_transport_owns_framing_headers(raw_server: RawFactory, h1: H1Transport) -> None:
    """A caller's Content-Length / Transfer-Encoding cannot desynchronise the stream."""
    server = await raw_server(always(OK))
    headers = {"Content-Length": "999", "Transfer-Encoding": "chunked", "X-Id": "7"}
    await h1.send(post(server.url, b"abc", headers))
    head = server.requests[0].lower()
    assert b"content-length: 3\r\n" in head
    assert b"999" not in head
    assert b"transfer-encoding" not in head
    assert b"x-id: 7\r\n" in head


async def test_userinfo_in_the_url_is_sent_as_basic_credentials(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """`http://user:pass@host` authenticates as aiohttp does (Basic)."""
    server = await raw_server(always(OK))
    await h1.send(post(f"http://ann:s%40cret@127.0.0.1:{server.port}/goal"))
    assert b"Authorization: Basic YW5uOnNAY3JldA==\r\n" in server.requests[0]  # ann:s@cret


@pytest.mark.parametrize("failure", ["refused", "garbage", "timeout", "oversized"])
async def test_secrets_in_the_url_never_appear_in_error_text(
    raw_server: RawFactory, failure: str
) -> None:
    """Query string, userinfo and path stay out of every error message."""
    replies = {
        "garbage": Reply(b"NOT HTTP\r\n\r\n"),
        "timeout": Reply(hang=True),
        "oversized": Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n"),
    }
    server = await raw_server(lambda conn, req: replies.get(failure, Reply(OK)))
    port = free_port() if failure == "refused" else server.port
    url = f"http://bob:hunter2pw@127.0.0.1:{port}/acct-77/goal?apikey=k3y-zz9&vid=v42"
    quick = transport(timeout_s=0.3)
    try:
        with pytest.raises((VendorUnreachable, VendorTimeout)) as caught:
            await quick.send(post(url))
    finally:
        await quick.aclose()
    text = str(caught.value)
    for secret in ("hunter2pw", "bob", "k3y-zz9", "apikey", "v42", "acct-77"):
        assert secret not in text, (secret, text)


# -- TLS --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A private CA and a server certificate it signed."""

    ca_path: Path
    cert_path: Path
    key_path: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_pki(directory: Path, *, server_ip: str | None, server_dns: str | None) -> Pki:
    """A CA and a leaf for `server_ip` / `server_dns`, written as PEM files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    if server_ip:
        names.append(x509.IPAddress(IPv4Address(server_ip)))
    if server_dns:
        names.append(x509.DNSName(server_dns))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("vendor"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    pki.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pki.key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


async def tls_server(pki: Pki) -> tuple[web.AppRunner, int]:
    """An aiohttp HTTPS server on loopback presenting the PKI's leaf certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert_path, pki.key_path)
    app = web.Application()
    app.router.add_post("/goal", echo)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    return runner, port


async def test_tls_to_a_private_ca_is_refused_by_default_and_accepted_with_its_bundle(
    tmp_path: Path,
) -> None:
    """Verification is on by default; `tls_context(ca_bundle)` trusts the bundle's CA."""
    pki = make_pki(tmp_path, server_ip="127.0.0.1", server_dns=None)
    runner, port = await tls_server(pki)
    url = f"https://127.0.0.1:{port}/goal?apikey=k3y-zz9"
    default, trusting = transport(), transport(ssl_context=tls_context(str(pki.ca_path)))
    try:
        with pytest.raises(VendorUnreachable, match="certificate verify failed") as caught:
            await default.send(post(url))
        assert "k3y-zz9" not in str(caught.value)
        for _ in range(3):
            response = await trusting.send(post(url, b"hi"))
            assert response.body == b"POST /goal?apikey=k3y-zz9 application/json hi"
    finally:
        await default.aclose()
        await trusting.aclose()
        await runner.cleanup()


async def test_tls_certificate_for_another_name_is_refused_even_from_a_trusted_ca(
    tmp_path: Path,
) -> None:
    """The hostname is checked: a cert for `vendor.example` does not serve 127.0.0.1."""
    pki = make_pki(tmp_path, server_ip=None, server_dns="vendor.example")
    runner, port = await tls_server(pki)
    trusting = transport(ssl_context=tls_context(str(pki.ca_path)))
    try:
        with pytest.raises(VendorUnreachable, match=re.escape("TLS with https://127.0.0.1")):
            await trusting.send(post(f"https://127.0.0.1:{port}/goal"))
    finally:
        await trusting.aclose()
        await runner.cleanup()


def test_tls_context_verifies_and_checks_hostnames() -> None:
    """The context verifies certificates and names, and holds the system's roots."""
    context = tls_context(None)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


async def test_distinct_request_urls_do_not_grow_the_transports_caches_without_bound(
    raw_server: RawFactory,
) -> None:
    """A query per event (as Conductrics sends) keeps the URL → target cache bounded."""
    server = await raw_server(always(OK))
    one = transport(pool_size=1)
    try:
        for index in range(h1_module._CACHE_ENTRIES + 50):
            assert (await one.send(post(f"{server.url}/goal?vid={index}"))).status == 200
        assert len(one._targets) <= h1_module._CACHE_ENTRIES
        assert server.requests[-1].startswith(
            f"POST /goal?vid={h1_module._CACHE_ENTRIES + 49} HTTP/1.1".encode()
        )
    finally:
        await one.aclose()


# -- issue 22: the wire a well-kept client speaks ---------------------------------------------


def resolver(table: dict[str, list[tuple[str, int]]]) -> h1_module.Resolver:
    """A resolver answering from `table` (host → addresses in order), read at each call."""

    async def resolve(host: str, port: int) -> list[h1_module.AddrInfo]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", addr) for addr in table[host]]

    return resolve


def gzipped(data: bytes) -> bytes:
    """`data` gzip-compressed."""
    return gzip.compress(data)


async def test_a_silently_dropped_first_address_falls_back_to_the_next_at_once(
    raw_server: RawFactory, full_backlog: int
) -> None:
    """Happy eyeballs: a first address whose SYN is dropped costs the 0.25 s delay, not the
    whole connect timeout."""
    server = await raw_server(always(OK))
    table = {"vendor.test": [("127.0.0.1", full_backlog), ("127.0.0.1", server.port)]}
    client = transport(connect_timeout_s=5.0, timeout_s=10.0, resolve=resolver(table))
    started = time.monotonic()
    try:
        assert (await client.send(post(f"http://vendor.test:{server.port}/goal"))).body == b"ok"
    finally:
        await client.aclose()
    assert time.monotonic() - started < 2.5  # half the connect timeout; the delay is 0.25 s


async def test_a_dns_change_reaches_the_next_new_connection(
    raw_server: RawFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once its connection closed and the addresses' time is up, the host is resolved again."""
    monkeypatch.setattr(h1_module, "DNS_TTL_S", 0.0)
    close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"
    old = await raw_server(always(close + b"A"))
    new = await raw_server(always(close + b"B"))
    table = {"vendor.test": [("127.0.0.1", old.port)]}
    client = transport(resolve=resolver(table))
    try:
        assert (await client.send(post("http://vendor.test/goal"))).body == b"A"
        table["vendor.test"] = [("127.0.0.1", new.port)]
        assert (await client.send(post("http://vendor.test/goal"))).body == b"B"
    finally:
        await client.aclose()


async def test_gzip_and_deflate_are_offered_and_a_gzipped_answer_is_decoded(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """An Altcraft `{"error":0}` sent gzipped arrives as its JSON."""
    body = gzipped(b'{"error":0}')
    server = await raw_server(
        always(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
    )
    answer = await h1.send(post(server.url))
    assert answer.body == b'{"error":0}'
    assert b"\r\nAccept-Encoding: gzip, deflate\r\n" in server.requests[0]


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
async def test_a_deflate_answer_is_decoded_zlib_wrapped_or_raw(
    raw_server: RawFactory, h1: H1Transport, wbits: int
) -> None:
    """`deflate` is zlib-wrapped by the RFC and raw from some servers: both are read."""
    packer = zlib.compressobj(wbits=wbits)
    body = packer.compress(b"accepted") + packer.flush()
    server = await raw_server(
        always(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
    )
    assert (await h1.send(post(server.url))).body == b"accepted"


async def test_a_gzip_bomb_is_refused_at_the_decoded_limit(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """The body limit bounds the decoded size too: a small answer inflating past it fails."""
    body = gzipped(b"0" * (LIMIT * 100))
    assert len(body) < LIMIT
    server = await raw_server(
        always(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
    )
    with pytest.raises(VendorUnreachable, match=f"decoded is over the {LIMIT}-byte limit"):
        await h1.send(post(server.url))


async def test_transfer_encoding_gzip_is_read_until_close_and_decoded(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """A gzip transfer coding without chunked: the body ends at the close (RFC 9112 §6.3)."""
    server = await raw_server(
        always(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + gzipped(b"ok"), close=True)
    )
    assert (await h1.send(post(server.url))).body == b"ok"


async def test_an_idn_host_is_sent_as_punycode(raw_server: RawFactory) -> None:
    """bücher.test is resolved, and named in Host, as its A-label xn--bcher-kva.test."""
    server = await raw_server(always(OK))
    table = {"xn--bcher-kva.test": [("127.0.0.1", server.port)]}
    client = transport(resolve=resolver(table))
    try:
        await client.send(post(f"http://bücher.test:{server.port}/goal"))
    finally:
        await client.aclose()
    assert f"\r\nHost: xn--bcher-kva.test:{server.port}\r\n".encode() in server.requests[0]


async def test_the_request_target_percent_encodes_what_rfc_3986_does_not_allow(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """`"<>{}|\\^` backtick and space are percent-encoded (as yarl does); escapes are kept."""
    server = await raw_server(always(OK))
    await h1.send(post(server.url + '/a"<>{}|\\^`?q=%41&id=[1]'))
    await h1.send(post(server.url + "/a b?q=x y"))
    lines = [request.partition(b"\r\n")[0] for request in server.requests]
    assert lines == [
        b"POST /a%22%3C%3E%7B%7D%7C%5C%5E%60?q=%41&id=[1] HTTP/1.1",
        b"POST /a%20b?q=x%20y HTTP/1.1",
    ]


@pytest.mark.parametrize("bad", ["\r\nX-Injected: 1", "\n", "\x00", "\t"], ids=repr)
async def test_a_control_character_in_the_url_is_refused_on_every_request(
    raw_server: RawFactory, h1: H1Transport, bad: str
) -> None:
    """First request to the origin or a later one: refused the same way, nothing sent."""
    server = await raw_server(always(OK))
    for _ in range(2):
        with pytest.raises(VendorUnreachable, match="control character"):
            await h1.send(post(f"{server.url}/goal?id=1{bad}"))
    await h1.send(post(f"{server.url}/goal?id=1"))
    for _ in range(2):
        with pytest.raises(VendorUnreachable, match="control character"):
            await h1.send(post(f"{server.url}/goal?id=1{bad}"))
    assert len(server.requests) == 1


async def test_an_obs_folded_header_is_unfolded(raw_server: RawFactory, h1: H1Transport) -> None:
    """RFC 9112 §5.2: a user agent replaces an obs-fold with a space; the answer is read."""
    server = await raw_server(
        always(
            b"HTTP/1.1 429 Busy\r\nRetry-After:\r\n 7\r\nX-A: one\r\n\ttwo\r\n"
            + b"Content-Length: 0\r\n\r\n"
        )
    )
    answer = await h1.send(post(server.url))
    assert answer.status == 429
    assert answer.headers["retry-after"].strip() == "7"
    assert answer.headers["x-a"].split() == ["one", "two"]


async def test_a_101_is_the_answer_and_its_connection_is_closed(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """A vendor switching protocols on a POST: status 101 for the sender to classify (an
    unexpected status), the connection never reused."""
    server = await raw_server(
        always(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
    )
    assert (await h1.send(post(server.url))).status == 101
    assert (await h1.send(post(server.url))).status == 101
    assert server.connections == 2


async def test_100_and_103_are_skipped_for_the_final_answer(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """Informational answers before the final one are read past; the connection is kept."""
    server = await raw_server(
        always(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)
    )
    assert (await h1.send(post(server.url))).body == b"ok"
    assert (await h1.send(post(server.url))).body == b"ok"
    assert server.connections == 1


@pytest.mark.parametrize("status", [204, 304])
async def test_204_and_304_have_no_body_whatever_their_length_says(
    raw_server: RawFactory, h1: H1Transport, status: int
) -> None:
    """No body follows a 204 or 304: the next answer on the connection is read whole."""
    head = f"HTTP/1.1 {status} X\r\nContent-Length: 5\r\n\r\n".encode()
    server = await raw_server(lambda conn, req: Reply(head) if req == 0 else Reply(OK))
    answer = await h1.send(post(server.url))
    assert (answer.status, answer.body) == (status, b"")
    assert (await h1.send(post(server.url))).body == b"ok"
    assert server.connections == 1


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 2\r\nContent-Length: 2\r\n",
        b"Content-Length: 2\r\nContent-Length: 3\r\n",
        b"Content-Length: 2, 2\r\n",
        b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=["duplicate", "conflicting", "list", "te-and-cl"],
)
async def test_ambiguous_framing_is_refused(
    raw_server: RawFactory, h1: H1Transport, framing: bytes
) -> None:
    """Two lengths, or a length beside chunked (a smuggling shape): refused, never guessed."""
    server = await raw_server(
        always(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n2\r\nok\r\n0\r\n\r\n")
    )
    with pytest.raises(VendorUnreachable, match="malformed HTTP answer"):
        await h1.send(post(server.url))


@pytest.fixture
def pki(tmp_path: Path) -> wire.Pki:
    """A private CA and the server certificates of the TLS cases."""
    return wire.make_pki(tmp_path)


def tls_transport(pki: wire.Pki, **overrides: Any) -> H1Transport:
    """A transport trusting the private CA."""
    return transport(ssl_context=tls_context(str(pki.ca_path)), **overrides)


@pytest.mark.parametrize("close_notify", [True, False], ids=["close_notify", "bare-close"])
async def test_a_tls_close_delimited_body_is_whole_only_with_close_notify(
    pki: wire.Pki, close_notify: bool
) -> None:
    """A TCP close without TLS close_notify may be a truncation: refused, not a whole body."""
    reply = WireReply(b"HTTP/1.1 200 OK\r\n\r\nhello", close=True, close_notify=close_notify)
    client = tls_transport(pki)
    try:
        with wire_server(lambda conn, req: reply, tls=pki.good) as server:
            if close_notify:
                assert (await client.send(post(server.url))).body == b"hello"
            else:
                with pytest.raises(VendorUnreachable, match="without close_notify"):
                    await client.send(post(server.url))
    finally:
        await client.aclose()


async def test_tls_offers_alpn_http_1_1_and_new_connections_resume_the_session(
    pki: wire.Pki,
) -> None:
    """ALPN names http/1.1; each new connection after the first resumes the TLS session."""
    close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    client = tls_transport(pki)
    try:
        with wire_server(lambda conn, req: WireReply(close), tls=pki.good) as server:
            for _ in range(10):
                assert (await client.send(post(server.url))).body == b"ok"
    finally:
        await client.aclose()
    assert server.alpn == ["http/1.1"] * 10
    assert server.tls_resumed == [False] + [True] * 9


def proxy_to(url: str, **config: Any) -> ProxyPolicy:
    """The egress proxy policy of `http.proxy: {url: ...}`."""
    policy = proxy_policy(ProxyConfig(url=url, **config), {})
    assert policy is not None
    return policy


async def test_an_https_vendor_is_reached_only_through_the_proxys_connect_tunnel(
    pki: wire.Pki,
) -> None:
    """CONNECT vendor.test:port, then TLS to the vendor (its name verified) inside the tunnel."""
    with wire_server(lambda conn, req: WireReply(OK), tls=pki.good) as vendor:
        hosts = {"vendor.test": ("127.0.0.1", vendor.port)}
        async with ProxyServer(hosts=hosts, require_authorization="Basic dTpw") as proxy:
            client = tls_transport(pki, proxy=proxy_to(proxy.url, username="u", password="p"))
            try:
                for _ in range(3):
                    answer = await client.send(post(f"https://vendor.test:{vendor.port}/goal"))
                    assert answer.body == b"ok"
            finally:
                await client.aclose()
    assert proxy.tunnels == [f"vendor.test:{vendor.port}"]  # one tunnel, kept alive
    assert b"\r\nHost: vendor.test:" in vendor.requests[0]
    assert vendor.requests[0].startswith(b"POST /goal HTTP/1.1\r\n")


async def test_a_plain_http_vendor_goes_through_the_proxy_in_absolute_form(
    raw_server: RawFactory,
) -> None:
    """An http:// vendor: absolute-form target to the proxy, Proxy-Authorization sent."""
    vendor = await raw_server(always(OK))
    hosts = {"vendor.test": ("127.0.0.1", vendor.port)}
    async with ProxyServer(hosts=hosts, require_authorization="Basic dTpw") as proxy:
        client = transport(proxy=proxy_to(proxy.url, username="u", password="p"))
        try:
            answer = await client.send(post(f"http://vendor.test:{vendor.port}/goal?id=1"))
        finally:
            await client.aclose()
    assert answer.body == b"ok"
    assert proxy.forwarded == [f"http://vendor.test:{vendor.port}/goal?id=1"]


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_a_proxy_refusing_the_credentials_is_unreachable_naming_the_proxy(
    pki: wire.Pki, scheme: str
) -> None:
    """407 from the proxy (tunnel or forward): VendorUnreachable naming it, no secret shown."""
    async with ProxyServer(hosts={}, require_authorization="Basic other") as proxy:
        client = tls_transport(pki, proxy=proxy_to(proxy.url, username="u", password="s3cr3t-pw"))
        try:
            with pytest.raises(VendorUnreachable, match="407") as caught:
                await client.send(post(f"{scheme}://vendor.test/goal"))
        finally:
            await client.aclose()
    assert proxy.url in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
    assert "dTpz" not in str(caught.value)


async def test_an_https_proxy_is_reached_over_tls_and_tunnels_tls_to_the_vendor(
    pki: wire.Pki,
) -> None:
    """TLS to the proxy (verified), then the vendor's own TLS inside the tunnel."""
    with wire_server(lambda conn, req: WireReply(OK), tls=pki.good) as vendor:
        hosts = {"vendor.test": ("127.0.0.1", vendor.port)}
        async with ProxyServer(hosts=hosts, ssl_context=pki.good) as proxy:
            client = tls_transport(pki, proxy=proxy_to(proxy.url.replace("127.0.0.1", "localhost")))
            try:
                answer = await client.send(post(f"https://vendor.test:{vendor.port}/goal"))
            finally:
                await client.aclose()
    assert answer.body == b"ok"
    assert proxy.tunnels == [f"vendor.test:{vendor.port}"]


def test_the_relay_counts_each_transport_resend_per_vendor() -> None:
    """The app wires h1's re-send hook to conversion_relay_transport_resends_total{vendor}."""
    config = parse_config(
        {
            "kafka": {"bootstrap_servers": ["127.0.0.1:9"], "topics": ["t"]},
            "vendors": {"v": {"protocol": "webhook", "base_url": "http://127.0.0.1", "path": "/"}},
        },
        {},
    )
    relay = Relay(config)
    made = relay._make_transport("v", config.vendors["v"])
    assert isinstance(made, H1Transport) and made.on_resend is not None
    made.on_resend()
    count = relay.metrics.registry.get_sample_value(
        "conversion_relay_transport_resends_total", {"vendor": "v"}
    )
    assert count == 1.0
