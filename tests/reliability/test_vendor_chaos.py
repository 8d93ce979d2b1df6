"""Vendor chaos: one vendor flaky, one throttled in storms, one down for 30 s, one healthy.

Events flow at a steady rate throughout, so a vendor that keeps up delivers at that rate; the
rates of the vendors that stay up are compared between the time before the outage and the
outage itself. The drill runs on each `http.transport` (h1, pyreqwest, aiohttp).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from service.devtools.demo import sample_lines
from service.sandbox.base import Sandbox
from tests.conftest import read_topic, relay_config
from tests.reliability.conftest import (
    Ledger,
    all_goals_vendor,
    http_json,
    metric,
    poll_until,
    publish_paced,
    report,
    scrape,
    three_sandboxes,
    three_vendor_sections,
)
from tests.transports import TRANSPORTS

RATE_PER_S = 150.0
BEFORE_S = 10.0  # steady flow before the outage
OUTAGE_S = 30.0
AFTER_S = 2.0  # flow goes on a little after the vendor is back
STORM_EVERY_S, STORM_S, RETRY_AFTER_S = 6.0, 2.0, 1
FLAKY, THROTTLED, DOWN, HEALTHY = "sustain_impact", "sales_ninja", "altcraft", "mirror"
# The healthy control is a third goal-reach vendor reading SustainImpact's customer ids.
ID_KEYS = {HEALTHY: "sustain_impact"}
# Every vendor runs at the DEFAULT retry budget, breaker and concurrency: the README's promises
# must hold as shipped.


def _rate(sandbox: Sandbox, start_s: float, end_s: float) -> float:
    """Accepted requests per second in [start_s, end_s) (wall clock)."""
    return sum(start_s <= r.at_s < end_s for r in list(sandbox.accepted)) / (end_s - start_s)


async def _storms(sandbox: Sandbox, stop: asyncio.Event) -> int:
    """Every STORM_EVERY_S, answer everything 429 + Retry-After for STORM_S; returns the count."""
    storms = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STORM_EVERY_S - STORM_S)
        if stop.is_set():
            break
        sandbox.faults.retry_after_s = RETRY_AFTER_S
        storms += 1
        await asyncio.sleep(STORM_S)
        sandbox.faults.retry_after_s = None
    return storms


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_flaky_throttled_and_down_vendors_get_everything_and_the_others_keep_their_pace(
    broker, topics, sandbox_factory, relay_process, record_property, kind
):
    """30 % 5xx, 429 storms and a 30 s outage: every event arrives, none is dead-lettered, and
    the vendors that stay up deliver as fast during the outage as before it."""
    sandboxes = await three_sandboxes(sandbox_factory)
    sandboxes[HEALTHY] = await sandbox_factory()
    vendors = three_vendor_sections(sandboxes)
    vendors[HEALTHY] = all_goals_vendor(sandboxes[HEALTHY], customer_id_key="sustain_impact")
    flaky = sandboxes[FLAKY].faults
    flaky.error_rate, flaky.latency_s, flaky.latency_jitter_s = 0.3, 0.002, 0.1
    relay = relay_process(relay_config(broker, topics, vendors, http={"transport": kind}))
    relay.start()
    await relay.wait_ready(60)

    count = int(RATE_PER_S * (BEFORE_S + OUTAGE_S + AFTER_S))
    lines = list(sample_lines(count, seed=5))
    ledger = Ledger.of(lines, list(vendors), ID_KEYS)
    stop_storms = asyncio.Event()
    storms = asyncio.create_task(_storms(sandboxes[THROTTLED], stop_storms))
    publisher = asyncio.create_task(
        publish_paced(broker.bootstrap, topics.source, lines, RATE_PER_S, chunk=30)
    )
    started_s = time.time()
    await asyncio.sleep(BEFORE_S)
    await sandboxes[DOWN].go_down()
    down_s = time.time()
    breaker_opened = False
    while time.time() - down_s < OUTAGE_S:
        samples = await scrape(relay.http_port)
        breaker_opened |= metric(samples, "conversion_relay_breaker_state", vendor=DOWN) > 0
        await asyncio.sleep(1.0)
    await sandboxes[DOWN].go_up()
    up_s = time.time()
    await publisher
    stop_storms.set()
    storm_count = await storms

    try:
        caught_up_s = await poll_until(lambda: ledger.complete(sandboxes), 120, "every delivery")
    except AssertionError:
        status = await http_json(relay.http_port, "/status")
        raise AssertionError(
            f"missing per vendor: {ledger.missing(sandboxes)}; /status: {status}; "
            f"statuses: {[dict(s.statuses) for s in sandboxes.values()]}\n{relay.logs()[-2000:]}"
        ) from None
    samples = await scrape(relay.http_port)
    letters = await read_topic(broker.bootstrap, topics.dlq, expected=1, timeout_s=2)

    # The first seconds of each window are left out: start-up before, the breaker's reaction at
    # the start of the outage.
    before = {v: _rate(sandboxes[v], started_s + 2, down_s) for v in (FLAKY, THROTTLED, HEALTHY)}
    during = {v: _rate(sandboxes[v], down_s + 2, up_s) for v in (FLAKY, THROTTLED, HEALTHY)}
    report(
        record_property,
        chaos_events=count,
        chaos_rate_before_per_s={v: round(r, 1) for v, r in before.items()},
        chaos_rate_during_outage_per_s={v: round(r, 1) for v, r in during.items()},
        chaos_storms=storm_count,
        chaos_statuses={v: dict(s.statuses) for v, s in sandboxes.items()},
        chaos_retry_after_pauses=metric(samples, "conversion_relay_retry_after_pauses_total"),
        chaos_down_vendor_caught_up_s_after_up=round(time.time() - up_s, 1),
        chaos_final_wait_s=round(caught_up_s, 1),
        chaos_duplicates=ledger.duplicates(sandboxes),
    )
    for vendor, sandbox in sandboxes.items():
        assert set(ledger.received(vendor, sandbox)) == ledger.expected[vendor], vendor
        assert not sandbox.refused, (vendor, sandbox.refused[:1])
    assert letters == []
    assert metric(samples, "conversion_relay_dlq_writes_total") == 0
    assert sandboxes[FLAKY].statuses.get(503, 0) > 0
    assert sandboxes[THROTTLED].statuses.get(429, 0) > 0
    assert breaker_opened, "the down vendor's breaker never left the closed state"
    for vendor in (FLAKY, THROTTLED, HEALTHY):
        assert during[vendor] >= 0.8 * before[vendor], (vendor, before[vendor], during[vendor])
