"""Dev mode's live table (issue 25, finding 3): columns that add up, a one-line legend, numbers
shortened (k/M) and never cut, columns dropped by priority on narrow terminals."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from service.devtools.dev import table_for
from service.devtools.view import (
    COLUMNS,
    DROP_ORDER,
    PauseClock,
    VendorCounts,
    legend,
    row,
    short_count,
    short_seconds,
)


def test_the_columns_add_up_with_invalid_events_counted_dead() -> None:
    """in = ok + skip + dead + flight; dead counts invalid and unreadable records too."""
    counts = VendorCounts(
        consumed=1444, delivered=420, deduplicated=10, skipped=990, rejected=5, invalid=14,
        unreadable=1, dead_lettered=2, expired=1, retried=40, dlq_writes=23,
    )  # fmt: skip
    assert counts.ok == 430 and counts.dead == 23
    assert counts.in_flight == 1444 - 430 - 990 - 23
    shown = row("altcraft", counts, "ok", "closed", 3)
    total = sum(int(shown[c]) for c in ("ok", "skip", "dead", "flight"))
    assert int(shown["in"]) == total
    assert shown["dead"] == shown["dlq"]


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (9999, "9999"), (10_000, "10.0k"), (123_456, "123k"), (999_500, "1.00M"),
     (1_234_567, "1.23M"), (45_600_000, "45.6M")],
)  # fmt: skip
def test_counts_are_shortened_with_k_and_m_to_five_characters(value: int, text: str) -> None:
    """Big counts keep their magnitude in at most five characters."""
    assert short_count(value) == text
    assert len(text) <= 5


def test_seconds_are_shortened() -> None:
    """Rate-limit seconds stay short too."""
    assert [short_seconds(s) for s in (0, 3.26, 250.4, 12_345)] == [
        "0.0s",
        "3.3s",
        "250s",
        "12.3ks",
    ]


def _rows(big: bool) -> list[dict[str, str]]:
    scale = 1_000 if big else 1
    rows = []
    for index, name in enumerate(
        ("sustain_impact", "sales_ninja", "expertsender", "altcraft", "conductrics")
    ):
        counts = VendorCounts(
            consumed=1444 * scale + index, delivered=430 * scale, skipped=990 * scale,
            invalid=14 * scale + index, retried=77 * scale, dlq_writes=14 * scale + index,
            wait_s=3.5 * scale,
        )  # fmt: skip
        fault = "429 Retry-After 3s" if name == "altcraft" else "ok"
        rows.append(row(name, counts, fault, "half_open", 12 * scale))
    return rows


@pytest.mark.parametrize("width", [80, 100, 60])
@pytest.mark.parametrize("big", [False, True])
def test_the_table_fits_the_terminal_and_cuts_no_number(width: int, big: bool) -> None:
    """Every line within the width; every cell shown whole; the sum's columns always there;
    the legend one line."""
    rows = _rows(big)
    table, columns = table_for(rows, width)
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False, color_system=None).print(table)
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width, "\n".join(lines)
    assert {"vendor", "in", "ok", "skip", "dead", "flight"} <= set(columns)
    dropped = {c for c in COLUMNS if c not in columns}
    assert dropped == set(DROP_ORDER[: len(dropped)])  # by priority, the least needed first
    text = out.getvalue()
    for shown in rows:
        line = next(line for line in lines if line.strip().startswith(shown["vendor"]))
        for column in columns:
            assert f" {shown[column]}" in f" {line}", (column, line)
    legend_lines = [line for line in lines if "in=ok+skip+dead+flight" in line]
    assert len(legend_lines) == 1, text
    if width >= 80:
        assert "rl wait" in columns and "breaker" in columns


def test_the_legend_is_one_line_within_the_width() -> None:
    """Definitions of columns not shown, or not fitting, are left out."""
    assert len(legend(COLUMNS, 80)) <= 80
    assert "dead: to DLQ, invalid too" in legend(COLUMNS, 80)
    assert "skip: not routed here" in legend(COLUMNS, 80)
    assert "dlq" not in legend([c for c in COLUMNS if c != "dlq"], 200)


def test_the_pause_clock_counts_retry_after_pauses_as_they_pass() -> None:
    """A 3 s pause sampled every 0.5 s counts 3 s once over, not before it has passed."""
    clock = PauseClock()
    assert clock.sample(10.0, 3.0) == 0.0
    assert clock.sample(10.5, 2.5) == pytest.approx(0.5)
    for step in range(2, 12):
        seen = clock.sample(10.0 + step * 0.5, max(0.0, 3.0 - step * 0.5))
    assert seen == pytest.approx(3.0)
    assert clock.sample(30.0, 0.0) == pytest.approx(3.0)
