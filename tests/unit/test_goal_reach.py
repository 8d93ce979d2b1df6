"""The goal-reach adapter (SustainImpact, Sales Ninja) against the doc's own examples."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import VendorInputError
from service.events import ConversionEvent, Customer
from service.vendors.base import OutcomeKind, Route, VendorResponse
from service.vendors.goal_reach import GoalReachAdapter, GoalReachConfig, param_text

GOAL = "299837db-9b51-45a4-996b-844d3fd05bbd"
CUSTOMER = "2eccd743-4164-4892-a416-dc5c16f44971"
# The doc's first example request body, verbatim.
DOC_EXAMPLE = {
    "Ip": "185.237.80.128",
    "GoalId": GOAL,
    "CustomerId": CUSTOMER,
    "CreatedOnUtc": "2022-10-27 12:23:25.367999",
    "CustomUserScopeParams": {"Revenue": "12350", "NetProfit": "900"},
}


def _adapter(**config: object) -> GoalReachAdapter:
    return GoalReachAdapter(
        "sustain_impact", GoalReachConfig(base_url="https://api.sustain-impact.de", **config)
    )


def _event(**changes: object) -> ConversionEvent:
    fields: dict = {
        "event_id": "e-1",
        "goal": "purchase",
        "occurred_at": datetime(2022, 10, 27, 12, 23, 25, 367999, tzinfo=UTC),
        "customer": Customer(ip="185.237.80.128", ids={"sustain_impact": CUSTOMER}),
        "params": {"Revenue": 12350, "NetProfit": "900"},
    }
    fields.update(changes)
    return ConversionEvent(**fields)


def test_build_reproduces_the_docs_example_body():
    """The doc's example event becomes exactly the doc's example request."""
    request = _adapter().build(_event(), Route("sustain_impact", GOAL))
    assert request.method == "POST"
    assert request.url == "https://api.sustain-impact.de/outer/v1.0/goal/reach"
    assert request.headers["Content-Type"] == "application/json"
    assert orjson.loads(request.body) == DOC_EXAMPLE


def test_param_values_are_always_sent_as_strings():
    """Numbers and booleans become strings ("12500", not 12500), as the doc requires."""
    assert param_text(12500) == "12500"
    assert param_text(12500.0) == "12500"
    assert param_text(12.5) == "12.5"
    assert param_text(True) == "true"
    body = orjson.loads(
        _adapter().build(_event(page_params={"Pages": 3, "Flag": False}), Route("x", GOAL)).body
    )
    assert body["CustomPageScopeParams"] == {"Pages": "3", "Flag": "false"}


def test_created_on_is_converted_to_utc():
    """A local timestamp is sent as its UTC moment in the doc's format."""
    from datetime import timedelta, timezone

    local = datetime(2022, 10, 27, 14, 23, 25, tzinfo=timezone(timedelta(hours=2)))
    body = orjson.loads(_adapter().build(_event(occurred_at=local), Route("x", GOAL)).body)
    assert body["CreatedOnUtc"] == "2022-10-27 12:23:25.000000"


def test_optional_fields_are_omitted_when_the_event_lacks_them():
    """No Ip and no params: the body holds only what the second doc example holds."""
    event = _event(customer=Customer(ids={"sustain_impact": CUSTOMER}), params={})
    body = orjson.loads(_adapter().build(event, Route("x", GOAL)).body)
    assert "Ip" not in body and "CustomUserScopeParams" not in body


def test_missing_customer_id_is_reported_as_the_missing_identity():
    """Without customer.ids.<vendor> the event cannot be sent to this vendor."""
    assert _adapter().missing_identity(_event(customer=Customer())) == "customer.ids.sustain_impact"
    assert _adapter().missing_identity(_event()) is None
    custom = _adapter(customer_id_key="si_id")
    assert custom.missing_identity(_event()) == "customer.ids.si_id"


def test_a_customer_id_that_is_not_a_uuid_cannot_be_expressed():
    """The vendor requires UUIDs; anything else is a VendorInputError (dead-lettered)."""
    event = _event(customer=Customer(ids={"sustain_impact": "lana-123"}))
    with pytest.raises(VendorInputError, match="CustomerId"):
        _adapter().build(event, Route("x", GOAL))
    with pytest.raises(VendorInputError, match="GoalId"):
        _adapter().build(_event(), Route("x", "purchase"))


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry_after"),
    [
        (200, {}, OutcomeKind.DELIVERED, None),
        (400, {}, OutcomeKind.REJECT, None),
        (404, {}, OutcomeKind.REJECT, None),
        (408, {}, OutcomeKind.RETRY, None),
        (429, {"Retry-After": "7"}, OutcomeKind.RETRY, 7.0),
        (500, {}, OutcomeKind.RETRY, None),
        (501, {}, OutcomeKind.REJECT, None),
        (503, {}, OutcomeKind.RETRY, None),
    ],
)
def test_classify_maps_statuses_to_outcomes(status, headers, kind, retry_after):
    """200 delivered; 408/429/5xx (not 501) retried with Retry-After; other 4xx rejected."""
    outcome = _adapter().classify(VendorResponse(status, headers, b'{"message":"x"}'))
    assert outcome.kind is kind
    assert outcome.retry_after_s == retry_after
    assert outcome.status == status
    if kind is OutcomeKind.REJECT:
        assert outcome.reason == f"http_{status}" and "message" in outcome.detail


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2022, 10, 27, 12, 23, 25, tzinfo=UTC),  # no fraction: still six digits
        datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),  # a four-digit year, zero-padded
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 12, 6, 12, 50, 30, 500000, tzinfo=UTC),  # trailing zeros kept
        datetime(2026, 12, 6, 12, 50, 30, 7, tzinfo=UTC),  # leading zeros kept
    ],
)
def test_a_utc_moment_is_formatted_as_the_conversion_would_format_it(moment: datetime) -> None:
    """The UTC fast path and the converting path give the same text."""
    from service.vendors.goal_reach import created_on_utc

    converted = moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    assert created_on_utc(moment) == converted


@given(st.datetimes(timezones=st.just(UTC)))
def test_every_utc_moment_is_formatted_as_the_conversion_would_format_it(moment: datetime) -> None:
    """The fast path holds for any UTC moment hypothesis finds."""
    from service.vendors.goal_reach import created_on_utc

    converted = moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    assert created_on_utc(moment) == converted


def test_a_goal_id_is_checked_on_every_request_until_it_passes() -> None:
    """The checked GoalId is remembered per goal; a bad one fails every time, never cached."""
    adapter = _adapter()
    upper = GOAL.upper()
    for _ in range(2):
        body = orjson.loads(adapter.build(_event(), Route("x", upper)).body)
        assert body["GoalId"] == GOAL  # the canonical form, computed once
    for _ in range(2):
        with pytest.raises(VendorInputError, match="GoalId must be a UUID"):
            adapter.build(_event(), Route("x", "not-a-uuid"))
