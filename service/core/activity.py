"""When a vendor last delivered and last failed, and how much it delivered over the last minute,
from samples of its counters (taken about once a second off the hot path), for /status."""

from __future__ import annotations

from collections import deque
from typing import Final

__all__ = ["WINDOW_S", "VendorActivity"]

WINDOW_S: Final = 60.0


class VendorActivity:
    """Counter samples of one vendor turned into times and a one-minute rate (pure: the caller
    passes the clocks)."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.last_delivery_at: float | None = None  # epoch seconds
        self.last_error_at: float | None = None
        self._samples: deque[tuple[float, float]] = deque()  # (monotonic s, delivered total)
        self._delivered: float | None = None
        self._errors: float | None = None
        self._error_text = ""

    def observe(
        self, now_s: float, wall_s: float, delivered: float, errors: float, error_text: str
    ) -> None:
        """One sample: counts since start (deliveries; failed attempts, rejections and dead
        tasks) and the last error text. A count that grew, or a new error text, is stamped
        with `wall_s`; the first sample is the baseline (a pipeline restarted from scratch
        counts on from the process' totals, which never go down)."""
        if self._delivered is not None and delivered > self._delivered:
            self.last_delivery_at = wall_s
        grew = self._errors is not None and errors > self._errors
        if grew or (error_text and error_text != self._error_text):
            self.last_error_at = wall_s
        self._delivered, self._errors, self._error_text = delivered, errors, error_text
        self._samples.append((now_s, delivered))
        while self._samples and self._samples[0][0] < now_s - self.window_s:
            self._samples.popleft()

    def delivered_in_window(self) -> int:
        """Deliveries between the oldest sample of the window and the newest."""
        if len(self._samples) < 2:
            return 0
        return round(self._samples[-1][1] - self._samples[0][1])

    def per_s(self) -> float:
        """Deliveries per second over the window (or over the samples so far, if shorter)."""
        if len(self._samples) < 2:
            return 0.0
        (first_s, first), (last_s, last) = self._samples[0], self._samples[-1]
        return (last - first) / (last_s - first_s) if last_s > first_s else 0.0
