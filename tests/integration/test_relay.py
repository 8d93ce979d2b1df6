"""The relay end to end: real Tansu broker, real aiokafka, strict goal-reach sandboxes."""

from __future__ import annotations

import re
import signal
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

import aiohttp
import orjson

from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from tests.conftest import (
    GOAL_PURCHASE,
    GOAL_SIGNUP,
    committed_offsets,
    goal_reach_vendor,
    read_topic,
    relay_config,
    wait_for,
)

CREATED_ON = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$")


def _events(lines: list[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in lines]


def _expected(events: list[dict[str, Any]], vendor: str, goals: set[str]) -> Counter[str]:
    return Counter(
        e["customer"]["ids"][vendor]
        for e in events
        if e["goal"] in goals and vendor in e["customer"]["ids"]
    )


async def test_each_event_is_delivered_exactly_once_to_each_routed_vendor(
    broker, topics, sandbox_factory, run_relay
):
    """2,000 events reach every vendor that has a route and an identity for them, once each."""
    si, sn = await sandbox_factory(), await sandbox_factory()
    vendors = {
        "sustain_impact": goal_reach_vendor(si),
        "sales_ninja": goal_reach_vendor(sn, goals={"purchase": GOAL_PURCHASE}),
    }
    relay = await run_relay(relay_config(broker, topics, vendors))
    lines = list(sample_lines(2000))
    events = _events(lines)
    await publish(broker.bootstrap, topics.source, lines)

    want_si = _expected(events, "sustain_impact", {"purchase", "signup"})
    want_sn = _expected(events, "sales_ninja", {"purchase"})
    await wait_for(
        lambda: (
            len(si.accepted) >= sum(want_si.values()) and len(sn.accepted) >= sum(want_sn.values())
        ),
        60,
        "all deliveries",
    )
    await wait_for(lambda: relay.pipelines["sales_ninja"].in_flight == 0, 10, "drain")

    assert Counter(p["CustomerId"] for p in si.payloads()) == want_si
    assert Counter(p["CustomerId"] for p in sn.payloads()) == want_sn
    assert not si.refused and not sn.refused
    by_customer = {e["customer"]["ids"]["sustain_impact"]: e for e in events}
    for payload in si.payloads():
        event = by_customer[payload["CustomerId"]]
        assert payload["GoalId"] == (GOAL_PURCHASE if event["goal"] == "purchase" else GOAL_SIGNUP)
        assert CREATED_ON.match(payload["CreatedOnUtc"])
        assert payload["Ip"] == event["customer"]["ip"]
        assert all(isinstance(v, str) for v in payload.get("CustomUserScopeParams", {}).values())
    skipped = relay.metrics.skipped.labels("sales_ninja", "missing_identity")._value.get()
    assert skipped == sum(
        1 for e in events if e["goal"] == "purchase" and "sales_ninja" not in e["customer"]["ids"]
    )


async def test_malformed_records_go_to_the_dlq_with_headers_and_valid_ones_still_arrive(
    broker, topics, sandbox_factory, run_relay
):
    """Not-JSON, wrong-typed and id-less records are dead-lettered; the rest still flow."""
    si = await sandbox_factory()
    await run_relay(relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)}))
    good = list(sample_lines(30))
    bad = [
        b"this is not json",
        b'{"event_id": "e-1", "goal": 42, "occurred_at": "2026-11-20T14:03:11Z"}',
        b'{"goal": "purchase", "occurred_at": "2026-11-20T14:03:11Z"}',
    ]
    lines = good[:10] + bad[:1] + good[10:20] + bad[1:] + good[20:]
    await publish(broker.bootstrap, topics.source, lines)
    want = _expected(_events(good), "sustain_impact", {"purchase", "signup"})
    await wait_for(lambda: len(si.accepted) >= sum(want.values()), 30, "valid deliveries")

    letters = await read_topic(broker.bootstrap, topics.dlq, expected=3)
    assert sorted(r.value for r in letters) == sorted(bad)
    for record in letters:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["relay-vendor"] == "sustain_impact"
        assert headers["relay-reason"] == "invalid_event"
        assert headers["relay-source-topic"] == topics.source
        assert int(headers["relay-source-partition"]) in range(topics.partitions)
        assert int(headers["relay-source-offset"]) >= 0
        assert datetime.fromisoformat(headers["relay-failed-at"]).tzinfo is not None
    errors = sorted(dict(r.headers)["relay-error"].decode() for r in letters)
    assert any("`$.goal`" in e and "Expected `str`, got `int`" in e for e in errors)
    assert any("missing required field `event_id`" in e for e in errors)
    assert any(e.startswith("not valid JSON") for e in errors)
    assert Counter(p["CustomerId"] for p in si.payloads()) == want


