"""The pyreqwest transport: Rust's hyper + rustls behind the same `Transport` contract as aiohttp's.

One `Client` per vendor, built once: TLS verified against the system's roots (plus
`http.ca_bundle`), connect and total timeouts, at most `concurrency` requests in flight (the
pool keeps as many idle connections), keep-alive, no redirect followed, no cookie store, the
proxy of the vendor's `ProxyPolicy` (never one taken from the environment on its own: reqwest's
own HTTP(S)_PROXY reading is off), statuses returned rather than raised. The answer body is read
up to the limit and no further; pyreqwest's errors become `VendorTimeout` / `VendorUnreachable`
here, their text without URLs and redacted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from urllib.parse import urlsplit

from pyreqwest.client import ClientBuilder
from pyreqwest.exceptions import PyreqwestError, RequestTimeoutError
from pyreqwest.http import Url
from pyreqwest.proxy import ProxyBuilder

from service.core.exchange import VendorRequest, VendorResponse
from service.core.proxy import ProxyPolicy, ProxyRoute
from service.core.targets import encoded_url
from service.errors import VendorTimeout, VendorUnreachable
from service.logs import redact
from service.vendors.base import VendorBase
from service.vendors.paths import shown_url

__all__ = ["PyreqwestTransport"]

# reqwest names the request URL in its error text ("error sending request for url (...)"): the
# query and userinfo may hold a vendor's key, so every URL is shown as scheme, host and path only.
_URL = re.compile(r"https?://[^\s()]+")
# Body bytes read ahead with the headers: most vendor answers whole. A declared Content-Length
# over the limit fails once this much (or the whole body) arrived; a vendor that declares one and
# stalls before sending this much ends in VendorTimeout instead (aiohttp fails it at the headers).
_PREFETCH_BYTES = 16 * 1024


def _shown(text: str) -> str:
    """`text` with each URL reduced to scheme, host and path, then redacted."""
    return redact(_URL.sub(lambda url: shown_url(url.group(0)), text))


def _error_text(exc: PyreqwestError) -> str:
    """The error's kind and its chain of causes, shown safely."""
    details = getattr(exc, "details", None) or {}
    causes = [cause["message"] for cause in details.get("causes") or ()]
    return _shown("; ".join([f"{type(exc).__name__}: {exc.message}", *causes]))


def _why(lengths: list[str]) -> str:
    """What makes an answer's length ambiguous."""
    if len(lengths) > 1:
        return f"{len(lengths)} Content-Length headers"
    return "both Transfer-Encoding and Content-Length"


def _proxies(policy: ProxyPolicy) -> list[ProxyBuilder]:
    """reqwest proxies that route exactly as the policy does (its `no_proxy` included)."""
    builders = []
    for target, route in (("https", policy.https), ("http", policy.http)):
        if route is None:
            continue

        # reqwest asks for each new connection (and each http:// request): the policy decides.
        def pick(url: Url, target: str = target, route: ProxyRoute = route) -> str | None:
            if url.scheme != target:
                return None
            host, port = url.host_str or "", url.port_or_known_default or 0
            return None if policy.bypassed(host, port) else route.shown

        builder = ProxyBuilder.custom(pick)
        if route.authorization is not None:
            builder = builder.custom_http_auth(route.authorization)
        builders.append(builder)
    return builders


