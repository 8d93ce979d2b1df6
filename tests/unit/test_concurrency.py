"""Adaptive concurrency (AIMD): additive growth per window, multiplicative cuts on overload."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.concurrency import AdaptiveConcurrency, ConcurrencyConfig, is_overload
from service.vendors.base import Outcome, OutcomeKind

# Windows last 1 s here (min_window_s) because every RTT used is far below it.
CONFIG = ConcurrencyConfig(max=10, adaptive=True, initial=1, min_window_s=1.0)


def window(
    ac: AdaptiveConcurrency,
    start_s: float,
    rtt_s: float = 0.1,
    overloaded: bool = False,
    in_flight: int | None = None,
    n: int = 3,
) -> float:
    """Feed one full window of `n` results; return the time the next window starts."""
    for i in range(1, n + 1):
        ac.observe(rtt_s, overloaded, start_s + i / n, in_flight)
    return start_s + 1.0


def grown_to(limit: int, config: ConcurrencyConfig = CONFIG) -> tuple[AdaptiveConcurrency, float]:
    """A controller that has grown to `limit` under a steady 100 ms RTT, and the time now."""
    ac = AdaptiveConcurrency(config, now_s=0.0)
    now = 0.0
    while ac.limit < limit:
        now = window(ac, now)
    return ac, now


def test_adaptive_starts_at_initial_and_fixed_stays_at_max() -> None:
    """An adaptive limit starts at `initial`; a fixed one is `max` and ignores observations."""
    assert AdaptiveConcurrency(CONFIG, 0.0).limit == 1
    adaptive_from_4 = ConcurrencyConfig(max=10, adaptive=True, initial=4)
    assert AdaptiveConcurrency(adaptive_from_4, 0.0).limit == 4
    fixed = AdaptiveConcurrency(ConcurrencyConfig(max=8), 0.0)
    window(fixed, 0.0, overloaded=True)
    assert fixed.limit == 8


def test_limit_grows_by_one_per_window_while_rtt_is_steady() -> None:
    """Each saturated window with a steady RTT and no overload adds one slot."""
    ac = AdaptiveConcurrency(CONFIG, 0.0)
    now = 0.0
    limits = []
    for _ in range(5):
        now = window(ac, now)
        limits.append(ac.limit)
    assert limits == [2, 3, 4, 5, 6]


def test_limit_does_not_grow_when_the_slots_were_not_all_used() -> None:
    """Growing is pointless while fewer requests than the limit are in flight."""
    ac, now = grown_to(4)
    for _ in range(5):
        now = window(ac, now, in_flight=2)
    assert ac.limit == 4
    window(ac, now, in_flight=4)
    assert ac.limit == 5


def test_limit_never_exceeds_the_configured_max() -> None:
    """However long things go well, the limit stops at `max`."""
    ac, now = grown_to(10)
    for _ in range(20):
        now = window(ac, now)
    assert ac.limit == 10


@pytest.mark.parametrize(("ratio", "expected"), [(0.9, 9), (0.5, 5)])
def test_overload_cuts_the_limit_by_the_decrease_ratio(ratio: float, expected: int) -> None:
    """A 429/5xx/timeout in a window multiplies the limit by decrease_ratio (rounded down)."""
    config = msgspec.structs.replace(CONFIG, decrease_ratio=ratio)
    ac, now = grown_to(10, config)
    window(ac, now, overloaded=True)
    assert ac.limit == expected


def test_a_burst_of_overload_signals_cuts_once_per_window() -> None:
    """Twenty 429s answered to one batch of requests count as one decision."""
    ac, now = grown_to(10)
    window(ac, now, overloaded=True, n=20)
    assert ac.limit == 9


def test_limit_never_drops_below_one() -> None:
    """Sustained overload takes the limit down to 1 and no further."""
    ac, now = grown_to(3)
    for _ in range(10):
        now = window(ac, now, overloaded=True)
    assert ac.limit == 1


def test_a_latency_jump_cuts_the_limit() -> None:
    """A window whose RTT exceeds the mean by k deviations is treated as overload."""
    ac, now = grown_to(8)
    mean = ac.mean_rtt_s
    assert mean == pytest.approx(0.1)
    window(ac, now, rtt_s=0.5)
    assert ac.limit == 7


def test_small_jitter_on_a_steady_vendor_is_not_a_jump() -> None:
    """A 5% slower window on a perfectly steady vendor still grows the limit."""
    ac, now = grown_to(8)
    window(ac, now, rtt_s=0.105)
    assert ac.limit == 9


def test_overloaded_answers_do_not_feed_the_rtt_average() -> None:
    """Fast 429s say nothing about the vendor's latency: the mean RTT is unchanged."""
    ac, now = grown_to(5)
    mean = ac.mean_rtt_s
    window(ac, now, rtt_s=0.001, overloaded=True)
    assert ac.mean_rtt_s == mean


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.001, max_value=3.0),
            st.booleans(),
            st.floats(min_value=0.0, max_value=2.0),
            st.none() | st.integers(min_value=0, max_value=20),
        ),
        max_size=200,
    )
)
def test_limit_stays_between_one_and_max_and_grows_at_most_one_at_a_time(
    results: list[tuple[float, bool, float, int | None]],
) -> None:
    """Whatever the results, 1 ≤ limit ≤ max, and one result raises the limit by at most one."""
    ac = AdaptiveConcurrency(msgspec.structs.replace(CONFIG, min_window_s=0.05), 0.0)
    now = 0.0
    for rtt_s, overloaded, gap_s, in_flight in results:
        now += gap_s
        before = ac.limit
        after = ac.observe(rtt_s, overloaded, now, in_flight)
        assert 1 <= after <= CONFIG.max
        assert after <= before + 1


def test_config_decodes_and_rejects_an_initial_above_max() -> None:
    """`concurrency: {max: 64, adaptive: true}` decodes; initial > max is a config error."""
    config = msgspec.convert({"max": 64, "adaptive": True}, ConcurrencyConfig)
    assert (config.max, config.adaptive, config.initial, config.start_limit) == (64, True, 1, 1)
    assert ConcurrencyConfig(max=16).start_limit == 16
    with pytest.raises(msgspec.ValidationError, match="must not exceed max"):
        msgspec.convert({"max": 4, "initial": 8, "adaptive": True}, ConcurrencyConfig)


def test_retriable_outcomes_are_overload_signals() -> None:
    """429, 5xx, timeouts and network errors (retry outcomes) signal overload; others do not."""
    assert is_overload(Outcome(kind=OutcomeKind.RETRY, status=429))
    assert is_overload(Outcome(kind=OutcomeKind.RETRY, reason="timeout"))
    assert not is_overload(Outcome(kind=OutcomeKind.REJECT, status=400))
    assert not is_overload(Outcome(kind=OutcomeKind.DELIVERED, status=200))
