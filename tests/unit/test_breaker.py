"""Circuit breaker: the sliding failure window, OPEN → HALF_OPEN → CLOSED, cooldown backoff."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.breaker import BreakerConfig, BreakerState, CircuitBreaker, is_outage
from service.vendors.base import Outcome, OutcomeKind

CONFIG = BreakerConfig(
    window_s=10.0,
    min_requests=10,
    failure_ratio=0.5,
    cooldown_s=5.0,
    max_cooldown_s=18.0,
    half_open_probes=2,
)


def feed(breaker: CircuitBreaker, now_s: float, successes: int, failures: int) -> None:
    """Record results at `now_s`: failures first, then successes."""
    for _ in range(failures):
        breaker.record(False, now_s)
    for _ in range(successes):
        breaker.record(True, now_s)


def opened(now_s: float = 100.0) -> CircuitBreaker:
    """A breaker that opened at `now_s`."""
    breaker = CircuitBreaker(CONFIG)
    feed(breaker, now_s, successes=0, failures=10)
    assert breaker.state is BreakerState.OPEN
    return breaker


def test_a_new_breaker_is_closed_and_allows() -> None:
    """A new breaker lets every request through."""
    breaker = CircuitBreaker(CONFIG)
    assert breaker.state is BreakerState.CLOSED
    assert all(breaker.allow(float(t)) for t in range(100))


def test_stays_closed_below_min_requests_even_if_all_fail() -> None:
    """Nine failures out of nine are not enough evidence with min_requests 10."""
    breaker = CircuitBreaker(CONFIG)
    feed(breaker, 100.0, successes=0, failures=9)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow(100.0)


def test_opens_at_the_failure_ratio_and_then_refuses() -> None:
    """Half the window failing (with enough requests) opens the breaker; it refuses requests."""
    breaker = CircuitBreaker(CONFIG)
    feed(breaker, 100.0, successes=5, failures=4)
    breaker.record(False, 100.5)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow(101.0)
    assert breaker.retry_in_s(101.0) == pytest.approx(4.5)


def test_stays_closed_while_failures_are_below_the_ratio() -> None:
    """Four failures in ten requests keep a 0.5-ratio breaker closed."""
    breaker = CircuitBreaker(CONFIG)
    feed(breaker, 100.0, successes=6, failures=4)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.counts(100.0) == (6, 4)


def test_old_results_slide_out_of_the_window() -> None:
    """Failures older than window_s no longer count toward opening."""
    breaker = CircuitBreaker(CONFIG)
    feed(breaker, 100.0, successes=0, failures=9)
    assert breaker.counts(109.5) == (0, 9)
    assert breaker.counts(111.0) == (0, 0)
    breaker.record(False, 111.0)
    assert breaker.state is BreakerState.CLOSED


def test_after_the_cooldown_it_half_opens_and_grants_only_the_probes() -> None:
    """Once cooldown_s has passed, exactly half_open_probes requests are let through."""
    breaker = opened(100.0)
    assert not breaker.allow(104.9)
    assert breaker.allow(105.0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow(105.1)
    assert not breaker.allow(105.2)


def test_successful_probes_close_it_and_reset_the_cooldown() -> None:
    """When every probe succeeds the breaker closes with a clean window."""
    breaker = opened(100.0)
    assert breaker.allow(105.0)
    assert breaker.allow(105.0)
    breaker.record(True, 105.5)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(True, 105.6)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.counts(105.6) == (0, 0)
    assert breaker.cooldown_s == CONFIG.cooldown_s
    assert breaker.allow(105.7)


def test_a_failed_probe_reopens_it_with_a_doubled_cooldown_up_to_the_max() -> None:
    """Each failed probe reopens the breaker for twice as long, capped at max_cooldown_s."""
    breaker = opened(100.0)
    now = 100.0
    cooldowns = []
    for _ in range(4):
        now += breaker.cooldown_s
        assert breaker.allow(now)
        breaker.record(False, now)
        assert breaker.state is BreakerState.OPEN
        cooldowns.append(breaker.cooldown_s)
    assert cooldowns == [10.0, 18.0, 18.0, 18.0]
    assert not breaker.allow(now + 17.9)


def test_results_arriving_while_open_are_ignored() -> None:
    """Late answers to requests sent before the breaker opened change nothing."""
    breaker = opened(100.0)
    feed(breaker, 101.0, successes=50, failures=0)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow(101.0)


def test_lost_probes_are_granted_afresh_after_a_cooldown() -> None:
    """If probe results never arrive, new probes are granted after another cooldown."""
    breaker = opened(100.0)
    assert breaker.allow(105.0)
    assert breaker.allow(105.0)
    assert not breaker.allow(109.0)
    assert breaker.retry_in_s(109.0) == pytest.approx(1.0)
    assert breaker.allow(110.0)
    assert breaker.state is BreakerState.HALF_OPEN


def test_a_disabled_breaker_always_allows() -> None:
    """With enabled: false nothing is counted and every request goes."""
    breaker = CircuitBreaker(BreakerConfig(enabled=False, min_requests=1))
    feed(breaker, 0.0, successes=0, failures=100)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow(0.0)


def test_only_outage_outcomes_count_as_failures() -> None:
    """Retriable outcomes (5xx, 429, timeouts) are outages; a rejected event is not."""
    assert is_outage(Outcome(kind=OutcomeKind.RETRY, status=503))
    assert is_outage(Outcome(kind=OutcomeKind.RETRY, reason="unreachable"))
    assert not is_outage(Outcome(kind=OutcomeKind.REJECT, status=400))
    assert not is_outage(Outcome(kind=OutcomeKind.DELIVERED, status=200))


def test_rejections_of_single_events_never_open_it() -> None:
    """A stream of 4xx rejections, recorded as the vendor answering, keeps the breaker closed."""
    breaker = CircuitBreaker(CONFIG)
    rejected = Outcome(kind=OutcomeKind.REJECT, status=422)
    for i in range(100):
        breaker.record(not is_outage(rejected), 100.0 + i / 10)
    assert breaker.state is BreakerState.CLOSED


def test_states_have_the_gauge_values_of_the_metric() -> None:
    """closed/half_open/open export as 0/1/2."""
    assert [s.gauge_value for s in BreakerState] == [0, 1, 2]
    assert [s.value for s in BreakerState] == ["closed", "half_open", "open"]


def test_config_defaults_and_validation() -> None:
    """`breaker: {}` gives the documented defaults; max_cooldown_s below cooldown_s is an error."""
    config = msgspec.convert({}, BreakerConfig)
    assert (config.enabled, config.window_s, config.min_requests) == (True, 30.0, 20)
    assert (config.failure_ratio, config.cooldown_s, config.half_open_probes) == (0.5, 10.0, 3)
    with pytest.raises(msgspec.ValidationError, match="max_cooldown_s"):
        msgspec.convert({"cooldown_s": 60, "max_cooldown_s": 30}, BreakerConfig)
    with pytest.raises(msgspec.ValidationError, match="failure_ratio"):
        msgspec.convert({"failure_ratio": 1.5}, BreakerConfig)


@given(
    st.lists(
        st.tuples(st.sampled_from(["allow", "ok", "fail"]), st.floats(0.0, 3.0)),
        max_size=300,
    )
)
def test_an_open_breaker_never_allows_before_its_cooldown(ops: list[tuple[str, float]]) -> None:
    """Whatever happens, nothing is allowed while OPEN within the cooldown, which stays bounded."""
    breaker = CircuitBreaker(CONFIG)
    now = 0.0
    reopens_at = 0.0
    for op, gap_s in ops:
        now += gap_s
        before = breaker.state
        if op == "allow":
            allowed = breaker.allow(now)
            if before is BreakerState.OPEN:
                assert allowed == (now >= reopens_at)
        else:
            breaker.record(op == "ok", now)
        if breaker.state is BreakerState.OPEN and before is not BreakerState.OPEN:
            reopens_at = now + breaker.cooldown_s
        assert CONFIG.cooldown_s <= breaker.cooldown_s <= CONFIG.max_cooldown_s


def test_half_open_probes_are_judged_by_the_ratio_not_all_or_nothing() -> None:
    """With 3 probes at ratio 0.5, one failed probe is tolerated; a second reopens it."""
    config = BreakerConfig(min_requests=4, failure_ratio=0.5, cooldown_s=10, half_open_probes=3)
    breaker = CircuitBreaker(config)
    for _ in range(4):
        breaker.record(False, 100.0)
    assert breaker.state is BreakerState.OPEN
    assert breaker.allow(110.0)
    breaker.record(False, 110.0)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(True, 110.1)
    breaker.record(True, 110.2)
    assert breaker.state is BreakerState.CLOSED

    for _ in range(4):
        breaker.record(False, 200.0)
    assert breaker.allow(210.0)
    breaker.record(True, 210.0)
    breaker.record(False, 210.1)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(False, 210.2)
    assert breaker.state is BreakerState.OPEN
