"""Circuit breaker: the sliding failure window, steady jittered probes while OPEN, HALF_OPEN
judged by the ratio, and only fresh answers judged."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.breaker import BreakerConfig, BreakerState, CircuitBreaker, is_outage
from service.vendors.base import Outcome, OutcomeKind

CONFIG = BreakerConfig(
    window_s=10.0, min_requests=10, failure_ratio=0.5, probe_interval_s=1.0, half_open_probes=2
)


def feed(breaker: CircuitBreaker, now_s: float, successes: int, failures: int) -> None:
    """Record results at `now_s` (of requests sent then): failures first, then successes."""
    for _ in range(failures):
        breaker.record(False, now_s, now_s)
    for _ in range(successes):
        breaker.record(True, now_s, now_s)


def opened(now_s: float = 100.0, rng: float = 0.5) -> CircuitBreaker:
    """A breaker that opened at `now_s` (probe jitter drawn as `rng`)."""
    breaker = CircuitBreaker(CONFIG, lambda: rng)
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
    breaker.record(False, 100.5, 100.5)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow(100.6)


def test_while_open_it_grants_one_probe_per_jittered_interval_forever() -> None:
    """One probe per probe_interval_s (±20 %), however long the outage: never backed off."""
    breaker = opened(100.0)
    granted = [t / 10 for t in range(1000, 1000 + 36000) if breaker.allow(t / 10)]
    for t in granted:
        breaker.record(False, t, t)
    gaps = [b - a for a, b in itertools.pairwise(granted)]
    assert 3500 <= len(granted) <= 3700
    assert all(0.8 - 1e-9 <= g <= 1.3 for g in gaps)


def test_probe_intervals_are_jittered() -> None:
    """Different draws give different intervals (replicas do not probe in step)."""
    assert opened(rng=0.0).retry_in_s(100.0) == pytest.approx(0.8)
    assert opened(rng=0.99).retry_in_s(100.0) == pytest.approx(1.196)


def test_an_answered_probe_half_opens_it_and_grants_the_trial_requests() -> None:
    """A probe's success half-opens it; exactly half_open_probes trials are let through."""
    breaker = opened()
    assert breaker.allow(101.0)
    breaker.record(True, 101.1, 101.0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert [breaker.allow(101.2) for _ in range(3)] == [True, True, False]


def test_successful_trials_close_it() -> None:
    """Trials failing below the ratio close the breaker."""
    breaker = opened()
    assert breaker.allow(101.0)
    breaker.record(True, 101.1, 101.0)
    breaker.allow(101.2)
    breaker.allow(101.2)
    breaker.record(True, 101.3, 101.2)
    breaker.record(True, 101.3, 101.2)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow(101.4)


def test_failed_trials_reopen_it_at_the_same_steady_pace() -> None:
    """A trial failure at the ratio reopens it; the next probe is one interval away, not more."""
    breaker = opened()
    breaker.allow(101.0)
    breaker.record(True, 101.1, 101.0)
    breaker.allow(101.2)
    breaker.record(False, 101.3, 101.2)
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in_s(101.3) == pytest.approx(1.0)


def test_answers_of_requests_sent_before_it_opened_are_ignored() -> None:
    """Timeouts of requests sent before the breaker opened, arriving after a probe half-opened
    it, neither reopen it nor count as trials."""
    breaker = opened(100.0)
    breaker.allow(101.0)
    breaker.record(True, 101.1, 101.0)
    assert breaker.state is BreakerState.HALF_OPEN
    for _ in range(20):
        breaker.record(False, 101.2, 99.0)  # sent at 99.0, before it opened
    assert breaker.state is BreakerState.HALF_OPEN
    while_open = opened(100.0)
    while_open.record(True, 100.5, 99.5)  # an old success does not half-open it either
    assert while_open.state is BreakerState.OPEN


def test_lost_trial_results_are_granted_afresh_after_an_interval() -> None:
    """If trial results never arrive, one more trial is granted per interval."""
    breaker = opened()
    breaker.allow(101.0)
    breaker.record(True, 101.1, 101.0)
    assert breaker.allow(101.2) and breaker.allow(101.2)
    assert not breaker.allow(101.5)
    assert breaker.allow(102.3)


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


def test_a_disabled_breaker_always_allows() -> None:
    """With enabled: false nothing is counted and every request goes."""
    breaker = CircuitBreaker(BreakerConfig(enabled=False, min_requests=1))
    feed(breaker, 0.0, successes=0, failures=100)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow(0.0)


def test_only_outage_outcomes_count_as_failures() -> None:
    """Retriable outcomes (5xx, timeouts) are outages; a rejected event is not."""
    assert is_outage(Outcome(kind=OutcomeKind.RETRY, status=503))
    assert is_outage(Outcome(kind=OutcomeKind.RETRY, reason="unreachable"))
    assert not is_outage(Outcome(kind=OutcomeKind.REJECT, status=400))
    assert not is_outage(Outcome(kind=OutcomeKind.DELIVERED, status=200))


def test_rejections_of_single_events_never_open_it() -> None:
    """A stream of 4xx rejections, recorded as the vendor answering, keeps the breaker closed."""
    breaker = CircuitBreaker(CONFIG)
    rejected = Outcome(kind=OutcomeKind.REJECT, status=422)
    for i in range(100):
        breaker.record(not is_outage(rejected), 100.0 + i / 10, 100.0 + i / 10)
    assert breaker.state is BreakerState.CLOSED


def test_states_have_the_gauge_values_of_the_metric() -> None:
    """closed/half_open/open export as 0/1/2."""
    assert [s.gauge_value for s in BreakerState] == [0, 1, 2]
    assert [s.value for s in BreakerState] == ["closed", "half_open", "open"]


def test_config_defaults_and_validation() -> None:
    """`breaker: {}` gives the documented defaults; the old cooldown keys still load."""
    config = msgspec.convert({}, BreakerConfig)
    assert (config.failure_ratio, config.probe_interval_s, config.half_open_probes) == (0.5, 1.0, 3)
    old = msgspec.convert({"cooldown_s": 10, "max_cooldown_s": 300}, BreakerConfig)
    assert old.deprecated_fields == ["cooldown_s", "max_cooldown_s"]
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"probe_interval_s": 0}, BreakerConfig)


