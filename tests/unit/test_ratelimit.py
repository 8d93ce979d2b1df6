"""Rate-limit arithmetic (GCRA, token bucket, config) and the local limiter, on a fake clock."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from service.core.ratelimit import RateLimitConfig, TokenBucket, gcra
from service.delivery.ratelimit import LocalRateLimiter
from service.metrics import Metrics

EPS = 1e-9


class FakeClock:
    """A clock that moves only when told; `sleep` advances it (no real waiting)."""

    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now_s += seconds


def test_gcra_admits_a_full_burst_then_asks_to_wait_one_interval() -> None:
    """A fresh GCRA admits `burst` requests at once, then names a wait of one emission interval."""
    tat, now, interval = 0.0, 100.0, 0.1
    for _ in range(3):
        allowed, tat, wait = gcra(tat, now, interval, burst=3)
        assert allowed
        assert wait == 0.0
    allowed, new_tat, wait = gcra(tat, now, interval, burst=3)
    assert not allowed
    assert new_tat == tat
    assert wait == pytest.approx(interval)


def test_gcra_refusal_changes_nothing() -> None:
    """A refused request leaves the theoretical arrival time as it was."""
    allowed, tat, wait = gcra(105.0, 100.0, 1.0, burst=2)
    assert (allowed, tat) == (False, 105.0)
    assert wait == pytest.approx(4.0)


def test_gcra_reserves_a_future_slot_within_max_wait() -> None:
    """With max_wait_s the request is admitted, advances the state, and learns its wait."""
    allowed, tat, wait = gcra(102.0, 100.0, 1.0, burst=1, max_wait_s=math.inf)
    assert allowed
    assert wait == pytest.approx(2.0)
    assert tat == pytest.approx(103.0)


def test_gcra_gives_no_credit_for_idle_time_beyond_the_burst() -> None:
    """After a long idle period the bucket is full, never fuller than `burst`."""
    tat = 0.0
    admitted = 0
    while gcra(tat, 1_000.0, 0.5, burst=4).allowed:
        tat = gcra(tat, 1_000.0, 0.5, burst=4).new_tat_s
        admitted += 1
    assert admitted == 4


def test_bucket_reserve_spaces_queued_requests_by_the_interval() -> None:
    """Reservations beyond the burst wait 1/per_s more each, and the bucket goes negative."""
    clock = FakeClock()
    bucket = TokenBucket(per_s=10.0, burst=2, clock=clock)
    waits = [bucket.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3])
    assert bucket.tokens == pytest.approx(-3.0)


def test_bucket_try_acquire_takes_nothing_when_refusing() -> None:
    """try_acquire returns the wait without consuming, so the token is there after the wait."""
    clock = FakeClock()
    bucket = TokenBucket(per_s=2.0, burst=1, clock=clock)
    assert bucket.try_acquire() == 0.0
    wait = bucket.try_acquire()
    assert wait == pytest.approx(0.5)
    assert bucket.try_acquire() == pytest.approx(0.5)
    clock.advance(wait)
    assert bucket.try_acquire() == 0.0


def test_bucket_refills_at_per_s_up_to_burst() -> None:
    """Tokens come back at per_s and stop at burst."""
    clock = FakeClock()
    bucket = TokenBucket(per_s=4.0, burst=3, clock=clock)
    for _ in range(3):
        bucket.reserve()
    assert bucket.tokens == pytest.approx(0.0)
    clock.advance(0.5)
    assert bucket.tokens == pytest.approx(2.0)
    clock.advance(10.0)
    assert bucket.tokens == pytest.approx(3.0)


def test_bucket_rejects_a_meaningless_rate() -> None:
    """A zero rate or an empty bucket is a programming error."""
    with pytest.raises(ValueError, match="per_s"):
        TokenBucket(per_s=0.0, burst=1, clock=FakeClock())
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(per_s=1.0, burst=0, clock=FakeClock())


@settings(max_examples=200, deadline=None)
@given(
    per_s=st.floats(min_value=0.5, max_value=200.0),
    burst=st.integers(min_value=1, max_value=20),
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=0.5), st.booleans()),
        min_size=1,
        max_size=120,
    ),
)
def test_bucket_never_admits_more_than_burst_plus_rate_times_interval(
    per_s: float, burst: int, steps: list[tuple[float, bool]]
) -> None:
    """Over any interval of t seconds the admitted send times number at most burst + per_s·t."""
    clock = FakeClock(0.0)
    bucket = TokenBucket(per_s, burst, clock)
    sends: list[float] = []
    for gap_s, reserve in steps:
        clock.advance(gap_s)
        if reserve:
            sends.append(clock.now_s + bucket.reserve())
        elif bucket.try_acquire() == 0.0:
            sends.append(clock.now_s)
    sends.sort()
    for i in range(len(sends)):
        for j in range(i, len(sends)):
            assert j - i + 1 <= burst + per_s * (sends[j] - sends[i]) + 1e-6


@settings(max_examples=100, deadline=None)
@given(
    per_s=st.floats(min_value=1.0, max_value=100.0),
    burst=st.integers(min_value=1, max_value=10),
    duration_s=st.floats(min_value=1.0, max_value=20.0),
)
def test_a_greedy_poller_gets_the_full_rate(per_s: float, burst: int, duration_s: float) -> None:
    """A caller that waits exactly the wait it is told is admitted per_s·t times (give or take)."""
    clock = FakeClock(0.0)
    bucket = TokenBucket(per_s, burst, clock)
    admitted = 0
    while clock.now_s <= duration_s:
        wait = bucket.try_acquire()
        if wait == 0.0:
            admitted += 1
        else:
            clock.advance(wait)
    assert per_s * duration_s <= admitted <= burst + per_s * duration_s + 1


def test_config_default_burst_is_a_tenth_of_a_second_of_rate() -> None:
    """Without `burst`, the bucket holds max(1, per_s / 10) requests."""
    assert RateLimitConfig(per_s=10.0).burst_requests == 1
    assert RateLimitConfig(per_s=200.0).burst_requests == 20
    assert RateLimitConfig(per_s=0.5).burst_requests == 1
    assert RateLimitConfig(per_s=10.0, burst=3).burst_requests == 3
    assert RateLimitConfig(per_s=4.0).emission_interval_s == pytest.approx(0.25)


def test_config_decodes_from_yaml_data_and_rejects_bad_values() -> None:
    """The Struct accepts {per_s, burst} and names the bad field otherwise."""
    assert msgspec.convert({"per_s": 5}, RateLimitConfig) == RateLimitConfig(per_s=5.0)
    with pytest.raises(msgspec.ValidationError, match="per_s"):
        msgspec.convert({"per_s": 0}, RateLimitConfig)
    with pytest.raises(msgspec.ValidationError, match="burst"):
        msgspec.convert({"per_s": 1, "burst": 0}, RateLimitConfig)
    with pytest.raises(msgspec.ValidationError, match="per_second"):
        msgspec.convert({"per_s": 1, "per_second": 2}, RateLimitConfig)


def test_config_share_divides_rate_and_burst_among_replicas() -> None:
    """Each of n replicas gets per_s/n and burst/n (at least 1)."""
    share = RateLimitConfig(per_s=30.0, burst=9).share(3)
    assert share == RateLimitConfig(per_s=10.0, burst=3)
    assert RateLimitConfig(per_s=2.0, burst=1).share(4).burst_requests == 1


async def test_local_limiter_sleeps_until_each_reserved_slot() -> None:
    """Sequential acquires beyond the burst each wait one interval and report it."""
    clock = FakeClock()
    limiter = LocalRateLimiter(
        {"v": RateLimitConfig(per_s=2.0, burst=1)}, clock=clock, sleep=clock.sleep
    )
    waits = [await limiter.acquire("v") for _ in range(3)]
    assert waits == pytest.approx([0.0, 0.5, 0.5])


async def test_local_limiter_keeps_one_bucket_per_account() -> None:
    """Two accounts of one vendor do not share a bucket."""
    clock = FakeClock()
    limiter = LocalRateLimiter(
        {"v": RateLimitConfig(per_s=1.0, burst=1)}, clock=clock, sleep=clock.sleep
    )
    assert await limiter.acquire("v", "a") == 0.0
    assert await limiter.acquire("v", "b") == 0.0
    assert await limiter.acquire("v", "a") == pytest.approx(1.0)


async def test_local_limiter_lets_unlimited_vendors_through() -> None:
    """A vendor without a rate limit never waits (unless paused)."""
    clock = FakeClock()
    limiter = LocalRateLimiter({"v": None}, clock=clock, sleep=clock.sleep)
    assert [await limiter.acquire("v") for _ in range(100)] == [0.0] * 100
    assert await limiter.acquire("unknown") == 0.0


async def test_retry_after_pause_holds_the_whole_vendor_and_is_counted() -> None:
    """A pause makes every acquire wait until it ends, and the metrics record pause and wait."""
    clock = FakeClock()
    wall = FakeClock(1_700_000_000.0)
    metrics = Metrics(CollectorRegistry())
    limiter = LocalRateLimiter(
        {"v": RateLimitConfig(per_s=100.0)},
        metrics=metrics,
        clock=clock,
        wall_clock=wall,
        sleep=clock.sleep,
    )
    await limiter.pause_until("v", wall() + 5.0)
    assert await limiter.paused_for_s("v") == pytest.approx(5.0)
    assert await limiter.paused_for_s("other") == 0.0
    assert await limiter.acquire("v") == pytest.approx(5.0)
    assert await limiter.paused_for_s("v") == 0.0
    assert metrics.retry_after_pauses.labels("v")._value.get() == 1
    assert metrics.ratelimit_wait_seconds.labels("v")._value.get() == pytest.approx(5.0)


async def test_a_shorter_pause_never_shortens_a_longer_one() -> None:
    """pause_until only ever extends the vendor's pause."""
    clock = FakeClock()
    limiter = LocalRateLimiter({}, clock=clock, wall_clock=lambda: 0.0, sleep=clock.sleep)
    await limiter.pause_until("v", 10.0)
    await limiter.pause_until("v", 3.0)
    await limiter.pause_until("v", -1.0)
    assert await limiter.paused_for_s("v") == pytest.approx(10.0)


async def test_a_slot_that_falls_inside_a_pause_is_reserved_again_after_it() -> None:
    """A waiter whose slot lands in a pause sits the pause out and then takes a fresh slot."""
    clock = FakeClock()
    paused: list[bool] = []

    async def sleep_and_get_a_429(seconds: float) -> None:
        await clock.sleep(seconds)
        if not paused:  # a 429 with Retry-After: 3 arrives while the caller waits its slot
            paused.append(True)
            await limiter.pause_until("v", clock() + 3.0)

    limiter = LocalRateLimiter(
        {"v": RateLimitConfig(per_s=1.0, burst=1)},
        clock=clock,
        wall_clock=clock,
        sleep=sleep_and_get_a_429,
    )
    assert await limiter.acquire("v") == 0.0
    assert await limiter.acquire("v") == pytest.approx(4.0)
    assert clock.slept == pytest.approx([1.0, 3.0])
