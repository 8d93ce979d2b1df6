"""Routing: does an event go to a vendor, and under which of the vendor's goal ids?"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import msgspec

from service.core.exchange import Route
from service.events import ConversionEvent

# Why an event is not sent to a vendor on purpose (a metric label).
SKIP_REASONS = ("not_listed", "no_route", "missing_identity")


class Skip(msgspec.Struct, frozen=True):
    """The event is not for this vendor; `reason` is a metric label from a fixed set."""

    reason: str  # not_listed | no_route | missing_identity
    detail: str = ""


class Expired(msgspec.Struct, frozen=True):
    """The event is older than the vendor accepts; it goes to the DLQ with reason `expired`."""

    age_s: float
    max_age_s: float


def route_event(
    event: ConversionEvent,
    vendor: str,
    goal_ids: Mapping[str, str],
    missing_identity: str | None,
    max_event_age_s: float | None,
    now: datetime,
) -> Route | Skip | Expired:
    """Route by the goal map, or by explicit `vendors` (then the goal is the vendor's own id)."""
    listed = event.vendors
    if listed is not None and vendor not in listed:
        return Skip("not_listed")
    goal_id = goal_ids.get(event.goal)
    if goal_id is None:
        if listed is None:
            return Skip("no_route", f"no goal id for {event.goal!r}")
        goal_id = event.goal
    if missing_identity is not None:
        return Skip("missing_identity", missing_identity)
    if max_event_age_s is not None:
        age_s = (now - event.occurred_at).total_seconds()
        if age_s > max_event_age_s:
            return Expired(age_s, max_event_age_s)
    return Route(vendor, goal_id)
