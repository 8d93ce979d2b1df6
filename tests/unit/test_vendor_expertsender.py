"""ExpertSender adapter: pure build and classify logic."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import VendorInputError
from service.events import ConversionEvent, decode_event
from service.vendors.base import OutcomeKind, Route, VendorResponse
from service.vendors.expertsender import (
    ExpertSenderAdapter,
    ExpertSenderConfig,
    error_message,
    goal_value,
    request_xml,
)

GUID = "C7015756-95F3-4509-8C6C-759FEEC48F91"
ROUTE = Route("expertsender", "2")
ERROR_XML = (
    b'<ApiResponse xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><ErrorMessage>'
    b"<Code>400</Code><Message>Message GUID was not recognized.</Message>"
    b"</ErrorMessage></ApiResponse>"
)


def config(**overrides: Any) -> ExpertSenderConfig:
    """A valid config with `overrides` applied."""
    raw = {
        "protocol": "expertsender",
        "base_url": "https://api.esv2.com/",
        "api_key": "k",
        "goals": {"purchase": 2},
        **overrides,
    }
    return msgspec.convert(raw, ExpertSenderConfig)


def event(**fields: Any) -> ConversionEvent:
    """An event reaching `purchase` with the doc's GUID, `fields` applied."""
    data = {
        "event_id": "e1",
        "goal": "purchase",
        "occurred_at": "2026-01-01T00:00:00Z",
        "customer": {"ids": {"expertsender_message_guid": GUID}},
        **fields,
    }
    return decode_event(msgspec.json.encode(data))


def data_of(body: bytes) -> dict[str, str]:
    """The Data children of an ApiRequest."""
    data = ET.fromstring(body).find("Data")
    assert data is not None
    return {child.tag: child.text or "" for child in data}


@pytest.mark.parametrize(
    ("value", "multiplier", "rounding", "expected"),
    [
        (123.0, 1.0, "half_up", 123),
        (2.5, 1.0, "half_up", 3),
        (-2.5, 1.0, "half_up", -3),
        (2.5, 1.0, "half_even", 2),
        (2.7, 1.0, "floor", 2),
        (-2.2, 1.0, "floor", -3),
        (2.1, 1.0, "ceiling", 3),
        (-2.7, 1.0, "truncate", -2),
        (19.99, 100.0, "half_up", 1999),
        (0.285, 100.0, "half_up", 29),
    ],
)
def test_goal_value_applies_the_configured_rule(
    value: float, multiplier: float, rounding: str, expected: int
) -> None:
    """The value is multiplied and rounded in decimal, so 19.99 × 100 is exactly 1999."""
    assert goal_value(value, multiplier, rounding) == expected


@pytest.mark.parametrize("value", [2_147_483_647.6, -2_147_483_649.0, float("inf")])
def test_goal_value_outside_int32_cannot_be_expressed(value: float) -> None:
    """A GoalValue beyond the .NET Int32 range (or not finite) is a VendorInputError."""
    with pytest.raises(VendorInputError):
        goal_value(value, 1.0, "half_up")


def test_build_writes_the_documented_xml_request() -> None:
    """The request is POST /v2/Api/Goals, application/xml, with the doc's elements in order."""
    request = ExpertSenderAdapter("es", config()).build(event(value=123), ROUTE)
    assert (request.method, request.url) == ("POST", "https://api.esv2.com/v2/Api/Goals")
    assert request.headers["Content-Type"] == "application/xml"
    root = ET.fromstring(request.body)
    assert (root.tag, root.findtext("ApiKey")) == ("ApiRequest", "k")
    assert list(data_of(request.body).items()) == [
        ("GoalId", "2"),
        ("GoalValue", "123"),
        ("MessageGuid", GUID),
    ]


def test_goal_value_is_left_out_without_a_value_and_channel_only_when_configured() -> None:
    """No event value means no GoalValue (the doc's default 0); Channel appears when configured."""
    plain = data_of(ExpertSenderAdapter("es", config()).build(event(), ROUTE).body)
    assert set(plain) == {"GoalId", "MessageGuid"}
    pushed = data_of(ExpertSenderAdapter("es", config(channel="SmsMms")).build(event(), ROUTE).body)
    assert pushed["Channel"] == "SmsMms"


def test_text_is_escaped_in_the_xml() -> None:
    """An API key with XML metacharacters survives as text, not as markup."""
    request = ExpertSenderAdapter("es", config(api_key="a<b&c>\"d'")).build(event(), ROUTE)
    assert ET.fromstring(request.body).findtext("ApiKey") == "a<b&c>\"d'"


@pytest.mark.parametrize("goal_id", ["two", " 2", "+2", "2_000", "0", "2147483648", "٢"])
def test_goal_id_must_be_a_plain_int32(goal_id: str) -> None:
    """A routed goal id that is not plain digits within 1..Int32 cannot be sent."""
    with pytest.raises(VendorInputError, match="GoalId"):
        ExpertSenderAdapter("es", config()).build(event(), Route("es", goal_id))


def test_message_guid_must_be_a_guid() -> None:
    """A MessageGuid that is not a GUID is rejected before any request is made."""
    bad = event(customer={"ids": {"expertsender_message_guid": "not-a-guid"}})
    with pytest.raises(VendorInputError, match=r"customer\.ids\.expertsender_message_guid"):
        ExpertSenderAdapter("es", config()).build(bad, ROUTE)


