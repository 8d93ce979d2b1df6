"""Config values arrive as written, and nothing the loader or check-config prints holds a secret."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from service.cli import build_parser, main
from service.config import load_config, parse_config, plaintext_warning, redacted, summary
from service.errors import ConfigError

GOAL = "299837db-9b51-45a4-996b-844d3fd05bbd"
SECRET = "hunter2-Qx81-top-secret"


def _webhook(**extra: object) -> dict:
    return {
        "kafka": {"bootstrap_servers": ["k:9092"], "topics": ["conversions"]},
        "vendors": {
            "hook": {
                "protocol": "webhook",
                "base_url": "https://hooks.example.com",
                "path": "/in",
                "headers": {"X-Api-Key": "${HOOK_KEY}"},
                "body": {"value": "${BODY_VALUE}"},
                "goals": {"purchase": "p"},
                **extra,
            }
        },
    }


@pytest.mark.parametrize(
    "value",
    [
        "abc #tail",
        '"quoted"',
        "'single'",
        "0123",
        "yes",
        "null",
        "{a: 1, b: [2]}",
        "[1, 2, 3]",
        "- item",
        "key: value",
        "&anchor x",
        "*alias",
        "!!python/object:os.system",
        "  spaces  ",
        "",
    ],
)
def test_env_values_arrive_byte_for_byte_in_string_fields(value: str) -> None:
    """`${ENV}` substitutes text, never structure: comments, quotes, numbers, bools, YAML stay."""
    config = parse_config(_webhook(), {"HOOK_KEY": value or "k", "BODY_VALUE": value})
    vendor = config.vendors["hook"]
    assert vendor.headers["X-Api-Key"] == (value or "k")  # type: ignore[attr-defined]
    assert vendor.body["value"] == value  # type: ignore[attr-defined]


def test_an_int_field_still_takes_a_number_from_the_environment() -> None:
    """The field decides the type: "${PORT}" → 8080 in an int field, and only there."""
    data = _webhook(concurrency="${CONC}")
    data["http"] = {"port": "${PORT}"}
    config = parse_config(data, {"PORT": "8080", "CONC": "7", "HOOK_KEY": "k", "BODY_VALUE": "x"})
    assert config.http.port == 8080
    assert config.vendors["hook"].concurrency == 7


def test_an_env_value_in_an_enum_field_is_not_printed() -> None:
    """A secret placed by mistake in an enum field is reported by path, never by value."""
    data = _webhook()
    data["kafka"]["security_protocol"] = "${KAFKA_PASSWORD}"
    data["kafka"]["sasl_mechanism"] = "${KAFKA_PASSWORD}"
    env = {"KAFKA_PASSWORD": SECRET, "HOOK_KEY": "k", "BODY_VALUE": "x"}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env)
    text = "\n".join(caught.value.problems)
    assert "kafka." in text
    assert SECRET not in text and "Qx81" not in text


def test_a_yaml_alias_bomb_is_refused_quickly() -> None:
    """300 bytes of nested aliases (a billion laughs) fail fast with a clear error."""
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n"
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        bomb += f"{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
    assert len(bomb.encode()) < 400
    import yaml

    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        parse_config({**_webhook(), "bomb": yaml.safe_load(bomb)}, {})
    assert time.monotonic() - started < 2.0
    assert "expands to more than" in caught.value.problems[0]


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "relay.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_check_config_does_not_echo_a_yaml_syntax_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A syntax error names line and column, never the line's text (it may be a password)."""
    text = (
        "kafka:\n  bootstrap_servers: [k:9092]\n  topics: [c]\n"
        f'  sasl_password: "{SECRET}\n  sasl_username: relay\n'
    )
    assert main(["check-config", _write(tmp_path, text)]) == 1
    err = capsys.readouterr().err
    assert "not valid YAML at line" in err
    assert SECRET not in err and "hunter2" not in err, err


