"""Decoding the canonical event: valid input, each kind of invalid input, forward compatibility."""

from __future__ import annotations

import orjson
import pytest

from service.errors import EventError
from service.events import decode_event, encode_event

FULL = {
    "event_id": "7d4c9f6e-1b8a-4f5e-9a51-3c2b7f0e8d11",
    "goal": "purchase",
    "occurred_at": "2026-11-20T14:03:11Z",
    "value": 129.90,
    "currency": "EUR",
    "customer": {
        "email": "anna@example.com",
        "phone": "+49301234567",
        "ip": "185.237.80.128",
        "user_agent": "Mozilla/5.0",
        "ids": {"sustain_impact": "2eccd743-4164-4892-a416-dc5c16f44971"},
    },
    "params": {"Revenue": "12350", "Items": 3},
    "page_params": {},
    "attributes": {"order_id": "12345"},
    "context": {"session_id": "s-1", "utm_source": "newsletter"},
    "order": {"order_id": "12345", "count_items": 1, "categories": ["shoes"]},
    "vendors": None,
}


def _raw(**changes: object) -> bytes:
    return orjson.dumps({**FULL, **changes})


def test_a_full_event_decodes_into_typed_fields():
    """Every documented field decodes with its type; the timestamp is timezone-aware."""
    event = decode_event(_raw())
    assert event.goal == "purchase"
    assert event.value == pytest.approx(129.90)
    assert event.occurred_at.tzinfo is not None
    assert event.customer.ids["sustain_impact"].startswith("2eccd743")
    assert event.params["Items"] == 3
    assert event.order.categories == ["shoes"]


def test_unknown_fields_are_ignored_for_forward_compatibility():
    """A producer on a newer schema does not break an older relay."""
    event = decode_event(_raw(brand_new_field={"x": 1}))
    assert event.event_id == FULL["event_id"]


def test_minimal_event_needs_only_id_goal_and_time():
    """Everything but event_id, goal and occurred_at has a default."""
    event = decode_event(b'{"event_id":"a","goal":"g","occurred_at":"2026-01-01T00:00:00+01:00"}')
    assert event.value is None and event.customer.ids == {} and event.vendors is None


def test_encode_then_decode_round_trips():
    """The encoder used by `publish` produces what the decoder accepts, unchanged."""
    event = decode_event(_raw())
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize(
    ("raw", "kind", "message"),
    [
        (b"not json", "not_json", "not valid JSON"),
        (b'{"event_id": "a"', "not_json", "truncated"),
        (b"\xff\xfe{}", "not_json", "JSON is malformed"),
        (b"[]", "schema", "Expected `object`, got `array`"),
        (None, "tombstone", "tombstone"),
        (_raw(goal=42), "schema", "Expected `str`, got `int` - at `$.goal`"),
        (_raw(event_id=""), "schema", "at `$.event_id`"),
        (_raw(occurred_at="2026-11-20T14:03:11"), "schema", "timezone"),
        (_raw(occurred_at="yesterday"), "schema", "at `$.occurred_at`"),
        (_raw(currency="euro"), "schema", "at `$.currency`"),
        (_raw(value="12.5"), "schema", "at `$.value`"),
        (_raw(customer={"ids": {"x": 5}}), "schema", "at `$.customer.ids[...]`"),
        (_raw(params={"nested": {"a": 1}}), "schema", "at `$.params[...]`"),
        (_raw(vendors="altcraft"), "schema", "at `$.vendors`"),
        (_raw()[:-1] + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}", "not_json", "too deeply"),
    ],
)
def test_each_kind_of_invalid_input_names_the_field_and_the_fault(raw, kind, message):
    """Bad input gets a precise reason (field path and what was wrong) and a metric kind."""
    with pytest.raises(EventError) as caught:
        decode_event(raw)
    assert message in str(caught.value)
    assert caught.value.kind == kind


def test_missing_required_field_is_named():
    """A record without event_id says so."""
    data = dict(FULL)
    del data["event_id"]
    with pytest.raises(EventError, match="missing required field `event_id`"):
        decode_event(orjson.dumps(data))


def test_what_a_record_carries_in_flight_is_not_tracked_by_the_cyclic_collector() -> None:
    """Events, requests, answers and attempts cannot form cycles, so the collector need not
    re-scan the thousands held in flight (msgspec `gc=False`)."""
    import gc

    from service.core.exchange import (
        Decision,
        DecisionKind,
        Outcome,
        OutcomeKind,
        Route,
        VendorRequest,
        VendorResponse,
    )
    from service.delivery.sender import Attempts
    from service.devtools.demo import sample_lines

    event = decode_event(next(sample_lines(1)))
    outcome = Outcome(kind=OutcomeKind.DELIVERED, status=200)
    held = [
        event,
        event.customer,
        event.context,
        event.order,
        VendorRequest("POST", "https://v/goal", {"A": "b"}, b"{}"),
        VendorResponse(200, {"A": "b"}, b""),
        outcome,
        Decision(kind=DecisionKind.DELIVERED, outcome=outcome),
        Route("v", "g"),
        Attempts(),
    ]
    assert [type(item).__name__ for item in held if gc.is_tracked(item)] == []
