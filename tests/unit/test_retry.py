"""Retry policy: the status table, error outcomes, Retry-After, backoff and the retry budget."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

# service.vendors first: it is the package that loads service.core.retry (see the report on the
# vendors <-> retry import cycle).
from service import vendors  # noqa: F401  isort: skip
from service.core.retry import (
    StatusActions,
    StatusTable,
    ThrottleBackoff,
    backoff_s,
    classify_status,
    default_action,
    error_outcome,
    parse_retry_after,
    pause_floor_s,
    retry_delay_s,
    should_retry,
)
from service.errors import RelayError, VendorInputError, VendorTimeout, VendorUnreachable
from service.vendors.base import Outcome, OutcomeKind, RetryConfig

NOW = datetime(2026, 11, 20, 14, 0, 0, tzinfo=UTC)
D, R, X = OutcomeKind.DELIVERED, OutcomeKind.RETRY, OutcomeKind.REJECT


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, D), (201, D), (204, D), (299, D),
        (408, R), (425, R), (429, R), (500, R), (502, R), (503, R), (504, R), (599, R),
        (501, X), (400, X), (401, X), (403, X), (404, X), (409, X), (422, X),
        (100, X), (301, X), (304, X),
    ],
)  # fmt: skip
def test_default_table_maps_each_status_class(status: int, kind: OutcomeKind) -> None:
    """2xx delivered; 408/425/429 and 5xx but 501 retried; every other status rejected."""
    assert default_action(status) is kind
    assert StatusTable().action(status) is kind


def test_overrides_win_over_the_defaults_and_only_for_their_status() -> None:
    """A vendor's overrides change just the statuses they name."""
    table = StatusTable({409: D, 404: R, 500: X})
    assert table.action(409) is D
    assert table.action(404) is R
    assert table.action(500) is X
    assert table.action(502) is R
    assert table.action(400) is X


def test_apply_rewrites_an_adapter_outcome_by_its_status() -> None:
    """apply() turns an adapter's 409 rejection into a delivery, keeping the vendor's words."""
    table = StatusTable({409: D, 404: R})
    rejected = Outcome(kind=X, reason="http_409", detail="duplicate", status=409)
    delivered = table.apply(rejected)
    assert delivered.kind is D
    assert delivered.reason == ""
    assert delivered.detail == "duplicate"
    retried = table.apply(Outcome(kind=X, reason="not_found", status=404))
    assert (retried.kind, retried.reason) == (R, "not_found")


def test_apply_leaves_outcomes_without_an_override_untouched() -> None:
    """Outcomes of other statuses, or with no status at all, come back as they were."""
    table = StatusTable({409: D})
    outcome = Outcome(kind=X, reason="http_400", status=400)
    assert table.apply(outcome) is outcome
    timeout = Outcome(kind=R, reason="timeout")
    assert table.apply(timeout) is timeout


def test_classify_status_uses_the_vendor_table_and_reads_retry_after() -> None:
    """A status the table makes retriable carries the answer's Retry-After."""
    table = StatusTable({404: R})
    outcome = classify_status(404, {"Retry-After": "7"}, "gone", NOW, table=table)
    assert (outcome.kind, outcome.reason, outcome.retry_after_s) == (R, "http_404", 7.0)
    assert classify_status(404, {"Retry-After": "7"}, now=NOW).retry_after_s is None


def test_status_actions_decode_from_config_data() -> None:
    """`status_actions: {409: delivered, 404: retry}` decodes; unknown actions are errors."""
    actions = msgspec.convert({409: "delivered", 404: "retry", 400: "reject"}, StatusActions)
    assert actions == {409: D, 404: R, 400: X}
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value 'maybe'"):
        msgspec.convert({409: "maybe"}, StatusActions)
    with pytest.raises(msgspec.ValidationError, match="<= 599"):
        msgspec.convert({700: "retry"}, StatusActions)


