"""A lean HTTP/1.1 keep-alive transport: asyncio.Protocol connections parsed by httptools (llhttp).

Implements the relay's `Transport` seam with the whole contract of the aiohttp transport, at a
fraction of its CPU per request, and passes the whole wire conformance drill
(docs/guide/http-client.md):

- one pool per (scheme, host, port) of at most `pool_size` keep-alive connections, idle ones
  reused last-in first-out; a connection the server closed, that answered `Connection: close`
  (or HTTP/1.0 without keep-alive), or that sat idle over `IDLE_TIMEOUT_S`, is dropped;
- a new connection: the host resolved (cached `DNS_TTL_S`, one resolution shared), its addresses
  raced by happy eyeballs (`aiohappyeyeballs`; uvloop's create_connection has none), TLS with
  ALPN `http/1.1` resuming the origin's last session; through an egress proxy, a CONNECT tunnel
  (https vendors) or absolute-form requests (http vendors);
- a request is one `transport.write` (the requests of one loop turn written back to back in the
  next) of bytes built from a cached per-origin Host block and a cached, validated header block;
  the caller's task awaits one Future that the connection's parser callbacks resolve (no Task,
  no StreamReader per request); it is sent again (once, on a fresh connection, counted) only if
  no byte of it was written: its kept-alive connection closed before the request's turn;
- `timeout_s` bounds the whole exchange: one sweep per transport, every `timeout_s / 10` (at most
  `SWEEP_MAX_S`) while an exchange is in flight, fails those past their deadline (a timer per
  request costs ~1 µs to arm and cancel); connecting is bounded by `connect_timeout_s` too; a
  timed-out connection is closed, never reused;
- redirects are never followed (a 3xx, or a 101, is the answer); `gzip, deflate` offered and
  decoded; the response body is bounded by `max_body_bytes` received and decoded (a larger
  declared length fails before reading it), the response head by `MAX_HEADER_BYTES` and
  `MAX_HEADER_COUNT`; obs-fold unfolded, ambiguous framing refused, a close-delimited TLS body
  whole only with close_notify;
- the URL's IDN host goes out as its A-label, its target percent-encoded as RFC 3986 requires, a
  control character in it refused before anything is sent;
- TLS is verified by default (`tls_context(ca_bundle)` adds a private CA);
- every failure is a `VendorTimeout` or `VendorUnreachable` whose text is redacted and names the
  origin only (never the URL's userinfo, path or query, where secrets live).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import re
import socket
import ssl
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Final, cast
from urllib.parse import unquote, urlsplit

import aiohappyeyeballs
import httptools
import idna
from multidict import CIMultiDict

from service.core.exchange import VendorRequest, VendorResponse
from service.core.proxy import ProxyPolicy
from service.core.targets import encoded_target
from service.errors import VendorTimeout, VendorUnreachable
from service.logs import redact

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_HEADER_COUNT",
    "AddrInfo",
    "H1Transport",
    "Resolver",
    "tls_context",
]

log = logging.getLogger("conversion_relay.h1")

# One getaddrinfo answer: (family, type, proto, canonname, sockaddr).
AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]
# Resolves (host, port) to the addresses to try, in order.
Resolver = Callable[[str, int], Awaitable[Sequence[AddrInfo]]]

# A vendor's answer head is a few hundred bytes; far more is a fault or an attack on memory.
MAX_HEADER_BYTES: Final = 64 * 1024
MAX_HEADER_COUNT: Final = 100
# Caches keyed by what requests carry; cleared when full so a stream of distinct values (a query
# per event, a header value per event) cannot grow them without bound.
_CACHE_ENTRIES: Final = 512
# Framing and connection management belong to the transport: a caller's own Content-Length,
# Transfer-Encoding or Connection header could desynchronise the stream (request smuggling).
_OWNED_HEADERS: Final = frozenset({"content-length", "transfer-encoding", "connection"})
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
# A control character in a URL is never sent (nor silently stripped, as urlsplit does with CR,
# LF and TAB): it can only come from a relay bug or a hostile config, on any request alike.
_URL_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_USER_AGENT: Final = "conversion-relay"
# The codings this transport decodes (zlib's); br and zstd are not offered, so not decoded.
_ACCEPT_ENCODING: Final = "gzip, deflate"
# An idle connection older than this is closed rather than reused (aiohttp's default too): a NAT
# or load balancer may forget a quiet flow without a FIN, and a request written into it would
# hang until its timeout instead of going out on a live connection.
IDLE_TIMEOUT_S = 15.0
# Longest gap between two deadline sweeps: an exchange fails at most this late (or a tenth of
# its timeout_s, whichever is less).
SWEEP_MAX_S = 0.1
# Happy eyeballs (RFC 8305): the next address is tried this long after the previous one if that
# one has not connected yet (a dropped AAAA costs this, not the whole connect timeout).
HAPPY_EYEBALLS_DELAY_S = 0.25
# A host's resolved addresses serve new connections this long; a connect failure forgets them
# sooner. A DNS change reaches new connections within this (kept-alive ones stay where they are).
DNS_TTL_S = 10.0
# The TLS session a connection being made offers to resume (set by the connecting task).
_TLS_SESSION: contextvars.ContextVar[ssl.SSLSession | None] = contextvars.ContextVar(
    "h1_tls_session", default=None
)


class _TlsContext(ssl.SSLContext):
    """An SSLContext whose new connections resume the TLS session their origin last had.

    asyncio (and uvloop) create a connection's SSLObject through `wrap_bio` with no way to pass
    `session=`; the connecting task offers it through a context variable instead.
    """

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        """The SSLObject of a new connection, resuming the offered session if any."""
        if session is None and not server_side:
            session = _TLS_SESSION.get()
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)


def tls_context(ca_bundle: str | None = None, *, cadata: str | None = None) -> ssl.SSLContext:
    """A verifying TLS context offering ALPN `http/1.1` and resuming sessions: the system's
    default roots, plus `ca_bundle`'s (a file) or `cadata`'s (PEM text) CAs when given."""
    context = _TlsContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names
    context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    if cadata:
        context.load_verify_locations(cadata=cadata)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Headers(Mapping[str, str]):
    """An answer's headers, decoded (latin-1) into a case-insensitive CIMultiDict on first use:
    a delivered answer's headers are rarely read, and decoding them cost ~1 µs per request."""

    __slots__ = ("_decoded", "_raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._decoded: CIMultiDict[str] | None = None

    def _headers(self) -> CIMultiDict[str]:
        decoded = self._decoded
        if decoded is None:
            # The parser is lenient about header values (so an obs-fold is unfolded, RFC 9112
            # §5.2) and still refuses CR and LF; a NUL becomes a space (RFC 9110 §5.5).
            decoded = self._decoded = CIMultiDict(
                [
                    (name.decode("latin-1"), value.replace(b"\0", b" ").decode("latin-1"))
                    for name, value in self._raw
                ]
            )
        return decoded

    def __getitem__(self, name: str) -> str:
        return self._headers()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers())

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, name: object) -> bool:
        return name in self._headers()

    def get(self, name: str, default: Any = None) -> Any:
        """The first value of `name` (any case), else `default`."""
        return self._headers().get(name, default)

    def __repr__(self) -> str:
        return f"<headers {dict(self._headers().items())!r}>"


