"""Egress proxy routing, pure: which proxy (if any) a vendor request goes through.

`http.proxy` (or a vendor's own `proxy`) is resolved once per vendor into a `ProxyPolicy`:
`route(scheme, host, port)` is the proxy a request to that origin goes through, or None (direct:
a `no_proxy` match, or no proxy for that scheme). `proxy_policy` returns None when every request
goes direct (`null`, `direct`, or `env` with no proxy variable set), so a transport without a
policy keeps its direct path untouched.

The environment is read only for the setting `env`, the way curl and requests read it:
`https_proxy`/`HTTPS_PROXY` for https:// vendors, `http_proxy`/`HTTP_PROXY` for http:// ones,
`all_proxy`/`ALL_PROXY` for both when those are unset, `no_proxy`/`NO_PROXY` for exceptions
(the lower-case name first, an empty value counts as unset, a value without a scheme is http://).

`no_proxy` entries (a list in the config, comma-separated in the environment), like curl's:

    *                    every host
    example.com          example.com and every name under it (not badexample.com)
    .example.com         the same (a leading `.` or `*.` is ignored)
    10.1.2.3, ::1        that address (only a request to that IP literal: names are not resolved)
    10.0.0.0/8, fd00::/8 every address in the network
    example.com:8443     ... on that port only (also `10.1.2.3:8443`, `[::1]:8443`)
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

import msgspec

__all__ = [
    "ProxyConfig",
    "ProxyPolicy",
    "ProxyRoute",
    "ProxySetting",
    "ProxySettingError",
    "VendorProxySetting",
    "effective_proxy",
    "proxy_policy",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An egress proxy every vendor request goes through (but for `no_proxy` matches)."""

    # `http://host:port` (CONNECT tunnels for https:// vendors) or `https://host:port` (TLS to
    # the proxy too, verified like a vendor); no path; the port defaults to 80 / 443.
    url: Annotated[str, msgspec.Meta(min_length=1)]
    # Proxy user name (Basic auth); or give `user:password@` in the url.
    username: str | None = None
    # Proxy password: give it as `${ENV}`, never in the file.
    password: str | None = None
    # Vendors reached directly: host names (and the names under them), `.suffix`, `*`, IPs,
    # CIDRs, each optionally `:port`, as in curl's NO_PROXY.
    no_proxy: list[str] = []


# `http.proxy`: null = direct (the environment is never read), `env` = the environment's
# HTTPS_PROXY/HTTP_PROXY/NO_PROXY, or a proxy of its own.
ProxySetting = Literal["env"] | ProxyConfig | None
# A vendor's `proxy`: the same, plus `direct`; null = inherit `http.proxy`.
VendorProxySetting = Literal["env", "direct"] | ProxyConfig | None


class ProxySettingError(ValueError):
    """An unusable proxy setting; `field` is where (`url`, `no_proxy[1]`, `HTTPS_PROXY`)."""

    def __init__(self, field: str, reason: str, *, environment: bool = False) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.environment = environment

    def problem(self, where: str) -> str:
        """The config problem text for the setting at `where` (`http.proxy`, `vendors.x.proxy`)."""
        if self.environment:
            return f"{where}: env: the environment's {self.field} {self.reason}"
        return f"{where}.{self.field}: {self.reason}"


class ProxyRoute(msgspec.Struct, frozen=True):
    """How to reach the proxy one request goes through."""

    # How to reach the proxy itself: plain TCP, or TLS to the proxy (then CONNECT inside it).
    scheme: Literal["http", "https"]
    # The proxy's host name or IP (an IPv6 address without brackets).
    host: str
    port: int
    # The whole Proxy-Authorization header value ("Basic ..."), or None.
    authorization: str | None
    # The proxy URL without credentials (`http://proxy:3128`, `http://[::1]:3128`): what logs and
    # /status show, and the URL to hand a client library (credentials go in `authorization`).
    shown: str


