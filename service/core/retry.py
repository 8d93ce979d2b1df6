"""Retry policy: HTTP status → action, exponential backoff with full jitter, Retry-After."""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from service.vendors.base import Outcome, OutcomeKind

# 501 Not Implemented will not start working on a retry; every other 5xx may.
_RETRIABLE_4XX = frozenset({408, 425, 429})
_NOT_RETRIABLE_5XX = frozenset({501})


def default_action(status: int) -> OutcomeKind:
    """The default meaning of an HTTP status: 2xx delivered; 408/429/5xx retry; other 4xx reject."""
    if 200 <= status < 300:
        return OutcomeKind.DELIVERED
    if status in _RETRIABLE_4XX or (status >= 500 and status not in _NOT_RETRIABLE_5XX):
        return OutcomeKind.RETRY
    return OutcomeKind.REJECT


def classify_status(
    status: int, headers: Mapping[str, str], detail: str = "", now: datetime | None = None
) -> Outcome:
    """Classify an answer by its status alone, reading Retry-After when the answer asks to wait."""
    kind = default_action(status)
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


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP date); None if absent/bad."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT by definition
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def backoff_s(
    attempt: int, initial_s: float, max_s: float, random: Callable[[], float]
) -> float:
    """Full-jitter exponential backoff before retry number `attempt` (1 = first retry)."""
    ceiling = min(max_s, initial_s * math.pow(2.0, max(0, attempt - 1)))
    return ceiling * random()
