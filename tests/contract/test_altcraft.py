"""Altcraft goal registration: adapter, sandbox and the doc's examples agree."""

from __future__ import annotations

from typing import Any

import msgspec

from service.delivery.transport import Transport
from service.sandbox.altcraft import AltcraftContract
from service.sandbox.base import Sandbox
from service.vendors.base import OutcomeKind, VendorResponse

from .base import (
    ContractSuite,
    DocCase,
    DocResponse,
    Malformed,
    RawRequest,
    event,
    fixture_bytes,
    fixture_json,
    send,
)

PATH = "/api/v1.1/goals/register"
JSON = {"Content-Type": "application/json"}
XML = {"Content-Type": "application/xml"}
EXAMPLES = ("one_goal_request", "two_goals_request", "additional_info_request")
# Doc field → where a canonical event holds it (the fields an event can express).
EVENT_FIELDS = {
    "client_ip": ("customer", "ip"),
    "user_agent": ("customer", "user_agent"),
    "referer": ("context", "referer"),
    "accept_language": ("context", "accept_language"),
    "utm_source": ("context", "utm_source"),
    "utm_medium": ("context", "utm_medium"),
    "utm_campaign": ("context", "utm_campaign"),
    "utm_term": ("context", "utm_term"),
    "utm_content": ("context", "utm_content"),
    "order_eid": ("order", "order_id"),
    "product_eid": ("order", "product_id"),
    "sku_eid": ("order", "sku_id"),
    "count_items": ("order", "count_items"),
    "categories": ("order", "categories"),
}
CONFIG_FIELDS = ("token", "db_id", "pixel_id", "matching", "is_test")
VALID = {"token": "t", "db_id": 1, "pixel_id": 1, "goal": "card", "email": "a@example.com"}


def _goals(doc: dict[str, Any]) -> list[tuple[str, float]]:
    if "goals" in doc:
        return [(item["goal"], item["value"]) for item in doc["goals"]]
    return [(doc["goal"], doc["value"])]


def cases_from(name: str) -> list[DocCase]:
    """One canonical event per goal of a doc example; `expected` = the fields it can express."""
    doc = fixture_json(f"altcraft/{name}.json")
    config = {k: doc[k] for k in CONFIG_FIELDS if k in doc}
    sections: dict[str, dict[str, Any]] = {"customer": {}, "context": {}, "order": {}}
    for field, (section, key) in EVENT_FIELDS.items():
        if field in doc:
            sections[section][key] = doc[field]
    sections["customer"]["ids"] = {"altcraft_profile_id": doc["profile_id"]}
    flat = {k: v for k, v in doc.get("pixel_data", {}).items() if not isinstance(v, list)}
    shared = {k: doc[k] for k in (*CONFIG_FIELDS, *EVENT_FIELDS, "profile_id") if k in doc}
    if flat:
        shared["pixel_data"] = flat
    cases = []
    for index, (goal, value) in enumerate(_goals(doc)):
        event_id = doc.get("external_event_id", f"{name}-{index}")
        converted = event(
            event_id=event_id,
            goal=goal,
            occurred_at="2006-01-25T15:04:05+07:00",
            value=value,
            attributes=flat,
            **sections,
        )
        expected = {
            **shared,
            "goal": goal,
            "value": value,
            "external_event_id": event_id,
            "date": "2006-01-25T15:04:05+07:00",
        }
        goals = {g: g for g, _ in _goals(doc)}
        cases.append(DocCase(f"{name}[{index}]", {**config, "goals": goals}, converted, expected))
    return cases


def bad(name: str, fields: dict[str, Any], code: int, says: str) -> Malformed:
    """A JSON body that breaks the doc; Altcraft answers HTTP 200 with a non-zero error."""
    request = RawRequest("POST", PATH, msgspec.json.encode(fields), JSON, name)
    return Malformed(name, request, 200, (f'"error": {code},', says))


