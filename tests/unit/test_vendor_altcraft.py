"""Altcraft adapter: pure build and classify logic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import VendorInputError
from service.events import ConversionEvent, decode_event
from service.vendors import altcraft
from service.vendors.altcraft import AltcraftAdapter, AltcraftConfig, parse_answer, pixel_data
from service.vendors.base import OutcomeKind, Route, VendorResponse

ROUTE = Route("altcraft", "card")
LONG = "x" * 129


def config(**overrides: Any) -> AltcraftConfig:
    """A valid config (matching by email) with `overrides` applied."""
    raw = {
        "protocol": "altcraft",
        "base_url": "https://ac.example.com",
        "token": "tok",
        "db_id": 1,
        "pixel_id": 7,
        "goals": {"purchase": "card"},
        **overrides,
    }
    return msgspec.convert(raw, AltcraftConfig)


def event(**fields: Any) -> ConversionEvent:
    """An event reaching `purchase` for anna@example.com, `fields` applied."""
    data = {
        "event_id": "e1",
        "goal": "purchase",
        "occurred_at": "2026-11-20T14:03:11+03:00",
        "customer": {"email": "anna@example.com"},
        **fields,
    }
    return decode_event(msgspec.json.encode(data))


def body(adapter: AltcraftAdapter, converted: ConversionEvent) -> dict[str, Any]:
    """The JSON body the adapter builds."""
    result: dict[str, Any] = msgspec.json.decode(adapter.build(converted, ROUTE).body)
    return result


def test_build_sends_one_goal_with_the_documented_fields() -> None:
    """Credentials, goal, value, RFC 3339 date, event id and email matching; no goals[] list."""
    adapter = AltcraftAdapter("altcraft", config())
    request = adapter.build(event(value=-25.5), ROUTE)
    assert (request.method, request.url) == (
        "POST",
        "https://ac.example.com/api/v1.1/goals/register",
    )
    assert request.headers["Content-Type"] == "application/json"
    assert msgspec.json.decode(request.body) == {
        "token": "tok",
        "db_id": 1,
        "pixel_id": 7,
        "goal": "card",
        "value": -25.5,
        "date": "2026-11-20T14:03:11+03:00",
        "external_event_id": "e1",
        "matching": "email",
        "email": "anna@example.com",
    }


def test_every_event_field_altcraft_takes_is_sent() -> None:
    """HTTP, UTM and order fields and attributes map onto their documented names."""
    full = event(
        customer={"email": "a@b.c", "ip": "10.20.30.40", "user_agent": "UA"},
        context={
            "referer": "r.example",
            "accept_language": "fr-CH",
            "utm_source": "s",
            "utm_medium": "m",
            "utm_campaign": "c",
            "utm_term": "t",
            "utm_content": "n",
        },
        order={
            "order_id": "o1",
            "product_id": "p1",
            "sku_id": "s1",
            "count_items": 2,
            "categories": ["c1", "c2"],
        },
        attributes={"hello": "hi", "n": 5, "flag": True, "gone": None},
    )
    sent = body(AltcraftAdapter("altcraft", config(is_test=True)), full)
    assert {k: sent[k] for k in ("client_ip", "user_agent", "referer", "accept_language")} == {
        "client_ip": "10.20.30.40",
        "user_agent": "UA",
        "referer": "r.example",
        "accept_language": "fr-CH",
    }
    assert [sent[f"utm_{k}"] for k in ("source", "medium", "campaign", "term", "content")] == [
        "s",
        "m",
        "c",
        "t",
        "n",
    ]
    assert (sent["order_eid"], sent["product_eid"], sent["sku_eid"]) == ("o1", "p1", "s1")
    assert (sent["count_items"], sent["categories"]) == (2, ["c1", "c2"])
    assert sent["pixel_data"] == {"hello": "hi", "n": 5, "flag": True}
    assert sent["is_test"] is True


@pytest.mark.parametrize(
    ("overrides", "customer", "sent", "path"),
    [
        ({}, {"email": "a@b.c"}, {"email": "a@b.c"}, "customer.email"),
        (
            {"matching": "phone"},
            {"phone": "+79000000000"},
            {"phone": "+79000000000"},
            "customer.phone",
        ),
        (
            {"matching": "profile_id"},
            {"ids": {"altcraft_profile_id": "p1"}},
            {"profile_id": "p1"},
            "customer.ids.altcraft_profile_id",
        ),
        (
            {"matching": "custom", "field_name": "CRM_ID", "field_value_key": "crm"},
            {"ids": {"crm": "123420"}},
            {"field_name": "CRM_ID", "field_value": "123420"},
            "customer.ids.crm",
        ),
    ],
)
def test_each_matching_mode_sends_and_requires_its_identity(
    overrides: dict[str, Any], customer: dict[str, Any], sent: dict[str, str], path: str
) -> None:
    """The matching mode picks the identity sent, and names it when the event lacks it."""
    adapter = AltcraftAdapter("altcraft", config(**overrides))
    with_identity = event(customer=customer)
    assert adapter.missing_identity(with_identity) is None
    built = body(adapter, with_identity)
    assert {k: built[k] for k in sent} == sent
    assert built["matching"] == config(**overrides).matching
    assert adapter.missing_identity(event(customer={"ip": "1.2.3.4"})) == path


@pytest.mark.parametrize("missing", ["field_name", "field_value_key"])
def test_custom_matching_needs_its_field_settings(missing: str) -> None:
    """Matching by a custom field without field_name or field_value_key is a config error."""
    settings = {"matching": "custom", "field_name": "CRM_ID", "field_value_key": "crm"}
    del settings[missing]
    with pytest.raises(msgspec.ValidationError, match=f"{missing}: required"):
        config(**settings)


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"matching": "email_profile"}, "matching"),
        ({"db_id": 0}, "db_id"),
        ({"pixel_id": "7"}, "pixel_id"),
        ({"token": LONG}, "token"),
        ({"goals": {"purchase": LONG}}, "goals"),
    ],
)
def test_config_mistakes_are_errors_with_their_path(overrides: dict[str, Any], where: str) -> None:
    """Unknown matching modes, bad ids and over-long token or goal names fail at config load."""
    with pytest.raises(msgspec.ValidationError, match=where):
        config(**overrides)


def test_descriptive_text_is_cut_to_128_characters() -> None:
    """user_agent, referer, accept_language and UTM tags are truncated, never refused."""
    chatty = event(
        customer={"email": "a@b.c", "user_agent": "u" * 300},
        context={"referer": "r" * 300, "accept_language": "l" * 300, "utm_campaign": "c" * 300},
    )
    sent = body(AltcraftAdapter("altcraft", config()), chatty)
    for key in ("user_agent", "referer", "accept_language", "utm_campaign"):
        assert len(sent[key]) == 128, key


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"customer": {"email": LONG}}, "customer.email"),
        ({"event_id": LONG}, "event_id"),
        ({"order": {"order_id": LONG}}, "order.order_id"),
        ({"order": {"product_id": "p", "sku_id": LONG}}, "order.sku_id"),
        ({"order": {"categories": ["ok", LONG]}}, "order.categories"),
        ({"attributes": {"k": LONG}}, "attributes.k"),
        ({"attributes": {LONG: 1}}, "attributes key"),
        ({"order": {"sku_id": "s"}}, "product_id"),
    ],
)
def test_identifiers_are_never_altered(fields: dict[str, Any], named: str) -> None:
    """An identifier over 128 characters, or a sku without a product, is a VendorInputError."""
    converted = event(**{"customer": {"email": "a@b.c"}, **fields})
    with pytest.raises(VendorInputError, match=named):
        AltcraftAdapter("altcraft", config()).build(converted, ROUTE)


def test_goal_name_over_128_from_an_explicit_route_is_refused() -> None:
    """A goal routed by the event's `vendors` list (its own name) must also fit in 128."""
    with pytest.raises(VendorInputError, match="goal"):
        AltcraftAdapter("altcraft", config()).build(event(), Route("altcraft", LONG))


