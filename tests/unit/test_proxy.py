"""The egress proxy setting, pure: `no_proxy` matching, the environment's variables, credentials,
URL validation, the config fields (`http.proxy`, a vendor's `proxy`) and their redaction."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest
import yaml

from service.config import parse_config, redacted, summary
from service.core.proxy import (
    ProxyConfig,
    ProxyPolicy,
    ProxySettingError,
    effective_proxy,
    proxy_policy,
)
from service.core.redact import redact
from service.errors import ConfigError
from service.vendors.base import PROXY_TRANSPORTS, TransportName
from tests.conftest import GOAL_PURCHASE, ROOT

PASSWORD = "pr0xy-s3cret-pw"


def policy(url: str = "http://proxy.corp:3128", **fields: Any) -> ProxyPolicy:
    """The policy of an explicit proxy object."""
    made = proxy_policy(msgspec.convert({"url": url, **fields}, ProxyConfig), {})
    assert made is not None
    return made


def bypassing(*entries: str) -> ProxyPolicy:
    """A policy whose no_proxy is `entries`."""
    return policy(no_proxy=list(entries))


@pytest.mark.parametrize(
    ("entry", "host", "port", "direct"),
    [
        ("example.com", "example.com", 443, True),
        ("example.com", "api.example.com", 443, True),
        ("example.com", "badexample.com", 443, False),
        ("example.com", "example.com.evil.test", 443, False),
        (".example.com", "example.com", 443, True),
        (".example.com", "a.b.example.com", 443, True),
        ("*.example.com", "api.example.com", 443, True),
        ("EXAMPLE.com", "Api.Example.COM.", 443, True),
        ("*", "anything.test", 443, True),
        ("bücher.test", "xn--bcher-kva.test", 443, True),
        ("xn--bcher-kva.test", "api.bücher.test", 443, True),
        ("10.1.2.3", "10.1.2.3", 443, True),
        ("10.1.2.3", "10.1.2.4", 443, False),
        ("10.0.0.0/8", "10.200.3.4", 443, True),
        ("10.0.0.0/8", "11.0.0.1", 443, False),
        ("10.0.0.0/8", "ten.example", 443, False),
        ("::1", "::1", 443, True),
        ("[::1]", "[::1]", 443, True),
        ("fd00::/8", "fd12::5", 443, True),
        ("fd00::/8", "10.0.0.1", 443, False),
        ("example.com:8443", "example.com", 8443, True),
        ("example.com:8443", "example.com", 443, False),
        ("10.1.2.3:80", "10.1.2.3", 80, True),
        ("10.1.2.3:80", "10.1.2.3", 443, False),
        ("[::1]:8443", "::1", 8443, True),
        ("[::1]:8443", "::1", 443, False),
    ],
)
def test_no_proxy_entries_match_like_curl(entry: str, host: str, port: int, direct: bool) -> None:
    """Each no_proxy form matches the hosts (and ports) curl's NO_PROXY would send direct."""
    route = bypassing(entry).route("https", host, port)
    assert (route is None) is direct


@pytest.mark.parametrize("entry", ["exa mple.com", "10.0.0.0/33", "host:http", "[::1", "", "a:0"])
def test_a_malformed_no_proxy_entry_is_refused_naming_it(entry: str) -> None:
    """An entry that is none of the forms is an error naming its index."""
    with pytest.raises(ProxySettingError, match=r"no_proxy\[1\]"):
        bypassing("ok.example", entry)


