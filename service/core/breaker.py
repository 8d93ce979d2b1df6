"""Per-vendor circuit breaker, pure (time passed in): stop sending while a vendor is down.

    CLOSED ──failure ratio ≥ threshold over the window (and ≥ min_requests)──► OPEN
    OPEN ──one probe every probe_interval_s (±20 % jitter); a probe answered──► HALF_OPEN
    HALF_OPEN ──half_open_probes trial requests fail below the ratio──► CLOSED
    HALF_OPEN ──their failures reach failure_ratio──► OPEN (probing at the same steady pace)

**Only fresh answers are judged.** Every result is recorded with the time its request was sent;
a result of a request sent before the breaker's last change of state (a timeout of a request
that left before it opened, a probe that left before it half-opened) says nothing about the
vendor now and is ignored. Without this, the timeouts of the requests in flight when the vendor
went down land in half-open and reopen it before any probe was answered.

**Probing is steady, never backed off.** While OPEN one request is let through every
`probe_interval_s` (jittered, so replicas do not probe in step): at most ~1 request/s per
pipeline, and the first delivery after the vendor is back comes within about one interval,
whatever the outage's length (a doubling cool-down would make a long outage cost minutes).

Probes are judged by the same ratio as the window (as resilience4j does), not "all must pass":
a vendor that fails 30-40 % of requests while up would otherwise bounce back to OPEN.

The window is time-based: the last `window_s` seconds, kept as ten buckets of window_s/10.

**What counts as a failure** is an outage signal only (`is_outage`): a retriable outcome (5xx,
408, timeout, connection error) except 429, which is throttling, handled by its Retry-After pause
and the adaptive concurrency. A rejection of one event (4xx) means the vendor is up and
answering, so it counts as a success: one bad event must never open the breaker.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import msgspec

if TYPE_CHECKING:  # only for annotations: service.vendors imports the core at load
    from service.core.exchange import Outcome

__all__ = ["BreakerConfig", "BreakerState", "CircuitBreaker", "is_outage"]

_BUCKETS = 10
_JITTER = 0.2  # probe intervals are drawn from interval · [1 - _JITTER, 1 + _JITTER)
_GAUGE = {"closed": 0, "half_open": 1, "open": 2}
_THROTTLED = 429


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

    # False: never opens; every request is sent whatever the vendor's state.
    enabled: bool = True
    # Sliding window the failure ratio is measured over.
    window_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # Requests in the window before the ratio may open the breaker.
    min_requests: Annotated[int, msgspec.Meta(ge=1)] = 20
    # Share of outage signals (5xx, 408, timeouts, connection errors; not 429) that opens it.
    failure_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    # While open: one probe per interval (jittered ±20 %), never backed off.
    probe_interval_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    # Trial requests while half-open; judged by failure_ratio, they close or reopen it.
    half_open_probes: Annotated[int, msgspec.Meta(ge=1)] = 3
    # Deprecated, accepted so old configs still load, no longer used: the breaker probes at
    # the steady `probe_interval_s` instead of a doubling cool-down.
    cooldown_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # Deprecated like cooldown_s: accepted, no longer used.
    max_cooldown_s: Annotated[float, msgspec.Meta(gt=0)] | None = None

    @property
    def deprecated_fields(self) -> list[str]:
        """The deprecated settings this config sets (to warn about once)."""
        return [
            name
            for name, value in (
                ("cooldown_s", self.cooldown_s),
                ("max_cooldown_s", self.max_cooldown_s),
            )
            if value is not None
        ]


def is_outage(outcome: Outcome) -> bool:
    """Whether an outcome counts as a breaker failure: retriable, and not a 429 (throttling)."""
    return outcome.retriable and outcome.status != _THROTTLED


class CircuitBreaker:
    """One vendor's breaker: ask `allow(now_s)` before a request, `record()` its fresh result."""

    def __init__(self, config: BreakerConfig, rng: Callable[[], float] = random.random) -> None:
        self.config = config
        self._rng = rng
        self._state = BreakerState.CLOSED
        self._since_s = -math.inf  # when the state last changed
        self.outage_started_s: float | None = None  # when it last left CLOSED
        # (bucket index, successes, failures), oldest first
        self._window: deque[list[int]] = deque()
        self._bucket_s = config.window_s / _BUCKETS
        self._next_probe_s = -math.inf
        self._probes_granted = 0
        self._probe_successes = 0
        self._probe_failures = 0

    @property
    def state(self) -> BreakerState:
        """The current state."""
        return self._state

    def allow(self, now_s: float) -> bool:
        """Whether a request may be sent now (while not CLOSED, this grants a probe)."""
        if not self.config.enabled or self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.HALF_OPEN and (
            self._probes_granted < self.config.half_open_probes
        ):
            self._probes_granted += 1
            self._next_probe_s = now_s + self._interval_s()  # regranted if results go missing
            return True
        if now_s < self._next_probe_s:
            return False
        self._next_probe_s = now_s + self._interval_s()
        return True

    def record(self, success: bool, now_s: float, sent_at_s: float | None = None) -> None:
        """Record a result (success = the vendor answered, delivered or rejected) of a request
        sent at `sent_at_s`; one sent before the last change of state is ignored."""
        if not self.config.enabled or (sent_at_s is not None and sent_at_s < self._since_s):
            return
        if self._state is BreakerState.OPEN:
            if success:
                self._half_open(now_s)
            return
        if self._state is BreakerState.HALF_OPEN:
            self._judge_probe(success, now_s)
            return
        self._count(success, now_s)
        # Only a failure can push the ratio over the threshold; skip the window sum otherwise.
        if not success and self._should_trip(now_s):
            self._open(now_s)
            self.outage_started_s = now_s

    def retry_in_s(self, now_s: float) -> float:
        """Seconds until `allow` may say yes again (0.0 when it may now)."""
        if self._state is BreakerState.CLOSED:
            return 0.0
        if (
            self._state is BreakerState.HALF_OPEN
            and self._probes_granted < self.config.half_open_probes
        ):
            return 0.0
        return max(0.0, self._next_probe_s - now_s)

    def counts(self, now_s: float) -> tuple[int, int]:
        """(successes, failures) in the window ending at `now_s`."""
        self._evict(now_s)
        return sum(b[1] for b in self._window), sum(b[2] for b in self._window)

    def _interval_s(self) -> float:
        return self.config.probe_interval_s * (1 - _JITTER + 2 * _JITTER * self._rng())

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

    def _open(self, now_s: float) -> None:
        self._state = BreakerState.OPEN
        self._since_s = now_s
        self._next_probe_s = now_s + self._interval_s()
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
            self._open(now_s)
        elif probes - self._probe_successes < threshold:
            self._close(now_s)

    def _half_open(self, now_s: float) -> None:
        self._state = BreakerState.HALF_OPEN
        self._since_s = now_s
        self._probes_granted = 0
        self._probe_successes = 0
        self._probe_failures = 0

    def _close(self, now_s: float) -> None:
        self._state = BreakerState.CLOSED
        self._since_s = now_s
        self._window.clear()