@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        (VendorTimeout("slow"), R, "timeout"),
        (VendorUnreachable("refused"), R, "unreachable"),
        (VendorInputError("too long"), X, "error"),
    ],
)
def test_error_outcome_follows_the_error_retryability(
    error: RelayError, kind: OutcomeKind, reason: str
) -> None:
    """Timeouts and network errors are retried; a non-retriable error is rejected."""
    outcome = error_outcome(error)
    assert (outcome.kind, outcome.reason, outcome.detail) == (kind, reason, str(error))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        ("Fri, 20 Nov 2026 14:01:00", 60.0),  # no zone: GMT by definition
        (format_datetime(NOW - timedelta(hours=1), usegmt=True), 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("Fri, 99 Nov 2026 14:01:00 GMT", None),
    ],
)
def test_retry_after_parses_seconds_and_http_dates_and_ignores_garbage(
    value: str | None, expected: float | None
) -> None:
    """Delta-seconds and HTTP dates become seconds from now; anything else is None."""
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize("attempt", range(1, 12))
def test_backoff_stays_within_its_exponential_ceiling(attempt: int) -> None:
    """Backoff lies in [0, min(max, initial·2^(attempt-1))) for any random draw."""
    ceiling = min(30.0, 0.2 * 2 ** (attempt - 1))
    assert backoff_s(attempt, 0.2, 30.0, lambda: 0.0) == 0.0
    top = backoff_s(attempt, 0.2, 30.0, lambda: 0.999999)
    assert ceiling * 0.99 < top < ceiling


def test_backoff_jitter_is_uniform_over_the_ceiling() -> None:
    """Full jitter: 20,000 seeded draws pass a KS test and fill ten equal buckets evenly."""
    rng = random.Random(20261120)
    n, ceiling = 20_000, 0.8
    samples = sorted(backoff_s(3, 0.2, 30.0, rng.random) / ceiling for _ in range(n))
    ks = max(max((i + 1) / n - x, x - i / n) for i, x in enumerate(samples))
    assert ks < 1.36 / n**0.5  # the 5% critical value
    buckets = [0] * 10
    for x in samples:
        buckets[min(9, int(x * 10))] += 1
    assert all(abs(count - n / 10) < 0.06 * n / 10 for count in buckets)


@pytest.mark.parametrize(
    ("attempt", "elapsed_s", "expected"),
    [(1, 0.0, True), (4, 299.0, True), (5, 0.0, False), (1, 300.0, False), (9, 1.0, False)],
)
def test_should_retry_honours_attempts_and_elapsed_time(
    attempt: int, elapsed_s: float, expected: bool
) -> None:
    """Another try needs both fewer than max_attempts tries and less than max_elapsed_s."""
    config = RetryConfig(max_attempts=5, max_elapsed_s=300.0)
    assert should_retry(attempt, 1000.0, 1000.0 + elapsed_s, config) is expected


def test_retry_delay_is_none_for_final_outcomes_and_spent_budgets() -> None:
    """No delay for delivered or rejected outcomes, nor once the budget is spent."""
    config = RetryConfig(max_attempts=3)
    retry = Outcome(kind=R, reason="http_503", status=503)
    assert retry_delay_s(Outcome(kind=D), 1, 0.0, 0.0, config, lambda: 0.5) is None
    assert retry_delay_s(Outcome(kind=X), 1, 0.0, 0.0, config, lambda: 0.5) is None
    assert retry_delay_s(retry, 3, 0.0, 0.0, config, lambda: 0.5) is None
    assert retry_delay_s(retry, 1, 0.0, 0.0, config, lambda: 0.5) == pytest.approx(0.1)


def test_retry_delay_waits_at_least_retry_after_unless_it_overruns_the_budget() -> None:
    """Retry-After raises the delay; a delay past max_elapsed_s means no retry."""
    config = RetryConfig(max_elapsed_s=60.0)
    asked = Outcome(kind=R, status=429, retry_after_s=20.0)
    assert retry_delay_s(asked, 1, 0.0, 10.0, config, lambda: 0.5) == 20.0
    assert retry_delay_s(asked, 1, 0.0, 45.0, config, lambda: 0.5) is None


@given(
    attempt=st.integers(min_value=1, max_value=20),
    elapsed_s=st.floats(min_value=0.0, max_value=400.0),
    draw=st.floats(min_value=0.0, max_value=0.999999),
    retry_after_s=st.none() | st.floats(min_value=0.0, max_value=100.0),
)
def test_retry_delay_never_overruns_the_budget(
    attempt: int, elapsed_s: float, draw: float, retry_after_s: float | None
) -> None:
    """Any delay given keeps the next try within max_elapsed_s and is at least the capped
    Retry-After."""
    config = RetryConfig(max_attempts=10, max_elapsed_s=300.0, max_backoff_s=30.0)
    outcome = Outcome(kind=R, retry_after_s=retry_after_s)
    delay = retry_delay_s(outcome, attempt, 0.0, elapsed_s, config, lambda: draw)
    if delay is None:
        return
    assert attempt < config.max_attempts
    assert elapsed_s + delay <= config.max_elapsed_s
    assert delay <= max(config.max_backoff_s, retry_after_s or 0.0)
    assert delay >= min(retry_after_s or 0.0, config.max_retry_after_s)


