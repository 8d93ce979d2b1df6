"""Crash loop: the relay process is SIGKILLed again and again while events flow; nothing is lost."""

from __future__ import annotations

import asyncio
import random
import time

from service.demo import sample_lines
from tests.conftest import relay_config
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
PUBLISH_RATE_PER_S = 600  # the flow lasts about as long as the kill loop


async def test_ten_sigkills_at_random_moments_lose_no_event_for_any_vendor(
    broker, topics, sandbox_factory, relay_process, record_property
):
    """20,000 events reach three vendors at least once though the relay is SIGKILLed 10 times."""
    sandboxes = await three_sandboxes(sandbox_factory)
    config = relay_config(broker, topics, three_vendor_sections(sandboxes))
    lines = list(sample_lines(EVENTS, seed=SEED))
    ledger = Ledger.of(lines, THREE_VENDORS)
    rng = random.Random(SEED)

    def accepted() -> int:
        return sum(len(s.accepted) for s in sandboxes.values())

    started = time.monotonic()
    publisher = asyncio.create_task(
        publish_paced(broker.bootstrap, topics.source, lines, PUBLISH_RATE_PER_S)
    )
    kills_mid_flow, previous = 0, 0
    for _ in range(KILLS):
        relay = relay_process(config)
        relay.start()
        await relay.wait_ready(60)
        await asyncio.sleep(rng.uniform(0.0, 3.0))
        relay.kill()  # SIGKILL: no drain, no commit
        now = accepted()
        kills_mid_flow += now > previous and not ledger.complete(sandboxes)
        previous = now
    assert not ledger.complete(sandboxes), "everything was delivered before the last kill"
    assert kills_mid_flow >= KILLS // 2, f"only {kills_mid_flow} kills hit a flowing relay"

    final = relay_process(config)
    final.start()
    await final.wait_ready(60)
    await publisher
    await poll_until(
        lambda: ledger.complete(sandboxes),
        240,
        f"every event at every vendor (missing: {ledger.missing(sandboxes)})",
    )

    for vendor, sandbox in sandboxes.items():
        assert set(ledger.received(vendor, sandbox)) == ledger.expected[vendor], vendor
        assert not sandbox.refused, (vendor, sandbox.refused[:1])
    duplicates = ledger.duplicates(sandboxes)
    report(
        record_property,
        crash_loop_kills=KILLS,
        crash_loop_kills_mid_flow=kills_mid_flow,
        crash_loop_deliveries_expected=sum(len(e) for e in ledger.expected.values()),
        crash_loop_duplicates=sum(duplicates.values()),
        crash_loop_duplicates_per_vendor=duplicates,
        crash_loop_seconds=round(time.monotonic() - started, 1),
    )
