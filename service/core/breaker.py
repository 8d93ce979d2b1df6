"""Per-vendor circuit breaker, pure (time passed in): stop sending while a vendor is down.

    CLOSED ──failure ratio ≥ threshold over the window (and ≥ min_requests)──► OPEN
    OPEN ──cooldown_s passed──► HALF_OPEN (the next `allow()` call moves it)
    HALF_OPEN ──half_open_probes trial requests fail below the ratio──► CLOSED
    HALF_OPEN ──their failures reach failure_ratio──► OPEN, cooldown doubled (up to the max)

Probes are judged by the same ratio as the window (as resilience4j does), not "all must pass":
a vendor that fails 30-40 % of requests while up would otherwise bounce back to OPEN with ever
longer cool-downs.

The window is time-based: the last `window_s` seconds, kept as ten buckets of window_s/10.

**What counts as a failure** is an outage signal only: a retriable outcome (5xx, 429, 408,
timeout, connection error; `is_outage`). A rejection of one event (4xx) means the vendor is up
and answering, so it counts as a success here: one bad event must never open the breaker; it
is dead-lettered on its own. While OPEN the pipeline pauses and events wait in Kafka.

Results recorded while OPEN (requests sent before it opened) are ignored. If a probe's result
never arrives (its task was cancelled), new probes are granted after the current cooldown.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from typing import TYPE_CHECKING, Annotated

import msgspec

if TYPE_CHECKING:  # only for annotations: service.vendors imports the core at load
    from service.core.exchange import Outcome

__all__ = ["BreakerConfig", "BreakerState", "CircuitBreaker", "is_outage"]

_BUCKETS = 10
_COOLDOWN_BACKOFF = 2.0
_GAUGE = {"closed": 0, "half_open": 1, "open": 2}


class BreakerState(enum.Enum):
    """Where a breaker stands."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge_value(self) -> int:
        """0 closed, 1 half-open, 2 open (the `breaker_state` gauge)."""
        return _GAUGE[self.value]


class BreakerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When a vendor's breaker opens and how it probes its way back."""

    enabled: bool = True
    window_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    min_requests: Annotated[int, msgspec.Meta(ge=1)] = 20
    failure_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    cooldown_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    max_cooldown_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    half_open_probes: Annotated[int, msgspec.Meta(ge=1)] = 3

    def __post_init__(self) -> None:
        """Reject a max_cooldown_s below cooldown_s."""
        if self.max_cooldown_s < self.cooldown_s:
            raise ValueError("max_cooldown_s must not be below cooldown_s")


def is_outage(outcome: Outcome) -> bool:
    """Whether an outcome counts as a breaker failure (retriable), not a rejected event."""
    return outcome.retriable


class CircuitBreaker:
    """One vendor's breaker: ask `allow(now_s)` before a request, `record()` its result."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self._state = BreakerState.CLOSED
        # (bucket index, successes, failures), oldest first
        self._window: deque[list[int]] = deque()
        self._bucket_s = config.window_s / _BUCKETS
        self._cooldown_s = config.cooldown_s
        self._opened_at_s = -math.inf
        self._probes_granted = 0
        self._probe_successes = 0
        self._probe_failures = 0
        self._last_probe_at_s = -math.inf

    @property
    def state(self) -> BreakerState:
        """The current state (OPEN turns HALF_OPEN on the first `allow` after the cooldown)."""
        return self._state

    @property
    def cooldown_s(self) -> float:
        """The cooldown the next (or current) OPEN period lasts."""
        return self._cooldown_s

    def allow(self, now_s: float) -> bool:
        """Whether a request may be sent now (in HALF_OPEN, this grants one of the probes)."""
        if not self.config.enabled or self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if now_s < self._opened_at_s + self._cooldown_s:
                return False
            self._half_open()
        if self._probes_granted >= self.config.half_open_probes:
            if now_s - self._last_probe_at_s < self._cooldown_s:
                return False
            self._half_open()  # a probe's result went missing: probe afresh
        self._probes_granted += 1
        self._last_probe_at_s = now_s
        return True

    def record(self, success: bool, now_s: float) -> None:
        """Record a request's result: success = the vendor answered (delivered or rejected)."""
        if not self.config.enabled or self._state is BreakerState.OPEN:
            return
        if self._state is BreakerState.HALF_OPEN:
            self._judge_probe(success, now_s)
            return
        self._count(success, now_s)
        # Only a failure can push the ratio over the threshold; skip the window sum otherwise.
        if not success and self._should_trip(now_s):
            self._trip(now_s, self.config.cooldown_s)

    def retry_in_s(self, now_s: float) -> float:
        """Seconds until `allow` may say yes again (0.0 when it may now)."""
        if self._state is BreakerState.OPEN:
            return max(0.0, self._opened_at_s + self._cooldown_s - now_s)
        if (
            self._state is BreakerState.HALF_OPEN
            and self._probes_granted >= self.config.half_open_probes
        ):
            return max(0.0, self._last_probe_at_s + self._cooldown_s - now_s)
        return 0.0

    def counts(self, now_s: float) -> tuple[int, int]:
        """(successes, failures) in the window ending at `now_s`."""
        self._evict(now_s)
        return sum(b[1] for b in self._window), sum(b[2] for b in self._window)

    def _count(self, success: bool, now_s: float) -> None:
        index = math.floor(now_s / self._bucket_s)
        if not self._window or self._window[-1][0] != index:
            self._window.append([index, 0, 0])
        self._window[-1][1 if success else 2] += 1

    def _evict(self, now_s: float) -> None:
        oldest = math.floor(now_s / self._bucket_s) - _BUCKETS + 1
        while self._window and self._window[0][0] < oldest:
            self._window.popleft()

    def _should_trip(self, now_s: float) -> bool:
        successes, failures = self.counts(now_s)
        total = successes + failures
        return total >= self.config.min_requests and failures >= self.config.failure_ratio * total

    def _trip(self, now_s: float, cooldown_s: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at_s = now_s
        self._cooldown_s = cooldown_s
        self._window.clear()

    def _judge_probe(self, success: bool, now_s: float) -> None:
        """Reopen as soon as the probes' failures reach the ratio; close once they cannot."""
        if success:
            self._probe_successes += 1
        else:
            self._probe_failures += 1
        probes = self.config.half_open_probes
        threshold = probes * self.config.failure_ratio
        if self._probe_failures >= threshold:
            self._trip(now_s, min(self.config.max_cooldown_s, self._cooldown_s * _COOLDOWN_BACKOFF))
        elif probes - self._probe_successes < threshold:
            self._close()

    def _half_open(self) -> None:
        self._state = BreakerState.HALF_OPEN
        self._probes_granted = 0
        self._probe_successes = 0
        self._probe_failures = 0

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._cooldown_s = self.config.cooldown_s
        self._window.clear()
