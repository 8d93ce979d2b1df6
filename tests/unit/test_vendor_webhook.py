"""Generic webhook adapter: template compilation, rendering, config checks and classification."""

from __future__ import annotations

import datetime
from typing import Any

import msgspec
import pytest

from service.config import parse_config
from service.errors import ConfigError
from service.events import ConversionEvent, decode_event
from service.vendors.base import OutcomeKind, Route, VendorResponse
from service.vendors.webhook import EventPath, WebhookAdapter, WebhookConfig, parse_path

ROUTE = Route("hook", "sale")


def config(**overrides: Any) -> WebhookConfig:
    """A minimal webhook config with `overrides` applied."""
    raw = {"protocol": "webhook", "base_url": "https://hooks.example.com/", **overrides}
    return msgspec.convert(raw, WebhookConfig)


def event(**fields: Any) -> ConversionEvent:
    """An event reaching `purchase`, `fields` applied."""
    data = {
        "event_id": "e/1 2",
        "goal": "purchase",
        "occurred_at": "2026-11-20T14:03:11Z",
        **fields,
    }
    return decode_event(msgspec.json.encode(data))


def rendered(body: dict[str, Any], converted: ConversionEvent | None = None) -> Any:
    """The JSON body the template produces."""
    request = WebhookAdapter("hook", config(body=body)).build(converted or event(), ROUTE)
    return msgspec.json.decode(request.body)


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("$.event_id", ("event_id",)),
        ("$.customer.ids.crm", ("customer", "ids", "crm")),
        ("$.params.Revenue", ("params", "Revenue")),
        ("$.order.categories", ("order", "categories")),
        ("$.customer", ("customer",)),
        ("$.goal_id", ("goal_id",)),
        ("$.vendor", ("vendor",)),
    ],
)
def test_known_paths_compile(text: str, segments: tuple[str, ...]) -> None:
    """Paths to event fields, map entries, whole objects and the route compile."""
    assert parse_path(text) == EventPath(segments)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("$.customer.emial", "customer has no field 'emial'"),
        ("$.event_id.x", "event_id has no fields"),
        ("$.customer.ids.crm.x", "customer.ids.crm has no fields"),
        ("$.goal_id.x", "the event has no field 'goal_id'"),
        ("$.", "is not a path"),
        ("$.customer..email", "is not a path"),
    ],
)
def test_unknown_paths_are_refused(text: str, says: str) -> None:
    """A path the event schema does not have is a ValueError that says where it went wrong."""
    with pytest.raises(ValueError, match=says):
        parse_path(text)


def test_template_fills_paths_literals_nested_objects_and_lists() -> None:
    """Paths are filled, literals kept, `$$.` unescaped, absent values left out."""
    converted = event(
        value=129.9, customer={"email": "a@b.c", "ids": {"crm": "C-1"}}, params={"Revenue": "12350"}
    )
    body = {
        "id": "$.event_id",
        "type": "$.goal_id",
        "to": "$.vendor",
        "at": "$.occurred_at",
        "amount": "$.value",
        "missing": "$.currency",
        "rev": "$.params.Revenue",
        "contact": {
            "email": "$.customer.email",
            "crm": "$.customer.ids.crm",
            "no": "$.customer.phone",
        },
        "tags": ["conversion", "$.goal", 1, True, None],
        "dollar": "$$.x",
        "plain": "$5",
        "flag": False,
        "zero": 0,
    }
    assert rendered(body, converted) == {
        "id": "e/1 2",
        "type": "sale",
        "to": "hook",
        "at": "2026-11-20T14:03:11Z",
        "amount": 129.9,
        "rev": "12350",
        "contact": {"email": "a@b.c", "crm": "C-1"},
        "tags": ["conversion", "purchase", 1, True, None],
        "dollar": "$.x",
        "plain": "$5",
        "flag": False,
        "zero": 0,
    }


def test_absent_paths_drop_their_key_but_literal_nulls_stay() -> None:
    """A path the event lacks leaves its key out; a null written in the template is sent."""
    assert rendered({"cur": "$.currency", "none": None, "in": {"x": None, "y": "$.value"}}) == {
        "none": None,
        "in": {"x": None},
    }
    assert rendered({"list": ["$.currency", None]}) == {"list": [None, None]}


def test_whole_objects_are_sent_as_json_objects() -> None:
    """A path to a struct or a map sends it whole, as the canonical JSON shape."""
    converted = event(customer={"email": "a@b.c", "ids": {"crm": "C-1"}}, attributes={"a": 1})
    assert rendered({"who": "$.customer", "attrs": "$.attributes"}, converted) == {
        "who": {"email": "a@b.c", "ids": {"crm": "C-1"}},
        "attrs": {"a": 1},
    }


def test_path_placeholders_are_quoted_into_one_segment() -> None:
    """`{goal_id}` and `{event_id}` are URL-quoted, so `/` and spaces stay in their segment."""
    adapter = WebhookAdapter("hook", config(path="/c/{goal_id}/{event_id}?v=1", method="PUT"))
    request = adapter.build(event(), Route("hook", "a/b"))
    assert (request.method, request.url) == (
        "PUT",
        "https://hooks.example.com/c/a%2Fb/e%2F1%202?v=1",
    )