def test_an_explicit_proxy_routes_both_schemes_with_default_ports() -> None:
    """One proxy serves http:// and https:// vendors; a missing port is 80 / 443 by scheme."""
    plain = policy("http://proxy.corp")
    assert plain.route("https", "v.test", 443) == plain.route("http", "v.test", 80)
    route = plain.route("https", "v.test", 443)
    assert route is not None
    assert (route.scheme, route.host, route.port, route.shown) == (
        "http",
        "proxy.corp",
        80,
        "http://proxy.corp:80",
    )
    tls = policy("https://[fd00::1]").route("http", "v.test", 80)
    assert tls is not None
    assert (tls.scheme, tls.host, tls.port, tls.shown) == (
        "https",
        "fd00::1",
        443,
        "https://[fd00::1]:443",
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("socks5://proxy:1080", "socks5:// is not supported"),
        ("proxy:3128", "not supported"),
        ("http://proxy:3128/path", "no path"),
        ("http://proxy:3128/?a=1", "no path"),
        ("http://:3128", "no host"),
        ("http://proxy:99999", "not a valid URL"),
    ],
)
def test_a_proxy_url_that_is_not_scheme_host_port_is_refused(url: str, reason: str) -> None:
    """Only http://host:port and https://host:port are proxies; the error names `url`."""
    with pytest.raises(ProxySettingError, match=reason) as caught:
        policy(url)
    assert caught.value.field == "url"


def basic(user: str, password: str) -> str:
    """The Basic Proxy-Authorization value of these credentials."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_credentials_come_from_the_url_userinfo_percent_decoded() -> None:
    """`http://user:p%40ss@proxy` sends Basic user:p@ss and shows no credential."""
    route = policy("http://relay:p%40ss-w0rd@proxy.corp:3128").route("https", "v.test", 443)
    assert route is not None
    assert route.authorization == basic("relay", "p@ss-w0rd")
    assert route.shown == "http://proxy.corp:3128"


def test_credentials_come_from_username_and_password() -> None:
    """username/password make the same Basic header; the password is among the policy's secrets."""
    made = policy(username="relay", password=PASSWORD)
    route = made.route("https", "v.test", 443)
    assert route is not None and route.authorization == basic("relay", PASSWORD)
    assert PASSWORD in made.secrets
    assert route.authorization.split()[1] in made.secrets


@pytest.mark.parametrize(
    ("url", "fields", "reason"),
    [
        ("http://u:p@proxy:1", {"username": "u"}, "give one of them"),
        ("http://proxy:1", {"password": PASSWORD}, "needs a username"),
        ("http://proxy:1", {"username": "a:b", "password": PASSWORD}, "cannot hold"),
    ],
)
def test_conflicting_or_incomplete_credentials_are_refused(
    url: str, fields: dict[str, str], reason: str
) -> None:
    """Credentials twice, a password alone, or a `:` in the user name: errors, no secret in them."""
    with pytest.raises(ProxySettingError, match=reason) as caught:
        policy(url, **fields)
    assert PASSWORD not in str(caught.value)


def test_no_setting_never_reads_the_environment() -> None:
    """null and `direct` are direct even with HTTPS_PROXY set: the environment is not read."""
    environ = {"HTTPS_PROXY": "http://proxy:3128", "https_proxy": "http://proxy:3128"}
    assert proxy_policy(None, environ) is None
    assert proxy_policy("direct", environ) is None


def test_env_takes_the_lower_case_variable_first_and_ignores_empty_ones() -> None:
    """`env`: https_proxy over HTTPS_PROXY, an empty value is unset, http:// vendors: HTTP_PROXY."""
    made = proxy_policy(
        "env",
        {
            "https_proxy": "http://lower:1",
            "HTTPS_PROXY": "http://upper:2",
            "http_proxy": "",
            "HTTP_PROXY": "plain:3",
        },
    )
    assert made is not None
    https, http = made.route("https", "v.test", 443), made.route("http", "v.test", 80)
    assert https is not None and https.shown == "http://lower:1"
    assert http is not None and http.shown == "http://plain:3"  # no scheme: http://


