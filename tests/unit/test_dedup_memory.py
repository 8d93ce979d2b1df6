"""The in-memory dedup store (generations over the TTL) and the dedup/Redis config Structs."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.delivery.dedup import MemoryDedupStore, RedisDedupStore, make_dedup_store
from service.delivery.redis_config import DedupConfig, RedisConfig, redis_client


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now_s = 500.0

    def __call__(self) -> float:
        return self.now_s


async def test_an_unmarked_event_is_not_seen_and_a_marked_one_is() -> None:
    """seen() is False until mark(), True after."""
    store = MemoryDedupStore(clock=FakeClock())
    assert not await store.seen("altcraft", "e1")
    await store.mark("altcraft", "e1")
    assert await store.seen("altcraft", "e1")


async def test_the_key_is_the_vendor_and_event_pair() -> None:
    """An event delivered to one vendor is still new to another."""
    store = MemoryDedupStore(clock=FakeClock())
    await store.mark("altcraft", "e1")
    assert not await store.seen("conductrics", "e1")
    assert not await store.seen("altcraft", "e2")


async def test_entries_expire_after_the_ttl() -> None:
    """A pair is forgotten ttl_s after it was marked."""
    clock = FakeClock()
    store = MemoryDedupStore(ttl_s=60.0, clock=clock)
    await store.mark("v", "e1")
    clock.now_s += 59.9
    assert await store.seen("v", "e1")
    clock.now_s += 0.1
    assert not await store.seen("v", "e1")
    assert len(store) == 0


async def test_marking_again_restarts_the_ttl() -> None:
    """A re-marked pair lives ttl_s from the latest mark."""
    clock = FakeClock()
    store = MemoryDedupStore(ttl_s=60.0, clock=clock)
    await store.mark("v", "e1")
    clock.now_s += 50.0
    await store.mark("v", "e1")
    clock.now_s += 50.0
    assert await store.seen("v", "e1")


async def test_at_capacity_the_oldest_marks_are_forgotten_first() -> None:
    """Beyond max_entries the oldest generation of marks goes (here one pair a generation)."""
    store = MemoryDedupStore(max_entries=3, clock=FakeClock())
    for event_id in ("a", "b", "c"):
        await store.mark("v", event_id)
    assert await store.seen("v", "a")
    await store.mark("v", "d")
    assert len(store) == 3
    assert not await store.seen("v", "a")
    assert all([await store.seen("v", e) for e in ("b", "c", "d")])


async def test_at_capacity_a_sixteenth_of_the_pairs_is_forgotten_at_once() -> None:
    """With room for 160 pairs, the 161st mark forgets the 10 oldest and nothing else."""
    store = MemoryDedupStore(max_entries=160, clock=FakeClock())
    for i in range(161):
        store.add("v", str(i))
    assert len(store) == 151
    assert [i for i in range(161) if store.contains("v", str(i))] == list(range(10, 161))


async def test_a_pair_is_remembered_for_at_least_fifteen_sixteenths_of_the_ttl() -> None:
    """Marks arriving all along (generations opening by time) never cut a pair's memory below
    ttl_s - ttl_s / 16."""
    clock = FakeClock()
    store = MemoryDedupStore(ttl_s=160.0, clock=clock)
    store.add("v", "first")
    for i in range(149):  # up to 149.0 s later, within 160 - 10
        clock.now_s += 1.0
        store.add("v", f"other-{i}")
        assert store.contains("v", "first"), f"forgotten {clock.now_s - 500.0:.0f} s after"
    clock.now_s += 11.0  # 160 s after: past the TTL
    assert not store.contains("v", "first")


async def test_a_pair_marked_again_in_a_later_generation_survives_its_first_one() -> None:
    """Forgetting a generation leaves the pairs marked again since then."""
    clock = FakeClock()
    store = MemoryDedupStore(ttl_s=16.0, clock=clock)
    store.add("v", "e1")
    store.add("w", "e1")
    clock.now_s += 8.0
    store.add("v", "e1")
    clock.now_s += 8.5  # the first generation is a TTL old
    assert store.contains("v", "e1") and not store.contains("w", "e1")
    assert len(store) == 1


async def test_expired_entries_are_purged_when_new_ones_arrive() -> None:
    """Adding a pair drops the expired pairs at the old end instead of keeping them to the cap."""
    clock = FakeClock()
    store = MemoryDedupStore(ttl_s=10.0, clock=clock)
    for i in range(5):
        await store.mark("v", str(i))
    clock.now_s += 11.0
    await store.mark("v", "new")
    assert len(store) == 1


@given(
    max_entries=st.integers(min_value=1, max_value=20),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 40), st.floats(0.0, 30.0)), max_size=200),
)
def test_the_store_never_exceeds_max_entries_nor_remembers_expired_pairs(
    max_entries: int, ops: list[tuple[bool, int, float]]
) -> None:
    """Whatever the sequence, size ≤ max_entries and a pair is never seen past its TTL."""
    clock = FakeClock()
    store = MemoryDedupStore(ttl_s=60.0, max_entries=max_entries, clock=clock)
    marked_at: dict[str, float] = {}
    for is_mark, n, gap_s in ops:
        clock.now_s += gap_s
        event_id = str(n)
        if is_mark:
            store.add("v", event_id)
            marked_at[event_id] = clock.now_s
        elif store.contains("v", event_id):
            assert clock.now_s < marked_at[event_id] + 60.0
        assert len(store) <= max_entries


def test_store_rejects_meaningless_bounds() -> None:
    """A zero TTL or capacity is a programming error."""
    with pytest.raises(ValueError, match="ttl_s"):
        MemoryDedupStore(ttl_s=0.0)
    with pytest.raises(ValueError, match="max_entries"):
        MemoryDedupStore(max_entries=0)


def test_dedup_config_defaults_to_memory_for_seven_days() -> None:
    """`dedup: {}` is an enabled in-memory store with a 7-day TTL."""
    config = msgspec.convert({}, DedupConfig)
    assert (config.enabled, config.backend, config.ttl_s) == (True, "memory", 604800.0)
    with pytest.raises(msgspec.ValidationError, match="backend"):
        msgspec.convert({"backend": "memcached"}, DedupConfig)


def test_make_dedup_store_builds_what_the_config_names() -> None:
    """memory → MemoryDedupStore, disabled → None, redis → RedisDedupStore (needs a client)."""
    memory = make_dedup_store(DedupConfig(ttl_s=5.0, max_entries=7))
    assert isinstance(memory, MemoryDedupStore)
    assert (memory.ttl_s, memory.max_entries) == (5.0, 7)
    assert make_dedup_store(DedupConfig(enabled=False)) is None
    with pytest.raises(ValueError, match="no redis"):
        make_dedup_store(DedupConfig(backend="redis"))
    client = redis_client(RedisConfig(url="redis://127.0.0.1:1/0"))
    store = make_dedup_store(DedupConfig(backend="redis"), client)
    assert isinstance(store, RedisDedupStore)
    assert store.key("altcraft", "e1") == "conversion-relay:dedup:altcraft:e1"


def test_redis_config_decodes_and_checks_the_url_scheme() -> None:
    """`redis: {url, replicas}` decodes with defaults; a URL without a redis scheme is refused."""
    config = msgspec.convert({"url": "redis://redis:6379/0", "replicas": 3}, RedisConfig)
    assert (config.replicas, config.key_prefix, config.reprobe_s) == (3, "conversion-relay:", 2.0)
    with pytest.raises(msgspec.ValidationError, match="url"):
        msgspec.convert({"url": "http://redis:6379"}, RedisConfig)
    with pytest.raises(msgspec.ValidationError, match="replicas"):
        msgspec.convert({"url": "redis://r", "replicas": 0}, RedisConfig)