def test_headers_are_sent_and_a_configured_content_type_wins() -> None:
    """Configured headers go out as given; Content-Type defaults to JSON unless configured."""
    plain = WebhookAdapter("hook", config(headers={"X-Key": "k"})).build(event(), ROUTE)
    assert dict(plain.headers) == {"Content-Type": "application/json", "X-Key": "k"}
    typed = WebhookAdapter("hook", config(headers={"content-type": "application/vnd.x+json"}))
    assert dict(typed.build(event(), ROUTE).headers) == {"content-type": "application/vnd.x+json"}


def test_required_paths_decide_missing_identity() -> None:
    """The first required path the event lacks (absent or empty) is named; route fields pass."""
    adapter = WebhookAdapter(
        "hook", config(required=["$.goal_id", "$.customer.email", "$.customer.ids.crm"])
    )
    assert adapter.missing_identity(event()) == "customer.email"
    assert adapter.missing_identity(event(customer={"email": ""})) == "customer.email"
    assert adapter.missing_identity(event(customer={"email": "a@b.c"})) == "customer.ids.crm"
    full = event(customer={"email": "a@b.c", "ids": {"crm": "1"}})
    assert adapter.missing_identity(full) is None


def problems(vendor: dict[str, Any]) -> list[str]:
    """The config problems reported for one webhook vendor, as `check-config` prints them."""
    raw = {
        "kafka": {"bootstrap_servers": ["k:9092"], "topics": ["t"]},
        "vendors": {"hook": {"protocol": "webhook", "base_url": "https://h", **vendor}},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    return caught.value.problems


@pytest.mark.parametrize(
    ("vendor", "says"),
    [
        (
            {"body": {"contact": {"email": "$.customer.emial"}}},
            "vendors.hook: body.contact.email: $.customer.emial: customer has no field 'emial'",
        ),
        ({"body": {"tags": ["ok", "$.goall"]}}, "vendors.hook: body.tags[1]: $.goall"),
        ({"required": ["$.customer.mail"]}, "vendors.hook: required[0]: $.customer.mail"),
        ({"path": "/c/{goal}"}, "vendors.hook: path: unknown placeholder {goal}"),
        ({"path": "c"}, "vendors.hook: path: 'c' must start with /"),
        ({"headers": {"Bad Name": "x"}}, "vendors.hook: headers.Bad Name"),
        ({"headers": {"X-A": "a\r\nX-B: b"}}, "vendors.hook: headers.X-A"),
        ({"method": "GET"}, "vendors.hook.method"),
        (
            {"status": {"retry": [409], "reject": [409]}},
            "vendors.hook.status: 409 is listed under both retry and reject",
        ),
        ({"status": {"retry": [99]}}, "vendors.hook.status.retry"),
        ({"status": {"maybe": [409]}}, "vendors.hook.status"),
    ],
)
def test_config_mistakes_are_reported_with_their_path(vendor: dict[str, Any], says: str) -> None:
    """A template typo, bad path, header, method or status list is a config error at its path."""
    found = problems(vendor)
    assert any(says in problem for problem in found), found


def test_body_dates_must_be_quoted() -> None:
    """An unquoted YAML date in the template is not JSON; the error says to quote it."""
    with pytest.raises(msgspec.ValidationError, match="quote it"):
        config(body={"since": datetime.date(2026, 1, 1)})


@pytest.mark.parametrize(
    ("status", "headers", "kind", "reason", "retry_after_s"),
    [
        (409, {}, OutcomeKind.DELIVERED, "", None),
        (423, {"Retry-After": "9"}, OutcomeKind.RETRY, "http_423", 9.0),
        (200, {}, OutcomeKind.REJECT, "http_200", None),
        (201, {}, OutcomeKind.DELIVERED, "", None),
        (404, {}, OutcomeKind.REJECT, "http_404", None),
        (503, {"Retry-After": "3"}, OutcomeKind.RETRY, "http_503", 3.0),
    ],
)
def test_status_overrides_come_before_the_default_table(
    status: int,
    headers: dict[str, str],
    kind: OutcomeKind,
    reason: str,
    retry_after_s: float | None,
) -> None:
    """Listed codes mean what the config says (a retry honours Retry-After); others the table."""
    overrides = {"delivered": [409], "retry": [423], "reject": [200]}
    adapter = WebhookAdapter("hook", config(status=overrides))
    outcome = adapter.classify(VendorResponse(status, headers, b"answer"))
    assert (outcome.kind, outcome.reason, outcome.retry_after_s) == (kind, reason, retry_after_s)
    # An answer the default table delivers is not read (nobody is shown it).
    by_table = status not in (409, 423, 200) and kind is OutcomeKind.DELIVERED
    assert (outcome.status, outcome.detail) == (status, "" if by_table else "answer")


def test_goal_ids_route_to_the_configured_names() -> None:
    """The goals map is the routing map."""
    assert config(goals={"purchase": "sale"}).goal_ids() == {"purchase": "sale"}