# ---- vendor-wide pauses: a floor, doubling while the vendor keeps throttling ---------------------


def test_a_retry_after_of_zero_pauses_at_least_half_the_base_backoff() -> None:
    """Retry-After: 0 is a pause of the jittered base backoff (½–1× initial_backoff_s), never 0."""
    config = RetryConfig()
    for draw in (0.0, 0.5, 0.999):
        throttle = ThrottleBackoff(config, lambda d=draw: d)
        pause_s = throttle.pause_s(0.0, sent_at_s=10.0, now_s=10.1)
        assert config.initial_backoff_s / 2 <= pause_s <= config.initial_backoff_s


def test_a_retry_after_date_in_the_past_is_the_floor() -> None:
    """An HTTP-date Retry-After already past parses to 0 s, and pauses for the floor."""
    past = parse_retry_after(format_datetime(NOW - timedelta(minutes=5), usegmt=True), NOW)
    assert past == 0.0
    throttle = ThrottleBackoff(RetryConfig(), lambda: 1.0)
    assert throttle.pause_s(past, sent_at_s=0.0, now_s=0.0) == pytest.approx(0.2)


def test_consecutive_throttles_double_the_floor_up_to_max_backoff() -> None:
    """Each fresh throttle in a row doubles the floor's ceiling, capped at max_backoff_s."""
    config = RetryConfig(initial_backoff_s=0.2, max_backoff_s=3.0)
    throttle = ThrottleBackoff(config, lambda: 1.0)
    now_s, pauses = 0.0, []
    for _ in range(7):
        pauses.append(throttle.pause_s(0.0, sent_at_s=now_s, now_s=now_s + 0.01))
        now_s += pauses[-1] + 0.01  # the next request goes once the pause is over
    assert pauses == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0])


def test_a_longer_retry_after_wins_over_the_floor() -> None:
    """The floor only lengthens a pause: Retry-After: 5 stays 5 s."""
    throttle = ThrottleBackoff(RetryConfig(), lambda: 1.0)
    assert throttle.pause_s(5.0, sent_at_s=0.0, now_s=0.0) == 5.0


def test_answers_to_requests_sent_before_the_pause_do_not_escalate_it() -> None:
    """A burst of 429s for requests already on the wire is one throttle: the floor stays."""
    throttle = ThrottleBackoff(RetryConfig(), lambda: 1.0)
    assert throttle.pause_s(0.0, sent_at_s=0.0, now_s=0.05) == pytest.approx(0.2)
    for _ in range(20):
        assert throttle.pause_s(0.0, sent_at_s=0.01, now_s=0.06) == 0.0  # covered already
    assert throttle.throttles == 1
    assert throttle.pause_s(0.0, sent_at_s=0.3, now_s=0.31) == pytest.approx(0.4)


def test_a_delivered_answer_resets_the_floor() -> None:
    """After a delivery the next throttle pauses for the base floor again; a delivery of a
    request sent before the latest pause says nothing about now and resets nothing."""
    throttle = ThrottleBackoff(RetryConfig(), lambda: 1.0)
    for step in range(4):
        throttle.pause_s(0.0, sent_at_s=float(step), now_s=step + 0.01)
    throttle.delivered(sent_at_s=2.5)  # sent before the pause that started at 3.01
    assert throttle.throttles == 4
    throttle.delivered(sent_at_s=5.0)
    assert throttle.throttles == 0
    assert throttle.pause_s(0.0, sent_at_s=6.0, now_s=6.01) == pytest.approx(0.2)


@given(
    throttles=st.integers(min_value=1, max_value=10_000),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_the_pause_floor_stays_between_half_and_all_of_its_ceiling(
    throttles: int, draw: float
) -> None:
    """The floor is finite, positive, and within ½–1× min(max, initial·2^(n-1))."""
    ceiling = min(30.0, 0.2 * 2.0 ** min(throttles - 1, 63))
    floor_s = pause_floor_s(throttles, 0.2, 30.0, lambda: draw)
    assert ceiling / 2 <= floor_s <= ceiling