class TestAltcraftContract(ContractSuite):
    """The Altcraft protocol against its doc."""

    protocol = "altcraft"
    vendor = "altcraft"

    def doc_cases(self) -> list[DocCase]:
        """All three doc examples; each of their goals becomes one event."""
        return [case for name in EXAMPLES for case in cases_from(name)]

    def doc_requests(self) -> list[RawRequest]:
        """The three request examples, each in JSON and in XML."""
        return [
            RawRequest("POST", PATH, fixture_bytes(f"altcraft/{name}.{ext}"), headers, name)
            for name in EXAMPLES
            for ext, headers in (("json", JSON), ("xml", XML))
        ]

    def doc_responses(self) -> list[DocResponse]:
        """The documented success answer is delivered."""
        body = fixture_bytes("altcraft/success_response.json")
        return [DocResponse("success", VendorResponse(200, JSON, body), OutcomeKind.DELIVERED)]

    def malformed(self) -> list[Malformed]:
        """Every documented rule broken once, plus the sandbox's own structural checks."""
        long = "x" * 129
        return [
            bad("no token", {k: v for k, v in VALID.items() if k != "token"}, 2, "token"),
            bad("no db_id", {k: v for k, v in VALID.items() if k != "db_id"}, 3, "db_id"),
            bad("db_id as text", {**VALID, "db_id": "1"}, 3, "db_id"),
            bad("no pixel_id", {k: v for k, v in VALID.items() if k != "pixel_id"}, 4, "pixel"),
            bad("string over 128", {**VALID, "referer": long}, 5, "referer"),
            bad("goal over 128", {**VALID, "goal": long}, 5, "goal"),
            bad("pixel_data nested", {**VALID, "pixel_data": {"a": {"b": 1}}}, 5, "pixel_data"),
            bad("pixel_data array of objects", {**VALID, "pixel_data": {"a": [{}]}}, 5, "pixel"),
            bad(
                "pixel_data over 1 KB",
                {**VALID, "pixel_data": {f"k{i}": "v" * 100 for i in range(10)}},
                5,
                "1 KB",
            ),
            bad(
                "email matching without email",
                {k: v for k, v in VALID.items() if k != "email"},
                5,
                "matching email",
            ),
            bad(
                "profile_id matching without it",
                {**VALID, "matching": "profile_id"},
                5,
                "profile_id",
            ),
            bad(
                "custom matching without field_value",
                {**VALID, "matching": "custom", "field_name": "CRM_ID"},
                5,
                "field_value",
            ),
            bad("unknown matching", {**VALID, "matching": "cookie"}, 5, "matching"),
            bad("no goal", {k: v for k, v in VALID.items() if k != "goal"}, 5, "goal"),
            bad("value as text", {**VALID, "value": "10"}, 5, "value"),
            bad("date not RFC 3339", {**VALID, "date": "2006-01-25 15:04:05"}, 5, "date"),
            bad("lat without lon", {**VALID, "lat": 55.2}, 5, "lat"),
            bad("sku without product", {**VALID, "sku_eid": "s"}, 5, "product_eid"),
            bad("unknown field", {**VALID, "goal_name": "card"}, 5, "unknown field"),
            Malformed("not JSON", RawRequest("POST", PATH, b"token=t", JSON), 200, '"error": 1,'),
            Malformed("array body", RawRequest("POST", PATH, b"[]", JSON), 200, '"error": 1,'),
            Malformed(
                "XML without <xml> root",
                RawRequest("POST", PATH, b"<a/>", XML),
                200,
                "<error>1</error>",
            ),
            Malformed(
                "wrong path", RawRequest("POST", "/api/v1.1/goal/register", b"{}", JSON), 404, ""
            ),
        ]

    async def test_pinned_token_refuses_any_other(self, transport: Transport) -> None:
        """A sandbox pinned to the vendor's token answers error 2 for another token."""
        sandbox = Sandbox(AltcraftContract(tokens={"right"}))
        await sandbox.start()
        try:
            request = RawRequest("POST", PATH, msgspec.json.encode({**VALID, "token": "t"}), JSON)
            response = await send(transport, request, sandbox.base_url)
            assert msgspec.json.decode(response.body) == {"error": 2, "error_text": "Invalid token"}
        finally:
            await sandbox.stop()

    async def test_long_descriptive_text_is_truncated_and_accepted(
        self, sandbox: Sandbox, transport: Transport
    ) -> None:
        """A 500-character user agent and referer are cut to 128 and the goal still counts."""
        case = self.doc_cases()[0]
        adapter, route = self.adapter(case, sandbox.base_url)
        chatty = event(
            event_id="ac-long",
            goal="card",
            occurred_at="2026-01-01T00:00:00Z",
            customer={**msgspec.to_builtins(case.event.customer), "user_agent": "M" * 500},
            context={"referer": "r" * 500},
        )
        outcome = adapter.classify(await send(transport, adapter.build(chatty, route)))
        assert outcome.kind is OutcomeKind.DELIVERED
        sent = sandbox.payloads()[-1]
        assert (sent["user_agent"], sent["referer"]) == ("M" * 128, "r" * 128)

    async def test_xml_requests_are_answered_in_xml(
        self, sandbox: Sandbox, transport: Transport
    ) -> None:
        """An XML request gets the doc's XML answer, the JSON one gets JSON."""
        body = fixture_bytes("altcraft/one_goal_request.xml")
        response = await send(transport, RawRequest("POST", PATH, body, XML), sandbox.base_url)
        documented = fixture_bytes("altcraft/success_response.xml").strip()
        assert (response.headers["Content-Type"], response.body) == (
            "application/xml",
            documented,
        )
