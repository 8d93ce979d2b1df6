"""What every contender works on: the same events, the same vendor settings, the same bodies.

The backlog is `service.devtools.demo.sample_lines(n)` (deterministic, seed 7). The single-
vendor runs deliver to `sustain_impact` (goal reach) with all three sample goals mapped, so
every event is one delivery. Baselines and the client ceiling build their request bodies with
the relay's own goal-reach adapter, so every contender sends byte-identical bodies to the same
strict sink: what differs is only how the events get from Kafka to HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec

from service.core.routing import route_event
from service.events import decode_event
from service.vendors import make_adapter
from service.vendors.base import Route
from service.vendors.goal_reach import GoalReachConfig

VENDOR = "sustain_impact"
GOALS = {
    "purchase": "299837db-9b51-45a4-996b-844d3fd05bbd",
    "signup": "ea565c1b-70b1-4165-bd39-4df0d4e4f9bc",
    "lead": "5b0e8a9c-3d2f-4e61-9c7a-1f2e3d4c5b6a",
}
GOAL_REACH_HEADERS = {"Content-Type": "application/json"}
# Tansu rebalances in about half the session timeout: every consumer (relay and baselines) uses
# the same short settings, as the project's tests do.
SESSION_TIMEOUT_MS = 2000
HEARTBEAT_INTERVAL_MS = 300


def consumer_settings() -> dict[str, Any]:
    """aiokafka consumer settings every Kafka contender shares."""
    return {
        "auto_offset_reset": "earliest",
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
    }


def goal_reach_builder(base_url: str) -> tuple[str, Callable[[bytes], bytes | None]]:
    """(URL, record value → request body or None when the event does not route to the vendor)."""
    config = msgspec.convert(
        {"protocol": "goal_reach", "base_url": base_url, "goals": GOALS}, GoalReachConfig
    )
    adapter = make_adapter(VENDOR, config)
    url = base_url.rstrip("/") + "/outer/v1.0/goal/reach"

    def build(value: bytes) -> bytes | None:
        event = decode_event(value)
        goal_id = GOALS.get(event.goal)
        if goal_id is None or adapter.missing_identity(event) is not None:
            return None
        return adapter.build(event, Route(VENDOR, goal_id)).body

    return url, build


def expected_deliveries(lines: Iterable[bytes], vendors: dict[str, Any]) -> dict[str, int]:
    """How many of the events route to each vendor, by the relay's own routing rules."""
    adapters = {name: make_adapter(name, config) for name, config in vendors.items()}
    goal_ids = {name: config.goal_ids() for name, config in vendors.items()}
    counts = dict.fromkeys(vendors, 0)
    now = datetime.now(UTC)
    for line in lines:
        event = decode_event(line)
        for name, adapter in adapters.items():
            decision = route_event(
                event, name, goal_ids[name], adapter.missing_identity(event), None, now
            )
            if isinstance(decision, Route):
                counts[name] += 1
    return counts
