"""Retry policy, pure: HTTP status → action (per-vendor table), the retry budget, exponential
backoff with full jitter, and Retry-After.

The default meaning of a status (`default_action`):

    2xx                         delivered
    408, 425, 429               retry      (timeout, too early, too many requests)
    5xx except 501              retry      (501 Not Implemented will not start working)
    every other status          reject     (4xx: this event is wrong; 1xx/3xx: unexpected)
    timeouts, network errors    retry      (`error_outcome`)

A vendor's `status_actions` config overrides single statuses (e.g. `409: delivered` for a
vendor that answers a duplicate with Conflict); `StatusTable` is that table.

A vendor-wide pause (a 429/503 with Retry-After) lasts the vendor's Retry-After, but never less
than a floor (`ThrottleBackoff`): the base backoff with jitter, doubled for each throttle in a
row up to `max_backoff_s`, back to the base after a delivered answer. `Retry-After: 0` (or a date
in the past) is then a short pause, not a loop.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated

import msgspec

from service.core.exchange import Outcome, OutcomeKind
from service.errors import RelayError, VendorTimeout

_PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class RetryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How patiently one record is retried before it is dead-lettered: a budget of time
    (`max_elapsed_s`), optionally also a count (`max_attempts`, None = no count limit)."""

    # None by default: a small count dead-letters ~0.3**n of a vendor failing 30 % at random.
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    # Ceiling of the first retry delay; it doubles per retry, each delay drawn below it (jitter).
    # Also the floor of a vendor-wide Retry-After pause (drawn in ½–1× of it), doubling while the
    # vendor keeps throttling.
    initial_backoff_s: _PositiveFloat = 0.2
    # Cap of one retry delay, and of a vendor-wide pause's floor.
    max_backoff_s: _PositiveFloat = 30.0
    # Time budget from the first attempt: past it the record is dead-lettered as
    # `retries_exhausted`.
    max_elapsed_s: _PositiveFloat = 300.0
    # A vendor asking for longer is asked again after this (one request), not obeyed for hours.
    max_retry_after_s: _PositiveFloat = 60.0


__all__ = [
    "HttpStatus",
    "StatusActions",
    "StatusTable",
    "ThrottleBackoff",
    "backoff_s",
    "bounded_retry_after",
    "classify_status",
    "default_action",
    "error_outcome",
    "parse_retry_after",
    "pause_floor_s",
    "retry_delay_s",
    "should_retry",
]

# 501 Not Implemented will not start working on a retry; every other 5xx may.
_RETRIABLE_4XX = frozenset({408, 425, 429})
_NOT_RETRIABLE_5XX = frozenset({501})

HttpStatus = Annotated[int, msgspec.Meta(ge=100, le=599)]
# The config form of per-vendor overrides: `status_actions: {409: delivered, 404: retry}`.
StatusActions = dict[HttpStatus, OutcomeKind]


def default_action(status: int) -> OutcomeKind:
    """The default meaning of an HTTP status: 2xx delivered; 408/429/5xx retry; other 4xx reject."""
    if 200 <= status < 300:
        return OutcomeKind.DELIVERED
    if status in _RETRIABLE_4XX or (status >= 500 and status not in _NOT_RETRIABLE_5XX):
        return OutcomeKind.RETRY
    return OutcomeKind.REJECT


class StatusTable:
    """A vendor's status → action table: the defaults with that vendor's overrides on top."""

    def __init__(self, overrides: Mapping[int, OutcomeKind] | None = None) -> None:
        self.overrides: Mapping[int, OutcomeKind] = dict(overrides or {})

    def action(self, status: int) -> OutcomeKind:
        """What `status` means for this vendor."""
        return self.overrides.get(status) or default_action(status)

    def apply(self, outcome: Outcome) -> Outcome:
        """An adapter's outcome with this vendor's override for its status, if there is one."""
        kind = self.overrides.get(outcome.status) if outcome.status is not None else None
        if kind is None or kind is outcome.kind:
            return outcome
        reason = "" if kind is OutcomeKind.DELIVERED else outcome.reason or f"http_{outcome.status}"
        return msgspec.structs.replace(outcome, kind=kind, reason=reason)


_DEFAULT_TABLE = StatusTable()
_DELIVERED: dict[int, Outcome] = {}


def delivered_outcome(status: int) -> Outcome | None:
    """The (shared, immutable) outcome of a status the default table counts as delivered, or None.

    Delivered answers are the hot path: no body is decoded or redacted for them (their body is
    never shown), and one Outcome per status serves every delivery.
    """
    outcome = _DELIVERED.get(status)
    if outcome is None and default_action(status) is OutcomeKind.DELIVERED:
        outcome = _DELIVERED[status] = Outcome(kind=OutcomeKind.DELIVERED, status=status)
    return outcome


def classify_status(
    status: int,
    headers: Mapping[str, str],
    detail: str = "",
    now: datetime | None = None,
    table: StatusTable | None = None,
) -> Outcome:
    """Classify an answer by its status alone, reading Retry-After when the answer asks to wait."""
    kind = (table or _DEFAULT_TABLE).action(status)
    retry_after = None
    if kind is OutcomeKind.RETRY:
        retry_after = parse_retry_after(headers.get("Retry-After"), now or datetime.now(UTC))
    return Outcome(
        kind=kind,
        reason="" if kind is OutcomeKind.DELIVERED else f"http_{status}",
        detail=detail,
        status=status,
        retry_after_s=retry_after,
    )