async def test_a_rejected_event_is_dead_lettered_with_status_and_attempts(
    broker, topics, sandbox_factory, run_relay
):
    """A 400 from the vendor is not retried: the record lands in the DLQ with its HTTP status."""
    si = await sandbox_factory()
    si.faults.reject_next = 1
    await run_relay(relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)}))
    await publish(broker.bootstrap, topics.source, list(sample_lines(1)))
    letters = await read_topic(broker.bootstrap, topics.dlq, expected=1)
    headers = {k: v.decode() for k, v in letters[0].headers}
    assert headers["relay-reason"] == "rejected"
    assert headers["relay-http-status"] == "400"
    assert headers["relay-attempts"] == "1"
    assert "Customer not found" in headers["relay-error"]
    assert headers["relay-first-attempt-at"] <= headers["relay-last-attempt-at"]
    assert len(si.refused) == 1 and not si.accepted


async def test_transient_errors_are_retried_until_delivered(
    broker, topics, sandbox_factory, run_relay
):
    """With 30 % of answers 503 (default breaker on), every event arrives, none dead-lettered."""
    si = await sandbox_factory()
    si.faults.error_rate = 0.3
    vendor = goal_reach_vendor(
        si, retry={"max_attempts": 20, "initial_backoff_s": 0.01, "max_backoff_s": 0.1}
    )
    relay = await run_relay(relay_config(broker, topics, {"sustain_impact": vendor}))
    lines = list(sample_lines(200))
    await publish(broker.bootstrap, topics.source, lines)
    want = _expected(_events(lines), "sustain_impact", {"purchase", "signup"})
    await wait_for(lambda: len(si.accepted) >= sum(want.values()), 60, "deliveries")
    assert Counter(p["CustomerId"] for p in si.payloads()) == want
    assert si.statuses.get(503, 0) > 0
    # Read through the registry: a scrape hands over the pipeline's batched counts first.
    retried = relay.metrics.registry.get_sample_value(
        "conversion_relay_deliveries_total", {"vendor": "sustain_impact", "outcome": "retried"}
    )
    assert retried is not None and retried > 0
    assert relay.metrics.dlq_writes.labels("sustain_impact", "retries_exhausted")._value.get() == 0


async def test_in_flight_cap_pauses_fetching_and_memory_stays_bounded(
    broker, topics, sandbox_factory, run_relay
):
    """With a slow vendor, in-flight records never exceed the cap and fetching pauses at it."""
    si = await sandbox_factory()
    si.faults.latency_s = 0.05
    config = relay_config(
        broker,
        topics,
        {"sustain_impact": goal_reach_vendor(si, concurrency=4)},
        pipeline={"max_in_flight": 50, "resume_below": 20},
    )
    relay = await run_relay(config)
    await publish(broker.bootstrap, topics.source, list(sample_lines(600)))
    pipeline = relay.pipelines["sustain_impact"]
    peak, paused_seen = 0, False

    def observe() -> bool:
        nonlocal peak, paused_seen
        peak = max(peak, pipeline.in_flight)
        paused_seen |= relay.metrics.paused.labels("sustain_impact")._value.get() == 1
        return len(si.accepted) >= 200

    await wait_for(observe, 60, "200 deliveries")
    assert paused_seen
    assert 0 < peak <= 50


async def test_sigterm_drains_exits_zero_and_commits_every_delivered_event(
    broker, topics, sandbox_factory, relay_process
):
    """SIGTERM mid-stream: exit code 0 and the committed offsets cover every delivered event."""
    si = await sandbox_factory()
    si.faults.latency_s = 0.01
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)})
    relay = relay_process(config)
    relay.start()
    await relay.wait_ready()
    lines = list(sample_lines(1500))
    await publish(broker.bootstrap, topics.source, lines)
    await wait_for(lambda: len(si.accepted) >= 100, 30, "some deliveries")
    relay.signal(signal.SIGTERM)
    assert await relay.wait_exit() == 0, relay.logs()

    delivered = {p["CustomerId"] for p in si.payloads()}
    group = f"{config['kafka']['group_prefix']}.sustain_impact"
    committed = await committed_offsets(broker.bootstrap, group, topics.source, topics.partitions)
    records = await read_topic(broker.bootstrap, topics.source, expected=len(lines))
    for record in records:
        event = orjson.loads(record.value)
        if event["customer"]["ids"].get("sustain_impact") in delivered:
            assert record.offset < committed[record.partition], (record.partition, record.offset)


