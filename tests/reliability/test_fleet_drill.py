"""A real fleet (issue 24): three relay processes in one consumer group per vendor on the
embedded broker, sharing one real redis-server for the rate limit and dedup, at the defaults
(but for the shared Redis itself and a vendor rate limit, which the drill is about).

One drill, in phases, on one backlog far larger than the limit lets through:

1. **Shared rate limit**: with all three delivering, the vendor sees the configured rate
   within ±5 % (one GCRA on Redis for the fleet, not 3 × the rate).
   Then `conversion-relay vendor pause`, run as an operator types it, stops all three within
   2 s (each /status says paused, the vendor sees nothing more), and `vendor resume` restarts
   every replica, repeating nothing.
2. **Dedup across a rebalance**: one replica is SIGKILLed; its partitions move to the other two,
   which skip what it delivered (Redis dedup): repeats are at most what was on the wire at the
   kill.
3. **Redis outage**: redis-server killed for 30 s: each replica falls back to its share of the
   limit within 1 s (`conversion_relay_ratelimit_fallback`), the vendor sees no more than the
   limit (the share follows the group: two replicas, half each), the logs have no error storm,
   and within 5 s of Redis returning each replica is back on the shared limit.
4. Every event is delivered; none is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from service.devtools.demo import sample_lines
from service.devtools.embedded import create_topics
from service.devtools.publish import publish
from service.sandbox.base import Sandbox
from tests.conftest import (
    ROOT,
    RelayProcess,
    Topics,
    read_topic,
    relay_config,
)
from tests.plugins.redis_server import RedisServer
from tests.reliability.conftest import (
    Ledger,
    all_goals_vendor,
    metric,
    poll_until,
    report,
    scrape,
)

pytestmark = pytest.mark.timeout(300)

VENDOR = "sustain_impact"
PARTITIONS = 6
RATE_PER_S = 40.0  # the vendor's limit, shared by the fleet
REPLICAS = 3
RATE_WINDOW_S = 10.0
OUTAGE_S = 30.0
FALLBACK_WITHIN_S = 1.0
RECOVER_WITHIN_S = 5.0
FALLBACK = "conversion_relay_ratelimit_fallback"
PAUSE_WITHIN_S = 2.0  # the bound: every replica stopped, nothing delivered after
PAUSE_WATCH_S = 1.5  # watched past the bound (a replica ignoring the pause sends ~13/s)
RESTART_WITHIN_S = 10.0
DELIVERED = "conversion_relay_deliveries_total"


def _rate(sandbox: Sandbox, start_s: float, end_s: float) -> float:
    """Accepted requests per second in [start_s, end_s) (wall clock, as the sandbox stamps)."""
    return sum(1 for r in list(sandbox.accepted) if start_s <= r.at_s < end_s) / (end_s - start_s)


async def _fallback(relays: list[RelayProcess]) -> list[float]:
    """Each live relay's fallback gauge for the vendor (1 = on its local share)."""
    values = []
    for relay in relays:
        values.append(metric(await scrape(relay.http_port), FALLBACK, vendor=VENDOR))
    return values


async def _assigned(relay: RelayProcess) -> float:
    return metric(
        await scrape(relay.http_port), "conversion_relay_assigned_partitions", vendor=VENDOR
    )