@given(
    st.lists(
        st.tuples(st.sampled_from(["ok", "fail", "stale", "allow"]), st.floats(0.01, 3.0)),
        max_size=60,
    )
)
def test_an_open_breaker_probes_at_most_once_per_interval(ops: list[tuple[str, float]]) -> None:
    """Whatever happens, while OPEN two granted probes are never closer than 0.8 interval."""
    breaker = opened(0.0)
    now = 0.0
    last_probe = None
    for op, step in ops:
        now += step
        if op == "allow":
            state = breaker.state
            if breaker.allow(now) and state is BreakerState.OPEN:
                if last_probe is not None:
                    assert now - last_probe >= 0.8 * CONFIG.probe_interval_s - 1e-9
                last_probe = now
        elif op == "stale":
            breaker.record(False, now, -1.0)
        else:
            breaker.record(op == "ok", now, now)


def test_half_open_trials_are_judged_by_the_ratio_not_all_or_nothing() -> None:
    """With 3 trials at ratio 0.5, one failed trial is tolerated; a second reopens it."""
    config = BreakerConfig(min_requests=4, failure_ratio=0.5, half_open_probes=3)
    breaker = CircuitBreaker(config, lambda: 0.5)
    feed(breaker, 0.0, successes=0, failures=4)
    assert breaker.allow(2.0)
    breaker.record(True, 2.0, 2.0)
    for _ in range(3):
        assert breaker.allow(2.1)
    breaker.record(False, 2.2, 2.1)
    breaker.record(True, 2.2, 2.1)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(True, 2.2, 2.1)
    assert breaker.state is BreakerState.CLOSED


def test_a_429_is_throttling_not_outage() -> None:
    """429 is retried but never counts toward opening the breaker."""
    assert not is_outage(Outcome(kind=OutcomeKind.RETRY, status=429))
