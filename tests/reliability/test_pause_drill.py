"""Pausing never leaves the group: a vendor slower than `max_poll_interval_ms` keeps the pipeline
paused at its in-flight cap for longer than that, and the consumer stays a member (no rebalance,
nothing delivered twice). Real Tansu, the relay in process, a strict sandbox."""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson

from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from tests.conftest import goal_reach_vendor, relay_config, wait_for


async def test_a_pause_longer_than_max_poll_interval_does_not_leave_the_group(
    broker, topics, sandbox_factory, run_relay
):
    """Held paused 10 s with max_poll_interval_ms 3 s: one assignment only, every event once."""
    si = await sandbox_factory()
    si.faults.latency_s = 10.0  # every answer takes 10 s: the cap fills, fetching pauses
    vendor = goal_reach_vendor(si, timeout_s=30, concurrency=8)
    config = relay_config(broker, topics, {"sustain_impact": vendor}, pipeline={"max_in_flight": 8})
    config["kafka"]["max_poll_interval_ms"] = 3000
    relay = await run_relay(config)
    lines = list(sample_lines(200))
    await publish(broker.bootstrap, topics.source, lines)
    pipeline = relay.pipelines["sustain_impact"]
    await wait_for(lambda: pipeline.paused, 10, "the pipeline to pause at its cap")
    await asyncio.sleep(10.5)  # the first answers arrive only now: 3.5 max-poll intervals
    si.faults.latency_s = 0.0
    events = [orjson.loads(line) for line in lines]
    want = Counter(
        e["customer"]["ids"]["sustain_impact"]
        for e in events
        if e["goal"] in ("purchase", "signup") and "sustain_impact" in e["customer"]["ids"]
    )
    await wait_for(lambda: len(si.accepted) >= sum(want.values()), 60, "every delivery")
    await wait_for(lambda: pipeline.in_flight == 0, 10, "all terminal")
    rebalances = relay.metrics.registry.get_sample_value(
        "conversion_relay_rebalances_total", {"vendor": "sustain_impact"}
    )
    assert rebalances == 1
    assert Counter(p["CustomerId"] for p in si.payloads()) == want
