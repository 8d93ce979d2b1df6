"""Adaptive concurrency (AIMD), pure, in the style of Vector's ARC: how many requests a vendor
gets in flight at once.

The controller learns the vendor's normal round-trip time as an EWMA of RTT (`mean`) and of
its absolute deviation (`deviation`), and judges the RTTs observed in windows of about one mean
RTT (never shorter than `min_window_s`):

* **decrease** (multiplicative): the window saw an overload signal (429, 5xx, timeout,
  connection error: any retriable outcome) or its mean RTT rose above
  `mean + max(rtt_deviation_scale · deviation, 10% of mean)` (the 10% keeps a very steady
  vendor's jitter from reading as a jump) → `limit = max(1, floor(limit · decrease_ratio))`.
  The default ratio 0.9 (Vector's) sheds load gently; 0.5 halves like TCP Reno.
  It also decreases when the window's RTT is above `(1 + queueing_ratio)` × the *baseline*:
  the lowest window RTT seen (forgotten slowly, 0.1 % of the gap per window), i.e. the
  vendor's RTT without queueing. The moving average alone follows a slow, one-step-at-a-time
  rise of the RTT, so a vendor that queues what it cannot serve would otherwise let the limit
  climb to `max`.
* **increase** (additive): otherwise, if the limit was reached in the window (all slots in use;
  pointless to grow when they are not) → `limit + 1`, never above `max`.

Only requests without an overload signal feed the RTT averages (a fast 429 says nothing about
the vendor's latency). One decision per window, so a burst of 429s from one batch of requests
cuts the limit once. With `adaptive: false` the limit is fixed at `max`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated

import msgspec

if TYPE_CHECKING:  # only for annotations: service.vendors imports the core at load
    from service.core.exchange import Outcome

__all__ = ["AdaptiveConcurrency", "ConcurrencyConfig", "is_overload"]

# An RTT jump must exceed the mean by at least this share of it, whatever the deviation.
_MIN_JUMP_RATIO = 0.1
# Share of the gap to a window's RTT by which the no-queueing baseline rises each window.
_BASELINE_FORGET = 0.001


def is_overload(outcome: Outcome) -> bool:
    """Whether an outcome is an overload signal (429, 5xx, timeout, network: any retry)."""
    return outcome.retriable


class ConcurrencyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A vendor's concurrency: a fixed `max`, or adaptive between 1 and `max` from `initial`."""

    max: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    adaptive: bool = False
    initial: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1
    decrease_ratio: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.9
    rtt_deviation_scale: Annotated[float, msgspec.Meta(gt=0)] = 2.5
    ewma_alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.4
    min_window_s: Annotated[float, msgspec.Meta(gt=0)] = 0.05
    queueing_ratio: Annotated[float, msgspec.Meta(gt=0)] = 0.5

    def __post_init__(self) -> None:
        """Reject an `initial` above `max`."""
        if self.initial > self.max:
            raise ValueError(f"initial ({self.initial}) must not exceed max ({self.max})")

    @property
    def start_limit(self) -> int:
        """The limit before any observation: `initial` when adaptive, else `max`."""
        return self.initial if self.adaptive else self.max


class AdaptiveConcurrency:
    """The AIMD controller: feed it each finished request, read `limit`."""

    def __init__(self, config: ConcurrencyConfig, now_s: float) -> None:
        self.config = config
        self._limit = config.start_limit
        self.mean_rtt_s: float | None = None
        self.base_rtt_s: float | None = None
        self.deviation_s = 0.0
        self._window_start_s = now_s
        self._window_rtt_sum_s = 0.0
        self._window_count = 0
        self._window_overload = False
        self._window_saturated = False

    @property
    def limit(self) -> int:
        """Requests allowed in flight now (1 ≤ limit ≤ max)."""
        return self._limit

    def observe(
        self, rtt_s: float, overloaded: bool, now_s: float, in_flight: int | None = None
    ) -> int:
        """Record one finished request (`in_flight` as it was then; None = assume saturated)."""
        if not self.config.adaptive:
            return self._limit
        if overloaded:
            self._window_overload = True
        else:
            self._window_rtt_sum_s += rtt_s
            self._window_count += 1
        self._window_saturated |= in_flight is None or in_flight >= self._limit
        if now_s - self._window_start_s >= self._window_s():
            self._close_window(now_s)
        return self._limit

    def _window_s(self) -> float:
        return max(self.config.min_window_s, self.mean_rtt_s or 0.0)

    def _close_window(self, now_s: float) -> None:
        cfg = self.config
        window_rtt_s = self._window_rtt_sum_s / self._window_count if self._window_count else None
        if self._window_overload or self._rtt_jumped(window_rtt_s):
            self._limit = max(1, math.floor(self._limit * cfg.decrease_ratio))
        elif self._window_saturated:
            self._limit = min(cfg.max, self._limit + 1)
        if window_rtt_s is not None:
            self._update_rtt(window_rtt_s)
        self._window_start_s = now_s
        self._window_rtt_sum_s = 0.0
        self._window_count = 0
        self._window_overload = False
        self._window_saturated = False

    def _rtt_jumped(self, window_rtt_s: float | None) -> bool:
        if self.mean_rtt_s is None or window_rtt_s is None:
            return False
        base_s = self.base_rtt_s
        if base_s is not None and window_rtt_s > base_s * (1 + self.config.queueing_ratio):
            return True
        margin_s = max(
            self.config.rtt_deviation_scale * self.deviation_s, _MIN_JUMP_RATIO * self.mean_rtt_s
        )
        threshold_s = self.mean_rtt_s + margin_s
        return window_rtt_s > threshold_s

    def _update_rtt(self, window_rtt_s: float) -> None:
        base_s = self.base_rtt_s
        if base_s is None or window_rtt_s < base_s:
            self.base_rtt_s = window_rtt_s
        else:
            self.base_rtt_s = base_s + _BASELINE_FORGET * (window_rtt_s - base_s)
        alpha = self.config.ewma_alpha
        if self.mean_rtt_s is None:
            self.mean_rtt_s = window_rtt_s
            self.deviation_s = window_rtt_s / 2
            return
        error_s = window_rtt_s - self.mean_rtt_s
        self.mean_rtt_s += alpha * error_s
        self.deviation_s += alpha * (abs(error_s) - self.deviation_s)