def test_pixel_data_over_one_kilobyte_is_refused() -> None:
    """Attributes that encode to more than 1 KB cannot be pixel_data."""
    assert pixel_data({f"k{i}": "v" * 90 for i in range(10)})
    with pytest.raises(VendorInputError, match="1 KB"):
        pixel_data({f"k{i}": "v" * 100 for i in range(10)})


def test_empty_optional_fields_are_left_out() -> None:
    """Fields the event lacks are absent, not null."""
    sent = body(AltcraftAdapter("altcraft", config()), event())
    assert "value" not in sent and "pixel_data" not in sent and "categories" not in sent
    assert "is_test" not in sent


def answer(status: int, payload: bytes, headers: dict[str, str] | None = None) -> VendorResponse:
    """An Altcraft answer."""
    return VendorResponse(status, headers or {}, payload)


@pytest.mark.parametrize(
    ("response", "kind", "reason", "detail"),
    [
        (
            answer(200, b'{"error": 0, "error_text": "Successful operation"}'),
            OutcomeKind.DELIVERED,
            "",
            "",
        ),
        (
            answer(200, b"<xml><error>0</error><error_text>ok</error_text></xml>"),
            OutcomeKind.DELIVERED,
            "",
            "",
        ),
        (
            answer(200, b'{"error": 6, "error_text": "Profile not found"}'),
            OutcomeKind.REJECT,
            "vendor_6",
            "Profile not found",
        ),
        (
            answer(200, b"<xml><error>5</error><error_text>bad</error_text></xml>"),
            OutcomeKind.REJECT,
            "vendor_5",
            "bad",
        ),
        (
            answer(403, b'{"error": 2, "error_text": "Invalid token"}'),
            OutcomeKind.REJECT,
            "vendor_2",
            "Invalid token",
        ),
        (
            answer(503, b'{"error": 500, "error_text": "busy"}'),
            OutcomeKind.RETRY,
            "vendor_500",
            "busy",
        ),
        (answer(502, b"<html>bad gateway</html>"), OutcomeKind.RETRY, "http_502", "bad gateway"),
        (
            answer(200, b"<html>maintenance</html>"),
            OutcomeKind.RETRY,
            "unreadable_answer",
            "maintenance",
        ),
        (answer(200, b""), OutcomeKind.RETRY, "unreadable_answer", ""),
        (answer(200, b'{"error": "0"}'), OutcomeKind.RETRY, "unreadable_answer", ""),
        (answer(404, b"not found"), OutcomeKind.REJECT, "http_404", "not found"),
    ],
)
def test_classify_reads_the_error_field_not_just_the_status(
    response: VendorResponse, kind: OutcomeKind, reason: str, detail: str
) -> None:
    """Only error 0 delivers; a non-zero error fails even with 200; an unreadable 2xx retries."""
    outcome = AltcraftAdapter("altcraft", config()).classify(response)
    assert (outcome.kind, outcome.reason, outcome.status) == (kind, reason, response.status)
    assert detail in outcome.detail