def test_check_config_never_prints_env_values_or_url_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary shows URLs without userinfo and query, and no secret field's value."""
    monkeypatch.setenv("HOOK_KEY", SECRET)
    monkeypatch.setenv("BODY_VALUE", "x")
    text = f"""
kafka: {{bootstrap_servers: ["k:9092"], topics: [c], security_protocol: SASL_PLAINTEXT,
        sasl_mechanism: PLAIN, sasl_username: relay, sasl_password: "${{HOOK_KEY}}"}}
vendors:
  hook:
    protocol: webhook
    base_url: "http://user:{SECRET}@hooks.example.com:8443/base?sig={SECRET}"
    headers: {{X-Api-Key: "${{HOOK_KEY}}"}}
    goals: {{purchase: p}}
"""
    assert main(["check-config", _write(tmp_path, text)]) == 0
    out = capsys.readouterr().out
    assert "http://hooks.example.com:8443/base" in out
    assert SECRET not in out and "Qx81" not in out, out
    assert "plain-text transport" in out


def test_redacted_masks_secret_fields_and_webhook_headers() -> None:
    """`redacted()` masks api keys, passwords and every webhook header value but Content-Type."""
    data = _webhook()
    data["vendors"]["hook"]["headers"] = {"X-Custom": SECRET, "Content-Type": "application/json"}
    config = parse_config(data, {"BODY_VALUE": "x"})
    shown = redacted(config)
    assert shown["vendors"]["hook"]["headers"] == {
        "X-Custom": "***",
        "Content-Type": "application/json",
    }
    assert SECRET not in str(shown) and SECRET not in summary(config)


def test_an_http_port_outside_the_range_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`--http-port 99999` is refused instead of binding some other port."""
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["run", "--http-port", "99999"])
    assert caught.value.code == 2
    assert "is not a port (0-65535" in capsys.readouterr().err
    assert build_parser().parse_args(["run", "--http-port", "0"]).http_port == 0


def test_plain_text_transports_give_one_warning() -> None:
    """SASL_PLAINTEXT and http:// vendor URLs are named in one warning; TLS gives none."""
    data = _webhook(base_url="http://hooks.example.com")
    data["kafka"].update(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password="p",
    )
    warning = plaintext_warning(parse_config(data, {"HOOK_KEY": "k", "BODY_VALUE": "x"}))
    assert warning is not None
    assert "SASL_PLAINTEXT" in warning and "hook" in warning
    assert plaintext_warning(parse_config(_webhook(), {"HOOK_KEY": "k", "BODY_VALUE": "x"})) is None


def test_run_logs_the_plain_text_warning_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting with an http:// vendor logs the warning once before anything else runs."""
    text = """
kafka: {bootstrap_servers: ["k:9092"], topics: [c]}
vendors:
  hook: {protocol: webhook, base_url: "http://hooks.example.com", goals: {purchase: p}}
"""
    monkeypatch.setattr("service.cli.common.setup_logging", lambda level: None)
    # An unknown --vendor makes `run` return right after the checks, without starting.
    with caplog.at_level(logging.WARNING):
        assert main(["run", "--config", _write(tmp_path, text), "--vendor", "nope"]) == 2
    assert [r.getMessage() for r in caplog.records].count(
        "plain-text transport: vendors hook use http:// (credentials in clear)"
    ) == 1


def test_a_config_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    """Binary garbage is a config error naming the file, not a traceback."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"kafka: \xff\xfe")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "not UTF-8" in caught.value.problems[0]


def test_config_secrets_are_masked_in_any_later_text() -> None:
    """Once loaded, a secret field's value (a custom webhook header too) is masked everywhere."""
    from service.core.redact import redact

    data = _webhook()
    data["vendors"]["hook"]["headers"] = {"X-Custom": "${CUSTOM}"}
    parse_config(data, {"CUSTOM": "custom-Vb93-header-secret", "BODY_VALUE": "x"})
    assert "Vb93" not in redact("vendor echoed custom-Vb93-header-secret back")
