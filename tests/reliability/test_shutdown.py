"""Shutdown: SIGTERM mid-burst drains, commits and exits 0; a restart repeats nothing."""

from __future__ import annotations

import asyncio
import signal
import time

import orjson
import pytest

from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from tests.conftest import (
    committed_offsets,
    goal_reach_vendor,
    read_topic,
    relay_config,
    wait_for,
)
from tests.reliability.conftest import (
    THREE_VENDORS,
    Ledger,
    http_json,
    poll_until,
    report,
    three_sandboxes,
    three_vendor_sections,
)

EVENTS = 6_000
MAX_IN_FLIGHT = 300
GRACE_S = 10.0


async def test_sigterm_mid_burst_drains_in_flight_commits_exits_zero_and_restart_repeats_nothing(
    broker, topics, sandbox_factory, relay_process, record_property
):
    """SIGTERM mid-burst: in-flight deliveries finish within the grace period, offsets cover
    them, exit 0; the next process repeats at most the in-flight window (dedup off)."""
    sandboxes = await three_sandboxes(sandbox_factory)
    for sandbox in sandboxes.values():
        sandbox.faults.latency_s = 0.02
        sandbox.faults.latency_jitter_s = 0.06
    config = relay_config(
        broker,
        topics,
        three_vendor_sections(sandboxes),
        pipeline={"max_in_flight": MAX_IN_FLIGHT, "shutdown_grace_s": GRACE_S},
        dedup={"enabled": False},
    )
    lines = list(sample_lines(EVENTS, seed=31))
    ledger = Ledger.of(lines, THREE_VENDORS)
    first = relay_process(config)
    first.start()
    await first.wait_ready(60)
    await publish(broker.bootstrap, topics.source, lines)
    await poll_until(
        lambda: all(len(s.accepted) >= 500 for s in sandboxes.values()),
        60,
        "a burst in flight",
        0.05,
    )
    status = await http_json(first.http_port, "/status")
    in_flight = {v: status["vendors"][v]["in_flight"] for v in THREE_VENDORS}
    assert all(n > 0 for n in in_flight.values()), in_flight
    first.signal(signal.SIGTERM)
    sigterm_at = time.monotonic()
    assert await first.wait_exit(GRACE_S + 20) == 0, first.logs()
    drain_s = time.monotonic() - sigterm_at
    assert drain_s < GRACE_S + 5, drain_s
    assert "grace period over" not in first.logs()
    before = {v: ledger.received(v, s) for v, s in sandboxes.items()}
    assert all(n == 1 for counts in before.values() for n in counts.values())

    # Every delivered event's offset is committed, for each vendor's group.
    records = await read_topic(broker.bootstrap, topics.source, EVENTS, timeout_s=60)
    assert len(records) == EVENTS
    prefix = config["kafka"]["group_prefix"]
    for vendor in THREE_VENDORS:
        committed = await committed_offsets(
            broker.bootstrap, f"{prefix}.{vendor}", topics.source, topics.partitions
        )
        for record in records:
            event_id = orjson.loads(record.value)["event_id"]
            if event_id in before[vendor]:
                assert record.offset < committed[record.partition], (vendor, record.partition)

    for sandbox in sandboxes.values():
        sandbox.faults.latency_s = sandbox.faults.latency_jitter_s = 0.0  # the rest, quickly
    second = relay_process(config)
    second.start()
    await second.wait_ready(60)
    await poll_until(lambda: ledger.complete(sandboxes), 120, "every event after the restart")
    for vendor, sandbox in sandboxes.items():
        assert set(ledger.received(vendor, sandbox)) == ledger.expected[vendor]
        assert not sandbox.refused, (vendor, sandbox.refused[:1])
    repeats = ledger.duplicates(sandboxes)
    assert all(n <= MAX_IN_FLIGHT for n in repeats.values()), repeats
    report(
        record_property,
        shutdown_in_flight_at_sigterm=in_flight,
        shutdown_delivered_before_exit={v: len(c) for v, c in before.items()},
        shutdown_drain_seconds=round(drain_s, 2),
        shutdown_repeats_after_restart=repeats,
    )


async def test_a_pipeline_that_cannot_leave_its_group_is_cancelled_after_the_grace_and_shown(
    broker, topics, sandbox_factory, monkeypatch, caplog
):
    """A broker call that never returns during the stop (here: leaving the group) must not hold
    the process past shutdown_grace_s + STOP_SLACK_S: the pipeline is cancelled, exit code 0,
    and the log says which pipeline was stuck where."""
    import asyncio
    import logging

    from aiokafka import AIOKafkaConsumer

    from service import app as app_module
    from service.app import Relay
    from service.config import parse_config
    from tests.conftest import goal_reach_vendor, wait_for

    si = await sandbox_factory()
    config = relay_config(
        broker,
        topics,
        {"sustain_impact": goal_reach_vendor(si)},
        pipeline={"shutdown_grace_s": 1.0},
    )
    relay = Relay(parse_config(config))
    task = asyncio.create_task(relay.run(install_signals=False))
    await wait_for(lambda: not relay.not_ready_reasons() or task.done(), 30, "relay ready")

    async def never_returns(self: AIOKafkaConsumer) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(AIOKafkaConsumer, "stop", never_returns)
    monkeypatch.setattr(app_module, "STOP_SLACK_S", 2.0)
    caplog.set_level(logging.ERROR, logger="conversion_relay.app")
    started = time.monotonic()
    relay.request_stop()
    assert await asyncio.wait_for(task, 20) == 0
    assert time.monotonic() - started < 1.0 + 2.0 + 5.0
    [record] = [r for r in caplog.records if "still stopping" in r.getMessage()]
    text = record.getMessage()
    assert "pipeline sustain_impact" in text
    assert "never_returns" in text and "_drain" in text, text


@pytest.mark.parametrize("waits_on", ["open breaker", "Retry-After pause"])
async def test_a_stop_does_not_wait_the_grace_for_records_only_waiting_to_be_sent(
    broker, topics, sandbox_factory, waits_on
):
    """Records held before their request leaves (an open breaker, a vendor-wide Retry-After
    pause) are not in flight: at the default grace (20 s) a stop cancels them and the relay is
    gone within 2 s, where it waited about a probe interval per record (or the whole pause)."""
    from service.app import Relay
    from service.config import PipelineConfig, parse_config

    sandbox = await sandbox_factory()
    if waits_on == "open breaker":
        await sandbox.go_down()  # connection refused: the breaker opens
    else:
        sandbox.faults.retry_after_s = 60  # every request: 429, Retry-After: 60
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(sandbox)})
    config["pipeline"].pop("shutdown_grace_s")  # the default
    relay = Relay(parse_config(config))
    assert relay.config.pipeline.shutdown_grace_s == PipelineConfig().shutdown_grace_s == 20
    task = asyncio.create_task(relay.run(install_signals=False))
    try:
        await wait_for(lambda: not relay.not_ready_reasons(), 30, "relay ready")
        await publish(broker.bootstrap, topics.source, list(sample_lines(200)))
        pipeline = relay.pipelines["sustain_impact"]
        await wait_for(lambda: pipeline.sending >= 8, 30, "records held before sending")
        parked = pipeline.sending
        started_s = time.monotonic()
        relay.request_stop()
        await asyncio.wait_for(task, 30)
    finally:
        if not task.done():
            task.cancel()
    took_s = time.monotonic() - started_s
    assert took_s < 2.0, f"stop took {took_s:.2f}s with {parked} records held, none sent"
    # Nothing was delivered, so nothing is committed past the first record.
    assert len(sandbox.accepted) == 0
