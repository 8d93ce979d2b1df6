"""Restarts and rebalances with one record retrying at the head of a partition (issue 21).

One partition, one vendor (a strict goal-reach sandbox), the relay as a real process at its
default settings: the first record fails with a retryable 503 while the 999 after it that fit
the partition's window (max_in_flight 1,000 from the commit point) are delivered. Progress above
the commit point (offsets completed, the head's first-attempt time) is kept in Kafka, so:

- SIGTERM: nothing is in flight (the head only waits on its retry timer), the process exits
  within 2 s, and the restart sends every event once: 0 repeats (memory dedup, the default,
  dies with the process: the progress kept in Kafka is what holds this).
- SIGKILL mid-flow: the restart repeats at most what was in flight at the kill plus what the
  vendor accepted in the last few tenths of a second before it (commits coalesce over 0.1 s).
- 5 rebalances 1.5 s apart with `max_elapsed_s: 2`: the head's retry budget survives each move,
  so it is dead-lettered once, during the storm, and the partition advances past it.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from service.devtools.demo import sample_lines
from service.devtools.embedded import create_topics
from service.devtools.publish import publish
from service.sandbox.base import Sandbox
from tests.conftest import Topics, committed_offsets, read_topic, relay_config
from tests.reliability.conftest import Ledger, http_json, metric, poll_until, report, scrape

VENDOR = "sustain_impact"
WINDOW = 1_000  # the default max_in_flight: the head plus 999 after it fit one window
AFTER = 1_000  # events published after the poisoned one
EXIT_WITHIN_S = 2.0  # the documented bound for a SIGTERM with nothing in flight
COMMIT_WINDOW_S = 0.3  # commit_coalesce_s (0.1 s) plus the commit's round trip, generously
STORM_REBALANCES = 5
STORM_EVERY_S = 1.5


async def _one_partition(broker: Any) -> Topics:
    """A fresh one-partition source topic and its DLQ topic."""
    name = f"progress-{uuid.uuid4().hex[:8]}"
    made = Topics(source=name, dlq=f"{name}.dlq", partitions=1)
    await create_topics(broker.bootstrap, {made.source: 1, made.dlq: 1})
    return made


def _at_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The relay's own pipeline defaults (the test helper shortens commits, grace, revocation)."""
    config["pipeline"] = {}
    return config


def _vendor(sandbox: Sandbox, **retry: Any) -> dict[str, Any]:
    """The goal-reach vendor at its default retry policy (unless `retry` says otherwise)."""
    from tests.reliability.conftest import all_goals_vendor

    section = all_goals_vendor(sandbox)
    section.pop("retry")
    if retry:
        section["retry"] = retry
    return section


