"""Crash loop: relay processes are SIGKILLed again and again while events flow; nothing is lost.

Two fleets consume the same 20,000 events at once, each in its own consumer groups with its own
three sandboxes, and are killed at the same seeded random moments: one with the default dedup
store (in memory: it dies with the process), one with the Redis dedup store (it survives).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from service.demo import sample_lines
from service.sandbox.base import Sandbox
from tests.conftest import RelayProcess, relay_config
from tests.reliability.conftest import (
    THREE_VENDORS,
    Ledger,
    poll_until,
    publish_paced,
    report,
    three_sandboxes,
    three_vendor_sections,
)

EVENTS = 20_000
KILLS = 10
SEED = 20261123
PUBLISH_RATE_PER_S = 700  # the flow lasts about as long as the kill loop
CONCURRENCY = 16  # per vendor: the most requests one relay can have on the wire per vendor
# A delivery the vendor accepted is marked in Redis once its answer is read; a SIGKILL in
# between cannot be deduplicated by anyone but the vendor. Such a request reached the vendor
# around the kill: the sandbox stamps a request when its handler runs, which on a loaded machine
# may be a little after the bytes arrived, so the window is generous on both sides.
MARK_WINDOW_S = 2.0


@dataclass
class Fleet:
    """One relay configuration, its sandboxes and the process currently running it."""

    name: str
    sandboxes: dict[str, Sandbox]
    config: dict[str, Any]
    relay: RelayProcess | None = None


async def test_ten_sigkills_lose_no_event_and_with_redis_dedup_only_unmarked_requests_repeat(
    broker, topics, sandbox_factory, relay_process, redis_clean, record_property
):
    """20,000 events reach three vendors through 10 SIGKILLs; Redis dedup leaves only repeats
    of requests still on the wire at a kill."""
    fleets = []
    for name, sections in (
        ("memory", {}),
        ("redis", {"redis": {"url": redis_clean.url}, "dedup": {"backend": "redis"}}),
    ):
        sandboxes = await three_sandboxes(sandbox_factory)
        vendors = three_vendor_sections(sandboxes, concurrency=CONCURRENCY)
        fleets.append(Fleet(name, sandboxes, relay_config(broker, topics, vendors, **sections)))
    lines = list(sample_lines(EVENTS, seed=SEED))
    ledger = Ledger.of(lines, THREE_VENDORS)
    rng = random.Random(SEED)

    async def start_all() -> None:
        for fleet in fleets:
            fleet.relay = relay_process(fleet.config)
            fleet.relay.start()
        for fleet in fleets:
            assert fleet.relay is not None
            await fleet.relay.wait_ready(60)

    def accepted(fleet: Fleet) -> int:
        return sum(len(s.accepted) for s in fleet.sandboxes.values())

    started = time.monotonic()
    publisher = asyncio.create_task(
        publish_paced(broker.bootstrap, topics.source, lines, PUBLISH_RATE_PER_S)
    )
    kill_times: list[float] = []
    mid_flow = {fleet.name: 0 for fleet in fleets}
    at_kill: dict[str, list[int]] = {fleet.name: [] for fleet in fleets}
    for _ in range(KILLS):
        await start_all()
        await asyncio.sleep(rng.uniform(0.0, 2.5))
        kill_times.append(time.time())
        for fleet in fleets:
            assert fleet.relay is not None
            fleet.relay.kill()  # SIGKILL: no drain, no commit
        for fleet in fleets:
            before = at_kill[fleet.name][-1] if at_kill[fleet.name] else 0
            at_kill[fleet.name].append(accepted(fleet))
            mid_flow[fleet.name] += accepted(fleet) > before
    loop_s = time.monotonic() - started
    for fleet in fleets:
        assert not ledger.complete(fleet.sandboxes), f"{fleet.name}: all done before the last kill"
        assert mid_flow[fleet.name] >= KILLS // 2, f"{fleet.name}: kills mostly hit an idle relay"

    await start_all()
    await publisher

    def complete() -> bool:
        for fleet in fleets:
            assert fleet.relay is not None and fleet.relay.process is not None
            assert fleet.relay.process.poll() is None, fleet.relay.logs()
        return all(ledger.complete(fleet.sandboxes) for fleet in fleets)

    await poll_until(complete, 270, "every event at every vendor of both fleets")

    figures: dict[str, Any] = {
        "kills": KILLS,
        "events": EVENTS,
        "deliveries_expected_per_fleet": sum(len(e) for e in ledger.expected.values()),
        "kill_loop_seconds": round(loop_s, 1),
        "seconds": round(time.monotonic() - started, 1),
    }
    lags: dict[str, list[float]] = {}
    for fleet in fleets:
        for vendor, sandbox in fleet.sandboxes.items():
            assert set(ledger.received(vendor, sandbox)) == ledger.expected[vendor], vendor
            assert not sandbox.refused, (fleet.name, vendor, sandbox.refused[:1])
        duplicates = ledger.duplicates(fleet.sandboxes)
        # For each repeat: how far from the nearest kill its event had first been accepted.
        lags[fleet.name] = sorted(
            min(abs(k - first) for k in kill_times)
            for first in ledger.repeated_first_seen(fleet.sandboxes)
        )
        figures[f"{fleet.name}_duplicates"] = sum(duplicates.values())
        figures[f"{fleet.name}_duplicates_per_vendor"] = duplicates
        figures[f"{fleet.name}_kills_mid_flow"] = mid_flow[fleet.name]
        figures[f"{fleet.name}_deliveries_at_each_kill"] = at_kill[fleet.name]
        figures[f"{fleet.name}_repeat_max_s_from_a_kill"] = (
            round(lags[fleet.name][-1], 2) if lags[fleet.name] else None
        )
    report(record_property, **{f"crash_loop_{k}": v for k, v in figures.items()})

    # With Redis dedup, a repeat can only be a request on the wire when its relay was killed:
    # accepted around a kill, and never more than every vendor's concurrency per kill.
    redis_lags = lags["redis"]
    assert len(redis_lags) <= KILLS * CONCURRENCY * len(THREE_VENDORS), len(redis_lags)
    assert all(lag <= MARK_WINDOW_S for lag in redis_lags), redis_lags[-10:]
