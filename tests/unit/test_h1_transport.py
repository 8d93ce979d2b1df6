"""H1Transport against real loopback servers: aiohttp.web for well-behaved vendors, raw asyncio
servers for misbehaving ones. Each test runs on asyncio's loop and on uvloop (see conftest)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.core.exchange import VendorRequest
from service.delivery import h1 as h1_module
from service.delivery.h1 import MAX_HEADER_COUNT, H1Transport, tls_context
from service.errors import VendorTimeout, VendorUnreachable
from service.net import free_port

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


async def test_a_reused_connection_closed_before_any_answer_byte_is_retried_once(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """The idle-close race (the server closes as we write): sent again on a fresh connection."""
    server = await raw_server(lambda conn, req: Reply(OK) if req == 0 else Reply(close=True))
    assert (await h1.send(post(server.url, b"1"))).body == b"ok"
    assert (await h1.send(post(server.url, b"2"))).body == b"ok"
    assert server.connections == 2
    assert [r.rpartition(b"\r\n\r\n")[2] for r in server.requests] == [b"1", b"2", b"2"]


async def test_the_retry_goes_out_on_a_fresh_connection_not_another_idle_one(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """Idle connections closed together (a server's idle sweep): the retry connects anew."""
    server = await raw_server(lambda conn, req: Reply(OK) if req == 0 else Reply(close=True))
    await asyncio.gather(h1.send(post(server.url)), h1.send(post(server.url)))
    assert server.connections == 2  # both now idle, both answer nothing more
    assert (await h1.send(post(server.url))).body == b"ok"
    assert server.connections == 3
    assert len(server.requests) == 4  # 2, then the stale attempt and its one retry


async def test_a_reused_connection_closed_late_without_an_answer_is_not_retried(
    raw_server: RawFactory, h1: H1Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A silent close long after the write is no idle race: the server may have acted on it."""
    monkeypatch.setattr(h1_module, "STALE_WINDOW_S", 0.05)
    server = await raw_server(
        lambda conn, req: Reply(OK) if req == 0 else Reply(close=True, delay_s=0.1)
    )
    await h1.send(post(server.url))
    with pytest.raises(VendorUnreachable, match="closed before the answer was complete"):
        await h1.send(post(server.url))
    assert (server.connections, len(server.requests)) == (1, 2)


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


async def test_the_retry_happens_once_and_never_on_a_fresh_connection(
    raw_server: RawFactory, h1: H1Transport
) -> None:
    """If the fresh connection also closes without a word, the send fails: 1 retry, no more."""
    server = await raw_server(lambda conn, req: Reply(OK) if conn == 0 else Reply(close=True))
    await h1.send(post(server.url))
    server.script = lambda conn, req: Reply(close=True)
    with pytest.raises(VendorUnreachable, match="closed before the answer was complete"):
        await h1.send(post(server.url))
    assert server.connections == 2  # the reused one, then one fresh one
    assert len(server.requests) == 3


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
