"""The egress proxy on every transport, against a real forward proxy and HTTPS vendors on loopback.

The vendors' certificates come from a private CA (trustme) given as `http.ca_bundle`. A vendor
named `vendor.test` exists only for the proxy (it maps the name to the vendor's loopback port),
so a request that went direct could not reach it; each vendor also records the peer port of
every request, which must be one of the proxy's own upstream sockets.
"""

from __future__ import annotations

import base64
import io
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import trustme
from aiohttp import web

from service.config import HttpConfig
from service.core.exchange import VendorRequest, VendorResponse
from service.delivery.transport import Transport, make_transport
from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from service.errors import VendorUnreachable
from service.logs import JsonFormatter
from service.net import free_port
from service.sandbox.base import Sandbox
from service.sandbox.goal_reach import GoalReachContract
from tests.conftest import goal_reach_vendor, read_topic, relay_config, wait_for
from tests.proxy_server import ProxyServer
from tests.transports import TRANSPORTS, plain_vendor

PASSWORD = "Pr0xy-pa55word-xyz"
AUTHORIZATION = "Basic " + base64.b64encode(f"relay:{PASSWORD}".encode()).decode()


@pytest.fixture(params=TRANSPORTS)
def kind(request: pytest.FixtureRequest) -> str:
    """The transport under test (every one sends through a proxy)."""
    return str(request.param)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """The private CA of every vendor and proxy certificate here."""
    return trustme.CA()


@pytest.fixture
def bundle(ca: trustme.CA, tmp_path: Path) -> str:
    """The CA as an `http.ca_bundle` file."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server TLS context with a certificate for `names`, signed by the private CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@dataclass
class Vendor:
    """A vendor server on loopback: its port and what reached it."""

    port: int
    scheme: str
    peers: list[int] = field(default_factory=list)  # the client port of each request
    headers: list[dict[str, str]] = field(default_factory=list)

    def url(self, host: str = "vendor.test") -> str:
        """The vendor's base URL under `host`."""
        return f"{self.scheme}://{host}:{self.port}"


Serve = Callable[..., Awaitable[Vendor]]


@pytest.fixture
async def serve(ca: trustme.CA) -> AsyncIterator[Serve]:
    """Start vendors (HTTPS by default, a `vendor.test`/127.0.0.1 certificate); all stopped."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application | None = None, tls: bool = True) -> Vendor:
        if app is None:
            app = web.Application()

            async def ok(request: web.Request) -> web.Response:
                await request.read()
                return web.Response(text="ok")

            app.router.add_route("*", "/{tail:.*}", ok)
        vendor = Vendor(0, "https" if tls else "http")

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            assert request.transport is not None
            vendor.peers.append(request.transport.get_extra_info("peername")[1])
            vendor.headers.append(dict(request.headers))
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.append(record)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        runners.append(runner)
        context = server_context(ca, "vendor.test", "127.0.0.1") if tls else None
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        vendor.port = runner.addresses[-1][1]
        return vendor

    yield start
    for runner in runners:
        await runner.cleanup()


Proxies = Callable[..., Awaitable[ProxyServer]]


@pytest.fixture
async def proxies() -> AsyncIterator[Proxies]:
    """Start forward proxies on loopback; all stopped at the end."""
    started: list[ProxyServer] = []

    async def start(**settings: Any) -> ProxyServer:
        started.append(await ProxyServer(**settings).start())
        return started[-1]

    yield start
    for proxy in started:
        await proxy.stop()


@pytest.fixture
async def transports() -> AsyncIterator[Callable[..., Transport]]:
    """Build a vendor's transport as the relay does, from `http` settings; all closed at the end."""
    made: list[Transport] = []

    def build(kind: str, base_url: str, bundle: str, **http: Any) -> Transport:
        vendor_settings = http.pop("vendor", {})
        config = msgspec.convert({"transport": kind, "ca_bundle": bundle, **http}, HttpConfig)
        made.append(make_transport("v", plain_vendor(base_url, **vendor_settings), config))
        return made[-1]

    yield build
    for transport in made:
        await transport.aclose()


