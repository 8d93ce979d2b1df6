"""/status says when things happened (issue 25, finding 9): uptime, each vendor's last delivery
and last error with their times, its deliveries over the last minute; `/` lists the endpoints."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aiohttp
import orjson

from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from tests.conftest import goal_reach_vendor, relay_config, wait_for


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_status_times_the_last_delivery_and_error_and_counts_the_last_minute(
    broker, topics, sandbox_factory, run_relay
) -> None:
    """A rejection stamps last_error_at; later deliveries stamp last_delivery_at after it (so a
    recovered vendor is seen as recovered); the minute's deliveries and rate are reported."""
    sandbox = await sandbox_factory()
    sandbox.faults.reject_next = 1
    before = datetime.now(UTC)
    relay = await run_relay(
        relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(sandbox)})
    )
    url = f"http://127.0.0.1:{relay.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/status") as resp:
            idle = (await resp.json())["vendors"]["sustain_impact"]
        assert idle["last_delivery_at"] is None and idle["last_error_at"] is None
        assert idle["delivered_last_60s"] == 0
        lines = [line for line in sample_lines(40) if orjson.loads(line)["goal"] != "lead"][:11]
        await publish(broker.bootstrap, topics.source, lines[:1])
        await wait_for(lambda: relay.pipelines["sustain_impact"].last_error != "", 20, "reject")
        await asyncio.sleep(1.5)  # the activity is sampled every second
        await publish(broker.bootstrap, topics.source, lines[1:])
        await wait_for(lambda: len(sandbox.accepted) == 10, 20, "10 deliveries")
        await asyncio.sleep(1.5)
        async with http.get(f"{url}/status") as resp:
            status = await resp.json()
        async with http.get(f"{url}/") as resp:
            assert resp.status == 200
            index = await resp.json()
    entry = status["vendors"]["sustain_impact"]
    assert entry["last_error"]
    error_at, delivered_at = _when(entry["last_error_at"]), _when(entry["last_delivery_at"])
    assert before <= error_at < delivered_at <= datetime.now(UTC)
    assert entry["delivered_last_60s"] == 10
    assert 0 < entry["delivered_per_s_last_60s"] <= 10
    assert status["uptime_s"] > 0
    assert before <= _when(status["started_at"]) <= error_at
    assert set(index["endpoints"]) == {"/", "/livez", "/readyz", "/metrics", "/status"}
    assert all(index["endpoints"].values())
