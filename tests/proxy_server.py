"""A real forward proxy on loopback for tests: CONNECT tunnels and absolute-form plain HTTP.

`ProxyServer` listens on 127.0.0.1 (a free port), optionally over TLS (an `https://` proxy), and
records what passed through it. `hosts` maps names only the proxy can resolve (`vendor.test`) to
real loopback addresses, so a vendor named that way is reachable through the proxy and nowhere
else. With `require_authorization` set, a request without that exact `Proxy-Authorization` is
answered `407 Proxy Authentication Required`.

    async with ProxyServer(hosts={"vendor.test": ("127.0.0.1", port)}) as proxy:
        ...  # proxy.url == "http://127.0.0.1:<port>"
        assert proxy.tunnels == [("vendor.test", port)]

Plain-HTTP requests are forwarded one per client connection: the answer is sent back with
`Connection: close`, so a client never reuses a forwarded connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["Passed", "ProxyServer"]

_MAX_HEAD_BYTES = 64 * 1024
_HOP_BY_HOP = frozenset({b"proxy-authorization", b"proxy-connection", b"connection", b"keep-alive"})


@dataclass
class Passed:
    """One request the proxy saw: a CONNECT or a forwarded plain-HTTP request."""

    method: str
    target: str  # `host:port` of a CONNECT, the absolute URL of a forwarded request
    authorization: str | None  # the Proxy-Authorization it carried
    allowed: bool  # False: answered 407 (or 502 when the target could not be reached)


@dataclass
class ProxyServer:
    """A forward proxy on a free loopback port; start with `async with`."""

    hosts: dict[str, tuple[str, int]] = field(default_factory=dict)
    require_authorization: str | None = None
    ssl_context: ssl.SSLContext | None = None  # set: clients reach the proxy over TLS
    passed: list[Passed] = field(default_factory=list)
    # Local ports of the proxy's own connections to targets: what a vendor sees as its peers.
    upstream_ports: set[int] = field(default_factory=set)
    connections: int = 0  # client connections accepted
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        """The proxy's URL, without credentials."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def tunnels(self) -> list[str]:
        """The `host:port` of every CONNECT the proxy let through."""
        return [p.target for p in self.passed if p.method == "CONNECT" and p.allowed]

    @property
    def forwarded(self) -> list[str]:
        """The absolute URL of every plain-HTTP request the proxy forwarded."""
        return [p.target for p in self.passed if p.method != "CONNECT" and p.allowed]

    async def start(self) -> ProxyServer:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", 0, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and close every connection (tunnels included)."""
        if self._server is not None:
            self._server.close()
        # Closing every socket ends every handler (each read sees the end of its stream).
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ProxyServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ssl.SSLError,
        ):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_HEAD_BYTES:
            return
        request_line, *lines = head[:-4].split(b"\r\n")
        method, target, version = request_line.decode("latin-1").split(" ", 2)
        headers = [line.split(b":", 1) for line in lines if b":" in line]
        authorization = next(
            (
                v.strip().decode("latin-1")
                for k, v in headers
                if k.lower() == b"proxy-authorization"
            ),
            None,
        )
        allowed = self.require_authorization is None or authorization == self.require_authorization
        record = Passed(method, target, authorization, allowed)
        self.passed.append(record)
        if not allowed:
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                b"Connection: close\r\n\r\n"
            )
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = await self._open(host.strip("[]"), int(port), record, writer)
            if upstream is None:
                return
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
            await self._pipe(reader, writer, *upstream)
            return
        await self._forward(method, target, version, headers, reader, writer, record)

    async def _open(
        self, host: str, port: int, record: Passed, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the target (through `hosts`), or a 502 sent back and None."""
        real_host, real_port = self.hosts.get(host, (host, port))
        try:
            upstream = await asyncio.open_connection(real_host, real_port)
        except OSError:
            record.allowed = False
            writer.write(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            return None
        self.upstream_ports.add(upstream[1].get_extra_info("sockname")[1])
        self._writers.add(upstream[1])
        return upstream

    async def _forward(
        self,
        method: str,
        target: str,
        version: str,
        headers: list[list[bytes]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: Passed,
    ) -> None:
        """An absolute-form request sent on in origin form; its answer with Connection: close."""
        if not target.startswith("http://"):
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            record.allowed = False
            return
        authority, slash, path = target[len("http://") :].partition("/")
        host, colon, port = authority.rpartition(":")
        if not colon or "]" in port:
            host, port = authority, "80"
        upstream = await self._open(host.strip("[]"), int(port), record, writer)
        if upstream is None:
            return
        up_reader, up_writer = upstream
        length = next((int(v) for k, v in headers if k.strip().lower() == b"content-length"), 0)
        body = await reader.readexactly(length) if length else b""
        kept = b"".join(
            k + b":" + v + b"\r\n" for k, v in headers if k.strip().lower() not in _HOP_BY_HOP
        )
        up_writer.write(
            f"{method} {slash}{path} {version}\r\n".encode("latin-1")
            + kept
            + b"Connection: close\r\n\r\n"
            + body
        )
        await up_writer.drain()
        answer_head = await up_reader.readuntil(b"\r\n\r\n")
        status_line, *answer_lines = answer_head[:-4].split(b"\r\n")
        answer_kept = [
            line
            for line in answer_lines
            if line.split(b":", 1)[0].strip().lower() not in _HOP_BY_HOP
        ]
        writer.write(b"\r\n".join([status_line, *answer_kept, b"Connection: close", b"", b""]))
        while chunk := await up_reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        up_writer.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Copy bytes both ways until either side closes."""

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while chunk := await source.read(65536):
                    sink.write(chunk)
                    await sink.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    if sink.can_write_eof():
                        sink.write_eof()

        try:
            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        finally:
            up_writer.close()
            self._writers.discard(up_writer)