async def test_three_replicas_share_one_limit_dedup_across_a_kill_and_ride_out_redis(
    broker: Any,
    sandbox_factory: Any,
    relay_process: Any,
    redis_clean: RedisServer,
    record_property: Any,
) -> None:
    """The fleet drill: shared limit within ±5 %, a CLI pause stopping all three in 2 s, 0 repeats
    beyond what was in flight after a kill, a 30 s Redis outage with fallback in 1 s, no loss,
    no error storm, back in 5 s."""
    name = f"fleet-{uuid.uuid4().hex[:8]}"
    topics = Topics(source=name, dlq=f"{name}.dlq", partitions=PARTITIONS)
    await create_topics(broker.bootstrap, {topics.source: PARTITIONS, topics.dlq: 1})
    sandbox = await sandbox_factory()
    vendor = all_goals_vendor(sandbox, rate_limit={"per_s": RATE_PER_S, "burst": 1})
    config = relay_config(
        broker,
        topics,
        {VENDOR: vendor},
        redis={"url": redis_clean.url, "replicas": REPLICAS},
        dedup={"backend": "redis"},
    )
    config["pipeline"] = {}  # the relay's own defaults
    lines = [
        line
        for line in sample_lines(5_000, seed=2401)
        if Ledger.of([line], [VENDOR]).expected[VENDOR]
    ][:3_000]
    ledger = Ledger.of(lines, [VENDOR])
    relays = [relay_process(config) for _ in range(REPLICAS)]
    for relay in relays:
        relay.start()
    for relay in relays:
        await relay.wait_ready(60)
    await publish(broker.bootstrap, topics.source, lines)

    # 1. The shared limit, once every replica has its partitions.
    async def spread() -> bool:
        return all([await _assigned(r) >= 1 for r in relays])

    deadline = time.monotonic() + 60
    while not await spread():
        assert time.monotonic() < deadline, "the partitions never spread over three replicas"
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)  # past the rebalances' bursts
    start_s = time.time()
    await asyncio.sleep(RATE_WINDOW_S)
    shared_rate = _rate(sandbox, start_s, time.time())
    assert abs(shared_rate - RATE_PER_S) <= 0.05 * RATE_PER_S, shared_rate

    # 1b. A pause through the control topic, typed as an operator does, stops all three; a
    # resume restarts every replica. (Inside the backlog's delivery, not a phase of its own:
    # it costs the drill only the seconds paused.)
    repeats_before_pause = ledger.duplicates({VENDOR: sandbox})[VENDOR]
    cli_config = relays[0].config_path
    out = await _cli(cli_config, "vendor", "pause", VENDOR, "--reason", "fleet drill")
    paused_s = time.time()  # measured from the moment the command returns
    assert out.startswith(f"{VENDOR}: paused by ") and out.rstrip().endswith(": fleet drill")
    pause_seen_s = list(await asyncio.gather(*[_paused_after_s(r, paused_s) for r in relays]))
    assert max(pause_seen_s) < PAUSE_WITHIN_S, pause_seen_s
    await asyncio.sleep(max(0.0, paused_s + PAUSE_WITHIN_S - time.time()))
    held = [await _delivered(r) for r in relays]
    await asyncio.sleep(PAUSE_WATCH_S)
    accepted = list(sandbox.accepted)
    late = [r for r in accepted if r.at_s > paused_s + PAUSE_WITHIN_S]
    assert late == [], f"{len(late)} deliveries more than {PAUSE_WITHIN_S} s after the pause"
    assert [await _delivered(r) for r in relays] == held, "a replica delivered while paused"
    last_delivery_s = max(r.at_s for r in accepted) - paused_s
    await _cli(cli_config, "vendor", "resume", VENDOR)
    resumed_s = time.monotonic()
    # Every replica delivers again (each works through what it had fetched for its partitions
    # first, in fetch order, so which partition comes first is not the pause's to prove; phase
    # 4's "every event delivered" shows that none was left paused).
    first_delivery_s: list[float | None] = [None] * REPLICAS
    while None in first_delivery_s:
        assert time.monotonic() - resumed_s < RESTART_WITHIN_S, ("no delivery", first_delivery_s)
        for i, relay in enumerate(relays):
            if first_delivery_s[i] is None and await _delivered(relay) > held[i]:
                first_delivery_s[i] = round(time.monotonic() - resumed_s, 2)
        await asyncio.sleep(0.1)
    paused_total_s = time.time() - paused_s
    assert ledger.duplicates({VENDOR: sandbox})[VENDOR] == repeats_before_pause
    print(
        f"[drill] pause: /status paused on each replica {[round(s, 3) for s in pause_seen_s]} s"
        f" after the command returned, last delivery at {last_delivery_s:+.2f} s; resume: "
        f"first delivery per replica {first_delivery_s} s after the command returned"
    )

    # 2. One replica killed: the others take its partitions and skip what it delivered.
    status = await scrape(relays[0].http_port)
    in_flight = metric(status, "conversion_relay_in_flight", vendor=VENDOR)
    concurrency = vendor.get("concurrency", 16)
    relays[0].kill()
    killed_at = time.time()
    survivors = relays[1:]

    async def took_over() -> bool:
        return sum([await _assigned(r) for r in survivors]) >= PARTITIONS

    deadline = time.monotonic() + 60
    while not await took_over():
        assert time.monotonic() < deadline, "the kill's partitions never moved"
        await asyncio.sleep(0.5)
    await asyncio.sleep(3.0)
    repeats_after_kill = ledger.duplicates({VENDOR: sandbox})[VENDOR]
    # On the wire at the kill: at most the vendor's concurrency (the vendor accepted them, the
    # dead replica never marked them).
    assert repeats_after_kill <= concurrency, (repeats_after_kill, in_flight)

    # 3. Redis down for 30 s.
    redis_clean.stop()
    stopped_s = time.monotonic()
    outage_start = time.time()
    fell_back_s = await poll_until_async(
        lambda: _all_equal(survivors, 1.0), FALLBACK_WITHIN_S * 5, interval_s=0.1
    )
    fallback_delay_s = fell_back_s - stopped_s
    await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_s)))
    outage_rate = _rate(sandbox, outage_start + 2.0, time.time())
    redis_clean.start()
    back_s = time.monotonic()
    recovered_s = await poll_until_async(
        lambda: _all_equal(survivors, 0.0), RECOVER_WITHIN_S * 4, interval_s=0.2
    )
    recovery_delay_s = recovered_s - back_s
    assert fallback_delay_s <= FALLBACK_WITHIN_S, fallback_delay_s
    assert recovery_delay_s <= RECOVER_WITHIN_S, recovery_delay_s
    # Each survivor on its share of the group's partitions: together about the limit, never
    # the 3 x it would be if each took the whole.
    assert outage_rate <= RATE_PER_S * 1.1, outage_rate

    # 4. Everything delivered, nothing dead-lettered, no error storm.
    await poll_until(lambda: ledger.complete({VENDOR: sandbox}), 240, "every event delivered", 1)
    letters = await read_topic(broker.bootstrap, topics.dlq, 1, timeout_s=2.0)
    assert letters == []
    repeats = ledger.duplicates({VENDOR: sandbox})[VENDOR]
    for relay in survivors:
        levels, loud = _levels(relay)
        ours = sum(n for line, n in loud.items() if line.startswith("conversion_relay"))
        # The outage is a few lines (Redis lost, fallback, back), never one per request; the
        # rebalance after the kill adds aiokafka's own heartbeat warnings, one per heartbeat.
        assert ours <= 10 and levels["error"] <= 2, loud.most_common()
        assert levels["warning"] <= 60, loud.most_common()
    for relay in survivors:
        relay.signal(signal.SIGTERM)
    for relay in survivors:
        assert await relay.wait_exit(60) == 0, relay.logs()[-3000:]
    report(
        record_property,
        fleet_shared_rate_per_s=round(shared_rate, 2),
        fleet_configured_rate_per_s=RATE_PER_S,
        fleet_in_flight_at_kill=in_flight,
        fleet_repeats_after_kill=repeats_after_kill,
        fleet_repeats_total=repeats,
        fleet_fallback_seconds=round(fallback_delay_s, 2),
        fleet_outage_rate_per_s=round(outage_rate, 2),
        fleet_recovery_seconds=round(recovery_delay_s, 2),
        fleet_killed_at=round(killed_at, 1),
        fleet_pause_seen_max_seconds=round(max(pause_seen_s), 3),
        fleet_pause_last_delivery_seconds=round(last_delivery_s, 2),
        fleet_resume_every_replica_seconds=max(s for s in first_delivery_s if s is not None),
        fleet_paused_seconds=round(paused_total_s, 1),
    )


