"""Goal reach (SustainImpact / FunnelFlex.AI and Sales Ninja): adapter, sandbox and both docs."""

from __future__ import annotations

from typing import Any

import msgspec

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
)

PATH = "/outer/v1.0/goal/reach"
JSON = {"Content-Type": "application/json"}
VENDORS = ("sustain_impact", "sales_ninja")
EXAMPLES = ("full_request", "minimal_request")
VALID = {
    "GoalId": "299837db-9b51-45a4-996b-844d3fd05bbd",
    "CustomerId": "2eccd743-4164-4892-a416-dc5c16f44971",
}


def case_from(vendor: str, name: str) -> DocCase:
    """A doc body example as the canonical event that says the same (empty scopes are absent)."""
    doc = fixture_json(f"{vendor}/{name}.json")
    created = doc.get("CreatedOnUtc", "2026-01-01 00:00:00.000000").replace(" ", "T") + "Z"
    converted = event(
        event_id=f"{vendor}-{name}",
        goal="purchase",
        occurred_at=created,
        customer={"ip": doc.get("Ip"), "ids": {vendor: doc["CustomerId"]}},
        params=doc.get("CustomUserScopeParams", {}),
        page_params=doc.get("CustomPageScopeParams", {}),
    )
    expected = {k: v for k, v in doc.items() if v != {}}
    config = {"goals": {"purchase": doc["GoalId"]}}
    return DocCase(f"{vendor}/{name}", config, converted, expected, vendor=vendor)


def bad(name: str, body: Any, status: int = 400, says: str = "", **kw: Any) -> Malformed:
    """A request breaking the goal-reach doc once."""
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    request = RawRequest(
        kw.get("method", "POST"), kw.get("target", PATH), raw, kw.get("headers", JSON), name
    )
    return Malformed(name, request, status, says)


class TestGoalReachContract(ContractSuite):
    """Both goal-reach vendors against their docs."""

    protocol = "goal_reach"
    vendor = "sustain_impact"

    def doc_cases(self) -> list[DocCase]:
        """Both body examples of both docs."""
        return [case_from(vendor, name) for vendor in VENDORS for name in EXAMPLES]

    def doc_requests(self) -> list[RawRequest]:
        """Both docs' example bodies, as printed."""
        return [
            RawRequest("POST", PATH, fixture_bytes(f"{vendor}/{name}.json"), JSON, name)
            for vendor in VENDORS
            for name in EXAMPLES
        ]

    def doc_responses(self) -> list[DocResponse]:
        """The docs: success is an empty answer with 200 OK."""
        return [DocResponse("200 empty", VendorResponse(200, {}, b""), OutcomeKind.DELIVERED)]

    def malformed(self) -> list[Malformed]:
        """Every rule of the docs broken once."""
        return [
            bad("no GoalId", {"CustomerId": VALID["CustomerId"]}, says="GoalId"),
            bad("no CustomerId", {"GoalId": VALID["GoalId"]}, says="CustomerId"),
            bad("GoalId not a UUID", {**VALID, "GoalId": "purchase"}, says="GUID"),
            bad("CustomerId a number", {**VALID, "CustomerId": 42}, says="CustomerId"),
            bad("Ip not an address", {**VALID, "Ip": "localhost"}, says="Ip"),
            bad(
                "CreatedOnUtc ISO with T",
                {**VALID, "CreatedOnUtc": "2022-10-27T12:23:25Z"},
                says="CreatedOnUtc",
            ),
            bad(
                "param as a number",
                {**VALID, "CustomUserScopeParams": {"Revenue": 12350}},
                says="must be a string",
            ),
            bad(
                "scope not an object",
                {**VALID, "CustomPageScopeParams": ["Revenue"]},
                says="object",
            ),
            bad("unknown field", {**VALID, "Value": "1"}, says="unknown field"),
            bad("not JSON", b"GoalId=1", says="not valid JSON"),
            bad("array body", [VALID], says="object"),
            bad("text media type", VALID, 415, headers={"Content-Type": "text/plain"}),
            bad("wrong path", VALID, 404, target="/outer/v1.1/goal/reach"),
            bad("GET", b"", 405, method="GET"),
        ]