@pytest.fixture
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy variable from the machine running the tests."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


async def post(transport: Transport, url: str) -> VendorResponse:
    """A small JSON POST to `url`."""
    return await transport.send(
        VendorRequest("POST", f"{url}/goal", {"Content-Type": "application/json"}, b"{}")
    )


def through(proxy: ProxyServer, vendor: Vendor) -> None:
    """Assert every request the vendor saw came from one of the proxy's own connections."""
    assert vendor.peers, "the vendor saw no request"
    assert set(vendor.peers) <= proxy.upstream_ports
    assert all("Proxy-Authorization" not in h for h in vendor.headers)


@pytest.mark.usefixtures("no_proxy_environment")
async def test_an_explicit_proxy_tunnels_https_vendors_and_ignores_https_proxy(
    kind: str,
    serve: Serve,
    proxies: Proxies,
    transports: Callable[..., Transport],
    bundle: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`http.proxy` set: an HTTPS vendor is reached by CONNECT through it, never direct, never
    through the environment's HTTPS_PROXY; the vendor never sees the proxy credentials."""
    vendor = await serve()
    proxy = await proxies(
        hosts={"vendor.test": ("127.0.0.1", vendor.port)}, require_authorization=AUTHORIZATION
    )
    decoy = await proxies(hosts={"vendor.test": ("127.0.0.1", vendor.port)})
    monkeypatch.setenv("HTTPS_PROXY", decoy.url)
    setting = {"url": proxy.url, "username": "relay", "password": PASSWORD}
    transport = transports(kind, vendor.url(), bundle, proxy=setting)
    for _ in range(3):
        assert (await post(transport, vendor.url())).status == 200
    assert proxy.tunnels == [f"vendor.test:{vendor.port}"]  # one tunnel, kept alive
    assert [p.authorization for p in proxy.passed] == [AUTHORIZATION]
    assert decoy.connections == 0
    through(proxy, vendor)


@pytest.mark.usefixtures("no_proxy_environment")
async def test_https_proxy_in_the_environment_is_not_used_without_http_proxy(
    kind: str,
    serve: Serve,
    proxies: Proxies,
    transports: Callable[..., Transport],
    bundle: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`http.proxy` unset: HTTPS_PROXY/https_proxy/ALL_PROXY are ignored, the vendor is direct."""
    vendor = await serve()
    decoy = await proxies()
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, decoy.url)
    transport = transports(kind, vendor.url("127.0.0.1"), bundle)
    assert (await post(transport, vendor.url("127.0.0.1"))).status == 200
    assert decoy.connections == 0


@pytest.mark.usefixtures("no_proxy_environment")
async def test_http_proxy_env_takes_the_environments_proxy(
    kind: str,
    serve: Serve,
    proxies: Proxies,
    transports: Callable[..., Transport],
    bundle: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`http.proxy: env`: HTTPS_PROXY (with its userinfo credentials) carries the vendor."""
    vendor = await serve()
    proxy = await proxies(
        hosts={"vendor.test": ("127.0.0.1", vendor.port)}, require_authorization=AUTHORIZATION
    )
    monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("://", f"://relay:{PASSWORD}@"))
    monkeypatch.setenv("NO_PROXY", "internal.test,10.0.0.0/8")
    transport = transports(kind, vendor.url(), bundle, proxy="env")
    assert (await post(transport, vendor.url())).status == 200
    assert proxy.tunnels == [f"vendor.test:{vendor.port}"]
    through(proxy, vendor)


@pytest.mark.usefixtures("no_proxy_environment")
async def test_a_no_proxy_match_goes_direct(
    kind: str,
    serve: Serve,
    proxies: Proxies,
    transports: Callable[..., Transport],
    bundle: str,
) -> None:
    """A vendor whose address is in `no_proxy` (a CIDR here) is reached directly."""
    vendor = await serve()
    proxy = await proxies()
    setting = {"url": proxy.url, "no_proxy": ["internal.test", "127.0.0.0/8"]}
    transport = transports(kind, vendor.url("127.0.0.1"), bundle, proxy=setting)
    assert (await post(transport, vendor.url("127.0.0.1"))).status == 200
    assert proxy.connections == 0
    assert vendor.peers


@pytest.mark.usefixtures("no_proxy_environment")
async def test_a_vendor_with_proxy_direct_skips_the_relays_proxy(
    kind: str,
    serve: Serve,
    proxies: Proxies,
    transports: Callable[..., Transport],
    bundle: str,
) -> None:
    """`proxy: direct` on a vendor: direct although `http.proxy` is set (on every transport)."""
    vendor = await serve()
    proxy = await proxies()
    transport = transports(
        kind,
        vendor.url("127.0.0.1"),
        bundle,
        proxy={"url": proxy.url},
        vendor={"proxy": "direct"},
    )
    assert (await post(transport, vendor.url("127.0.0.1"))).status == 200
    assert proxy.connections == 0


@pytest.mark.usefixtures("no_proxy_environment")
@pytest.mark.parametrize("password", [None, "wrong-password-123"])
async def test_a_proxy_refusing_credentials_is_unreachable_naming_the_proxy(
    kind: str,
    password: str | None,
    serve: Serve,
    proxies: Proxies,
    transports: Callable[..., Transport],
    bundle: str,
) -> None:
    """407 (no or wrong credentials), for https and http vendors: VendorUnreachable naming the
    proxy's URL and the 407, never the password nor its Basic token."""
    https_vendor, http_vendor = await serve(), await serve(tls=False)
    proxy = await proxies(
        hosts={"vendor.test": ("127.0.0.1", https_vendor.port)},
        require_authorization=AUTHORIZATION,
    )
    proxy.hosts["http-vendor.test"] = ("127.0.0.1", http_vendor.port)
    setting: dict[str, Any] = {"url": proxy.url}
    if password is not None:
        setting |= {"username": "relay", "password": password}
    for url in (https_vendor.url(), http_vendor.url("http-vendor.test")):
        transport = transports(kind, url, bundle, proxy=setting)
        with pytest.raises(VendorUnreachable) as caught:
            await post(transport, url)
        text = str(caught.value)
        assert proxy.url in text and ("407" in text or "authorization required" in text), text
        if password is not None:
            token = base64.b64encode(f"relay:{password}".encode()).decode()
            assert password not in text and token not in text
    assert not https_vendor.peers and not http_vendor.peers


@pytest.mark.usefixtures("no_proxy_environment")
async def test_an_unreachable_proxy_is_unreachable_naming_it(
    kind: str, transports: Callable[..., Transport], bundle: str
) -> None:
    """Nothing listening at the proxy: VendorUnreachable naming the proxy, no password."""
    url = f"http://127.0.0.1:{free_port()}"
    setting = {"url": url, "username": "relay", "password": PASSWORD}
    transport = transports(kind, "https://vendor.test", bundle, proxy=setting)
    with pytest.raises(VendorUnreachable) as caught:
        await post(transport, "https://vendor.test")
    assert url in str(caught.value) and PASSWORD not in str(caught.value)


@pytest.mark.usefixtures("no_proxy_environment")
async def test_an_https_proxy_is_reached_over_tls(
    kind: str,
    ca: trustme.CA,
    serve: Serve,
    proxies: Proxies,
    transports: Callable[..., Transport],
    bundle: str,
) -> None:
    """An `https://` proxy: TLS to the proxy (its certificate checked with ca_bundle), then the
    CONNECT tunnel and the vendor's own TLS inside it."""
    vendor = await serve()
    proxy = await proxies(
        hosts={"vendor.test": ("127.0.0.1", vendor.port)},
        ssl_context=server_context(ca, "127.0.0.1"),
    )
    assert proxy.url.startswith("https://")
    transport = transports(kind, vendor.url(), bundle, proxy={"url": proxy.url})
    assert (await post(transport, vendor.url())).status == 200
    assert proxy.tunnels == [f"vendor.test:{vendor.port}"]
    through(proxy, vendor)


@pytest.mark.usefixtures("no_proxy_environment")
async def test_a_plain_http_vendor_goes_through_the_proxy_in_absolute_form(
    kind: str,
    serve: Serve,
    proxies: Proxies,
    transports: Callable[..., Transport],
    bundle: str,
) -> None:
    """An http:// vendor: the request goes to the proxy in absolute form with the credentials,
    which the proxy strips; the vendor sees only the proxy's connections."""
    vendor = await serve(tls=False)
    proxy = await proxies(
        hosts={"vendor.test": ("127.0.0.1", vendor.port)}, require_authorization=AUTHORIZATION
    )
    setting = {"url": proxy.url.replace("://", f"://relay:{PASSWORD}@")}
    transport = transports(kind, vendor.url(), bundle, proxy=setting)
    for _ in range(2):
        assert (await post(transport, vendor.url())).status == 200
    assert proxy.forwarded == [f"{vendor.url()}/goal"] * 2
    through(proxy, vendor)


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Every relay log record of the test, at debug, as the relay writes them (JSON lines)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root, relay = logging.getLogger(), logging.getLogger("conversion_relay")
    level = relay.level
    root.addHandler(handler)
    relay.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    relay.setLevel(level)


@pytest.mark.usefixtures("no_proxy_environment")
async def test_a_relay_behind_a_connect_proxy_delivers_to_an_https_vendor_only_through_it(
    kind: str,
    broker: Any,
    topics: Any,
    run_relay: Callable[[dict[str, Any]], Awaitable[Any]],
    serve: Serve,
    proxies: Proxies,
    bundle: str,
    json_logs: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A relay whose only way out is an authenticating CONNECT proxy delivers every event to an
    HTTPS sandbox with a private CA; a vendor with the wrong proxy password is dead-lettered
    with the proxy named; the password is in no log line and no DLQ header."""
    good, refused = Sandbox(GoalReachContract()), Sandbox(GoalReachContract())
    good_vendor, refused_vendor = await serve(good.make_app()), await serve(refused.make_app())
    proxy = await proxies(
        hosts={
            "vendor.test": ("127.0.0.1", good_vendor.port),
            "refused.test": ("127.0.0.1", refused_vendor.port),
        },
        require_authorization=AUTHORIZATION,
    )
    monkeypatch.setenv("TEST_PROXY_PASSWORD", PASSWORD)
    vendors = {
        "sustain_impact": goal_reach_vendor(good) | {"base_url": good_vendor.url()},
        "sales_ninja": goal_reach_vendor(refused)
        | {
            "base_url": refused_vendor.url("refused.test"),
            "retry": {"max_attempts": 1},
            "proxy": {"url": proxy.url, "username": "relay", "password": "wrong-pass-42"},
        },
    }
    http = {
        "host": "127.0.0.1",
        "port": 0,
        "transport": kind,
        "ca_bundle": bundle,
        "proxy": {"url": proxy.url, "username": "relay", "password": "${TEST_PROXY_PASSWORD}"},
    }
    await run_relay(relay_config(broker, topics, vendors, http=http))
    lines = list(sample_lines(200))
    await publish(broker.bootstrap, topics.source, lines)
    events = [orjson.loads(line) for line in lines]
    expected = sum(
        1
        for e in events
        if e["goal"] in ("purchase", "signup") and "sustain_impact" in e["customer"]["ids"]
    )
    await wait_for(lambda: len(good.accepted) >= expected, 60, "deliveries through the proxy")
    dead = await read_topic(broker.bootstrap, topics.dlq, 1)

    assert len(good.accepted) == expected and not good.refused
    assert set(proxy.tunnels) == {f"vendor.test:{good_vendor.port}"}
    assert any(p.target == f"refused.test:{refused_vendor.port}" for p in proxy.passed)
    through(proxy, good_vendor)
    assert not refused_vendor.peers and not refused.accepted
    headers = [(k, v.decode()) for record in dead for k, v in record.headers]
    assert any(proxy.url in v for _, v in headers), headers
    logs = json_logs.getvalue()
    assert "dead-lettered" in logs
    for secret in (PASSWORD, AUTHORIZATION.split()[1]):
        assert secret not in logs
        assert all(secret not in v for _, v in headers)
