"""What each dev-mode fault (`conversion-relay fault`) takes as its VALUE: the one check the
`fault` command and dev mode's control endpoint share (pure and light, so `fault` starts fast
and the CLI loads nothing of service.devtools)."""

from __future__ import annotations

import math
from typing import Final, NamedTuple

__all__ = ["DEFAULTS", "MODES", "FaultValueError", "ValueRule", "checked_value", "value_help"]


class FaultValueError(ValueError):
    """A mode's VALUE outside what the mode takes (or a mode that does not exist)."""


class ValueRule(NamedTuple):
    """What one mode's VALUE means, its range and its default."""

    means: str  # what the number is, for help and errors
    low: float
    high: float
    whole: bool  # a whole number (a count or whole seconds)
    default: float
    shown_default: str  # the default as help prints it


# Modes in the order help lists them; those absent from RULES take no VALUE.
MODES: Final = ("down", "up", "errors", "throttle", "reject", "slow", "ok")
RULES: Final = {
    "errors": ValueRule("share of requests answered 503", 0.0, 1.0, False, 1.0, "1 = 100 %"),
    # Retry-After is whole seconds on the wire (RFC 9110 delay-seconds).
    "throttle": ValueRule("Retry-After seconds of the 429", 0, 3600, True, 5, "5"),
    "reject": ValueRule("next valid requests rejected", 0, 1_000_000, True, 10, "10"),
    "slow": ValueRule("seconds of latency before each answer", 0.0, 60.0, False, 1.0, "1 s"),
}
DEFAULTS: Final = {mode: rule.default for mode, rule in RULES.items()}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def checked_value(mode: str, text: str | None) -> float | None:
    """The mode's VALUE from its text (None: the default); FaultValueError naming the value and
    the allowed range when the mode does not take it. Modes without a VALUE give None."""
    if mode not in MODES:
        raise FaultValueError(f"{mode}: not a mode; choose from {', '.join(MODES)}")
    rule = RULES.get(mode)
    if rule is None:
        if text is not None:
            raise FaultValueError(f"{mode} takes no VALUE, got {text!r}")
        return None
    if text is None:
        return rule.default
    allowed = f"{_number(rule.low)} to {_number(rule.high)}"
    kind = "a whole number " if rule.whole else ""
    try:
        value = float(text)
    except ValueError:
        raise FaultValueError(
            f"{mode} {text!r}: not a number; give {kind}{allowed} ({rule.means})"
        ) from None
    if (
        not math.isfinite(value)
        or not rule.low <= value <= rule.high
        or (rule.whole and not value.is_integer())
    ):
        raise FaultValueError(f"{mode} {text}: give {kind}{allowed} ({rule.means})")
    return float(int(value)) if rule.whole else value


def value_help() -> str:
    """VALUE per mode, its range and default, for `fault --help`."""
    parts = []
    for mode, rule in RULES.items():
        kind = "whole " if rule.whole else ""
        parts.append(
            f"{mode}: {rule.means}, {kind}{_number(rule.low)} to {_number(rule.high)} "
            f"(default {rule.shown_default})"
        )
    return "the mode's number; " + "; ".join(parts) + "; down, up and ok take none"
