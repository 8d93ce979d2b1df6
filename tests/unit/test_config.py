"""Loading the YAML config: secrets from the environment, and every error with its path."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
import yaml

from service.cli import main
from service.config import load_config, parse_config, redacted
from service.errors import ConfigError

GOAL = "299837db-9b51-45a4-996b-844d3fd05bbd"


def _base(**vendor: object) -> dict:
    return {
        "kafka": {"bootstrap_servers": ["k:9092"], "topics": ["conversions"]},
        "vendors": {
            "sustain_impact": {
                "protocol": "goal_reach",
                "base_url": "https://api.x.de",
                "goals": {"purchase": GOAL},
                **vendor,
            }
        },
    }


def _problems(data: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env or {})
    return caught.value.problems


def test_a_valid_config_loads_with_defaults():
    """Defaults fill everything not given; goal ids come back as text."""
    config = parse_config(_base(), {})
    assert config.kafka.group_prefix == "conversion-relay"
    assert config.http.port == 8080
    assert config.vendors["sustain_impact"].goal_ids() == {"purchase": GOAL}
    assert config.pipeline.low_water == 500


def test_env_references_are_resolved_and_typed():
    """`${VAR}` fills secrets and numbers; `${VAR:-default}` falls back."""
    data = _base(concurrency="${CONC}")
    data["kafka"]["bootstrap_servers"] = ["${BOOT:-localhost:9092}"]
    config = parse_config(data, {"CONC": "7"})
    assert config.vendors["sustain_impact"].concurrency == 7
    assert config.kafka.bootstrap_servers == ["localhost:9092"]


def test_a_missing_env_variable_is_an_error_naming_it():
    """A secret that is not set is reported with the variable's name and the key's path."""
    data = _base()
    data["kafka"]["sasl_password"] = "${KAFKA_PASSWORD}"
    assert "kafka.sasl_password: environment variable KAFKA_PASSWORD is not set" in _problems(data)


def test_every_error_is_reported_with_its_path():
    """Problems in several vendors and sections are all listed, each with its dotted path."""
    data = _base(goals={"purchase": GOAL, "signup": 7})
    data["vendors"]["broken"] = {"protocol": "nope", "base_url": "https://x"}
    data["vendors"]["typo"] = {"protocol": "goal_reach", "base_url": "https://x", "concurency": 3}
    data["http"] = {"port": "abc"}
    problems = _problems(data)
    assert "vendors.sustain_impact.goals.signup: expected uuid, got int" in problems
    assert (
        "vendors.broken.protocol: invalid value 'nope'; choose from altcraft, conductrics, "
        "expertsender, goal_reach, webhook"
    ) in problems
    assert any(p.startswith("vendors.typo") and "concurency" in p for p in problems)
    assert "http.port: expected int, got str" in problems


def test_sasl_without_credentials_is_rejected():
    """SASL_SSL needs a mechanism and credentials."""
    data = _base()
    data["kafka"]["security_protocol"] = "SASL_SSL"
    problems = _problems(data)
    assert any(p.startswith("kafka.sasl_mechanism") for p in problems)


def test_redacted_config_hides_secrets():
    """Config dumps never show passwords or API keys."""
    data = _base()
    data["kafka"].update(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="relay",
        sasl_password="hunter2",
    )
    dump = str(redacted(parse_config(data, {})))
    assert "hunter2" not in dump and "***" in dump


def test_check_config_prints_ok_and_a_summary(tmp_path: Path, capsys):
    """`check-config` on a good file prints ok, the vendors and their routes; exit 0."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_base()))
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok")
    assert "sustain_impact (goal_reach, enabled)" in out and f"purchase -> {GOAL}" in out


def test_check_config_lists_every_error_and_exits_1(tmp_path: Path, capsys):
    """`check-config` on a bad file prints each problem with its path; exit 1."""
    data = _base(goals={"purchase": "not-a-uuid"}, timeout_s=-1)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "vendors.sustain_impact" in err


def test_unreadable_or_invalid_yaml_is_a_config_error(tmp_path: Path):
    """A missing file or broken YAML gives a ConfigError, not a traceback."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_the_shipped_example_config_is_valid():
    """examples/config.yaml passes validation."""
    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "examples" / "config.yaml", {})
    assert config.enabled_vendors()


def test_the_outgoing_client_defaults_to_h1_and_a_vendor_may_choose_its_own():
    """`http.transport` is h1 (the relay's own HTTP/1.1 client) unless set; a vendor's
    `transport` and connect timeout are its own (null = the http section's choice)."""
    config = parse_config(_base(), {})
    vendor = config.vendors["sustain_impact"]
    assert (config.http.transport, config.http.ca_bundle) == ("h1", None)
    assert (vendor.transport, vendor.connect_timeout_s) == (None, 5.0)
    data = _base(transport="aiohttp", connect_timeout_s=1.5)
    data["http"] = {"transport": "aiohttp"}
    config = parse_config(data, {})
    assert config.http.transport == "aiohttp"
    assert config.vendors["sustain_impact"].transport == "aiohttp"
    assert config.vendors["sustain_impact"].connect_timeout_s == 1.5


def test_an_unknown_transport_is_an_error_naming_the_key():
    """Only h1, pyreqwest and aiohttp are transports, in the http section and per vendor."""
    data = _base(transport="curl")
    data["http"] = {"transport": "requests"}
    assert _problems(data) == [
        "vendors.sustain_impact.transport: invalid enum value 'curl'",
        "http.transport: invalid enum value 'requests'",
    ]


def test_a_ca_bundle_that_cannot_be_used_is_an_error_naming_the_key(tmp_path: Path):
    """A missing, empty or corrupt `http.ca_bundle` fails the load, naming the field and file."""
    data = _base()
    data["http"] = {"ca_bundle": str(tmp_path / "missing.pem")}
    assert _problems(data) == [
        f"http.ca_bundle: cannot read {tmp_path / 'missing.pem'}: No such file or directory"
    ]
    empty = tmp_path / "empty.pem"
    empty.write_text("no certificate here\n")
    data["http"] = {"ca_bundle": str(empty)}
    assert _problems(data) == [f"http.ca_bundle: {empty} holds no PEM certificate"]
    corrupt = tmp_path / "corrupt.pem"
    corrupt.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    data["http"] = {"ca_bundle": str(corrupt)}
    [problem] = _problems(data)
    assert problem.startswith(f"http.ca_bundle: {corrupt}: a certificate is not valid")


def test_a_readable_ca_bundle_loads(tmp_path: Path):
    """A PEM file of CA certificates is accepted and its path kept."""
    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    data = _base()
    data["http"] = {"ca_bundle": str(bundle)}
    assert parse_config(data, {}).http.ca_bundle == str(bundle)
