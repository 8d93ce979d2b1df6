"""pyreqwest's answer framing against a raw loopback server: an ambiguous length (two
Content-Length, or Content-Length with Transfer-Encoding) is refused, as h1 and aiohttp refuse
it, and an obs-folded header is unfolded (RFC 9112 §5.2: a user agent must unfold)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from service.core.exchange import VendorRequest, VendorResponse
from service.delivery.transport import Transport
from service.errors import VendorUnreachable
from tests.transports import transport_for

Answer = Callable[[bytes], Awaitable[str]]


@pytest.fixture
async def answer_with() -> AsyncIterator[Answer]:
    """Start a server that answers every request with the given raw bytes; its base URL."""
    servers: list[asyncio.Server] = []

    async def start(raw: bytes) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(raw)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def get(transport: Transport, url: str) -> VendorResponse:
    """GET `url`."""
    return await transport.send(VendorRequest("GET", f"{url}/", {}, b""))


@pytest.mark.parametrize(
    "lengths",
    [
        b"Content-Length: 2\r\nContent-Length: 2\r\n",
        b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=["duplicate-content-length", "te-and-cl"],
)
async def test_pyreqwest_refuses_an_answer_with_ambiguous_length(
    lengths: bytes, answer_with: Answer
) -> None:
    """Two lengths, or a length and a transfer coding: refused as unreadable framing."""
    url = await answer_with(b"HTTP/1.1 200 OK\r\n" + lengths + b"\r\n2\r\nok\r\n0\r\n\r\n")
    transport = transport_for("pyreqwest", url)
    try:
        with pytest.raises(VendorUnreachable, match="framing"):
            await get(transport, url)
    finally:
        await transport.aclose()


async def test_pyreqwest_unfolds_an_obs_folded_header(answer_with: Answer) -> None:
    """A header continued on an indented line is read as one value, not refused."""
    url = await answer_with(
        b"HTTP/1.1 200 OK\r\nX-Note: first\r\n  second\r\nContent-Length: 2\r\n\r\nok"
    )
    transport = transport_for("pyreqwest", url)
    try:
        response = await get(transport, url)
    finally:
        await transport.aclose()
    assert (response.status, response.body) == (200, b"ok")
    assert response.headers["X-Note"].split() == ["first", "second"]
