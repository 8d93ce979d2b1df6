"""Crash loop: relay processes are SIGKILLed again and again while events flow; nothing is lost.

Two fleets consume the same 20,000 events at once, each in its own consumer groups with its own
sandboxes, and are killed at the same seeded random moments: one relays to three vendors with
the default dedup store (in memory: it dies with the process); the other relays to one vendor
(Altcraft) with the Redis dedup store, which survives the kills. (One vendor keeps the drill's
run time down: dedup keys are per vendor, so more vendors would show nothing new.)
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from service.devtools.demo import sample_lines
from service.sandbox.altcraft import AltcraftContract
from service.sandbox.base import Sandbox
from tests.conftest import RelayProcess, relay_config
from tests.reliability.conftest import (
    ALTCRAFT_TOKEN,
    THREE_VENDORS,
    Ledger,
    altcraft_vendor,
    poll_until,
    publish_paced,
    report,
    three_sandboxes,
    three_vendor_sections,
)

EVENTS = 20_000
KILLS = 10
SEED = 20261123
PUBLISH_RATE_PER_S = 500  # the flow lasts about as long as the kill loop
CONCURRENCY = 16  # per vendor: the most requests one relay can have on the wire per vendor
# A delivery the vendor accepted is marked in Redis once its answer is read; a SIGKILL in
# between cannot be deduplicated by anyone but the vendor. Such a request reached the vendor
# around the kill: the sandbox stamps a request when its handler runs, which on a loaded machine
# may be a little after the bytes arrived, so the window is generous on both sides.
MARK_WINDOW_S = 2.0
# Without a surviving dedup store a kill repeats what was in flight plus what was delivered but
# not yet committed: commit points are committed within commit_coalesce_s (0.1 s) of moving, so
# per vendor and kill that is at most the concurrency plus the deliveries of the last few tenths
# of a second before it. That is the publish rate's worth in steady flow, but many more when the
# kill comes while a restarted relay catches up what was published while it was down (at full
# speed: thousands a second), so the bound counts what the vendor accepted in that window.
COMMIT_WINDOW_S = 0.3


def _at_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The drill commits as the relay does by default (the test helper commits every 0.2 s)."""
    config["pipeline"].pop("commit_interval_s", None)
    return config


@dataclass
class Fleet:
    """One relay configuration, its sandboxes, what they should get, and the running process."""

    name: str
    sandboxes: dict[str, Sandbox]
    config: dict[str, Any]
    ledger: Ledger
    relay: RelayProcess | None = None