class PyreqwestTransport:
    """The pyreqwest transport of one vendor."""

    def __init__(
        self,
        vendor: str,
        config: VendorBase,
        *,
        max_body_bytes: int,
        ca_certificates: Sequence[bytes] = (),
        proxy: ProxyPolicy | None = None,
    ) -> None:
        self.vendor = vendor
        self._timeout_s = config.timeout_s
        self._max_body_bytes = max_body_bytes
        self._read_bytes = max_body_bytes + 1  # one byte past the limit tells "over it"
        builder = (
            ClientBuilder()
            .timeout(timedelta(seconds=config.timeout_s))
            # Within the total budget: a connect timeout above it could never fire.
            .connect_timeout(timedelta(seconds=min(config.connect_timeout_s, config.timeout_s)))
            .max_connections(config.concurrency)
            .pool_max_idle_per_host(config.concurrency)
            # A 3xx is an answer the sender classifies (never a delivery, never followed).
            .follow_redirects(False)
            .default_cookie_store(False)
            # Parity with aiohttp's trust_env=False: HTTP(S)_PROXY never reroutes vendor traffic
            # on its own; `http.proxy` (the policy) adds the proxies below.
            .no_proxy()
            .error_for_status(False)
            # aiohttp's decoders are gzip and deflate; offer vendors the same Accept-Encoding.
            .brotli(False)
            .zstd(False)
            # RFC 9112 §5.2: a user agent MUST unfold an obs-folded header (hyper refuses it).
            .http1_allow_obsolete_multiline_headers_in_responses(True)
        )
        for certificate in ca_certificates:
            builder = builder.add_root_certificate_pem(certificate)
        self._proxied = proxy is not None
        # The proxy of the vendor's origin (every request goes to its base_url), named in errors.
        self._through = ""
        if proxy is not None:
            origin = urlsplit(config.base_url)
            scheme = origin.scheme.lower()
            port = origin.port or (443 if scheme == "https" else 80)
            route = proxy.route(scheme, origin.hostname or "", port)
            self._through = f" (through proxy {route.shown})" if route is not None else ""
        for proxy_builder in _proxies(proxy) if proxy is not None else ():
            builder = builder.proxy(proxy_builder)
        self._client = builder.build()
        # Bound once: the send path makes as few Python-level calls as it can.
        self._request = self._client.request

    async def send(self, request: VendorRequest) -> VendorResponse:
        """The HTTP round trip, no redirect followed, the body bounded."""
        limit = self._max_body_bytes
        try:
            # Streamed, so the bound holds: a non-streamed `build().send()` reads any body whole
            # into memory (it measured ~2 µs/request cheaper against nginx, 24 vs 26 µs CPU,
            # but cannot keep the bound, so there is no unstreamed path). Entering the block
            # waits for the headers and up to _PREFETCH_BYTES of body (or its end): a vendor's
            # short answer then comes with the headers, and `read(limit + 1)` (which returns
            # once it has that many bytes or the body ended) costs no further wait; a prefetch
            # of 0 measured ~4 µs/request more (30 vs 26 µs).
            async with (
                self._request(request.method, encoded_url(request.url))
                .headers(request.headers)
                .body_bytes(request.body)
                .streamed_read_buffer_limit(_PREFETCH_BYTES)
                .build_streamed() as response
            ):
                if response.status == 407 and self._proxied:
                    # An http:// vendor's request answered by the proxy itself, not the vendor.
                    raise VendorUnreachable(
                        redact(f"407 Proxy Authentication Required{self._through}")
                    )
                headers = response.headers
                lengths = headers.getall("content-length")
                if len(lengths) > 1 or (lengths and "transfer-encoding" in headers):
                    # hyper reads one of them; RFC 9112 §6.3 makes either shape an error (a
                    # smuggling shape), as h1 and aiohttp treat it. The body is left unread.
                    raise VendorUnreachable(
                        redact(f"ambiguous answer framing from {self.vendor}: {_why(lengths)}")
                    )
                declared = lengths[0] if lengths else None
                if declared is not None and int(declared) > limit:
                    # Leaving the block with the body unread closes the connection, undrained.
                    raise VendorUnreachable(
                        redact(f"answer of {declared} bytes is over the {limit}-byte limit")
                    )
                body = await response.body_reader.read(self._read_bytes)
                if body is None:
                    return VendorResponse(response.status, headers, b"")
                if len(body) > limit:
                    raise VendorUnreachable(redact(f"answer body is over the {limit}-byte limit"))
                return VendorResponse(response.status, headers, bytes(body))
        except RequestTimeoutError as exc:
            raise VendorTimeout(
                redact(f"no answer from {self.vendor} within {self._timeout_s:g}s{self._through}")
            ) from exc
        except PyreqwestError as exc:
            raise VendorUnreachable(_error_text(exc) + self._through) from exc
        except ValueError as exc:  # a URL or header pyreqwest refuses before sending
            raise VendorUnreachable(_shown(f"{type(exc).__name__}: {exc}")) from exc

    async def aclose(self) -> None:
        """Close the client and its pooled connections."""
        await self._client.close()
