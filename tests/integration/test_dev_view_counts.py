"""The live table's numbers from a real relay (issue 25, finding 3): fetched records add up to
ok + skip + dead + flight, `dead` counts the invalid events `dlq` counts, and `rl wait` grows
while a Retry-After pause holds the vendor."""

from __future__ import annotations

import asyncio
import time

import orjson

from service.devtools.demo import sample_lines
from service.devtools.dev import vendor_counts, view_rows
from service.devtools.publish import publish
from service.devtools.view import PauseClock
from tests.conftest import goal_reach_vendor, relay_config, wait_for


async def test_the_rows_add_up_and_dead_counts_invalid_events(
    broker, topics, sandbox_factory, run_relay
) -> None:
    """30 sample events (the `lead` ones are routing skips for this vendor), 2 rejected, 3 not
    events at all: every fetched record is in exactly one of ok, skip, dead."""
    sandbox = await sandbox_factory()
    sandbox.faults.reject_next = 2
    relay = await run_relay(
        relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(sandbox)})
    )
    lines = list(sample_lines(30))
    leads = sum(1 for line in lines if orjson.loads(line)["goal"] == "lead")
    assert leads > 0
    broken = [b'{"event_id": "broken-1", "goal": 42}', b"not json", b'{"event_id": "x"']
    await publish(broker.bootstrap, topics.source, [*lines, *broken])

    def settled() -> bool:
        counts = vendor_counts(relay, {})["sustain_impact"]
        return counts.consumed == 33 and counts.in_flight == 0 and counts.dlq_writes == 5

    await wait_for(settled, 30, "33 records terminal and 5 letters written")
    counts = vendor_counts(relay, {})["sustain_impact"]
    assert counts.skipped == leads
    assert counts.dead == 5 == counts.dlq_writes
    assert counts.ok == 30 - leads - 2
    shown = view_rows(relay, None, {})[0]
    assert shown["in"] == "33"
    assert int(shown["ok"]) + int(shown["skip"]) + int(shown["dead"]) + int(shown["flight"]) == 33
    assert shown["dead"] == shown["dlq"] == "5"


async def test_rl_wait_grows_while_a_retry_after_pause_holds_the_vendor(
    broker, topics, sandbox_factory, run_relay
) -> None:
    """429 with Retry-After: 2: the records wait on retry timers, not in the limiter, and the
    view's `rl wait` still shows the seconds the vendor was held."""
    sandbox = await sandbox_factory()
    relay = await run_relay(
        relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(sandbox)})
    )
    sandbox.faults.retry_after_s = 2
    lines = [line for line in sample_lines(12) if orjson.loads(line)["goal"] != "lead"][:3]
    await publish(broker.bootstrap, topics.source, lines)
    clocks = {"sustain_impact": PauseClock()}
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        rows = view_rows(relay, None, clocks)
        await asyncio.sleep(0.25)
    sandbox.faults.retry_after_s = None
    waited_s = float(rows[0]["rl wait"].rstrip("s"))
    assert waited_s >= 1.5, rows[0]
    await wait_for(
        lambda: vendor_counts(relay, clocks)["sustain_impact"].delivered == 3, 30, "delivered"
    )
