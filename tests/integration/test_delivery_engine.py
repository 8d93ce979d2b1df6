"""The delivery engine end to end: global rate limits over Redis, Retry-After, outages with the
circuit breaker, Redis loss, deduplication. Real broker, real redis-server, strict sandboxes."""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from tests.conftest import goal_reach_vendor, read_topic, relay_config, wait_for


def _customers(lines: list[bytes], vendor: str = "sustain_impact") -> Counter[str]:
    events = [orjson.loads(line) for line in lines]
    return Counter(
        e["customer"]["ids"][vendor]
        for e in events
        if e["goal"] in ("purchase", "signup") and vendor in e["customer"]["ids"]
    )


async def _metric(port: int, name: str, labels: dict[str, str]) -> float | None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


async def test_two_replicas_sharing_a_redis_limit_stay_under_it_together(
    broker, topics, sandbox_factory, relay_process, redis_clean
):
    """Two processes limited to R/s over Redis deliver R/s combined, and a vendor at 1.2·R never
    has to answer 429."""
    rate_per_s = 40.0
    si = await sandbox_factory()
    si.faults.rate_limit_per_s = rate_per_s * 1.2
    vendor = goal_reach_vendor(si, rate_limit={"per_s": rate_per_s, "burst": 2})
    config = relay_config(
        broker,
        topics,
        {"sustain_impact": vendor},
        group_prefix=f"rl-{uuid.uuid4().hex[:6]}",
        redis={"url": redis_clean.url, "replicas": 2},
    )
    relays = [relay_process(config), relay_process(config)]
    for relay in relays:
        relay.start()
    for relay in relays:
        await relay.wait_ready()
    await publish(broker.bootstrap, topics.source, list(sample_lines(1200)))
    await wait_for(lambda: len(si.accepted) >= 20, 30, "deliveries start")
    start_s = time.time()
    await wait_for(lambda: time.time() - start_s >= 11, 20, "an 11 s window")
    window = [t for t in si.request_times_s if start_s <= t < start_s + 11]
    measured_per_s = len(window) / 11
    for relay in relays:
        relay.signal(signal.SIGTERM)
    for relay in relays:
        assert await relay.wait_exit() == 0
    print(f"two replicas, limit {rate_per_s}/s: measured {measured_per_s:.2f}/s over 11 s")
    assert si.statuses.get(429, 0) == 0
    assert measured_per_s <= rate_per_s * 1.05, measured_per_s
    assert measured_per_s >= rate_per_s * 0.9, measured_per_s


async def test_retry_after_pauses_the_whole_vendor_for_the_time_it_asks(
    broker, topics, sandbox_factory, run_relay
):
    """After a 429 with `Retry-After: 2`, the vendor receives nothing for 2 s, then everything."""
    si = await sandbox_factory()
    si.faults.retry_after_s = 2
    vendor = goal_reach_vendor(si, concurrency=4, breaker={"enabled": False})
    await run_relay(relay_config(broker, topics, {"sustain_impact": vendor}))
    lines = list(sample_lines(60))
    await publish(broker.bootstrap, topics.source, lines)
    await wait_for(lambda: si.statuses.get(429, 0) > 0, 30, "the first 429")
    si.faults.retry_after_s = None
    want = _customers(lines)
    await wait_for(lambda: len(si.accepted) >= sum(want.values()), 30, "every delivery")
    throttled_at = [t for t, status in si.answers if status == 429]
    first_429_s, last_429_s = min(throttled_at), max(throttled_at)
    # Requests already on the wire when the first 429 came back may still arrive (and get 429);
    # after that, nothing for the 2 s asked.
    assert last_429_s - first_429_s < 0.5
    later = [t for t in si.request_times_s if t > last_429_s]
    assert min(later) - first_429_s >= 1.95
    assert Counter(p["CustomerId"] for p in si.payloads()) == want


