"""Hostile input: generated garbage mixed with valid events; the relay survives and sorts it out."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from tests.conftest import committed_offsets, read_topic, relay_config
from tests.reliability.conftest import (
    all_goals_vendor,
    eventually,
    http_status,
    metric,
    poll_until,
    report,
    scrape,
)
from tests.reliability.hostile import VENDORS, Hostile, HostileGenerator

SEED = 424242
RECORDS = 10_000


async def produce(bootstrap: str, topic: str, records: list[Hostile]) -> list[tuple[int, int]]:
    """Send each record as is (tombstones, bad bytes, 1 MB values); return (partition, offset)s."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    try:
        positions = []
        for start in range(0, len(records), 500):
            futures = [
                await producer.send(topic, value=r.value, key=r.key)
                for r in records[start : start + 500]
            ]
            for future in futures:
                meta = await future
                positions.append((meta.partition, meta.offset))
        return positions
    finally:
        await producer.stop()


async def test_hostile_records_never_crash_the_relay_and_each_lands_in_the_dlq_or_at_the_vendors(
    broker, topics, sandbox_factory, relay_process, record_property
):
    """Each invalid record of 10,000 is dead-lettered with its reason; each valid one arrives."""
    sandboxes = {vendor: await sandbox_factory() for vendor in VENDORS}
    vendors = {vendor: all_goals_vendor(sandboxes[vendor]) for vendor in VENDORS}
    config = relay_config(broker, topics, vendors)
    records = HostileGenerator(SEED).records(RECORDS)
    valid = [r for r in records if r.valid]
    invalid = [r for r in records if not r.valid]
    expected_ids = {r.event_id for r in valid}
    by_customer = {
        vendor: {r.customer_ids[vendor]: r.event_id for r in valid if r.customer_ids}
        for vendor in VENDORS
    }

    def received(vendor: str) -> set[str]:
        lookup = by_customer[vendor]
        return {lookup[p["CustomerId"]] for p in sandboxes[vendor].payloads()}

    relay = relay_process(config)
    relay.start()
    await relay.wait_ready(60)
    started = time.monotonic()
    positions = await produce(broker.bootstrap, topics.source, records)
    ends: dict[int, int] = {p: 0 for p in range(topics.partitions)}
    for partition, offset in positions:
        ends[partition] = max(ends[partition], offset + 1)

    await poll_until(
        lambda: all(received(v) == expected_ids for v in VENDORS), 180, "every valid event"
    )
    # A tombstone (null value) is Kafka's deletion marker: skipped with its own reason, no letter.
    tombstones = [r for r in invalid if r.value is None]
    letters_due = len(VENDORS) * (len(invalid) - len(tombstones))

    async def dead_lettered() -> bool:
        assert relay.process.poll() is None, relay.logs()
        samples = await scrape(relay.http_port)
        return metric(samples, "conversion_relay_dlq_writes_total") >= letters_due

    await eventually(dead_lettered, 180, f"{letters_due} dead letters", 1.0)
    prefix = config["kafka"]["group_prefix"]
    committed: dict[str, dict[int, int]] = {}

    async def all_committed() -> bool:
        for vendor in VENDORS:
            committed[vendor] = await committed_offsets(
                broker.bootstrap, f"{prefix}.{vendor}", topics.source, topics.partitions
            )
        return all(c == ends for c in committed.values())

    assert await eventually(all_committed, 60, "commits", 1.0, required=False), (committed, ends)
    elapsed_s = time.monotonic() - started

    assert relay.process.poll() is None, relay.logs()
    assert await http_status(relay.http_port, "/livez") == 200
    assert await http_status(relay.http_port, "/readyz") == 200
    for vendor in VENDORS:
        sandbox = sandboxes[vendor]
        assert not sandbox.refused, (vendor, sandbox.refused[:1])
        assert received(vendor) == expected_ids

    letters = await read_topic(broker.bootstrap, topics.dlq, letters_due, timeout_s=120)
    source = {pos: record for pos, record in zip(positions, records, strict=True)}
    found: dict[tuple[str, int, int], dict[str, Any]] = {}
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        at = (int(headers["relay-source-partition"]), int(headers["relay-source-offset"]))
        found[(headers["relay-vendor"], *at)] = headers
        original = source[at]
        assert not original.valid, (original.kind, headers.get("relay-error"))
        assert headers["relay-reason"] == "invalid_event", headers
        assert any(fragment in headers["relay-error"] for fragment in original.errors), (
            original.kind,
            original.errors,
            headers["relay-error"],
        )
        assert letter.value == original.value
        assert letter.key == original.key
    want = {
        (v, *pos)
        for v in VENDORS
        for pos, r in source.items()
        if not r.valid and r.value is not None
    }
    assert set(found) == want
    samples = await scrape(relay.http_port)
    assert metric(samples, "conversion_relay_skipped_total", reason="tombstone") == len(
        VENDORS
    ) * len(tombstones)

    report(
        record_property,
        hostile_records=len(records),
        hostile_valid=len(valid),
        hostile_invalid=len(invalid),
        hostile_kinds=dict(sorted(Counter(r.kind for r in records).items())),
        hostile_dead_letters=len(letters),
        # At-least-once: a rebalance on a loaded machine may repeat some work; none expected.
        hostile_duplicate_dead_letters=len(letters) - letters_due,
        hostile_duplicate_deliveries=sum(len(sandboxes[v].accepted) for v in VENDORS)
        - len(VENDORS) * len(valid),
        hostile_seconds=round(elapsed_s, 1),
    )


