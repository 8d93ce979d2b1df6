"""Rate-limit arithmetic, pure: GCRA and a token bucket built on it (no I/O, clock passed in).

GCRA (the generic cell rate algorithm) is a token bucket expressed as one number, the
theoretical arrival time `tat_s` of the next request at the steady rate:

* emission interval T = 1 / per_s; a full bucket holds `burst` requests;
* a request arriving at `now_s` may go after `wait_s = max(tat_s, now_s) - now_s - (burst-1)·T`
  (0 while the bucket has tokens), and going moves `tat_s` on by T.

`gcra()` is that step, with one knob: a request whose wait is at most `max_wait_s` is admitted
and *reserves* its slot (the caller sleeps `wait_s`, then sends); a longer wait refuses it and
changes nothing. `max_wait_s=0` is the classic allow/deny limiter; `max_wait_s=inf` is a
reservation queue (each caller learns its own slot in one step: FIFO, no thundering herd, one
Redis round trip per request). The Redis Lua script in `service.delivery.ratelimit` is this
function, line for line, on Redis' own clock.

Guarantee (proved by property tests): over any interval of t seconds the admitted send times
number at most `burst + per_s·t`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, NamedTuple

import msgspec

__all__ = ["GcraResult", "RateLimitConfig", "TokenBucket", "gcra"]

# Waits below this are rounding noise (float sums of intervals) and count as "go now"; without
# it a poller could be told to wait 1e-15 s, which its clock cannot even represent.
_RESOLUTION_S = 1e-9


class RateLimitConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A vendor's request rate: `per_s` on average, up to `burst` at once (default: a tenth of a
    second's worth, so no one-second window ever sees more than 1.1 × per_s)."""

    # Requests per second on average.
    per_s: Annotated[float, msgspec.Meta(gt=0)]
    # Requests allowed at once; None = max(1, per_s / 10).
    burst: Annotated[int, msgspec.Meta(ge=1)] | None = None

    @property
    def burst_requests(self) -> int:
        """The bucket size: `burst` if set, else max(1, per_s / 10) rounded down."""
        # A full second's burst would let the first second carry 2 × per_s, which vendors
        # counting per second answer with 429s.
        return self.burst if self.burst is not None else max(1, int(self.per_s / 10))

    @property
    def emission_interval_s(self) -> float:
        """Seconds between requests at the steady rate (1 / per_s)."""
        return 1.0 / self.per_s

    def share(self, replicas: int) -> RateLimitConfig:
        """This limit divided among `replicas` replicas (each takes per_s/replicas, burst too)."""
        n = max(1, replicas)
        return RateLimitConfig(per_s=self.per_s / n, burst=max(1, self.burst_requests // n))


class GcraResult(NamedTuple):
    """One GCRA step: admitted or not, the new theoretical arrival time, and the wait."""

    allowed: bool
    new_tat_s: float
    wait_s: float


def gcra(
    tat_s: float,
    now_s: float,
    emission_interval_s: float,
    burst: int,
    max_wait_s: float = 0.0,
) -> GcraResult:
    """One GCRA step; admitted (and `tat_s` advanced) when the wait is at most `max_wait_s`."""
    start_s = max(tat_s, now_s)
    wait_s = start_s - now_s - (burst - 1) * emission_interval_s
    wait_s = wait_s if wait_s > _RESOLUTION_S else 0.0
    if wait_s > max_wait_s:
        return GcraResult(False, tat_s, wait_s)
    return GcraResult(True, start_s + emission_interval_s, wait_s)


class TokenBucket:
    """A token bucket of `burst` tokens refilled at `per_s`, kept as GCRA state on `clock`.

    `reserve()` always takes a token and returns how long to wait before using it (0.0 = now);
    `try_acquire()` takes one only if it is there now, and otherwise returns the wait without
    taking anything. Use `reserve()` for a queue of senders, `try_acquire()` to poll.
    """

    def __init__(self, per_s: float, burst: int, clock: Callable[[], float]) -> None:
        if per_s <= 0 or burst < 1:
            raise ValueError("per_s must be > 0 and burst >= 1")
        self.per_s = per_s
        self.burst = burst
        self._clock = clock
        self._interval_s = 1.0 / per_s
        self._tat_s = -math.inf

    @classmethod
    def from_config(cls, config: RateLimitConfig, clock: Callable[[], float]) -> TokenBucket:
        """The bucket a RateLimitConfig describes."""
        return cls(config.per_s, config.burst_requests, clock)

    def reserve(self) -> float:
        """Take the next token and return the seconds to wait before using it (0.0 = go now)."""
        result = gcra(self._tat_s, self._clock(), self._interval_s, self.burst, math.inf)
        self._tat_s = result.new_tat_s
        return result.wait_s

    def try_acquire(self) -> float:
        """Take a token if one is there (returns 0.0); else return the wait and take nothing."""
        result = gcra(self._tat_s, self._clock(), self._interval_s, self.burst)
        self._tat_s = result.new_tat_s
        return result.wait_s

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while reservations are queued)."""
        now_s = self._clock()
        return self.burst - max(0.0, self._tat_s - now_s) / self._interval_s
