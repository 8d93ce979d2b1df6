"""A mixed stream through all five vendors and a webhook, each in its own wire format."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import orjson

from service.devtools.demo import sample_lines
from service.devtools.dev import dev_config
from service.devtools.publish import publish
from service.net import free_port
from service.sandbox.base import Sandbox
from service.sandbox.registry import contract_for
from service.vendors import protocol_tag
from tests.conftest import wait_for

VENDORS = ("sustain_impact", "sales_ninja", "expertsender", "altcraft", "conductrics", "crm_hook")


def _identity(vendor: str, payload: dict[str, Any]) -> str:
    """The customer identity a vendor's request carries, read from what its sandbox accepted."""
    if vendor in ("sustain_impact", "sales_ninja"):
        return str(payload["CustomerId"])
    if vendor == "expertsender":
        return str(payload["MessageGuid"])
    if vendor == "altcraft":
        return str(payload["profile_id"])
    if vendor == "conductrics":
        return str(payload["query"]["vid"])
    return str(payload["contact"]["email"])


def _expected(events: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    """What each vendor should receive, from the dev config's routes and the events' identities."""
    routes = {
        "sustain_impact": ({"purchase", "signup"}, lambda c: c["ids"].get("sustain_impact")),
        "sales_ninja": ({"purchase"}, lambda c: c["ids"].get("sales_ninja")),
        "expertsender": ({"purchase"}, lambda c: c["ids"].get("expertsender_message_guid")),
        "altcraft": ({"purchase", "signup"}, lambda c: c["ids"].get("altcraft_profile_id")),
        "conductrics": ({"purchase", "lead"}, lambda c: c["ids"].get("conductrics")),
        "crm_hook": ({"purchase", "lead"}, lambda c: c.get("email")),
    }
    expected: dict[str, Counter[str]] = {}
    for vendor, (goals, identity) in routes.items():
        expected[vendor] = Counter(
            identity(e["customer"])
            for e in events
            if e["goal"] in goals and identity(e["customer"]) is not None
        )
    return expected


async def test_each_vendor_receives_exactly_its_requests_and_skips_only_its_own(
    broker, topics, run_relay
):
    """Every vendor gets the events routed to it, once, in its format; gaps skip only that one."""
    ports = {vendor: free_port() for vendor in VENDORS}
    config = dev_config(broker.bootstrap, 0, {v: f"http://127.0.0.1:{p}" for v, p in ports.items()})
    sandboxes = {}
    for name, vendor in config.vendors.items():
        sandboxes[name] = Sandbox(contract_for(protocol_tag(vendor), vendor), port=ports[name])
        await sandboxes[name].start()
    try:
        raw = orjson.loads(
            orjson.dumps(
                {
                    "kafka": {
                        "bootstrap_servers": [broker.bootstrap],
                        "topics": [topics.source],
                        "group_prefix": f"mixed-{topics.source}",
                        "session_timeout_ms": 2000,
                        "heartbeat_interval_ms": 300,
                    },
                    "http": {"host": "127.0.0.1", "port": 0},
                    "dlq": {"topic": topics.dlq},
                    "vendors": msgspec.to_builtins(config.vendors),
                }
            )
        )
        relay = await run_relay(raw)
        lines = list(sample_lines(600, seed=11))
        events = [orjson.loads(line) for line in lines]
        await publish(broker.bootstrap, topics.source, lines)
        expected = _expected(events)
        await wait_for(
            lambda: (
                all(len(sandboxes[v].accepted) >= sum(expected[v].values()) for v in VENDORS)
                and all(p.in_flight == 0 for p in relay.pipelines.values())
            ),
            60,
            "every vendor's deliveries",
        )
        for vendor in VENDORS:
            sandbox = sandboxes[vendor]
            assert not sandbox.refused, (vendor, sandbox.refused[:1])
            got = Counter(_identity(vendor, p) for p in sandbox.payloads())
            assert got == expected[vendor], vendor
        # Events lacking sales_ninja and conductrics ids went to everyone else all the same.
        lacking = [e for e in events if "sales_ninja" not in e["customer"]["ids"]]
        assert lacking
        for event in lacking:
            if event["goal"] == "purchase":
                assert event["customer"]["ids"]["sustain_impact"] in {
                    p["CustomerId"] for p in sandboxes["sustain_impact"].payloads()
                }
        skipped = relay.metrics.registry.get_sample_value(
            "conversion_relay_skipped_total",
            {"vendor": "sales_ninja", "reason": "missing_identity"},
        )
        assert skipped == sum(1 for e in lacking if e["goal"] == "purchase")
    finally:
        for sandbox in sandboxes.values():
            await sandbox.stop()
