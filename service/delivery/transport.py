"""The transport: one prepared request out, one bounded answer back, nothing else.

`Transport` is the whole contract the sender needs; `make_transport` builds a vendor's from the
config (`http.transport`, or the vendor's own `transport`). Three implement it:
`H1Transport` (service/delivery/h1.py, the default), `PyreqwestTransport`
(service/delivery/transport_reqwest.py) and `AiohttpTransport`; each is one pooled client per
vendor, TLS verified (plus `http.ca_bundle`), redirects
never followed (a 3xx is an answer the sender classifies, never a delivery), no cookies kept,
through the vendor's egress proxy when `http.proxy` (or the vendor's own `proxy`) names one
(`vendor_proxy`: never a proxy taken from the environment unasked),
the body read up to `max_body_bytes` (beyond it the connection is closed and the exchange
fails), and the client's errors translated here, once, into the relay's `VendorTimeout` /
`VendorUnreachable`, their text redacted where it is made.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

import aiohttp

from service.config import ca_bundle_certificates
from service.core.exchange import VendorRequest, VendorResponse
from service.core.proxy import (
    ProxyPolicy,
    ProxyRoute,
    ProxySettingError,
    effective_proxy,
    proxy_policy,
)
from service.core.redact import remember_secrets
from service.delivery.h1 import H1Transport, tls_context
from service.errors import ConfigError, VendorTimeout, VendorUnreachable
from service.logs import redact
from service.vendors.base import VendorBase

if TYPE_CHECKING:
    from service.config import HttpConfig

__all__ = [
    "MAX_BODY_BYTES",
    "AiohttpTransport",
    "Transport",
    "close_sessions",
    "make_transport",
    "new_session",
]

# Vendor answers are short JSON/XML; anything far larger is a fault (or an attack on memory).
MAX_BODY_BYTES = 64 * 1024


class Transport(Protocol):
    """Sends one prepared request; returns the answer or raises a relay DeliveryError."""

    async def send(self, request: VendorRequest) -> VendorResponse:
        """The vendor's status, headers (case-insensitive) and body (at most the body limit)."""
        ...

    async def aclose(self) -> None:
        """Close the client and its pooled connections."""
        ...


def vendor_proxy(
    name: str, vendor: VendorBase, http: HttpConfig, environ: Mapping[str, str] | None = None
) -> ProxyPolicy | None:
    """The vendor's proxy policy (its own `proxy`, else `http.proxy`); None = always direct.

    The process environment is read only when the setting is `env`.
    """
    setting = effective_proxy(http.proxy, vendor.proxy)
    try:
        policy = proxy_policy(setting, os.environ if environ is None else environ)
    except ProxySettingError as exc:
        where = f"vendors.{name}.proxy" if vendor.proxy is not None else "http.proxy"
        raise ConfigError([redact(exc.problem(where))]) from None
    if policy is not None:
        remember_secrets(policy.secrets)
    return policy


def _pem(certificates: list[bytes]) -> str:
    """PEM certificates as one text, for `load_verify_locations(cadata=...)`."""
    return b"\n".join(certificates).decode("ascii")


def make_transport(name: str, vendor: VendorBase, http: HttpConfig) -> Transport:
    """A vendor's transport: its own `transport` choice, else `http.transport`; its proxy policy."""
    proxy = vendor_proxy(name, vendor, http)
    certificates = ca_bundle_certificates(http.ca_bundle) if http.ca_bundle else []
    kind = vendor.transport or http.transport
    if kind == "h1":
        return H1Transport(
            name,
            pool_size=vendor.concurrency,
            timeout_s=vendor.timeout_s,
            connect_timeout_s=min(vendor.connect_timeout_s, vendor.timeout_s),
            max_body_bytes=MAX_BODY_BYTES,
            # h1's own context (ALPN, TLS session resumption), the system's roots plus the
            # bundle's; None: H1Transport makes that context itself for https.
            ssl_context=tls_context(cadata=_pem(certificates)) if certificates else None,
            proxy=proxy,
        )
    if kind == "aiohttp":
        context = None
        if certificates:
            context = ssl.create_default_context()  # the system's roots, then the bundle's
            context.load_verify_locations(cadata=_pem(certificates))
        return AiohttpTransport(name, new_session(vendor, context), proxy=proxy)
    # Imported only when a vendor uses it: the Rust library costs ~7 MiB of resident memory.
    from service.delivery.transport_reqwest import PyreqwestTransport

    return PyreqwestTransport(
        name, vendor, max_body_bytes=MAX_BODY_BYTES, ca_certificates=certificates, proxy=proxy
    )