def test_env_uses_all_proxy_and_no_proxy_lists() -> None:
    """ALL_PROXY serves a scheme without its own variable; NO_PROXY is comma/space separated."""
    made = proxy_policy(
        "env", {"ALL_PROXY": "http://all:8080", "NO_PROXY": "internal.test, 10.0.0.0/8 ,.corp"}
    )
    assert made is not None
    assert made.route("https", "api.vendor.test", 443) is not None
    assert made.route("https", "x.internal.test", 443) is None
    assert made.route("https", "10.2.3.4", 443) is None
    assert made.route("https", "a.corp", 443) is None


def test_env_without_a_proxy_variable_is_direct() -> None:
    """`env` with none of the variables set: always direct (no policy)."""
    assert proxy_policy("env", {"NO_PROXY": "*", "PATH": "/bin"}) is None


def test_a_bad_environment_proxy_is_refused_naming_the_variable() -> None:
    """`env` with a socks proxy: an error naming HTTPS_PROXY, never its value."""
    with pytest.raises(ProxySettingError) as caught:
        proxy_policy("env", {"HTTPS_PROXY": f"socks5://u:{PASSWORD}@proxy:1080"})
    assert caught.value.problem("http.proxy").startswith(
        "http.proxy: env: the environment's HTTPS_PROXY"
    )
    assert PASSWORD not in str(caught.value)


def test_a_vendor_setting_overrides_the_relays() -> None:
    """A vendor's own proxy wins; unset inherits http.proxy; `direct` opts out."""
    relay = msgspec.convert({"url": "http://proxy:1"}, ProxyConfig)
    assert effective_proxy(relay, None) is relay
    assert effective_proxy(relay, "direct") == "direct"
    assert effective_proxy(None, "env") == "env"


def config_data(http: dict[str, Any] | None = None, **vendor: Any) -> dict[str, Any]:
    """A minimal config with one goal_reach vendor."""
    return {
        "kafka": {"bootstrap_servers": ["127.0.0.1:9092"], "topics": ["t"]},
        "http": {"transport": "aiohttp", **(http or {})},
        "vendors": {
            "gr": {
                "protocol": "goal_reach",
                "base_url": "https://vendor.test",
                "goals": {"purchase": GOAL_PURCHASE},
                **vendor,
            }
        },
    }


def problems(data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    """The problems parse_config reports for `data`."""
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env or {})
    return caught.value.problems


def test_config_defaults_to_no_proxy() -> None:
    """http.proxy is null by default and a vendor's proxy inherits it."""
    config = parse_config(config_data(), {"HTTPS_PROXY": "http://proxy:3128"})
    assert config.http.proxy is None
    assert config.vendors["gr"].proxy is None


def test_config_takes_a_proxy_object_and_vendor_overrides() -> None:
    """http.proxy as an object, a vendor's `direct` and `env`: all decoded."""
    config = parse_config(
        config_data({"proxy": {"url": "http://proxy:3128", "no_proxy": [".corp"]}}, proxy="direct"),
        {},
    )
    assert isinstance(config.http.proxy, ProxyConfig)
    assert config.http.proxy.no_proxy == [".corp"]
    assert config.vendors["gr"].proxy == "direct"


def test_a_bad_proxy_url_is_reported_at_http_proxy_url() -> None:
    """A socks URL in http.proxy: the problem names http.proxy.url."""
    found = problems(config_data({"proxy": {"url": "socks5://proxy:1080"}}))
    assert found == [
        "http.proxy.url: socks5:// is not supported: give http://host:port or https://host:port"
    ]


def test_a_bad_vendor_proxy_is_reported_at_the_vendor() -> None:
    """A vendor's own bad proxy: the problem names vendors.gr.proxy.no_proxy[0]."""
    found = problems(config_data(proxy={"url": "http://p:1", "no_proxy": ["a b"]}))
    assert len(found) == 1 and found[0].startswith("vendors.gr.proxy.no_proxy[0]: ")