async def _cli(config_path: Path, *args: str) -> str:
    """Run `conversion-relay ARGS --config PATH` as an operator does (a process); its stdout."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        "--config",
        str(config_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def _paused_after_s(relay: RelayProcess, since_s: float) -> float:
    """Seconds after `since_s` (wall clock) until the relay's /status says the vendor is paused."""
    url = f"http://127.0.0.1:{relay.http_port}/status"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while True:
            async with http.get(url) as resp:
                body = await resp.json()
            if body["vendors"][VENDOR]["control"]["paused"]:
                return time.time() - since_s
            assert time.time() - since_s < 10, "the pause never reached a replica"
            await asyncio.sleep(0.02)


async def _delivered(relay: RelayProcess) -> float:
    return metric(await scrape(relay.http_port), DELIVERED, vendor=VENDOR, outcome="delivered")


def _levels(relay: RelayProcess) -> tuple[Counter[str], Counter[str]]:
    """How many log lines of each level the relay wrote (its logs are JSON lines), and how many
    of each warning or error (logger: message)."""
    levels: Counter[str] = Counter()
    loud: Counter[str] = Counter()
    for line in relay.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            doc = orjson.loads(line)
            if isinstance(doc, dict):
                level = str(doc.get("level"))
                levels[level] += 1
                if level in ("warning", "error"):
                    loud[f"{doc.get('logger')}: {str(doc.get('message'))[:100]}"] += 1
    return levels, loud


async def _all_equal(relays: list[RelayProcess], value: float) -> bool:
    return all(v == value for v in await _fallback(relays))


async def poll_until_async(predicate: Any, timeout_s: float, interval_s: float) -> float:
    """Poll an async predicate; the monotonic time it first held."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await predicate():
            return time.monotonic()
        assert time.monotonic() < deadline, f"not reached in {timeout_s} s"
        await asyncio.sleep(interval_s)