class _StaleConnection(VendorUnreachable):
    """A connection ended before any byte of the request was written: it may be sent again."""


def _decode(body: bytes, coding: bytes, limit: int) -> bytes:
    """`body` with one gzip or deflate coding undone, at most `limit` bytes of it decoded."""
    if coding in (b"gzip", b"x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif coding == b"deflate":  # zlib-wrapped as RFC 9110 says; raw deflate (seen too) below
        wbits = zlib.MAX_WBITS if len(body) > 1 and (body[0] * 256 + body[1]) % 31 == 0 else -15
    else:
        raise ValueError(f"the answer is in an unknown coding {coding[:20]!r}")
    decoded: list[bytes] = []
    size = 0
    rest = body
    while rest:  # a gzip body may be several members, one after another
        decompressor = zlib.decompressobj(wbits)
        try:
            part = decompressor.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise ValueError(f"the answer's {coding.decode('latin-1')} body is corrupt") from exc
        size += len(part)
        if size > limit or decompressor.unconsumed_tail:
            raise ValueError(f"answer body decoded is over the {limit}-byte limit")
        if not decompressor.eof:
            raise ValueError(f"the answer's {coding.decode('latin-1')} body is truncated")
        decoded.append(part)
        rest = decompressor.unused_data if wbits > 16 else b""
    return b"".join(decoded)


class _Tunnel(asyncio.Protocol):
    """The CONNECT exchange with an egress proxy, before the tunnel carries the vendor's TLS."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Disable Nagle, as a vendor connection does."""
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        """Collect the proxy's answer head (a 2xx to CONNECT has no body)."""
        if self.answered.done():  # the vendor's bytes before our ClientHello: not TLS
            self._end(ConnectionError("the proxy sent bytes after its answer"))
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end >= 0:
            if end + 4 != len(self.head):
                self._end(ConnectionError("the proxy sent bytes after its answer"))
            else:
                self.answered.set_result(bytes(self.head[:end]))
        elif len(self.head) > MAX_HEADER_BYTES:
            self._end(ConnectionError(f"the proxy's answer head is over {MAX_HEADER_BYTES} bytes"))

    def eof_received(self) -> bool | None:
        """The proxy closed: the tunnel is refused."""
        self._end(ConnectionError("the proxy closed the connection"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """The proxy connection is gone."""
        self._end(exc or ConnectionError("the proxy closed the connection"))

    def _end(self, exc: BaseException) -> None:
        if not self.answered.done():
            self.answered.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    async def open(self, origin: _Origin, authorization: str | None) -> None:
        """Ask for the tunnel to `origin`; raise VendorUnreachable unless the proxy agrees."""
        assert self.transport is not None and origin.route is not None
        authority = origin.authority()
        request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        if authorization is not None:
            request += f"Proxy-Authorization: {authorization}\r\n"
        self.transport.write(f"{request}\r\n".encode("ascii"))
        try:
            head = await self.answered
        except ConnectionError as exc:
            raise VendorUnreachable(
                redact(f"proxy {origin.route.shown} gave no tunnel to {origin.vendor}: {exc}")
            ) from exc
        line = head.partition(b"\r\n")[0].decode("latin-1")
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not (code.isdigit() and len(code) == 3):
            raise VendorUnreachable(
                redact(f"proxy {origin.route.shown} answered CONNECT with {line[:80]!r}")
            )
        if not code.startswith("2"):
            raise VendorUnreachable(
                redact(
                    f"proxy {origin.route.shown} refused the tunnel to {origin.vendor}: "
                    f"{code} {reason[:80]}"
                )
            )


def _parser(conn: _Conn) -> httptools.HttpResponseParser:
    """llhttp's response parser for `conn`, lenient only about header values: an obs-fold is
    unfolded (RFC 9112 §5.2: a user agent must), CR and LF stay refused, NUL is read as SP."""
    parser = httptools.HttpResponseParser(conn)
    parser.set_dangerous_leniencies(lenient_headers=True)
    return parser


class _Conn(asyncio.Protocol):
    """One keep-alive connection, its parser, and the state of the exchange in flight on it."""

    __slots__ = (
        "alive",
        "body_bytes",
        "chunks",
        "codings",
        "deadline",
        "eof_delimited",
        "error",
        "framed",
        "fut",
        "got_bytes",
        "head_bytes",
        "header_bytes",
        "header_count",
        "headers",
        "headers_done",
        "idle_since",
        "keep_alive",
        "origin",
        "parser",
        "reused",
        "sent_at",
        "status",
        "transfer_codings",
        "transport",
        "written",
    )

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = _parser(self)
        self.alive = False
        self.reused = False
        self.fut: asyncio.Future[VendorResponse] | None = None
        self.keep_alive = False
        self.idle_since = 0.0
        self.sent_at = 0.0
        self.deadline = 0.0
        self._reset()

    def _reset(self) -> None:
        """Fresh state for the next answer on this connection."""
        self.got_bytes = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.body_bytes = 0
        self.head_bytes = 0
        self.header_bytes = 0
        self.header_count = 0
        self.headers_done = False
        self.error: VendorUnreachable | None = None
        self.framed = False  # Content-Length or a chunked Transfer-Encoding seen
        self.eof_delimited = False
        # Content codings, then transfer codings other than chunked, in the order they were
        # applied: None (the usual case) when there are none.
        self.codings: list[bytes] | None = None
        self.transfer_codings = 0  # how many of `codings` (the last ones) are transfer codings

    # -- the exchange, driven by H1Transport.send ----------------------------------------------

    def begin(self, fut: asyncio.Future[VendorResponse], now: float, deadline: float) -> None:
        """Start one exchange (at loop time `now`, failing at `deadline`) whose answer will
        resolve `fut`; the request's bytes go out with the transport's next flush."""
        self._reset()
        self.keep_alive = False
        self.written = False
        self.fut = fut
        self.sent_at = now
        self.deadline = deadline

    def write(self, fut: asyncio.Future[VendorResponse], data: bytes) -> None:
        """Write the request of the exchange `fut`, unless that exchange has ended meanwhile."""
        transport = self.transport
        if self.fut is not fut or fut.done() or transport is None or transport.is_closing():
            return  # cancelled, timed out or failed before its turn: nothing may go out
        try:
            self.written = True  # from here the server may have read (and acted on) it
            transport.write(data)
        except Exception as exc:  # a transport refusing a write must not stop the others
            self._fail(self._refuse(f"could not send the request ({exc})"))

    def expire(self) -> None:
        """The exchange's deadline passed: fail it and close the connection (never reused)."""
        fut = self.fut
        if fut is not None:
            self.fut = None
            origin = self.origin
            if not fut.done():
                fut.set_exception(
                    VendorTimeout(
                        redact(f"no answer from {origin.vendor} within {origin.timeout_s}s")
                    )
                )
        self.close(abort=True)

    def finish(self, now: float) -> None:
        """After the caller has its answer or error: to the pool (idle from `now`), or closed."""
        if self.fut is not None:  # the caller left mid-exchange (cancelled): the stream is unusable
            self.fut = None
            self.close(abort=True)
            return
        if not self.reused and self.origin.ssl is not None:
            self.origin.keep_tls_session(self)
        if not self.keep_alive or not self.alive:
            self.close()
        else:
            self.reused = True
            self.idle_since = now
            self.origin.release(self)

    def close(self, *, abort: bool = False) -> None:
        """Close the connection and give its pool slot back (once)."""
        if self.alive:
            self.alive = False
            self.origin.gone(self)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if abort:
                transport.abort()
            else:
                transport.close()

    def _fail(self, error: VendorUnreachable) -> None:
        fut = self.fut
        self.fut = None
        if fut is not None and not fut.done():
            fut.set_exception(error)
        self.close(abort=True)

    def _refuse(self, text: str) -> VendorUnreachable:
        """Record why the answer is refused (raised inside a parser callback, read after it)."""
        self.error = VendorUnreachable(redact(f"{self.origin.shown}: {text}"))
        return self.error

    def _complete(self) -> None:
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self.codings is not None and body:
            try:
                for coding in reversed(self.codings):  # the last applied is undone first
                    if coding != b"identity":
                        body = _decode(body, coding, self.origin.max_body_bytes)
            except ValueError as exc:
                self._fail(self._refuse(str(exc)))
                return
        fut = self.fut
        self.fut = None
        if fut is not None and not fut.done():
            fut.set_result(VendorResponse(self.status, _Headers(self.headers), body))

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Disable Nagle: a request is one write and must leave at once."""
        # uvloop's transports are not asyncio.Transport subclasses, only shaped like one. The
        # connection is alive (and counted in the pool) once _connect registers it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; its callbacks fill the answer and resolve the exchange."""
        if self.fut is None:  # bytes nobody asked for: the stream can no longer be trusted
            self.close(abort=True)
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # after a 101, answered above: the stream is not HTTP
            self._fail(self._refuse("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(self.error or self._refuse(f"malformed HTTP answer ({exc})"))
        else:
            if not self.headers_done:
                # A head still incomplete after this many bytes (one endless header) is refused
                # here; complete heads are counted exactly in on_header.
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEADER_BYTES:
                    self._fail(self._refuse(f"answer head over {MAX_HEADER_BYTES} bytes"))

    def eof_received(self) -> bool | None:
        """The server finished sending: a close-delimited body ends here, anything else failed."""
        if self.fut is not None and self.eof_delimited and self.origin.ssl is not None:
            self._tls_eof()
        else:
            self._ended(None, clean=True)
        return None  # close our side too

    def _tls_eof(self) -> None:
        """A close-delimited body over TLS is whole only if the server said so (close_notify):
        a TCP close alone may be a truncation (RFC 8446 §6.1)."""
        transport = self.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        try:
            clean = ssl_object is not None and ssl_object.read(1) == b""
        except ssl.SSLError:  # SSLWantReadError: the TCP stream ended with no close_notify
            clean = False
        if clean:
            self._ended(None, clean=True)
        else:
            self._fail(self._refuse("the TLS connection ended without close_notify (truncated)"))

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: an exchange still waiting fails (a close-delimited body ends
        only at a received EOF: uvloop reports a TLS close without close_notify here alone)."""
        self._ended(exc, clean=False)
        if self.alive:
            self.alive = False
            self.origin.gone(self)

    def _ended(self, exc: Exception | None, *, clean: bool) -> None:
        if self.fut is None:
            self.close()
            return
        if clean and self.headers_done and self.eof_delimited:
            self.keep_alive = False
            self._complete()
        elif not self.written:
            # The idle keep-alive race, lost before our write: the server closed the connection
            # (or it broke) after it was taken from the pool and before the request's turn to
            # be written, so no byte of it reached the server and nothing can have been acted
            # on. Only then may it go out again (once, on a fresh connection). Once written, a
            # close without an answer fails the send: the server may have read the request.
            self._fail(_StaleConnection(redact(f"{self.origin.shown} closed an idle connection")))
        elif self.eof_delimited and self.origin.ssl is not None and exc is None:
            self._fail(self._refuse("the TLS connection ended without close_notify (truncated)"))
        else:
            reason = f" ({exc})" if exc is not None else ""
            self._fail(self._refuse(f"connection closed before the answer was complete{reason}"))
        self.close()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        """Count the reason phrase into the head's size."""
        if self.fut is None:  # a second answer in the same read, nobody asked for it
            raise self._refuse("answer nobody asked for")
        self.header_bytes += len(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        """One response header (values latin-1, as HTTP defines them); bounded in count and size."""
        self.header_count += 1
        self.header_bytes += len(name) + len(value) + 4
        if self.header_count > MAX_HEADER_COUNT:
            raise self._refuse(f"answer has over {MAX_HEADER_COUNT} headers")
        if self.header_bytes > MAX_HEADER_BYTES:
            raise self._refuse(f"answer head over {MAX_HEADER_BYTES} bytes")
        if self.headers_done:
            return  # a chunked trailer: bounded above, not part of the answer's headers
        if len(name) in (14, 16, 17):  # the lengths of the framing and coding headers
            lowered = name.lower()
            if lowered == b"content-length":
                self.framed = True
                limit = self.origin.max_body_bytes
                if int(value) > limit:  # llhttp has checked the digits already
                    raise self._refuse(
                        f"answer of {int(value)} bytes is over the {limit}-byte limit"
                    )
            elif lowered == b"transfer-encoding":
                self._transfer_codings(value)
            elif lowered == b"content-encoding":
                codings = [c.strip() for c in value.lower().split(b",") if c.strip()]
                known = self.codings or []
                cut = len(known) - self.transfer_codings  # content codings go before those
                self.codings = [*known[:cut], *codings, *known[cut:]]
        self.headers.append((name, value))

    def _transfer_codings(self, value: bytes) -> None:
        """Chunked last: llhttp unframes it. Any other (gzip): the body runs until the server
        closes (RFC 9112 §6.3), and is decoded like a content coding, before it."""
        codings = [c.strip() for c in value.lower().split(b",") if c.strip()]
        if codings and codings[-1] == b"chunked":
            self.framed = True
            codings.pop()
        if b"chunked" in codings:  # chunked applied before another coding: not ours to undo
            raise self._refuse("the answer's Transfer-Encoding is chunked before another coding")
        if codings:  # applied after the content codings: undone first
            self.codings = [*(self.codings or ()), *codings]
            self.transfer_codings += len(codings)

    def on_headers_complete(self) -> None:
        """The status is known; a response without framing runs until the server closes."""
        self.headers_done = True
        status = self.status = self.parser.get_status_code()
        self.eof_delimited = not self.framed and status >= 200 and status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        """Keep a body chunk, refusing the answer once it is over the limit."""
        self.body_bytes += len(body)
        if self.body_bytes > self.origin.max_body_bytes:
            raise self._refuse(f"answer body is over the {self.origin.max_body_bytes}-byte limit")
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        """The whole answer is here: resolve the exchange."""
        status = self.status
        if status < 200:
            if status != 101:  # informational (100 Continue, 103 Early Hints): the real one follows
                self._reset()
                self.got_bytes = True
                return
            # A vendor must not switch protocols on a POST: 101 is its answer (classified as an
            # unexpected status, as a 3xx is) and what follows is not HTTP (closed, never reused).
            self.keep_alive = False
            self._complete()
            return
        self.keep_alive = self.parser.should_keep_alive()
        if status == 407 and self.origin.route is not None:  # the proxy's answer, not the vendor's
            self.keep_alive = False
            self._fail(self._refuse(f"proxy {self.origin.route.shown} refused the request: 407"))
            return
        self._complete()


class _Origin:
    """One (scheme, host, port): its connection pool and the request bytes every request shares."""

    __slots__ = (
        "addr_infos",
        "addr_until",
        "connect_timeout_s",
        "conns",
        "head",
        "header_blocks",
        "host",
        "idle",
        "limit",
        "max_body_bytes",
        "open",
        "owner",
        "port",
        "resolving",
        "route",
        "server_hostname",
        "shown",
        "ssl",
        "target_prefix",
        "timeout_s",
        "tls_session",
        "tunnel",
        "vendor",
        "via",
        "waiters",
    )

    def __init__(self, owner: H1Transport, url: str) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise VendorUnreachable(f"{owner.vendor}: only http and https URLs can be sent")
        host = parts.hostname or ""
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise VendorUnreachable(f"{owner.vendor}: the URL's port is not a number") from exc
        route = owner.proxy.route(scheme, host, port) if owner.proxy is not None else None
        if not host:
            raise VendorUnreachable(f"{owner.vendor}: the URL names no host")
        if not host.isascii():  # an IDN: its A-label (punycode) in DNS, SNI and Host, as yarl does
            try:
                host = idna.encode(host, uts46=True).decode("ascii")
            except idna.IDNAError as exc:
                raise VendorUnreachable(
                    redact(f"{owner.vendor}: the URL's host is not a valid domain name ({exc})")
                ) from exc
        shown_host = f"[{host}]" if ":" in host else host
        default_port = port == (443 if scheme == "https" else 80)
        host_header = shown_host if default_port else f"{shown_host}:{port}"
        self.owner = owner
        self.vendor = owner.vendor
        self.host = host
        self.port = port
        self.shown = f"{scheme}://{shown_host}:{port}"
        self.limit = owner.pool_size
        self.timeout_s = owner.timeout_s
        self.connect_timeout_s = owner.connect_timeout_s
        self.max_body_bytes = owner.max_body_bytes
        self.ssl: ssl.SSLContext | None = None
        self.server_hostname: str | None = None
        self.tls_session: ssl.SSLSession | None = None  # the last one a connection here had
        if scheme == "https":
            self.ssl = owner.tls()
            self.server_hostname = host
        self.addr_infos: Sequence[AddrInfo] = ()  # of the vendor, or of its proxy
        self.addr_until = 0.0
        self.resolving: asyncio.Task[Sequence[AddrInfo]] | None = None
        # Through an egress proxy: https vendors in a CONNECT tunnel to `authority`, http ones
        # with absolute-form targets (`target_prefix`) on connections to the proxy.
        self.route = route
        self.tunnel = route is not None and scheme == "https"
        self.target_prefix = (
            f"http://{host_header}" if route is not None and not self.tunnel else ""
        )
        self.via = f" through proxy {route.shown}" if route is not None else ""
        # Sent on every request: Host, then Basic credentials when the URL carries userinfo (as
        # aiohttp does), then our User-Agent; a caller's own header of the name wins.
        self.head: dict[str, str] = {"host": f"Host: {host_header}\r\n"}
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(pair.encode()).decode("ascii")
            self.head["authorization"] = f"Authorization: Basic {token}\r\n"
        if route is not None and not self.tunnel and route.authorization is not None:
            self.head["proxy-authorization"] = f"Proxy-Authorization: {route.authorization}\r\n"
        self.head["user-agent"] = f"User-Agent: {_USER_AGENT}\r\n"
        self.head["accept-encoding"] = f"Accept-Encoding: {_ACCEPT_ENCODING}\r\n"
        # Header items of a request → the validated text of its head (after the request line).
        self.header_blocks: dict[tuple[tuple[str, str], ...], str] = {}
        self.idle: list[_Conn] = []
        self.conns: set[_Conn] = set()
        self.open = 0  # connections open or connecting
        self.waiters: deque[asyncio.Future[_Conn | None]] = deque()

    def header_block(self, items: tuple[tuple[str, str], ...]) -> str:
        """The head lines for these request headers: ours unless given, theirs validated."""
        block = self.header_blocks.get(items)
        if block is not None:
            return block
        given: set[str] = set()
        lines: list[str] = []
        for name, value in items:
            # A CR, LF or NUL would let a header value inject headers or a second request. Only a
            # relay bug or a hostile config can put one here; the request is refused as
            # undeliverable (retrying cannot help, and the message says which header).
            if (
                not name
                or any(c in name for c in "\r\n\0: \t")
                or any(c in value for c in "\r\n\0")
            ):
                raise VendorUnreachable(
                    redact(f"{self.vendor}: header {name[:40]!r} holds a forbidden character")
                )
            lowered = name.lower()
            if lowered in _OWNED_HEADERS:
                continue
            given.add(lowered)
            lines.append(f"{name}: {value}\r\n")
        block = "".join([line for key, line in self.head.items() if key not in given] + lines)
        if len(self.header_blocks) >= _CACHE_ENTRIES:
            self.header_blocks.clear()
        self.header_blocks[items] = block
        return block

    async def acquire(self, deadline: float, *, fresh: bool) -> _Conn:
        """A connection for one exchange: an idle one (unless `fresh`), a new one, or the next
        one released, whichever comes first before `deadline`."""
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() >= deadline:  # woken at the deadline: no time left to connect
                raise VendorTimeout(
                    redact(f"no free connection to {self.vendor} within {self.timeout_s}s")
                )
            if not fresh:
                while self.idle:
                    conn = self.idle.pop()
                    if conn.alive and loop.time() - conn.idle_since <= IDLE_TIMEOUT_S:
                        return conn
                    conn.close()
            elif self.open >= self.limit and self.idle:
                self.idle[0].close()  # the longest idle makes room for the fresh connection
            if self.open < self.limit:
                self.open += 1
                try:
                    return await self._connect(loop, deadline)
                except BaseException:
                    self.open -= 1
                    self._wake()
                    raise
            waiter: asyncio.Future[_Conn | None] = loop.create_future()
            self.waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    got = await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    handed = waiter.result()  # handed over as we were leaving: pass it on
                    if handed is not None:
                        self.release(handed)
                    else:
                        self._wake()
                elif waiter in self.waiters:
                    self.waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise VendorTimeout(
                        redact(f"no free connection to {self.vendor} within {self.timeout_s}s")
                    ) from exc
                raise
            if got is not None:
                return got

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Conn:
        # Connecting is off the hot path (keep-alive), so a timeout context is cheap enough here.
        connect_by = loop.time() + self.connect_timeout_s
        connect_deadline = min(deadline, connect_by)
        try:
            async with asyncio.timeout_at(connect_deadline):
                conn = await self._open(loop)
        except TimeoutError as exc:
            self.addr_infos = ()  # resolved again next time: the address may have moved
            if connect_deadline == connect_by:
                text = (
                    f"could not connect to {self.shown}{self.via} within {self.connect_timeout_s}s"
                )
            else:
                text = f"no answer from {self.vendor} within {self.timeout_s}s (connecting)"
            raise VendorTimeout(redact(text)) from exc
        except ssl.SSLError as exc:  # certificate verification failures included
            raise VendorUnreachable(
                redact(f"TLS with {self.shown}{self.via} failed: {exc}")
            ) from exc
        except OSError as exc:
            self.addr_infos = ()
            raise VendorUnreachable(
                redact(f"could not connect to {self.shown}{self.via}: {exc}")
            ) from exc
        if conn.transport is None or conn.transport.is_closing():  # closed at once by the server
            raise VendorUnreachable(redact(f"{self.shown} closed the connection at once"))
        conn.alive = True
        self.conns.add(conn)
        return conn

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Conn:
        """A new connection: the host (or proxy) resolved (cached), its addresses raced (happy
        eyeballs, which uvloop's create_connection lacks), then TLS resuming the origin's last
        session; through a proxy, TLS to the vendor inside the CONNECT tunnel."""
        route = self.route
        if route is None:
            sock = await self._socket(loop, self.host, self.port)
            return await self._wrap(loop, sock, self.ssl, self.server_hostname, resume=True)
        sock = await self._socket(loop, route.host, route.port)
        to_proxy = self.owner.tls() if route.scheme == "https" else None
        proxy_name = route.host if to_proxy is not None else None
        if not self.tunnel:  # http vendor: its requests go to the proxy, absolute-form
            return await self._wrap(loop, sock, to_proxy, proxy_name, resume=False)
        try:
            transport, tunnel = await loop.create_connection(
                _Tunnel, sock=sock, ssl=to_proxy, server_hostname=proxy_name
            )
        except BaseException:
            sock.close()
            raise
        try:
            await tunnel.open(self, route.authorization)
            conn = _Conn(self)
            token = _TLS_SESSION.set(self.tls_session)
            try:
                # start_tls hands the tunnel's transport to the vendor's TLS; conn sees only that.
                tls = await loop.start_tls(
                    transport,
                    conn,
                    cast(ssl.SSLContext, self.ssl),
                    server_hostname=self.server_hostname,
                )
            finally:
                _TLS_SESSION.reset(token)
        except BaseException:
            transport.abort()
            raise
        if tls is None:  # the loop closed the tunnel meanwhile
            raise VendorUnreachable(redact(f"{self.shown}{self.via}: the tunnel closed"))
        conn.connection_made(tls)  # start_tls does not call it: the tunnel was made before
        return conn

    async def _socket(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
        """A TCP socket connected to `host` (resolved, addresses raced)."""
        addr_infos = await self._addresses(loop, host, port)
        return await aiohappyeyeballs.start_connection(
            addr_infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY_S, interleave=1, loop=loop
        )

    async def _wrap(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        context: ssl.SSLContext | None,
        server_hostname: str | None,
        *,
        resume: bool,
    ) -> _Conn:
        """The connection on `sock`, TLS (resuming the origin's session if `resume`) or not."""
        token = _TLS_SESSION.set(self.tls_session if resume else None)
        try:
            _, conn = await loop.create_connection(
                lambda: _Conn(self), sock=sock, ssl=context, server_hostname=server_hostname
            )
        except BaseException:
            sock.close()  # never handed to a transport, or already closed by it
            raise
        finally:
            _TLS_SESSION.reset(token)
        return conn

    async def _addresses(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int
    ) -> Sequence[AddrInfo]:
        """The addresses connections go to (the vendor's, or its proxy's: one per origin):
        cached for DNS_TTL_S, one resolution shared by every connect."""
        if self.addr_infos and loop.time() < self.addr_until:
            return self.addr_infos
        task = self.resolving
        if task is None:
            task = self.resolving = loop.create_task(self._resolve(loop, host, port))
            task.add_done_callback(_retrieved)
        return await asyncio.shield(task)

    async def _resolve(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int
    ) -> Sequence[AddrInfo]:
        try:
            addr_infos = list(await self.owner.resolve(host, port))
        finally:
            self.resolving = None
        if not addr_infos:
            raise OSError(f"{host} has no address")
        self.addr_infos = addr_infos
        self.addr_until = loop.time() + DNS_TTL_S
        return addr_infos

    def authority(self) -> str:
        """`host:port` as a CONNECT names it (IPv6 in brackets, an IDN as its A-label)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def keep_tls_session(self, conn: _Conn) -> None:
        """Keep a new connection's TLS session (a TLS 1.3 ticket arrives after the handshake,
        so after its first answer) for the next connection to resume."""
        transport = conn.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is not None and ssl_object.session is not None:
            self.tls_session = ssl_object.session

    def release(self, conn: _Conn) -> None:
        """A connection whose exchange ended cleanly: to the next waiter, else idle."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    def gone(self, conn: _Conn) -> None:
        """A connection closed: its slot is free for a waiter."""
        self.open -= 1
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self._wake()

    def _wake(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close every connection and fail every waiter."""
        for conn in list(self.conns):
            if conn.fut is not None:
                conn._fail(VendorUnreachable(f"{self.vendor}: the transport was closed"))
            conn.close()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(VendorUnreachable(f"{self.vendor}: the transport was closed"))


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Mark a shared task's failure as seen (its waiters may all have left)."""
    if not task.cancelled():
        task.exception()


async def _getaddrinfo(host: str, port: int) -> Sequence[AddrInfo]:
    """The system resolver's TCP addresses of `host`, in its order (IPv6 first, usually)."""
    loop = asyncio.get_running_loop()
    return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _request_bytes(origin: _Origin, target: str, request: VendorRequest) -> bytes:
    """The request as written: request line, header block, framing, body."""
    block = origin.header_block(tuple(request.headers.items()))
    body = request.body
    method = request.method
    if body or method in _BODY_METHODS:
        head = f"{method} {target} HTTP/1.1\r\n{block}Content-Length: {len(body)}\r\n\r\n"
    else:
        head = f"{method} {target} HTTP/1.1\r\n{block}\r\n"
    return head.encode() + body


class H1Transport:
    """The HTTP/1.1 keep-alive transport of one vendor (see the module doc)."""

    def __init__(
        self,
        vendor: str,
        *,
        pool_size: int,
        timeout_s: float,
        connect_timeout_s: float,
        max_body_bytes: int = 64 * 1024,
        ssl_context: ssl.SSLContext | None = None,
        resolve: Resolver | None = None,
        proxy: ProxyPolicy | None = None,
    ) -> None:
        """`ssl_context`: best made by `tls_context` (ALPN, session resumption); another one is
        used as given (ALPN added, no resumption). `resolve`: the system resolver by default.
        `proxy`: the vendor's egress proxy policy (None: always direct)."""
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.vendor = vendor
        self.pool_size = pool_size
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_body_bytes = max_body_bytes
        self.ssl_context = ssl_context
        if ssl_context is not None and not isinstance(ssl_context, _TlsContext):
            ssl_context.set_alpn_protocols(["http/1.1"])
        self.resolve: Resolver = resolve or _getaddrinfo
        self.proxy = proxy
        # Called once per transport-level re-send (a metric's inc, set by the app).
        self.on_resend: Callable[[], None] | None = None
        # `scheme://netloc` as the request URLs spell it → its origin.
        self._origins: dict[str, _Origin] = {}
        # Whole request URL → (origin, request target): one lookup per request.
        self._targets: dict[str, tuple[_Origin, str]] = {}
        self._closed = False
        # Requests built in this loop turn, written together by one callback in the next turn.
        self._unsent: list[tuple[_Conn, asyncio.Future[VendorResponse], bytes]] = []
        self._sweep_every_s = min(SWEEP_MAX_S, timeout_s / 10)
        self._sweeper: asyncio.TimerHandle | None = None

    def _origin(self, url: str, end: int) -> tuple[_Origin, str]:
        """The origin of `url` and its request target (path and query), from the cache if known."""
        key = url[:end]
        origin = self._origins.get(key)
        if origin is None:  # also when `?` or `#` ends the netloc: cached keys never hold them
            return self._origin_slow(url)
        target = url[end:] or "/"
        if "#" in target:
            target = target.partition("#")[0]
        return origin, origin.target_prefix + encoded_target(target)

    def _origin_slow(self, url: str) -> tuple[_Origin, str]:
        """Parse a URL whose origin is new (or whose netloc is followed by `?`/`#`, not `/`)."""
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        origin = self._origins.get(key)
        if origin is None:
            origin = _Origin(self, url)
            self._origins[key] = origin
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return origin, origin.target_prefix + encoded_target(target)

    async def send(self, request: VendorRequest) -> VendorResponse:
        """The HTTP round trip, no redirect followed, the body bounded, within `timeout_s`."""
        if self._closed:
            raise VendorUnreachable(f"{self.vendor}: the transport is closed")
        url = request.url
        found = self._targets.get(url)  # a vendor's URL is usually the same for every request
        if found is None:
            if _URL_CONTROL.search(url):
                raise VendorUnreachable(
                    f"{self.vendor}: the URL holds a control character (CR, LF, NUL...): not sent"
                )
            end = url.find("/", url.find("://") + 3)
            found = self._origin(url, end if end >= 0 else len(url))
            if len(self._targets) >= _CACHE_ENTRIES:
                self._targets.clear()
            self._targets[url] = found
        origin, target = found
        data = _request_bytes(origin, target, request)
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + self.timeout_s
        retried = False
        while True:
            idle = origin.idle
            conn = idle.pop() if idle and not retried else None
            if conn is None or not conn.alive or now - conn.idle_since > IDLE_TIMEOUT_S:
                if conn is not None:
                    conn.close()
                conn = await origin.acquire(deadline, fresh=retried)
            fut: asyncio.Future[VendorResponse] = loop.create_future()
            if self._sweeper is None:
                self._sweeper = loop.call_later(self._sweep_every_s, self._sweep)
            try:
                conn.begin(fut, now, deadline)
                if not self._unsent:
                    loop.call_soon(self._flush)
                self._unsent.append((conn, fut, data))
                del data  # the flush writes it: not held through the exchange
                return await fut
            except _StaleConnection:
                if retried:
                    raise
                retried = True
                # Counted and logged: a re-send is rare, and only of a request never written.
                log.debug(
                    "%s closed a kept-alive connection before the request was written: sent "
                    "on a fresh connection",
                    origin.shown,
                    extra={"vendor": self.vendor},
                )
                if self.on_resend is not None:
                    self.on_resend()
                data = _request_bytes(origin, target, request)
                now = loop.time()
            finally:
                conn.finish(loop.time())

    def tls(self) -> ssl.SSLContext:
        """The TLS context of this transport's https origins (made once, on first use)."""
        if self.ssl_context is None:
            self.ssl_context = tls_context()
        return self.ssl_context

    def _sweep(self) -> None:
        """Fail the exchanges past their deadline; come back while any is still in flight."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        busy = False
        for origin in self._origins.values():
            for conn in list(origin.conns):
                if conn.fut is None:
                    continue
                if conn.deadline <= now:
                    conn.expire()
                else:
                    busy = True
        if busy and not self._closed:
            self._sweeper = loop.call_later(self._sweep_every_s, self._sweep)

    def _flush(self) -> None:
        """Write every request built since the last flush, back to back.

        Writing each request the moment it is built interleaves one send() per request with the
        relay's Python work; on a virtualised host each system call costs the code after it
        (measured: 64 → 49 µs CPU per delivery at concurrency 64 against nginx) and a burst of
        writes lets the server take a burst per wake-up. The cost is one loop turn of delay.
        """
        unsent = self._unsent
        self._unsent = []
        for conn, fut, data in unsent:
            conn.write(fut, data)

    async def aclose(self) -> None:
        """Close every connection; later sends fail as unreachable."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for origin in self._origins.values():
            origin.close()
        await asyncio.sleep(0)  # let the transports run their close callbacks