def test_an_unknown_proxy_string_is_refused() -> None:
    """`http.proxy: direct` is a vendor's word only; `http.proxy: yes` is an error."""
    assert problems(config_data({"proxy": "yes"}))[0].startswith("http.proxy")
    assert problems(config_data(proxy="maybe"))[0].startswith("vendors.gr.proxy")


def test_env_proxies_are_validated_at_load() -> None:
    """`http.proxy: env` with a bad HTTPS_PROXY fails check-config, naming the variable."""
    found = problems(config_data({"proxy": "env"}), {"HTTPS_PROXY": "ftp://proxy:21"})
    assert found[0].startswith("http.proxy: env: the environment's HTTPS_PROXY")


def test_a_proxied_vendor_on_a_transport_without_proxy_support_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A proxy on a transport that cannot use it fails loudly, naming the transport field;
    `proxy: direct` on that vendor is accepted."""
    monkeypatch.setattr("service.config.PROXY_TRANSPORTS", frozenset({"pyreqwest"}))
    data = config_data({"proxy": {"url": "http://proxy:3128"}}, transport="h1")
    assert problems(data)[0].startswith("vendors.gr.transport: h1 cannot send through")
    relay_wide = config_data({"proxy": {"url": "http://proxy:3128"}})
    assert problems(relay_wide)[0].startswith("http.transport: aiohttp cannot send through")
    data["vendors"]["gr"]["proxy"] = "direct"
    parse_config(data, {})


def test_every_transport_sends_through_a_proxy() -> None:
    """h1, pyreqwest and aiohttp all carry `http.proxy` (none is refused at load)."""
    assert set(get_args(TransportName)) == PROXY_TRANSPORTS


def proxied_config(url: str = "http://proxy.corp:3128") -> dict[str, Any]:
    """A config whose proxy password comes from ${PROXY_PASSWORD}."""
    return config_data(
        {"proxy": {"url": url, "username": "relay", "password": "${PROXY_PASSWORD}"}}
    )


def test_the_proxy_password_is_redacted_everywhere_after_load() -> None:
    """The password and its Basic token: masked in redacted(), summary() and any later text."""
    config = parse_config(proxied_config(), {"PROXY_PASSWORD": PASSWORD})
    token = basic("relay", PASSWORD).split()[1]
    dumped = yaml.safe_dump(redacted(config))
    shown = summary(config)
    assert PASSWORD not in dumped and "***" in dumped
    assert "proxy=http://proxy.corp:3128" in shown and PASSWORD not in shown
    assert PASSWORD not in redact(f"failed with {PASSWORD}") and token not in redact(token)


def test_a_password_in_the_proxy_url_is_redacted_too() -> None:
    """`url: http://relay:${PW}@proxy`: masked in redacted() and summary(), remembered."""
    config = parse_config(
        config_data({"proxy": {"url": "http://relay:${PROXY_PASSWORD}@proxy.corp:3128"}}),
        {"PROXY_PASSWORD": PASSWORD},
    )
    assert PASSWORD not in yaml.safe_dump(redacted(config))
    assert PASSWORD not in summary(config)
    assert PASSWORD not in redact(f"Proxy-Authorization: {basic('relay', PASSWORD)} {PASSWORD}")


def test_check_config_never_prints_the_proxy_password(tmp_path: Path) -> None:
    """`check-config`: neither the summary nor a problem text holds the password."""
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(proxied_config()))
    bad_data = config_data({"proxy": {"url": "socks5://relay:${PROXY_PASSWORD}@proxy.corp:1080"}})
    bad.write_text(yaml.safe_dump(bad_data))
    env = {"PROXY_PASSWORD": PASSWORD, "PATH": "/usr/bin:/bin"}
    for path, code in ((good, 0), (bad, 1)):
        run = subprocess.run(
            [sys.executable, "-m", "service", "check-config", str(path)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )
        assert run.returncode == code, run.stderr
        assert PASSWORD not in run.stdout + run.stderr
    assert "http.proxy.url: socks5://" in run.stderr
