"""Routing decisions: goal map, explicit vendors, missing identity, event age."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.core.routing import Expired, Skip, route_event
from service.events import ConversionEvent
from service.vendors.base import Route

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _event(
    goal: str = "purchase", vendors: list[str] | None = None, age: timedelta = timedelta(0)
) -> ConversionEvent:
    return ConversionEvent(event_id="e", goal=goal, occurred_at=NOW - age, vendors=vendors)


def _route(event: ConversionEvent, missing: str | None = None, max_age_s: float | None = None):
    return route_event(event, "altcraft", {"purchase": "card"}, missing, max_age_s, NOW)


def test_a_mapped_goal_routes_to_the_vendors_goal_id():
    """The config's goal map translates the canonical goal name."""
    assert _route(_event()) == Route("altcraft", "card")


def test_an_unmapped_goal_is_skipped_with_reason_no_route():
    """A vendor with no goal id for the event's goal does not get it."""
    assert _route(_event("signup")) == Skip("no_route", "no goal id for 'signup'")


def test_explicit_vendors_restrict_and_may_carry_the_vendor_goal_id():
    """Listed vendors get the event (the goal used verbatim if unmapped); others skip it."""
    assert _route(_event("signup", vendors=["altcraft"])) == Route("altcraft", "signup")
    assert _route(_event(vendors=["altcraft"])) == Route("altcraft", "card")
    assert _route(_event(vendors=["conductrics"])) == Skip("not_listed")


def test_missing_identity_skips_for_this_vendor():
    """An event without the identity the vendor needs is skipped with the field named."""
    assert _route(_event(), missing="customer.email") == Skip("missing_identity", "customer.email")


def test_events_older_than_max_event_age_are_expired():
    """Older than the vendor's window: not sent, expired (dead-lettered by the pipeline)."""
    old = _event(age=timedelta(hours=73))
    result = _route(old, max_age_s=72 * 3600)
    assert isinstance(result, Expired) and result.age_s > result.max_age_s
    assert _route(_event(age=timedelta(hours=71)), max_age_s=72 * 3600) == Route("altcraft", "card")