class _Bypass(msgspec.Struct, frozen=True):
    """One `no_proxy` entry: everything, a domain (and below it), or an IP network; maybe a port."""

    everything: bool = False
    domain: str | None = None
    network: IpNetwork | None = None
    port: int | None = None


class ProxyPolicy(msgspec.Struct, frozen=True):
    """Where a vendor's requests go: the proxy for each vendor scheme, and the direct exceptions."""

    # The proxy of http:// vendors and of https:// ones (None: that scheme goes direct).
    http: ProxyRoute | None
    https: ProxyRoute | None
    bypass: tuple[_Bypass, ...] = ()
    # Passwords and Authorization tokens this policy holds: for `remember_secrets`.
    secrets: tuple[str, ...] = ()

    def route(self, scheme: str, host: str, port: int) -> ProxyRoute | None:
        """The proxy a request to `scheme://host:port` goes through; None = direct."""
        chosen = self.https if scheme == "https" else self.http if scheme == "http" else None
        if chosen is None or self.bypassed(host, port):
            return None
        return chosen

    def bypassed(self, host: str, port: int) -> bool:
        """Whether a `no_proxy` entry sends `host:port` direct."""
        name = _ascii_name(host.strip("[]").rstrip(".").lower())
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
            address = ipaddress.ip_address(name)
        except ValueError:
            address = None
        for rule in self.bypass:
            if rule.port is not None and rule.port != port:
                continue
            if rule.everything:
                return True
            if rule.network is not None:
                if (
                    address is not None
                    and address.version == rule.network.version
                    and address in rule.network
                ):
                    return True
            elif (
                rule.domain is not None
                and address is None
                and (name == rule.domain or name.endswith("." + rule.domain))
            ):
                return True
        return False

    @property
    def shown(self) -> str:
        """The proxies, without credentials, for a summary line."""
        routes = {r.shown for r in (self.https, self.http) if r is not None}
        text = ", ".join(sorted(routes))
        return text + (f" (no_proxy: {len(self.bypass)} entries)" if self.bypass else "")


def effective_proxy(relay: ProxySetting, vendor: VendorProxySetting) -> VendorProxySetting:
    """A vendor's proxy setting: its own when set, else the relay's (`http.proxy`)."""
    return relay if vendor is None else vendor


def proxy_policy(setting: VendorProxySetting, environ: Mapping[str, str]) -> ProxyPolicy | None:
    """The policy of a resolved setting; None = always direct. Raises ProxySettingError.

    `environ` is read only for `env`.
    """
    if setting is None or setting == "direct":
        return None
    if setting == "env":
        return _from_environment(environ)
    assert isinstance(setting, ProxyConfig)
    route, secrets = _route(setting.url, "url", setting.username, setting.password)
    bypass = tuple(_bypass(entry, f"no_proxy[{i}]") for i, entry in enumerate(setting.no_proxy))
    return ProxyPolicy(http=route, https=route, bypass=bypass, secrets=secrets)