async def test_a_vendor_down_for_20s_gets_everything_after_and_others_are_unaffected(
    broker, topics, sandbox_factory, run_relay
):
    """An outage opens the breaker and pauses that vendor only: nothing is dead-lettered, the
    other vendor keeps flowing, and every event arrives once the vendor is back."""
    down, healthy = await sandbox_factory(), await sandbox_factory()
    await down.go_down()
    vendors = {
        "sustain_impact": goal_reach_vendor(down, breaker={"min_requests": 5}),
        "sales_ninja": goal_reach_vendor(healthy),
    }
    relay = await run_relay(relay_config(broker, topics, vendors))
    lines = list(sample_lines(300))
    await publish(broker.bootstrap, topics.source, lines)
    outage_started_s = time.time()
    want_healthy = _customers(lines, "sales_ninja")
    await wait_for(
        lambda: len(healthy.accepted) >= sum(want_healthy.values()),
        15,
        "the healthy vendor's deliveries during the outage",
    )
    assert time.time() - outage_started_s < 20
    await wait_for(
        lambda: relay.status()["vendors"]["sustain_impact"]["breaker"] != "closed",
        15,
        "the breaker to open",
    )
    assert relay.metrics.registry.get_sample_value(
        "conversion_relay_breaker_state", {"vendor": "sustain_impact"}
    ) in (1, 2)
    await wait_for(lambda: time.time() - outage_started_s >= 20, 25, "a 20 s outage")
    await down.go_up()
    want = _customers(lines)
    await wait_for(lambda: len(down.accepted) >= sum(want.values()), 60, "recovery")
    assert Counter(p["CustomerId"] for p in down.payloads()) == want
    assert Counter(p["CustomerId"] for p in healthy.payloads()) == want_healthy
    sample = relay.metrics.registry.get_sample_value
    assert (
        sample(
            "conversion_relay_dlq_writes_total",
            {"vendor": "sustain_impact", "reason": "retries_exhausted"},
        )
        == 0
    )
    assert await read_topic(broker.bootstrap, topics.dlq, expected=1, timeout_s=2) == []


async def test_delivery_continues_on_the_local_share_when_redis_dies(
    broker, topics, sandbox_factory, relay_process, redis_clean
):
    """Redis killed mid-run: the relay keeps delivering at its local share and says so."""
    si = await sandbox_factory()
    vendor = goal_reach_vendor(si, rate_limit={"per_s": 200})
    config = relay_config(
        broker,
        topics,
        {"sustain_impact": vendor},
        redis={"url": redis_clean.url, "replicas": 2, "reprobe_s": 1},
    )
    relay = relay_process(config)
    relay.start()
    await relay.wait_ready()
    try:
        first = list(sample_lines(60))
        await publish(broker.bootstrap, topics.source, first)
        await wait_for(lambda: len(si.accepted) >= sum(_customers(first).values()), 30, "before")
        redis_clean.stop()
        second = list(sample_lines(120, seed=99))
        await publish(broker.bootstrap, topics.source, second)
        want = _customers(first) + _customers(second)
        await wait_for(lambda: len(si.accepted) >= sum(want.values()), 30, "after Redis died")
        assert Counter(p["CustomerId"] for p in si.payloads()) == want
        assert (
            await _metric(
                relay.http_port, "conversion_relay_ratelimit_fallback", {"vendor": "sustain_impact"}
            )
            == 1
        )
    finally:
        relay.signal(signal.SIGTERM)
        assert await relay.wait_exit() == 0
        redis_clean.start()


async def test_a_redelivered_event_already_delivered_is_skipped_and_counted(
    broker, topics, sandbox_factory, run_relay
):
    """The same event_id twice reaches the vendor once; the second is counted deduplicated."""
    si = await sandbox_factory()
    relay = await run_relay(relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)}))
    line = next(line for line in sample_lines(5) if orjson.loads(line)["goal"] == "purchase")
    await publish(broker.bootstrap, topics.source, [line])
    await wait_for(lambda: len(si.accepted) == 1, 30, "the first delivery")
    await publish(broker.bootstrap, topics.source, [line])
    sample = relay.metrics.registry.get_sample_value
    await wait_for(
        lambda: (
            sample(
                "conversion_relay_deliveries_total",
                {"vendor": "sustain_impact", "outcome": "deduplicated"},
            )
            == 1
        ),
        30,
        "the duplicate to be counted",
    )
    assert len(si.accepted) == 1
