"""The chart leaves no door open: secrets only by reference, egress only to public hosts, and an
empty `metricsFrom` admits nobody."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

from tests.packaging.relay_packaging import render, scenario_values
from tests.packaging.test_chart_values import _merge

LITERAL_SECRETS = {
    "literal api_key": {
        "config": {
            "vendors": {
                "es": {"protocol": "expertsender", "base_url": "https://x", "api_key": "k1-abc"}
            }
        }
    },
    "api_key with a literal default": {
        "config": {
            "vendors": {
                "es": {
                    "protocol": "expertsender",
                    "base_url": "https://x",
                    "api_key": "${ES_KEY:-k1-abc}",
                }
            }
        }
    },
    "literal altcraft token": {
        "config": {
            "vendors": {"ac": {"protocol": "altcraft", "base_url": "https://x", "token": "t"}}
        }
    },
    "literal sasl_password": {"config": {"kafka": {"sasl_password": "hunter2"}}},
    "literal webhook header": {
        "config": {
            "vendors": {
                "h": {
                    "protocol": "webhook",
                    "base_url": "https://x",
                    "headers": {"X-Api-Key": "k1-abc"},
                }
            }
        }
    },
    "literal bearer header": {
        "config": {
            "vendors": {
                "h": {
                    "protocol": "webhook",
                    "base_url": "https://x",
                    "headers": {"Authorization": "Bearer abc"},
                }
            }
        }
    },
    "literal redis password": {"config": {"redis": {"url": "redis://:hunter2@redis:6379/0"}}},
    "literal proxy password": {
        "config": {"http": {"proxy": {"url": "http://p:3128", "username": "u", "password": "pw"}}}
    },
    "literal password in the proxy url": {
        "config": {"http": {"proxy": {"url": "http://relay:hunter2@p:3128"}}}
    },
    "literal vendor proxy password": {
        "config": {
            "vendors": {
                "es": {
                    "protocol": "expertsender",
                    "base_url": "https://x",
                    "api_key": "${K}",
                    "proxy": {"url": "http://p:3128", "username": "u", "password": "pw"},
                }
            }
        }
    },
}


@pytest.mark.parametrize("bad", LITERAL_SECRETS.values(), ids=LITERAL_SECRETS.keys())
def test_schema_rejects_literal_secrets(chart: helm_python.Chart, bad: dict[str, Any]) -> None:
    """A secret written into values (and so into the ConfigMap) is refused at install."""
    values = _merge(scenario_values("minimal"), bad)
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(chart.merge_values(values))


def test_schema_accepts_secrets_by_reference(chart: helm_python.Chart) -> None:
    """`${ENV}` references (a header may hold one after a scheme) are what the schema takes."""
    good = {
        "config": {
            "kafka": {"sasl_password": "${KAFKA_SASL_PASSWORD}"},
            "redis": {"url": "redis://relay:${REDIS_PASSWORD}@redis:6379/0"},
            "http": {
                "proxy": {
                    "url": "http://p.proxy.svc:3128",
                    "username": "relay",
                    "password": "${PROXY_PASSWORD}",
                    "no_proxy": [".svc", "10.0.0.0/8"],
                }
            },
            "vendors": {
                "h": {
                    "protocol": "webhook",
                    "base_url": "https://x",
                    "headers": {
                        "Authorization": "Bearer ${HOOK_TOKEN}",
                        "Content-Type": "application/json",
                    },
                },
                "es": {"protocol": "expertsender", "base_url": "https://x", "api_key": "${K}"},
                "direct": {"protocol": "goal_reach", "base_url": "https://x", "proxy": "direct"},
                "own": {
                    "protocol": "goal_reach",
                    "base_url": "https://x",
                    "proxy": {"url": "https://relay:${OWN_PROXY_PASSWORD}@p.example:8443"},
                },
            },
        }
    }
    chart.validate_schema(chart.merge_values(_merge(scenario_values("minimal"), good)))


def test_default_vendor_egress_excludes_private_link_local_and_shared_space(
    chart: helm_python.Chart,
) -> None:
    """Cloud metadata (169.254/16), CGNAT (100.64/10) and RFC 1918 are carved out of 0.0.0.0/0."""
    values = _merge(scenario_values("minimal"), {"networkPolicy": {"enabled": True}})
    policy = render(chart, values).one("NetworkPolicy")
    vendor_rules = [
        peer["ipBlock"]
        for rule in policy["spec"]["egress"]
        for peer in rule.get("to", [])
        if peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
    ]
    assert vendor_rules
    for block in vendor_rules:
        assert {
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "169.254.0.0/16",
            "100.64.0.0/10",
        } <= set(block["except"])


def test_behind_an_egress_proxy_the_vendor_egress_can_be_only_the_proxy(
    chart: helm_python.Chart,
) -> None:
    """vendors.cidrs [] with the proxy as the peer: the only vendor egress is the proxy's port."""
    proxy_peer = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "proxy"}},
        "podSelector": {"matchLabels": {"app": "egress-proxy"}},
    }
    values = _merge(
        scenario_values("minimal"),
        {
            "config": {"http": {"proxy": {"url": "http://egress-proxy.proxy.svc:3128"}}},
            "networkPolicy": {
                "enabled": True,
                "vendors": {"cidrs": [], "peers": [proxy_peer], "ports": [3128]},
            },
        },
    )
    policy = render(chart, values).one("NetworkPolicy")
    to_proxy = [rule for rule in policy["spec"]["egress"] if proxy_peer in rule.get("to", [])]
    assert to_proxy == [{"to": [proxy_peer], "ports": [{"port": 3128, "protocol": "TCP"}]}]
    assert not any(
        peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
        for rule in policy["spec"]["egress"]
        for peer in rule.get("to", [])
    )


def test_empty_metrics_from_admits_no_source(chart: helm_python.Chart) -> None:
    """`metricsFrom: []` renders no ingress rule at all, never one without `from` (= anyone)."""
    values = _merge(scenario_values("minimal"), {"networkPolicy": {"enabled": True}})
    policy = render(chart, values).one("NetworkPolicy")
    assert policy["spec"]["ingress"] == []
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from")


def test_status_access_is_mirrored_and_loopback_by_default(chart: helm_python.Chart) -> None:
    """The chart's config passes http.status_access through; values.yaml keeps /status local."""
    values = scenario_values("minimal")
    rendered = render(chart, values)
    assert "status_access: loopback" in rendered.relay_config()
    token = _merge(values, {"config": {"http": {"status_access": "token"}}})
    assert "status_access: token" in render(chart, token).relay_config()
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(
            chart.merge_values(_merge(values, {"config": {"http": {"status_access": "all"}}}))
        )
