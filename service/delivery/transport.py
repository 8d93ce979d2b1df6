"""The transport: one prepared request out, one bounded answer back, nothing else.

`Transport` is the whole contract the sender needs (a later, faster client implements the same
Protocol). `AiohttpTransport` is today's: one pooled session per vendor, redirects never
followed (a 3xx is an answer the sender classifies, never a delivery), the body read up to
`max_body_bytes` (beyond it the connection is closed and the exchange fails), and aiohttp's
errors translated here, once, into the relay's `VendorTimeout` / `VendorUnreachable`, their
text redacted where it is made.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import aiohttp

from service.core.exchange import VendorRequest, VendorResponse
from service.errors import VendorTimeout, VendorUnreachable
from service.logs import redact
from service.vendors.base import VendorBase

__all__ = ["MAX_BODY_BYTES", "AiohttpTransport", "Transport", "close_sessions", "new_session"]

# Vendor answers are short JSON/XML; anything far larger is a fault (or an attack on memory).
MAX_BODY_BYTES = 64 * 1024


class Transport(Protocol):
    """Sends one prepared request; returns the answer or raises a relay DeliveryError."""

    async def send(self, request: VendorRequest) -> VendorResponse:
        """The vendor's status, headers and body (at most the transport's body limit)."""
        ...


def new_session(config: VendorBase) -> aiohttp.ClientSession:
    """One pooled session per vendor: connections up to its concurrency, its own timeout."""
    connector = aiohttp.TCPConnector(limit=config.concurrency, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, raise_for_status=False)


async def close_sessions(sessions: list[aiohttp.ClientSession]) -> None:
    """Close every vendor session."""
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


class AiohttpTransport:
    """The aiohttp transport of one vendor."""

    def __init__(
        self, vendor: str, session: aiohttp.ClientSession, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self.vendor = vendor
        self._session = session
        self._max_body_bytes = max_body_bytes

    async def send(self, request: VendorRequest) -> VendorResponse:
        """The HTTP round trip, no redirect followed, the body bounded."""
        try:
            async with self._session.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                allow_redirects=False,
            ) as resp:
                body = await self._read_bounded(resp)
                return VendorResponse(resp.status, resp.headers, body)
        except TimeoutError as exc:
            raise VendorTimeout(redact(f"no answer from {self.vendor}")) from exc
        except aiohttp.ClientError as exc:
            raise VendorUnreachable(redact(f"{type(exc).__name__}: {exc}")) from exc

    async def _read_bounded(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self._max_body_bytes
        if resp.content_length is not None and resp.content_length > limit:
            resp.close()  # drop the connection rather than drain an oversized body
            raise VendorUnreachable(
                redact(f"answer of {resp.content_length} bytes is over the {limit}-byte limit")
            )
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = await resp.content.read(limit + 1 - size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        resp.close()
        raise VendorUnreachable(redact(f"answer body is over the {limit}-byte limit"))