def new_session(
    config: VendorBase, ssl_context: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """One pooled session per vendor: connections up to its concurrency, its own timeouts."""
    connector = aiohttp.TCPConnector(
        limit=config.concurrency, ttl_dns_cache=300, ssl=ssl_context or True
    )
    timeout = aiohttp.ClientTimeout(
        total=config.timeout_s, sock_connect=min(config.connect_timeout_s, config.timeout_s)
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        raise_for_status=False,
        # A vendor's Set-Cookie is never sent back: a request carries only what it was built with.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def close_sessions(sessions: list[aiohttp.ClientSession]) -> None:
    """Close every vendor session."""
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


class AiohttpTransport:
    """The aiohttp transport of one vendor."""

    def __init__(
        self,
        vendor: str,
        session: aiohttp.ClientSession,
        max_body_bytes: int = MAX_BODY_BYTES,
        *,
        proxy: ProxyPolicy | None = None,
    ) -> None:
        self.vendor = vendor
        self._session = session
        self._max_body_bytes = max_body_bytes
        self._proxy = proxy
        # Each origin's route, decided once (a vendor has one origin: its base_url's).
        self._routes: dict[str, ProxyRoute | None] = {}

    async def send(self, request: VendorRequest) -> VendorResponse:
        """The HTTP round trip, no redirect followed, the body bounded."""
        if self._proxy is not None:
            route = self._route(request.url)
            if route is not None:
                return await self._send_proxied(request, route)
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

    def _route(self, url: str) -> ProxyRoute | None:
        """The proxy of the request's origin (None: direct), cached per origin."""
        scheme, _, rest = url.partition("://")
        origin = scheme + "://" + rest.partition("/")[0].partition("?")[0]
        try:
            return self._routes[origin]
        except KeyError:
            pass
        assert self._proxy is not None
        try:
            parts = urlsplit(url)
            host, port = parts.hostname or "", parts.port
        except ValueError:
            return None  # aiohttp refuses the URL itself, with its own error
        port = port if port is not None else 443 if scheme.lower() == "https" else 80
        route = self._routes[origin] = self._proxy.route(scheme.lower(), host, port)
        return route

    async def _send_proxied(self, request: VendorRequest, route: ProxyRoute) -> VendorResponse:
        """The round trip through the route's proxy: CONNECT for https, else absolute-form."""
        headers = request.headers
        proxy_headers = None
        if route.authorization is not None:
            if request.url.startswith("https"):
                # Sent on the CONNECT only: the vendor never sees the proxy's credentials.
                proxy_headers = {"Proxy-Authorization": route.authorization}
            else:
                headers = {**headers, "Proxy-Authorization": route.authorization}
        try:
            async with self._session.request(
                request.method,
                request.url,
                data=request.body,
                headers=headers,
                allow_redirects=False,
                proxy=route.shown,
                proxy_headers=proxy_headers,
            ) as resp:
                if resp.status == 407:
                    # An http:// vendor's request is answered by the proxy itself here.
                    resp.close()
                    raise VendorUnreachable(
                        redact(f"proxy {route.shown} refused {self.vendor}: 407 {resp.reason}")
                    )
                body = await self._read_bounded(resp)
                return VendorResponse(resp.status, resp.headers, body)
        except TimeoutError as exc:
            raise VendorTimeout(
                redact(f"no answer from {self.vendor} through proxy {route.shown}")
            ) from exc
        except aiohttp.ClientHttpProxyError as exc:
            raise VendorUnreachable(
                redact(
                    f"proxy {route.shown} refused the tunnel to {self.vendor}:"
                    f" {exc.status} {exc.message}"
                )
            ) from exc
        except aiohttp.ClientProxyConnectionError as exc:
            raise VendorUnreachable(
                redact(f"cannot reach proxy {route.shown}: {exc.os_error.strerror or exc}")
            ) from exc
        except aiohttp.ClientError as exc:
            raise VendorUnreachable(
                redact(f"{type(exc).__name__} through proxy {route.shown}: {exc}")
            ) from exc

    async def aclose(self) -> None:
        """Close the vendor's session and its pooled connections."""
        await self._session.close()

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