async def _assert_poison_is_dead_lettered(
    broker: Any,
    topics: Any,
    sandbox_factory: Any,
    relay_process: Any,
    poison: bytes,
    fragments: tuple[str, ...],
) -> tuple[dict[str, str], bytes | None]:
    """Publish a poison record, valid events and an invalid sentinel to one partition; the poison
    must be dead-lettered as invalid and the partition's commit point must pass it. Returns the
    poison's dead letter: its headers and value."""
    sandbox = await sandbox_factory()
    config = relay_config(broker, topics, {"sustain_impact": all_goals_vendor(sandbox)})
    relay = relay_process(config)
    relay.start()
    await relay.wait_ready(60)
    generator = HostileGenerator(SEED)
    valid = [generator.valid_plain() for _ in range(10)]
    records = [
        Hostile("poison", b"poison", poison, errors=fragments),
        *(Hostile(r.kind, b"poison", r.value, r.event_id, r.customer_ids) for r in valid),
        Hostile("sentinel", b"poison", b"{sentinel", errors=NOT_JSON_SENTINEL),
    ]
    positions = await produce(broker.bootstrap, topics.source, records)
    partition, poison_offset = positions[0]
    end = positions[-1][1] + 1
    customers = {r.customer_ids["sustain_impact"] for r in valid if r.customer_ids}
    await poll_until(
        lambda: customers <= {p["CustomerId"] for p in sandbox.payloads()}, 60, "valid events"
    )

    async def sentinel_written() -> bool:
        samples = await scrape(relay.http_port)
        return metric(samples, "conversion_relay_dlq_writes_total") >= 1

    await eventually(sentinel_written, 30, "a dead letter", 0.2)
    # The sentinel, after the poison in the same partition, is dead-lettered: give the poison's
    # own letter a few more seconds.
    letters = await read_topic(broker.bootstrap, topics.dlq, 2, timeout_s=5)
    by_offset = {
        int(dict(r.headers)["relay-source-offset"]): {k: v.decode() for k, v in r.headers}
        for r in letters
    }
    values = {int(dict(r.headers)["relay-source-offset"]): r.value for r in letters}
    assert relay.process.poll() is None, relay.logs()
    assert await http_status(relay.http_port, "/livez") == 200
    assert end - 1 in by_offset, f"the sentinel was not dead-lettered:\n{relay.logs()}"
    assert poison_offset in by_offset, (
        f"no dead letter for the poison record at offset {poison_offset}; relay log:\n"
        f"{relay.logs()[-1500:]}"
    )
    headers = by_offset[poison_offset]
    assert headers["relay-reason"] == "invalid_event", headers
    error = headers["relay-error"].lower()
    assert any(f in error for f in fragments), headers["relay-error"]
    group = f"{config['kafka']['group_prefix']}.sustain_impact"
    committed: dict[int, int] = {}

    async def passed_the_poison() -> bool:
        committed.update(
            await committed_offsets(broker.bootstrap, group, topics.source, topics.partitions)
        )
        return committed[partition] == end

    assert await eventually(passed_the_poison, 10, "commit", required=False), (committed, end)
    return headers, values[poison_offset]


NOT_JSON_SENTINEL = ("not valid json",)


async def test_a_record_nested_past_the_decoders_recursion_limit_is_dead_lettered_as_invalid(
    broker, topics, sandbox_factory, relay_process
):
    """A valid event carrying an unknown field nested 5,000 deep is dead-lettered, not stuck."""
    event = HostileGenerator(SEED).event()
    nested = b"[" * 5_000 + b"]" * 5_000
    poison = orjson.dumps(event)[:-1] + b',"future_field":' + nested + b"}"
    await _assert_poison_is_dead_lettered(
        broker, topics, sandbox_factory, relay_process, poison, ("depth", "nest", "recursion")
    )


async def test_a_record_over_max_record_bytes_is_dead_lettered_as_invalid(
    broker, topics, sandbox_factory, relay_process
):
    """A 1.2 MB record (the broker takes it) is dead-lettered as too large, not retried forever."""
    event = HostileGenerator(SEED).event()
    event["padding"] = "z" * 1_200_000
    poison = orjson.dumps(event)
    headers, value = await _assert_poison_is_dead_lettered(
        broker, topics, sandbox_factory, relay_process, poison, ("max_record_bytes",)
    )
    # The DLQ producer cannot take the whole value: the letter keeps its head and says so.
    assert headers.get("relay-value-truncated-from") == str(len(poison)), headers
    assert value is not None and 0 < len(value) < len(poison) and poison.startswith(value)
