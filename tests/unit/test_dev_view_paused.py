"""The dev live table marks a vendor an operator paused: `paused` in its breaker column, and
who paused it, when and why above the table (issue 24)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console

from service.devtools.dev import table_for
from service.devtools.view import VendorCounts, paused_note, row

AT_S = datetime(2026, 12, 7, 15, 31, 2, tzinfo=UTC).timestamp()


def test_a_paused_vendor_shows_paused_and_who_why_when() -> None:
    note = paused_note("altcraft", "ops@host", "vendor outage", AT_S)
    assert note == "altcraft paused by ops@host at 15:31:02Z: vendor outage"
    rows = [
        row("altcraft", VendorCounts(consumed=40), "ok", "closed", 40, note),
        row("conductrics", VendorCounts(consumed=3, delivered=3), "ok", "closed", 0),
    ]
    assert rows[0]["breaker"] == "paused" and rows[1]["breaker"] == "closed"
    table, _ = table_for(rows, 80)
    out = io.StringIO()
    Console(file=out, width=80, force_terminal=False, color_system=None).print(table)
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(note in line for line in lines), out.getvalue()
    altcraft = next(line for line in lines if line.strip().startswith("altcraft "))
    assert " paused " in f"{altcraft} "