def test_missing_identity_names_the_configured_key() -> None:
    """Without the message GUID (or with a blank one) the configured customer.ids key is named."""
    adapter = ExpertSenderAdapter("es", config(message_guid_key="es_guid"))
    assert adapter.missing_identity(event()) == "customer.ids.es_guid"
    assert adapter.missing_identity(event(customer={"ids": {"es_guid": " "}})) == (
        "customer.ids.es_guid"
    )
    assert adapter.missing_identity(event(customer={"ids": {"es_guid": GUID}})) is None


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"channel": "Sms"}, "channel"),
        ({"goals": {"purchase": "two"}}, "goals"),
        ({"goals": {"purchase": 0}}, "goals"),
        ({"value_multiplier": 0}, "value_multiplier"),
        ({"value_rounding": "bankers"}, "value_rounding"),
        ({"api_key": ""}, "api_key"),
    ],
)
def test_config_mistakes_are_errors_with_their_path(overrides: dict[str, Any], where: str) -> None:
    """A bad Channel, goal id, multiplier, rounding mode or empty key fails at config load."""
    with pytest.raises(msgspec.ValidationError, match=where):
        config(**overrides)


def test_goal_ids_are_text() -> None:
    """The routing map holds each GoalId as text."""
    assert config().goal_ids() == {"purchase": "2"}


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "reason", "detail", "retry_after_s"),
    [
        (201, {}, b"", OutcomeKind.DELIVERED, "", "", None),
        (
            400,
            {},
            ERROR_XML,
            OutcomeKind.REJECT,
            "vendor_400",
            "Message GUID was not recognized.",
            None,
        ),
        (400, {}, b"Bad Request", OutcomeKind.REJECT, "http_400", "Bad Request", None),
        (
            401,
            {},
            ERROR_XML.replace(b">400<", b">401<"),
            OutcomeKind.REJECT,
            "vendor_401",
            "Message GUID",
            None,
        ),
        (
            500,
            {},
            ERROR_XML.replace(b">400<", b">500<"),
            OutcomeKind.RETRY,
            "vendor_500",
            "Message GUID",
            None,
        ),
        (503, {"Retry-After": "30"}, b"", OutcomeKind.RETRY, "http_503", "", 30.0),
        (429, {"Retry-After": "5"}, b"", OutcomeKind.RETRY, "http_429", "", 5.0),
        (400, {}, b"<broken", OutcomeKind.REJECT, "http_400", "<broken", None),
    ],
)
def test_classify_covers_every_answer(
    status: int,
    headers: dict[str, str],
    body: bytes,
    kind: OutcomeKind,
    reason: str,
    detail: str,
    retry_after_s: float | None,
) -> None:
    """201 delivers, an XML ErrorMessage names the vendor's code, the rest follow the table."""
    outcome = ExpertSenderAdapter("es", config()).classify(VendorResponse(status, headers, body))
    assert (outcome.kind, outcome.reason, outcome.retry_after_s) == (kind, reason, retry_after_s)
    assert detail in outcome.detail


def test_error_message_ignores_oversized_or_foreign_bodies() -> None:
    """Only a bounded XML body with an ErrorMessage yields a (Code, Message) pair."""
    assert error_message(ERROR_XML) == ("400", "Message GUID was not recognized.")
    assert error_message(b"<ApiResponse/>") is None
    assert error_message(b'{"Code": 400}') is None
    assert error_message(b"<a>" + b" " * 70_000 + b"</a>") is None


def _element_tree_xml(api_key: str, data: dict[str, str]) -> bytes:
    """The reference serialisation: ElementTree, as the adapter first built it."""
    root = ET.Element(
        "ApiRequest",
        {
            "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
            "xmlns:xs": "http://www.w3.org/2001/XMLSchema",
        },
    )
    ET.SubElement(root, "ApiKey").text = api_key
    data_element = ET.SubElement(root, "Data")
    for tag, text in data.items():
        ET.SubElement(data_element, tag).text = text
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body


@settings(max_examples=300)
@given(
    api_key=st.text(),
    data=st.dictionaries(
        st.sampled_from(["GoalId", "GoalValue", "MessageGuid", "Channel"]), st.text(), max_size=4
    ),
)
def test_request_xml_is_byte_for_byte_what_element_tree_writes(
    api_key: str, data: dict[str, str]
) -> None:
    """Escaping (&, <, >), quotes, non-ASCII, lone surrogates and empty texts alike."""
    assert request_xml(api_key, data) == _element_tree_xml(api_key, data)


@pytest.mark.parametrize(
    "text", ["", "a&b<c>d", "\"quoted\" 'single'", "Zürich 東京", "\ud800", "]]>", "\x01\t\n"]
)
def test_request_xml_matches_element_tree_on_awkward_texts(text: str) -> None:
    """The cases worth naming, each in the key and in a data field."""
    data = {"GoalId": "2", "MessageGuid": text}
    assert request_xml(text, data) == _element_tree_xml(text, data)


def _guid_by_uuid(value: str) -> str | None:
    """The reference: what uuid.UUID accepts, as the adapter first checked it."""
    import uuid

    try:
        uuid.UUID(value)
    except ValueError:
        return None
    return value.strip()


@given(
    st.one_of(
        st.uuids().map(str),
        st.uuids().map(lambda u: str(u).upper()),
        st.uuids().map(lambda u: "{" + str(u) + "}"),
        st.uuids().map(lambda u: u.hex),
        st.text(max_size=40),
    )
)
def test_a_message_guid_is_accepted_exactly_when_uuid_accepts_it(value: str) -> None:
    """The canonical fast path changes nothing: same GUIDs accepted, same text sent."""
    from service.vendors.expertsender import _guid_text

    expected = _guid_by_uuid(value)
    if expected is None:
        with pytest.raises(VendorInputError):
            _guid_text(value, "MessageGuid")
    else:
        assert _guid_text(value, "MessageGuid") == expected
