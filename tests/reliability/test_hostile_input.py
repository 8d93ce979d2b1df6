"""Hostile input: generated garbage mixed with valid events; the relay survives and sorts it out."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from aiokafka import AIOKafkaProducer

from tests.conftest import committed_offsets, read_topic, relay_config
from tests.reliability.conftest import (
    all_goals_vendor,
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
    letters_due = len(VENDORS) * len(invalid)

    async def dlq_writes() -> float:
        return metric(await scrape(relay.http_port), "conversion_relay_dlq_writes_total")

    deadline = time.monotonic() + 180
    while (written := await dlq_writes()) < letters_due and time.monotonic() < deadline:
        assert relay.process.poll() is None, relay.logs()
        await asyncio.sleep(1.0)
    assert written == letters_due, f"{written} dead letters written, {letters_due} due"
    prefix = config["kafka"]["group_prefix"]
    committed: dict[str, dict[int, int]] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for vendor in VENDORS:
            committed[vendor] = await committed_offsets(
                broker.bootstrap, f"{prefix}.{vendor}", topics.source, topics.partitions
            )
        if all(c == ends for c in committed.values()):
            break
        await asyncio.sleep(1.0)
    assert all(c == ends for c in committed.values()), (committed, ends)
    elapsed_s = time.monotonic() - started

    assert relay.process.poll() is None, relay.logs()
    assert await http_status(relay.http_port, "/livez") == 200
    assert await http_status(relay.http_port, "/readyz") == 200
    for vendor in VENDORS:
        sandbox = sandboxes[vendor]
        assert not sandbox.refused, (vendor, sandbox.refused[:1])
        assert received(vendor) == expected_ids
        assert len(sandbox.accepted) <= len(valid)

    letters = await read_topic(broker.bootstrap, topics.dlq, letters_due, timeout_s=120)
    assert len(letters) == letters_due
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
    want = {(v, *pos) for v in VENDORS for pos, r in source.items() if not r.valid}
    assert set(found) == want

    report(
        record_property,
        hostile_records=len(records),
        hostile_valid=len(valid),
        hostile_invalid=len(invalid),
        hostile_kinds=dict(sorted(Counter(r.kind for r in records).items())),
        hostile_dead_letters=len(letters),
        hostile_seconds=round(elapsed_s, 1),
    )