def test_operator_listed_codes_are_retried_with_retry_after() -> None:
    """A code in retry_error_codes is retried, honouring Retry-After; others stay rejections."""
    adapter = AltcraftAdapter("altcraft", config(retry_error_codes=[9]))
    wait = {"Retry-After": "4"}
    busy = adapter.classify(answer(200, b'{"error": 9, "error_text": "busy"}', wait))
    assert (busy.kind, busy.reason, busy.retry_after_s) == (OutcomeKind.RETRY, "vendor_9", 4.0)
    other = adapter.classify(answer(200, b'{"error": 8, "error_text": "no"}', wait))
    assert (other.kind, other.retry_after_s) == (OutcomeKind.REJECT, None)


def test_parse_answer_takes_json_and_the_xml_form_only() -> None:
    """The documented answer parses from JSON or `<xml>`; anything else is None."""
    assert parse_answer(b'{"error": 0, "error_text": "Successful operation"}') is not None
    assert parse_answer(b"<xml><error>3</error></xml>") is not None
    assert parse_answer(b"<xml><error>x</error></xml>") is None
    assert parse_answer(b"[]") is None


def test_a_delivered_answer_is_classified_without_redacting_its_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`{"error": 0}` on a 2xx is the hot path: no excerpt is made (redaction costs ~27 µs)."""

    def no_redaction(text: str) -> str:
        raise AssertionError(f"redacted on the delivered path: {text!r}")

    monkeypatch.setattr(altcraft, "redact", no_redaction)
    body = b'{"error":0,"error_text":"Successful operation","data":{}}'
    outcome = AltcraftAdapter("altcraft", config()).classify(VendorResponse(200, {}, body))
    assert (outcome.kind, outcome.status) == (OutcomeKind.DELIVERED, 200)


@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=3))])))
def test_the_date_is_what_isoformat_to_the_second_gives(moment: datetime) -> None:
    """The UTC fast path and isoformat agree on every moment (other offsets use isoformat)."""
    assert altcraft._date(moment) == moment.isoformat(timespec="seconds")


def test_attributes_within_the_limits_become_pixel_data_unchanged() -> None:
    """The cheap length checks pass what the limits allow and still refuse what they do not."""
    assert pixel_data({"order": "o-1", "n": 3, "gone": None}) == {"order": "o-1", "n": 3}
    assert pixel_data({}) == {}
    with pytest.raises(VendorInputError, match="attributes key"):
        pixel_data({"k" * 129: "v"})
    with pytest.raises(VendorInputError, match=r"attributes\.k"):
        pixel_data({"k": "v" * 129})
