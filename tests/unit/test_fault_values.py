"""`fault` values checked per mode, the same at the CLI and at the control endpoint; every
default shown in help (issue 25, finding 5)."""

from __future__ import annotations

import pytest

from service.cli import build_parser, main
from service.core.faults import DEFAULTS, FaultValueError, checked_value


def _help(*argv: str) -> str:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    target = sub[argv[0]] if argv else parser
    return " ".join(target.format_help().split())


@pytest.mark.parametrize(
    ("mode", "value", "allowed"),
    [
        ("slow", "-1", "0 to 60"),
        ("slow", "nan", "0 to 60"),
        ("errors", "1.5", "0 to 1"),
        ("errors", "-0.1", "0 to 1"),
        ("throttle", "0.5", "whole number"),
        ("throttle", "-2", "0 to 3600"),
        ("reject", "2.5", "whole number"),
        ("reject", "-1", "0 to 1000000"),
        ("down", "5", "takes no VALUE"),
        ("up", "1", "takes no VALUE"),
        ("ok", "0", "takes no VALUE"),
        ("slow", "fast", "not a number"),
    ],
)
def test_a_value_out_of_its_modes_range_is_a_usage_error_naming_it(
    mode: str, value: str, allowed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 and one line naming the value and the allowed range; nothing is sent (the
    control URL is unreachable: a sent request would be exit 1)."""
    code = main(["fault", "altcraft", mode, value, "--control", "http://127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1
    assert value in err and allowed in err and mode in err


@pytest.mark.parametrize(
    ("mode", "text", "expected"),
    [
        ("errors", None, 1.0),
        ("errors", "0.3", 0.3),
        ("throttle", None, 5),
        ("throttle", "3", 3),
        ("reject", None, 10),
        ("reject", "5", 5),
        ("slow", None, 1.0),
        ("slow", "0.25", 0.25),
        ("down", None, None),
        ("ok", None, None),
    ],
)
def test_a_missing_value_takes_the_modes_default(
    mode: str, text: str | None, expected: float | None
) -> None:
    """errors = 100 %, reject = 10, slow = 1 s, throttle = 5 s; modes without a value get None."""
    assert checked_value(mode, text) == expected


def test_checked_value_raises_for_an_unknown_mode() -> None:
    """A mode that does not exist names the valid ones."""
    with pytest.raises(FaultValueError, match="choose from down, up, errors"):
        checked_value("explode", None)


def test_fault_help_shows_every_modes_default_and_range() -> None:
    """`fault --help` says each default (and what VALUE means per mode)."""
    shown = _help("fault")
    for mode in DEFAULTS:
        assert f"{mode}:" in shown
    assert "default 1 = 100 %" in shown
    assert "default 5" in shown and "default 10" in shown and "default 1 s" in shown
    assert "VALUE" in shown and "0 to 60" in shown


def test_a_default_of_zero_is_shown_in_help() -> None:
    """`0 == False` hid `--control-port`'s default of 0."""
    shown = _help("dev")
    assert "(0 = pick a free one) (default: 0)" in shown


def test_the_dev_banner_gives_reject_its_value() -> None:
    """The ready-to-paste fault command carries its VALUE."""
    from pathlib import Path

    from service.devtools.dev import commands

    fault = next(c for c in commands(Path("/tmp/x.yaml"), "http://c") if " fault " in c)
    assert " fault altcraft reject 5 " in f"{fault} "