def error_outcome(error: RelayError) -> Outcome:
    """The outcome of an exchange that failed below HTTP: retry if the error is retriable."""
    if isinstance(error, VendorTimeout):
        reason = "timeout"
    elif error.retriable:
        reason = "unreachable"
    else:
        reason = "error"
    kind = OutcomeKind.RETRY if error.retriable else OutcomeKind.REJECT
    return Outcome(kind=kind, reason=reason, detail=str(error))


# Longer delta-seconds than this are not a wait anyone means (and would overflow a float).
_MAX_RETRY_AFTER_DIGITS = 10


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP date); None if absent or
    unparseable (never raises: `²`, 309 digits and garbage are all just None)."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text)) if len(text) <= _MAX_RETRY_AFTER_DIGITS else None
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:  # an HTTP date is GMT by definition
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - now).total_seconds())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def bounded_retry_after(
    header: str | None, parsed_s: float | None, max_s: float
) -> tuple[float | None, str]:
    """The wait to honour (at most `max_s`) and a note when the header was ignored or cut."""
    if parsed_s is None or not math.isfinite(parsed_s) or parsed_s < 0:
        if header is None:
            return None, ""
        return None, f"Retry-After {header[:40]!r} ignored: not a delay"
    if parsed_s > max_s:
        return max_s, f"Retry-After {parsed_s:.0f}s cut to max_retry_after_s {max_s:g}s"
    return parsed_s, ""


def backoff_s(attempt: int, initial_s: float, max_s: float, random: Callable[[], float]) -> float:
    """Full-jitter exponential backoff before retry number `attempt` (1 = first retry)."""
    ceiling = min(max_s, initial_s * math.pow(2.0, max(0, attempt - 1)))
    return ceiling * random()


def pause_floor_s(
    throttles: int, initial_s: float, max_s: float, random: Callable[[], float]
) -> float:
    """The shortest vendor-wide pause after `throttles` throttles in a row (1 = the first): the
    base backoff doubled per throttle up to `max_s`, drawn in ½–1× of that (never near zero)."""
    # 2**63 is past any cap a config can hold (and math.pow overflows beyond 2**1023).
    doublings = min(max(0, throttles - 1), 63)
    ceiling = min(max_s, initial_s * math.pow(2.0, doublings))
    return ceiling * (0.5 + 0.5 * random())


class ThrottleBackoff:
    """One vendor's throttle streak, pure (times passed in): how long each vendor-wide pause is.

    A pause is the vendor's Retry-After, at least `pause_floor_s` of the throttles in a row; a
    delivered answer ends the streak. Only fresh answers count: a request sent before the current
    pause started was on the wire when it began, so a burst of 429s is one throttle, not twenty.
    """

    __slots__ = ("_initial_s", "_max_s", "_random", "_started_s", "throttles")

    def __init__(self, config: RetryConfig, random: Callable[[], float]) -> None:
        self._initial_s = config.initial_backoff_s
        self._max_s = config.max_backoff_s
        self._random = random
        self.throttles = 0  # throttles in a row (0: the vendor takes requests)
        self._started_s = -math.inf  # when the latest pause started

    def pause_s(self, retry_after_s: float, sent_at_s: float, now_s: float) -> float:
        """The pause, from `now_s`, that a throttle answer to a request sent at `sent_at_s`
        calls for (its Retry-After, already bounded)."""
        if sent_at_s < self._started_s:
            return retry_after_s  # in flight when the latest pause began: that one covers it
        self.throttles += 1
        self._started_s = now_s
        floor_s = pause_floor_s(self.throttles, self._initial_s, self._max_s, self._random)
        return max(retry_after_s, floor_s)

    def delivered(self, sent_at_s: float) -> None:
        """A delivered answer: the vendor takes requests again (unless it was sent before the
        latest pause started: then it says nothing about now)."""
        if sent_at_s >= self._started_s:
            self.throttles = 0


def should_retry(
    attempt: int,
    first_attempt_at_s: float,
    now_s: float,
    config: RetryConfig,
    excused_s: float = 0.0,
) -> bool:
    """Whether the budget allows another try after `attempt` tries, the first at the given time
    (`excused_s`: time spent waiting for a vendor-wide outage or pause, not charged)."""
    if config.max_attempts is not None and attempt >= config.max_attempts:
        return False
    return now_s - first_attempt_at_s - excused_s < config.max_elapsed_s


def retry_delay_s(
    outcome: Outcome,
    attempt: int,
    first_attempt_at_s: float,
    now_s: float,
    config: RetryConfig,
    random: Callable[[], float],
    excused_s: float = 0.0,
) -> float | None:
    """Seconds before the next try (backoff, at least Retry-After up to its cap); None when it
    may not happen (the budget is spent, or would be before the next try)."""
    if not outcome.retriable or not should_retry(
        attempt, first_attempt_at_s, now_s, config, excused_s
    ):
        return None
    delay_s = backoff_s(attempt, config.initial_backoff_s, config.max_backoff_s, random)
    if outcome.retry_after_s is not None:
        delay_s = max(delay_s, min(outcome.retry_after_s, config.max_retry_after_s))
    if now_s + delay_s - first_attempt_at_s - excused_s > config.max_elapsed_s:
        return None
    return delay_s
