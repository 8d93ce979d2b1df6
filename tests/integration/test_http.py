"""Health and telemetry endpoints of a running relay."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from service.app import Relay
from service.config import parse_config
from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from tests.conftest import goal_reach_vendor, relay_config, wait_for


async def test_readyz_is_503_until_the_group_is_joined_and_during_shutdown(
    broker, topics, sandbox_factory
):
    """Readiness needs every pipeline in its group; it turns false as soon as a drain begins."""
    si = await sandbox_factory()
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)})
    relay = Relay(parse_config(config))
    seen: list[tuple[int, dict]] = []
    started = asyncio.Event()
    task = asyncio.create_task(relay.run(install_signals=False, on_ready=lambda r: started.set()))
    await started.wait()
    url = f"http://127.0.0.1:{relay.http_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/readyz") as resp:
            seen.append((resp.status, await resp.json()))
        async with session.get(f"{url}/livez") as resp:
            assert resp.status == 200
        await wait_for(lambda: not relay.not_ready_reasons(), 30, "ready")
        async with session.get(f"{url}/readyz") as resp:
            seen.append((resp.status, await resp.json()))
        relay.request_stop()
        async with session.get(f"{url}/readyz") as resp:
            seen.append((resp.status, await resp.json()))
    await asyncio.wait_for(task, 30)
    assert seen[0][0] == 503
    assert "sustain_impact" in seen[0][1]["reasons"]
    assert seen[1] == (200, {"ready": True})
    assert seen[2] == (503, {"ready": False, "reasons": {"relay": "shutting down"}})


async def test_metrics_and_status_report_deliveries_per_vendor(
    broker, topics, sandbox_factory, run_relay
):
    """/metrics counts consumed events and deliveries; /status shows partitions and in-flight."""
    si = await sandbox_factory()
    relay = await run_relay(relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)}))
    await publish(broker.bootstrap, topics.source, [*sample_lines(30), b"{broken"])
    await wait_for(lambda: len(si.accepted) >= 20, 30, "deliveries")
    await wait_for(lambda: relay.pipelines["sustain_impact"].in_flight == 0, 10, "drain")
    url = f"http://127.0.0.1:{relay.http_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/metrics") as resp:
            text = await resp.text()
        async with session.get(f"{url}/status") as resp:
            status = await resp.json()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    vendor = ("vendor", "sustain_impact")
    assert (
        samples[("conversion_relay_events_consumed_total", (("topic", topics.source), vendor))]
        == 31
    )
    assert samples[
        ("conversion_relay_deliveries_total", (("outcome", "delivered"), vendor))
    ] == len(si.accepted)
    assert (
        samples[("conversion_relay_dlq_writes_total", (("reason", "invalid_event"), vendor))] == 1
    )
    assert samples[("conversion_relay_request_duration_seconds_count", (vendor,))] == len(
        si.accepted
    )
    entry = status["vendors"]["sustain_impact"]
    assert entry["enabled"] is True
    assert len(entry["assigned_partitions"]) == topics.partitions
    assert entry["in_flight"] == 0
