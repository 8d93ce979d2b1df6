"""The `schema_registry:` section: what an `avro` input needs, basic auth and TLS from the config,
and its password, given as `${ENV}`, redacted like every other secret."""

from __future__ import annotations

from typing import Any

import pytest

from service.config import parse_config, redacted
from service.core.redact import redact
from service.errors import ConfigError

GOAL = "299837db-9b51-45a4-996b-844d3fd05bbd"
FIELDS = {"event_id": "$.uuid", "goal": "$.type", "occurred_at": "$.ts | epoch_ms"}
PASSWORD = "reg-Secret-9f3a1c"


def _config(**sections: Any) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": ["k:9092"], "topics": ["shop.orders"]},
        "inputs": {"shop": {"topic": "shop.orders", "format": "avro", "fields": FIELDS}},
        "vendors": {
            "sustain_impact": {
                "protocol": "goal_reach",
                "base_url": "https://api.x.de",
                "goals": {"purchase": GOAL},
            }
        },
        **sections,
    }


def _problems(data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(data, env or {})
    return raised.value.problems


def test_an_avro_input_needs_a_schema_registry_section() -> None:
    assert _problems(_config()) == ["inputs.shop.format: avro needs a `schema_registry:` section"]


def test_protobuf_and_json_schema_inputs_need_a_schema_registry_section_too() -> None:
    data = _config()
    data["kafka"]["topics"] = ["shop.orders", "web.orders"]
    data["inputs"] = {
        "mobile": {"topic": "shop.orders", "format": "protobuf", "fields": FIELDS},
        "web": {"topic": "web.orders", "format": "json_schema", "fields": FIELDS},
    }
    assert _problems(data) == [
        "inputs.mobile.format: protobuf needs a `schema_registry:` section",
        "inputs.web.format: json_schema needs a `schema_registry:` section",
    ]
    parse_config({**data, "schema_registry": {"url": "https://sr:8081"}}, {})


def test_basic_auth_needs_both_halves_and_a_key_needs_its_certificate() -> None:
    problems = _problems(
        _config(
            schema_registry={"url": "https://sr:8081", "username": "relay", "ssl_keyfile": "k.pem"}
        )
    )
    assert problems == [
        "schema_registry: username and password go together (basic auth)",
        "schema_registry.ssl_keyfile: needs ssl_certfile",
    ]


def test_the_url_is_http_or_https_and_max_schemas_is_bounded() -> None:
    problems = _problems(_config(schema_registry={"url": "sr:8081", "max_schemas": 0}))
    assert [p.partition(":")[0] for p in problems] == [
        "schema_registry.url",
        "schema_registry.max_schemas",
    ]


def test_the_registry_password_from_env_is_redacted_everywhere() -> None:
    data = _config(
        schema_registry={
            "url": "https://sr.example.com",
            "username": "relay",
            "password": "${SR_PASSWORD}",
            "ssl_cafile": "/etc/ca.pem",
        }
    )
    config = parse_config(data, {"SR_PASSWORD": PASSWORD})
    registry = config.schema_registry
    assert registry is not None and registry.password == PASSWORD
    assert redacted(config)["schema_registry"]["password"] == "***"
    assert PASSWORD not in redact(f"401 from registry for relay:{PASSWORD}")