def _lines(count: int, seed: int) -> tuple[list[bytes], bytes]:
    """`count` events routed to the vendor, and the poisoned (first) one's customer id."""
    lines = [
        line
        for line in sample_lines(count + count // 5, seed=seed)
        if VENDOR in orjson.loads(line)["customer"]["ids"]
    ][:count]
    poison = orjson.loads(lines[0])["customer"]["ids"][VENDOR].encode()
    return lines, poison


async def _head_retrying_window_delivered(
    broker: Any, topics: Topics, sandbox: Sandbox, relay_process: Any, seed: int
) -> tuple[Any, dict[str, Any], Ledger, list[bytes]]:
    """Start a relay, publish the poisoned event then AFTER more; return once the window after
    the head is delivered (the head keeps failing)."""
    lines, poison = _lines(1 + AFTER, seed)
    sandbox.faults.fail_matching = poison
    config = _at_defaults(relay_config(broker, topics, {VENDOR: _vendor(sandbox)}))
    ledger = Ledger.of(lines, [VENDOR])
    relay = relay_process(config)
    relay.start()
    await relay.wait_ready(60)
    await publish(broker.bootstrap, topics.source, lines)
    await poll_until(lambda: len(sandbox.accepted) >= WINDOW - 1, 60, "the window delivered", 0.05)
    return relay, config, ledger, lines


async def test_sigterm_with_the_head_retrying_exits_within_2s_and_the_restart_repeats_nothing(
    broker, sandbox_factory, relay_process, record_property
):
    """A head record retrying (nothing in flight) does not hold SIGTERM: exit 0 within 2 s; the
    restart delivers the rest and repeats none of the 999 delivered behind the head."""
    topics = await _one_partition(broker)
    sandbox = await sandbox_factory()
    first, config, ledger, lines = await _head_retrying_window_delivered(
        broker, topics, sandbox, relay_process, seed=2101
    )
    await asyncio.sleep(0.5)  # the last completions committed; the head back on its timer
    status = await http_json(first.http_port, "/status")
    window = status["vendors"][VENDOR]["window"]
    first.signal(signal.SIGTERM)
    sigterm_at = time.monotonic()
    code = await first.wait_exit(30)
    exit_s = time.monotonic() - sigterm_at
    assert code == 0, first.logs()
    delivered_before = len(sandbox.accepted)

    second = relay_process(config)
    second.start()
    await second.wait_ready(60)
    await asyncio.sleep(1.0)  # the head fails a little longer on the new process
    sandbox.faults.fail_matching = None  # the vendor takes it now
    await poll_until(lambda: ledger.complete({VENDOR: sandbox}), 60, "every event delivered")
    await asyncio.sleep(0.5)  # anything repeated would arrive by now
    repeats = ledger.duplicates({VENDOR: sandbox})[VENDOR]
    assert (exit_s < EXIT_WITHIN_S, repeats) == (True, 0), (exit_s, repeats, first.logs())
    committed = await committed_offsets(
        broker.bootstrap, f"{config['kafka']['group_prefix']}.{VENDOR}", topics.source, 1
    )
    second.signal(signal.SIGTERM)
    assert await second.wait_exit(30) == 0
    report(
        record_property,
        progress_window_at_sigterm=window,
        progress_sigterm_exit_seconds=round(exit_s, 2),
        progress_delivered_before_restart=delivered_before,
        progress_repeats_after_sigterm_restart=repeats,
        progress_events=len(lines),
        progress_committed_after=committed[0],
    )


async def test_sigkill_with_the_head_retrying_repeats_at_most_what_was_in_flight(
    broker, sandbox_factory, relay_process, record_property
):
    """SIGKILL while deliveries flow behind a retrying head: the restart repeats at most what
    was in flight at the kill plus what the vendor accepted in the last commit window."""
    topics = await _one_partition(broker)
    sandbox = await sandbox_factory()
    sandbox.faults.latency_s = 0.01
    sandbox.faults.latency_jitter_s = 0.02
    lines, poison = _lines(1 + AFTER, seed=2102)
    sandbox.faults.fail_matching = poison
    config = _at_defaults(relay_config(broker, topics, {VENDOR: _vendor(sandbox)}))
    ledger = Ledger.of(lines, [VENDOR])
    first = relay_process(config)
    first.start()
    await first.wait_ready(60)
    await publish(broker.bootstrap, topics.source, lines)
    await poll_until(lambda: len(sandbox.accepted) >= 500, 60, "half the window delivered", 0.02)
    status = await http_json(first.http_port, "/status")
    first.kill()
    killed_at = time.time()
    in_flight = status["vendors"][VENDOR]["in_flight"]
    concurrency = status["vendors"][VENDOR]["concurrency_max"]
    late = sum(1 for r in list(sandbox.accepted) if r.at_s >= killed_at - COMMIT_WINDOW_S)

    sandbox.faults.fail_matching = None
    sandbox.faults.latency_s = sandbox.faults.latency_jitter_s = 0.0
    second = relay_process(config)
    second.start()
    await second.wait_ready(60)
    await poll_until(lambda: ledger.complete({VENDOR: sandbox}), 60, "every event delivered")
    await asyncio.sleep(0.5)
    repeats = ledger.duplicates({VENDOR: sandbox})[VENDOR]
    # On the wire at the kill (at most the concurrency), or accepted too late to be committed.
    bound = concurrency + late
    assert repeats <= bound, (repeats, bound, in_flight)
    second.signal(signal.SIGTERM)
    assert await second.wait_exit(30) == 0
    report(
        record_property,
        progress_in_flight_at_sigkill=in_flight,
        progress_accepted_in_last_commit_window=late,
        progress_repeats_after_sigkill_restart=repeats,
        progress_sigkill_repeat_bound=bound,
    )


async def test_five_rebalances_keep_the_retry_budget_so_the_head_is_dead_lettered_once(
    broker, sandbox_factory, relay_process, record_property
):
    """With `max_elapsed_s: 2` and the group rebalancing every 1.5 s, a head that always fails
    is dead-lettered once, during the storm (its budget survives each move), and the partition
    advances past it."""
    topics = await _one_partition(broker)
    sandbox = await sandbox_factory()
    lines, poison = _lines(1 + 200, seed=2103)
    sandbox.faults.fail_matching = poison
    config = _at_defaults(relay_config(broker, topics, {VENDOR: _vendor(sandbox, max_elapsed_s=2)}))
    group = f"{config['kafka']['group_prefix']}.{VENDOR}"
    ledger = Ledger.of(lines, [VENDOR])
    relay = relay_process(config)
    relay.start()
    await relay.wait_ready(60)
    await publish(broker.bootstrap, topics.source, lines)
    poison_event = orjson.loads(lines[0])["event_id"]
    await poll_until(lambda: bool(sandbox.refused) or 503 in sandbox.statuses, 30, "a first try")

    storm_started = time.monotonic()
    guest: AIOKafkaConsumer | None = None
    for _ in range(STORM_REBALANCES):
        if guest is None:  # a member joins: the group rebalances
            guest = AIOKafkaConsumer(
                topics.source,
                bootstrap_servers=broker.bootstrap,
                group_id=group,
                client_id="zz-guest",
                enable_auto_commit=False,
                session_timeout_ms=2000,
                heartbeat_interval_ms=300,
            )
            await guest.start()
        else:  # it leaves: the group rebalances again
            await guest.stop()
            guest = None
        await asyncio.sleep(STORM_EVERY_S)
    storm_s = time.monotonic() - storm_started
    letters = [
        r
        for r in await read_topic(broker.bootstrap, topics.dlq, 1, timeout_s=3)
        if orjson.loads(r.value)["event_id"] == poison_event
    ]
    if guest is not None:
        await guest.stop()
    rebalances = metric(await scrape(relay.http_port), "conversion_relay_rebalances_total")
    assert rebalances >= STORM_REBALANCES, rebalances  # each join and leave moved the partition
    assert len(letters) == 1, f"dead-lettered {len(letters)} times during the storm"
    others = ledger.expected[VENDOR] - {poison_event}
    await poll_until(
        lambda: others <= set(ledger.received(VENDOR, sandbox)), 60, "the partition advances"
    )
    letters = [
        r
        for r in await read_topic(broker.bootstrap, topics.dlq, 1, timeout_s=3)
        if orjson.loads(r.value)["event_id"] == poison_event
    ]
    assert len(letters) == 1, f"dead-lettered {len(letters)} times"

    async def advanced() -> bool:
        return (await committed_offsets(broker.bootstrap, group, topics.source, 1))[0] == len(lines)

    deadline = time.monotonic() + 30
    while not await advanced():
        assert time.monotonic() < deadline, "the commit point did not pass the head"
        await asyncio.sleep(0.5)
    relay.signal(signal.SIGTERM)
    assert await relay.wait_exit(30) == 0
    report(
        record_property,
        progress_storm_seconds=round(storm_s, 1),
        progress_storm_dead_letters=len(letters),
        progress_storm_rebalances=rebalances,
    )
