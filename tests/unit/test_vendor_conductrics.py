"""Conductrics adapter: pure build and classify logic."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import VendorInputError
from service.events import ConversionEvent, decode_event
from service.vendors.base import OutcomeKind, Route, VendorResponse
from service.vendors.conductrics import (
    GOAL_WINDOW_S,
    ConductricsAdapter,
    ConductricsConfig,
    agent_api_url,
)

ROUTE = Route("conductrics", "g-purchase")


def config(**overrides: Any) -> ConductricsConfig:
    """The doc's account with `overrides` applied."""
    raw = {
        "protocol": "conductrics",
        "base_url": "https://api-xxx.conductrics.com/",
        "account": "ac-xxx",
        "api_key": "api-1234567890",
        "goals": {"purchase": "g-purchase"},
        **overrides,
    }
    return msgspec.convert(raw, ConductricsConfig)


def event(**fields: Any) -> ConversionEvent:
    """Visitor lana-123 reaching `purchase`, `fields` applied."""
    data = {
        "event_id": "e1",
        "goal": "purchase",
        "occurred_at": "2026-01-01T00:00:00Z",
        "customer": {"ids": {"conductrics": "lana-123"}},
        **fields,
    }
    return decode_event(msgspec.json.encode(data))


def test_build_reproduces_the_docs_call() -> None:
    """The doc's example URL and body come out for the doc's visitor, goal and value."""
    request = ConductricsAdapter("c", config()).build(event(value=19.99), ROUTE)
    assert request.method == "POST"
    assert request.url == (
        "https://api-xxx.conductrics.com/ac-xxx/v3/agent-api"
        "?vid=lana-123&session=lana-123&apikey=api-1234567890"
    )
    assert request.headers["Content-Type"] == "application/json"
    assert msgspec.json.decode(request.body) == {"commands": [{"g": "g-purchase", "v": 19.99}]}


def test_value_is_left_out_when_the_event_has_none() -> None:
    """A goal without a value is sent as a bare goal command."""
    request = ConductricsAdapter("c", config()).build(event(), ROUTE)
    assert msgspec.json.decode(request.body) == {"commands": [{"g": "g-purchase"}]}


def test_session_is_the_events_session_else_the_vid() -> None:
    """The REST API needs a session: the event's own, or the vid as the doc's example does."""
    adapter = ConductricsAdapter("c", config())
    with_session = adapter.build(event(context={"session_id": "s-1"}), ROUTE)
    assert dict(parse_qsl(urlsplit(with_session.url).query))["session"] == "s-1"
    without = adapter.build(event(), ROUTE)
    assert dict(parse_qsl(urlsplit(without.url).query))["session"] == "lana-123"


def test_query_values_are_percent_encoded_without_plus() -> None:
    """Reserved characters and spaces are percent-encoded; `+` never stands for a space."""
    url = agent_api_url("https://h", "ac 1", {"vid": "a b&c=d+e/ü", "session": "s", "apikey": "k"})
    assert url == "https://h/ac%201/v3/agent-api?vid=a%20b%26c%3Dd%2Be%2F%C3%BC&session=s&apikey=k"


def test_missing_identity_names_the_configured_key() -> None:
    """Without the External Visitor ID the goal cannot be matched; the key is named."""
    adapter = ConductricsAdapter("c", config(visitor_id_key="our_visitor_id"))
    assert adapter.missing_identity(event()) == "customer.ids.our_visitor_id"
    assert adapter.missing_identity(event(customer={"ids": {"our_visitor_id": "v"}})) is None


def test_goal_window_defaults_to_72_hours_and_can_be_changed() -> None:
    """Events older than the doc's 72 h window expire by default; the operator may widen it."""
    assert GOAL_WINDOW_S == 259_200.0
    assert config().max_event_age_s == 259_200.0
    assert config(max_event_age_s=604_800).max_event_age_s == 604_800.0
    assert config(max_event_age_s=None).max_event_age_s is None


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"account": "ac/xxx"}, "account"),
        ({"account": ""}, "account"),
        ({"api_key": ""}, "api_key"),
        ({"goals": {"purchase": ""}}, "goals"),
        ({"max_event_age_s": 0}, "max_event_age_s"),
    ],
)
def test_config_mistakes_are_errors_with_their_path(overrides: dict[str, Any], where: str) -> None:
    """An account that is not one path segment, empty keys or codes, or a zero window fail."""
    with pytest.raises(msgspec.ValidationError, match=where):
        config(**overrides)


def test_non_finite_value_cannot_be_sent() -> None:
    """JSON has no infinity: such a value is a VendorInputError, not a corrupt body."""
    infinite = msgspec.structs.replace(event(), value=float("inf"))
    with pytest.raises(VendorInputError):
        ConductricsAdapter("c", config()).build(infinite, ROUTE)


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry_after_s"),
    [
        (200, {}, OutcomeKind.DELIVERED, None),
        (204, {}, OutcomeKind.DELIVERED, None),
        (400, {}, OutcomeKind.REJECT, None),
        (401, {}, OutcomeKind.REJECT, None),
        (429, {"Retry-After": "12"}, OutcomeKind.RETRY, 12.0),
        (503, {}, OutcomeKind.RETRY, None),
    ],
)
def test_classify_follows_the_default_table(
    status: int, headers: dict[str, str], kind: OutcomeKind, retry_after_s: float | None
) -> None:
    """The doc shows no answer body, so the status decides, Retry-After included; a delivered
    answer's body is not read (nobody is shown it), any other is the detail."""
    outcome = ConductricsAdapter("c", config()).classify(
        VendorResponse(status, headers, b'{"err": "x"}')
    )
    assert (outcome.kind, outcome.retry_after_s) == (kind, retry_after_s)
    delivered = kind is OutcomeKind.DELIVERED
    assert outcome.detail == ("" if delivered else '{"err": "x"}')


@settings(max_examples=200)
@given(
    vid=st.text(min_size=1),
    session=st.one_of(st.none(), st.text(min_size=1)),
    api_key=st.text(min_size=1),
    base_url=st.sampled_from(["https://h", "https://h/", "http://127.0.0.1:8080/v/c/"]),
)
def test_the_built_url_is_exactly_agent_api_url(
    vid: str, session: str | None, api_key: str, base_url: str
) -> None:
    """The adapter's precomputed URL parts give what agent_api_url gives for every value."""
    adapter = ConductricsAdapter("c", config(api_key=api_key, base_url=base_url))
    built = adapter.build(
        event(customer={"ids": {"conductrics": vid}}, context={"session_id": session}), ROUTE
    )
    query = {"vid": vid, "session": session or vid, "apikey": api_key}
    assert built.url == agent_api_url(base_url, "ac-xxx", query)