async def test_sigkill_mid_stream_then_restart_delivers_every_event_at_least_once(
    broker, topics, sandbox_factory, relay_process
):
    """A relay killed with SIGKILL and started again misses no event (duplicates allowed)."""
    si = await sandbox_factory()
    si.faults.latency_s = 0.005
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)})
    first = relay_process(config)
    first.start()
    await first.wait_ready()
    lines = list(sample_lines(2000))
    await publish(broker.bootstrap, topics.source, lines)
    await wait_for(lambda: len(si.accepted) >= 300, 30, "some deliveries")
    first.kill()
    second = relay_process(config)
    second.start()
    await second.wait_ready()
    want = _expected(_events(lines), "sustain_impact", {"purchase", "signup"})
    await wait_for(
        lambda: set(want) <= {p["CustomerId"] for p in si.payloads()},
        60,
        "every event after restart",
    )
    second.signal(signal.SIGTERM)
    assert await second.wait_exit() == 0


async def test_two_relays_in_one_group_share_partitions_and_deliver_everything(
    broker, topics, sandbox_factory, relay_process
):
    """Two processes with the same group prefix split the partitions and together miss nothing."""
    si = await sandbox_factory()
    si.faults.latency_s = 0.002
    config = relay_config(
        broker,
        topics,
        {"sustain_impact": goal_reach_vendor(si)},
        group_prefix=f"shared-{uuid.uuid4().hex[:6]}",
    )
    relays = [relay_process(config), relay_process(config)]
    for relay in relays:
        relay.start()
    for relay in relays:
        await relay.wait_ready()
    lines = list(sample_lines(2000))
    await publish(broker.bootstrap, topics.source, lines)
    want = _expected(_events(lines), "sustain_impact", {"purchase", "signup"})
    await wait_for(lambda: set(want) <= {p["CustomerId"] for p in si.payloads()}, 60, "every event")
    statuses = []
    async with aiohttp.ClientSession() as session:
        for relay in relays:
            async with session.get(f"http://127.0.0.1:{relay.http_port}/status") as resp:
                statuses.append((await resp.json())["vendors"]["sustain_impact"])
    owned = [set(s["assigned_partitions"]) for s in statuses]
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    assert len(owned[0] | owned[1]) == topics.partitions
    for relay in relays:
        relay.signal(signal.SIGTERM)
    for relay in relays:
        assert await relay.wait_exit() == 0


async def test_an_unexpected_error_is_retried_and_never_stalls_the_partition(
    broker, topics, sandbox_factory, run_relay
):
    """A bug while handling a record retries it like a transient failure; the rest flows on."""
    si = await sandbox_factory()
    relay = await run_relay(relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)}))
    pipeline = relay.pipelines["sustain_impact"]
    adapter = pipeline._adapter
    real_build = adapter.build
    failures = []

    def flaky_build(event, route):
        if len(failures) < 2:
            failures.append(event.event_id)
            raise RuntimeError("simulated bug")
        return real_build(event, route)

    adapter.build = flaky_build
    lines = list(sample_lines(30))
    await publish(broker.bootstrap, topics.source, lines)
    want = _expected(_events(lines), "sustain_impact", {"purchase", "signup"})
    await wait_for(lambda: len(si.accepted) >= sum(want.values()), 30, "every delivery")
    await wait_for(lambda: pipeline.in_flight == 0, 10, "all terminal")
    assert len(failures) == 2
    assert Counter(p["CustomerId"] for p in si.payloads()) == want


async def test_a_paused_partition_keeps_its_fetched_records_instead_of_fetching_them_again(
    broker, topics, sandbox_factory, run_relay, monkeypatch
):
    """Pausing at the cap must not drop what aiokafka already fetched: every record is read
    from the fetched bytes about once, not once per pause (each refetch re-reads a whole fetch)."""
    from service import kafka as kafka_module

    unpacked: Counter[tuple[int, int]] = Counter()
    real = kafka_module.LenientPartitionRecords._consumer_record

    def counting(self: Any, tp: Any, record: Any) -> Any:
        unpacked[(tp.partition, record.offset)] += 1
        return real(self, tp, record)

    monkeypatch.setattr(kafka_module.LenientPartitionRecords, "_consumer_record", counting)
    si = await sandbox_factory()
    si.faults.latency_s = 0.002
    config = relay_config(
        broker,
        topics,
        {"sustain_impact": goal_reach_vendor(si, concurrency=8)},
        pipeline={"max_in_flight": 40, "resume_below": 10},
    )
    lines = list(sample_lines(1200))
    await publish(broker.bootstrap, topics.source, lines)
    relay = await run_relay(config)
    expected = sum(_expected(_events(lines), "sustain_impact", {"purchase", "signup"}).values())
    await wait_for(lambda: len(si.accepted) >= expected, 60, "every delivery")
    await wait_for(lambda: relay.pipelines["sustain_impact"].in_flight == 0, 10, "no record left")
    assert len(unpacked) == len(lines)
    assert sum(unpacked.values()) <= 1.2 * len(lines), (
        f"{sum(unpacked.values())} records read for {len(lines)}: fetched again after pauses"
    )
