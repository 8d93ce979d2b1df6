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