def _variable(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """The (name, value) of the lower-case variable, else the upper-case one; empty = unset."""
    for key in (name.lower(), name.upper()):
        value = environ.get(key, "").strip()
        if value:
            return key, value
    return None


def _from_environment(environ: Mapping[str, str]) -> ProxyPolicy | None:
    fallback = _variable(environ, "all_proxy")
    found: dict[str, tuple[ProxyRoute, tuple[str, ...]] | None] = {}
    for scheme in ("http", "https"):
        variable = _variable(environ, f"{scheme}_proxy") or fallback
        if variable is None:
            found[scheme] = None
            continue
        name, value = variable
        # curl and requests read `proxy:3128` as an http:// proxy.
        url = value if "://" in value else f"http://{value}"
        try:
            found[scheme] = _route(url, name, None, None)
        except ProxySettingError as exc:
            raise ProxySettingError(name, exc.reason, environment=True) from None
    http, https = found["http"], found["https"]
    if http is None and https is None:
        return None
    bypass: list[_Bypass] = []
    if (no_proxy := _variable(environ, "no_proxy")) is not None:
        name, value = no_proxy
        entries = [e.strip() for e in value.replace(" ", ",").split(",")]
        try:
            bypass = [_bypass(e, name) for e in entries if e]
        except ProxySettingError as exc:
            raise ProxySettingError(name, exc.reason, environment=True) from None
    secrets = tuple(s for pair in (http, https) if pair is not None for s in pair[1])
    return ProxyPolicy(
        http=http[0] if http else None,
        https=https[0] if https else None,
        bypass=tuple(bypass),
        secrets=tuple(dict.fromkeys(secrets)),
    )


def _route(
    url: str, field: str, username: str | None, password: str | None
) -> tuple[ProxyRoute, tuple[str, ...]]:
    """The route of a proxy URL and the secrets it carries; the URL itself is never in an error."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        # urlsplit's text quotes the URL, which may hold the password.
        raise ProxySettingError(field, "not a valid URL (http://host:port)") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        shown = f"{scheme}://" if scheme else "no scheme"
        raise ProxySettingError(
            field, f"{shown} is not supported: give http://host:port or https://host:port"
        )
    if not host:
        raise ProxySettingError(field, "has no host (http://host:port)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxySettingError(field, "must be scheme://host:port only (no path or query)")
    if parts.username is not None or parts.password is not None:
        if username is not None or password is not None:
            raise ProxySettingError(
                field, "has credentials and username/password are set too: give one of them"
            )
        username = unquote(parts.username or "")
        password = unquote(parts.password or "")
    if password and not username:
        raise ProxySettingError(field, "a proxy password needs a username")
    secrets: list[str] = []
    authorization = None
    if username:
        if ":" in username:
            raise ProxySettingError(field, "a proxy username cannot hold `:` (Basic auth)")
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
        authorization = f"Basic {token}"
        secrets = [token, *([password] if password else [])]
    port = port if port is not None else _DEFAULT_PORTS[scheme]
    shown_host = f"[{host}]" if ":" in host else host
    route = ProxyRoute(
        scheme="https" if scheme == "https" else "http",
        host=host,
        port=port,
        authorization=authorization,
        shown=f"{scheme}://{shown_host}:{port}",
    )
    return route, tuple(secrets)


def _ascii_name(name: str) -> str:
    """An internationalised host name in its punycode form (as clients send it); else itself."""
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def _port(text: str, field: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ProxySettingError(field, f"{entry!r}: the port is not a number from 1 to 65535")
    return int(text)


def _bypass(entry: str, field: str) -> _Bypass:
    """One `no_proxy` entry, parsed; ProxySettingError naming it when it is none of the forms."""
    text = entry.strip().lower()
    if text == "*":
        return _Bypass(everything=True)
    if not text:
        raise ProxySettingError(field, "an empty entry")
    if "/" in text:
        try:
            return _Bypass(network=ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ProxySettingError(field, f"{entry!r} is not an IP network (10.0.0.0/8)") from None
    port: int | None = None
    if text.startswith("["):
        address, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ProxySettingError(field, f"{entry!r} is not `[IPv6]` or `[IPv6]:port`")
        if rest:
            port = _port(rest[1:], field, entry)
        text = address
    elif text.count(":") == 1:
        text, _, port_text = text.partition(":")
        port = _port(port_text, field, entry)
    try:
        address_ = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return _Bypass(network=ipaddress.ip_network(address_), port=port)
    domain = _ascii_name(text.removeprefix("*.").lstrip(".").rstrip("."))
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-._")
    if not domain or not set(domain) <= allowed:
        raise ProxySettingError(
            field, f"{entry!r} is not a host name, .domain, *, IP or CIDR (as in NO_PROXY)"
        )
    return _Bypass(domain=domain, port=port)
