"""check-config takes $RELAY_CONFIG like every other subcommand; the configuration guide lists
every transport."""

from __future__ import annotations

import typing

import pytest

from service.cli import main
from service.config import HttpConfig, TransportName
from tests.conftest import ROOT


def test_check_config_reads_relay_config_when_no_file_is_given(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check-config` with no FILE validates $RELAY_CONFIG, as `run` and `dlq` do."""
    monkeypatch.setenv("RELAY_CONFIG", str(ROOT / "examples" / "config.yaml"))
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out.startswith("ok\n")


def test_check_config_with_neither_file_nor_relay_config_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No FILE and no $RELAY_CONFIG: exit 2 with a line saying how to give one."""
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    assert main(["check-config"]) == 2
    assert "RELAY_CONFIG" in capsys.readouterr().err


def test_the_configuration_guide_example_names_the_default_transport_and_every_choice() -> None:
    """The guide's full example shows http.transport at its default and lists every choice."""
    text = (ROOT / "docs" / "guide" / "configuration.md").read_text()
    line = next(x for x in text.splitlines() if x.strip().startswith("transport:"))
    value, _, comment = line.split(":", 1)[1].partition("#")
    assert value.strip() == HttpConfig().transport
    for choice in typing.get_args(TransportName):
        assert choice in comment, choice


_SECRET_FIELDS = (
    "kafka: {bootstrap_servers: ['k:9092'], topics: [c], sasl_password: '${%s}'}",
    "kafka: {bootstrap_servers: ['k:9092'], topics: [c], sasl_username: '${%s}'}",
    "kafka: {bootstrap_servers: ['k:9092'], topics: [c]}\n"
    "vendors: {a: {protocol: altcraft, base_url: 'https://a.example', token: '${%s}',"
    " goals: {purchase: 1}}}",
)


@pytest.mark.parametrize("template", _SECRET_FIELDS)
@pytest.mark.parametrize(
    "variable", ["KAFKA_PASSWORD", "API_TOKEN", "SECRET", "PASSWORD", "environment", "X"]
)
def test_check_config_shows_a_missing_secret_variable_in_words_never_masked(
    template: str,
    variable: str,
    tmp_path: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loader message is words, not a secret: `environment variable X is not set` in full."""
    monkeypatch.delenv(variable, raising=False)
    path = tmp_path / "c.yaml"  # type: ignore[operator]
    path.write_text(template % variable)
    assert main(["check-config", str(path)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert any(line.endswith(f": environment variable {variable} is not set") for line in lines)
    assert "***" not in "\n".join(lines)


def test_check_config_still_masks_a_secret_value_inside_a_message(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value that does reach a message (a URL with a password) is masked, the words kept."""
    path = tmp_path / "c.yaml"  # type: ignore[operator]
    path.write_text(
        "kafka: {bootstrap_servers: ['k:9092'], topics: [c]}\n"
        "vendors: {a: {protocol: webhook, base_url: 'ftp://u:hunter2@h.example', "
        "goals: {purchase: p}}}\n"
    )
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert "vendors.a.base_url" in err


def test_an_unknown_protocol_lists_the_valid_ones(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """`protocol: webhok` names every protocol the relay knows."""
    path = tmp_path / "c.yaml"  # type: ignore[operator]
    path.write_text(
        "kafka: {bootstrap_servers: ['k:9092'], topics: [c]}\n"
        "vendors: {a: {protocol: webhok, base_url: 'https://h.example', goals: {purchase: p}}}\n"
    )
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "vendors.a.protocol: invalid value 'webhok'" in err
    for name in ("altcraft", "conductrics", "expertsender", "goal_reach", "webhook"):
        assert name in err


NINE_MISTAKES = """\
kafka:
  bootstrap_servers: ["k:9092"]
  topics: [c]
  session_timeout_ms: lots
  heartbeat_interval_ms: 9000
  fetch_max_bytes: 10
http:
  port: "eighty"
  transport: curl
pipeline:
  max_in_flight: -1
vendors:
  a:
    protocol: altcraft
    base_url: "https://a.example"
    token: t
    concurency: 3
    goals: {purchase: 1}
  b:
    protocol: webhok
    base_url: "https://b.example"
    goals: {purchase: p}
workers: 0
"""


def test_check_config_reports_every_mistake_in_one_pass_in_file_order(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nine mistakes in one file: nine lines in one run, each with its path, in file order."""
    path = tmp_path / "c.yaml"  # type: ignore[operator]
    path.write_text(NINE_MISTAKES)
    assert main(["check-config", str(path)]) == 1
    paths = [line.partition(": ")[0] for line in capsys.readouterr().err.splitlines()]
    assert paths == [
        "kafka.session_timeout_ms",
        "kafka.fetch_max_bytes",
        "http.port",
        "http.transport",
        "pipeline.max_in_flight",
        "vendors.a",
        "vendors.a.goals.purchase",
        "vendors.b.protocol",
        "workers",
    ]
