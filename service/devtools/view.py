"""What dev mode's live table shows, as pure data: per-vendor counts that add up, numbers that
fit a narrow column without being cut (k/M), and which columns go first on a narrow terminal.

in = ok + skip + dead + flight: every record a vendor's pipeline fetched is delivered (or was
delivered before: dedup), skipped on purpose (not routed to this vendor, a tombstone), dead
(dead-lettered for any reason, invalid events included: what `dlq` counts), or still in
flight (being sent, or waiting for its next retry).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import msgspec

__all__ = [
    "COLUMNS",
    "DROP_ORDER",
    "PauseClock",
    "VendorCounts",
    "legend",
    "paused_note",
    "row",
    "short_count",
    "short_seconds",
]

# Left to right. The four terms of the sum and the vendor are never dropped.
COLUMNS: Final = (
    "vendor",
    "fault",
    "breaker",
    "in",
    "ok",
    "skip",
    "dead",
    "flight",
    "retry",
    "dlq",
    "rl wait",
    "lag",
)
# Dropped first to last while the table is wider than the terminal.
DROP_ORDER: Final = ("retry", "dlq", "fault", "lag", "rl wait", "breaker")
# What each column counts, for the legend, most needed first (the sum says what `in` is).
LEGEND_SUM: Final = "in=ok+skip+dead+flight"
MEANS: Final = {
    "skip": "skip: not routed here",
    "dead": "dead: to DLQ, invalid too",
    "flight": "flight: sending or retrying",
    "rl wait": "rl wait: rate limit + Retry-After",
    "ok": "ok: delivered (or before: dedup)",
    "retry": "retry: retries scheduled",
    "dlq": "dlq: letters written",
    "lag": "lag: records behind",
}


class VendorCounts(msgspec.Struct, frozen=True, kw_only=True):
    """One vendor's counters as the relay's metrics hold them."""

    consumed: float = 0
    delivered: float = 0
    deduplicated: float = 0
    skipped: float = 0  # every skip reason (routing, tombstone)
    rejected: float = 0
    dead_lettered: float = 0  # retries exhausted
    expired: float = 0
    invalid: float = 0  # not a valid event (dead-lettered as invalid_event)
    unreadable: float = 0  # the Kafka client could not read it (unreadable_record)
    retried: float = 0  # retries scheduled (attempts, not records: not part of the sum)
    dlq_writes: float = 0
    wait_s: float = 0.0  # rate-limiter waits plus Retry-After pauses

    @property
    def ok(self) -> float:
        """Delivered now or before (dedup)."""
        return self.delivered + self.deduplicated

    @property
    def dead(self) -> float:
        """Dead-lettered for any reason."""
        return self.rejected + self.dead_lettered + self.expired + self.invalid + self.unreadable

    @property
    def in_flight(self) -> float:
        """Fetched and not yet terminal: being sent, or waiting for a retry."""
        return max(0.0, self.consumed - self.ok - self.skipped - self.dead)


def short_count(value: float) -> str:
    """A count in at most 5 characters, rounded, never cut: 9999, 12.3k, 123k, 1.23M."""
    n = round(value)
    if n < 10_000:
        return str(n)
    for scale, unit in ((1e3, "k"), (1e6, "M"), (1e9, "G")):
        scaled = n / scale
        if scaled < 999.5 or unit == "G":
            if scaled < 9.995:
                return f"{scaled:.2f}{unit}"
            if scaled < 99.95:
                return f"{scaled:.1f}{unit}"
            return f"{scaled:.0f}{unit}"
    raise AssertionError("unreachable: the last unit takes every size")


def short_seconds(value_s: float) -> str:
    """Seconds in at most 6 characters: 0.0s, 12.3s, 1234s, 12.3ks."""
    if value_s < 100:
        return f"{value_s:.1f}s"
    if value_s < 10_000:
        return f"{value_s:.0f}s"
    return f"{short_count(value_s)}s"


def paused_note(vendor: str, by: str, reason: str, at_s: float) -> str:
    """Who paused a vendor, when (UTC, to the second) and why: `altcraft paused by ops at
    15:31:02Z: audit`."""
    at = datetime.fromtimestamp(at_s, UTC).strftime("%H:%M:%SZ") if at_s else "?"
    return f"{vendor} paused by {by or '?'} at {at}" + (f": {reason}" if reason else "")


def row(
    vendor: str, counts: VendorCounts, fault: str, breaker: str, lag: int, paused: str = ""
) -> dict[str, str]:
    """One table row, every number shortened to fit its column; a vendor paused by an operator
    shows `paused` in the breaker column and its `paused_note` under `paused` (not a column)."""
    shown = {"paused": paused} if paused else {}
    return {
        **shown,
        "vendor": vendor,
        "fault": fault,
        "breaker": "paused" if paused else breaker,
        "in": short_count(counts.consumed),
        "ok": short_count(counts.ok),
        "skip": short_count(counts.skipped),
        "dead": short_count(counts.dead),
        "flight": short_count(counts.in_flight),
        "retry": short_count(counts.retried),
        "dlq": short_count(counts.dlq_writes),
        "rl wait": short_seconds(counts.wait_s),
        "lag": short_count(lag),
    }


def legend(columns: Sequence[str], width: int) -> str:
    """One line saying what the shown columns count, at most `width` characters (the least
    needed definitions are left out first, in the order columns are dropped)."""
    head = LEGEND_SUM
    shown = [c for c in MEANS if c in columns]
    while True:
        text = " · ".join([head, *(MEANS[c] for c in shown)])
        if len(text) <= width or not shown:
            return text
        shown.pop()


class PauseClock:
    """Seconds a vendor has spent paused by Retry-After, from samples of the pause left: the
    limiter counts its own waits, but a paused vendor's records wait on retry timers instead."""

    def __init__(self) -> None:
        self.paused_s = 0.0
        self._until_s = 0.0  # when the pause seen so far ends (monotonic)
        self._last_s: float | None = None

    def sample(self, now_s: float, pause_left_s: float) -> float:
        """Note the pause left at `now_s`; return the seconds paused so far."""
        if self._last_s is not None and self._until_s > self._last_s:
            self.paused_s += max(0.0, min(now_s, self._until_s) - self._last_s)
        if pause_left_s > 0:
            self._until_s = max(self._until_s, now_s + pause_left_s)
        self._last_s = now_s
        return self.paused_s