async def test_ten_sigkills_lose_no_event_and_with_redis_dedup_only_unmarked_requests_repeat(
    broker, topics, sandbox_factory, relay_process, redis_clean, record_property
):
    """20,000 events reach every vendor through 10 SIGKILLs; with Redis dedup the only repeats
    are requests still on the wire at a kill."""
    lines = list(sample_lines(EVENTS, seed=SEED))
    sandboxes = await three_sandboxes(sandbox_factory)
    vendors = three_vendor_sections(sandboxes, concurrency=CONCURRENCY)
    memory = Fleet(
        "memory",
        sandboxes,
        _at_defaults(relay_config(broker, topics, vendors)),
        Ledger.of(lines, THREE_VENDORS),
    )
    sandboxes = {"altcraft": await sandbox_factory(AltcraftContract(tokens={ALTCRAFT_TOKEN}))}
    vendors = {"altcraft": altcraft_vendor(sandboxes["altcraft"], concurrency=CONCURRENCY)}
    shared = {"redis": {"url": redis_clean.url}, "dedup": {"backend": "redis"}}
    redis = Fleet(
        "redis",
        sandboxes,
        _at_defaults(relay_config(broker, topics, vendors, **shared)),
        Ledger.of(lines, ["altcraft"]),
    )
    fleets = [memory, redis]
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
        await asyncio.sleep(rng.uniform(0.0, 2.0))
        kill_times.append(time.time())
        for fleet in fleets:
            assert fleet.relay is not None
            fleet.relay.kill()  # SIGKILL: no drain, no commit
        for fleet in fleets:
            at_kill[fleet.name].append(accepted(fleet))
            # Mid-flow: the vendors were receiving requests from it in the half second before.
            mid_flow[fleet.name] += any(
                kill_times[-1] - 0.5 <= r.at_s
                for s in fleet.sandboxes.values()
                for r in s.accepted[-50:]
            )
    loop_s = time.monotonic() - started
    for fleet in fleets:
        assert mid_flow[fleet.name] >= KILLS // 2, (fleet.name, mid_flow, at_kill)

    await start_all()
    await publisher

    def complete() -> bool:
        for fleet in fleets:
            assert fleet.relay is not None and fleet.relay.process is not None
            assert fleet.relay.process.poll() is None, fleet.relay.logs()
        return all(fleet.ledger.complete(fleet.sandboxes) for fleet in fleets)

    await poll_until(complete, 270, "every event at every vendor of both fleets")

    figures: dict[str, Any] = {
        "kills": KILLS,
        "events": EVENTS,
        "deliveries_expected": {f.name: sum(map(len, f.ledger.expected.values())) for f in fleets},
        "kill_loop_seconds": round(loop_s, 1),
        "seconds": round(time.monotonic() - started, 1),
    }
    lags: dict[str, list[float]] = {}
    per_kill: dict[str, dict[str, float]] = {}
    for fleet in fleets:
        for vendor, sandbox in fleet.sandboxes.items():
            assert set(fleet.ledger.received(vendor, sandbox)) == fleet.ledger.expected[vendor]
            assert not sandbox.refused, (fleet.name, vendor, sandbox.refused[:1])
        duplicates = fleet.ledger.duplicates(fleet.sandboxes)
        # For each repeat: how far from the nearest kill its event had first been accepted.
        lags[fleet.name] = sorted(
            min(abs(k - first) for k in kill_times)
            for first in fleet.ledger.repeated_first_seen(fleet.sandboxes)
        )
        figures[f"{fleet.name}_duplicates"] = sum(duplicates.values())
        figures[f"{fleet.name}_duplicates_per_vendor"] = duplicates
        per_kill[fleet.name] = {v: round(n / KILLS, 1) for v, n in duplicates.items()}
        figures[f"{fleet.name}_duplicates_per_kill_per_vendor"] = per_kill[fleet.name]
        figures[f"{fleet.name}_kills_mid_flow"] = mid_flow[fleet.name]
        figures[f"{fleet.name}_deliveries_at_each_kill"] = at_kill[fleet.name]
        figures[f"{fleet.name}_repeat_max_s_from_a_kill"] = (
            round(lags[fleet.name][-1], 2) if lags[fleet.name] else None
        )
    report(record_property, **{f"crash_loop_{k}": v for k, v in figures.items()})

    for fleet in fleets:
        duplicates = fleet.ledger.duplicates(fleet.sandboxes)
        for vendor, sandbox in fleet.sandboxes.items():
            # What the vendor accepted in each kill's commit window, plus what was on the wire.
            bound = sum(
                CONCURRENCY
                + sum(1 for r in sandbox.accepted if k - COMMIT_WINDOW_S <= r.at_s <= k + 0.1)
                for k in kill_times
            )
            report(record_property, **{f"crash_loop_{fleet.name}_{vendor}_repeat_bound": bound})
            assert duplicates.get(vendor, 0) <= bound, (fleet.name, vendor, duplicates, bound)
    # With Redis dedup, a repeat can only be a request on the wire when its relay was killed:
    # accepted around a kill, and never more than every vendor's concurrency per kill.
    redis_lags = lags["redis"]
    assert len(redis_lags) <= KILLS * CONCURRENCY, len(redis_lags)
    assert all(lag <= MARK_WINDOW_S for lag in redis_lags), redis_lags[-10:]
