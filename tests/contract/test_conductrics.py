"""Conductrics REST goals: adapter, sandbox and the doc's example agree."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec

from service.delivery.transport import Transport
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
    http_request,
    send,
)

JSON = {"Content-Type": "application/json"}
CONFIG = {"account": "ac-xxx", "api_key": "api-1234567890", "goals": {"purchase": "g-purchase"}}
QUERY = "vid=lana-123&session=lana-123&apikey=api-1234567890"
PATH = "/ac-xxx/v3/agent-api"
BODY = b'{"commands": [{"g": "g-purchase", "v": 19.99}]}'


def bad(name: str, status: int, says: str, **kw: Any) -> Malformed:
    """A request differing from a valid one in what `kw` names."""
    target = kw.get("target", f"{PATH}?{QUERY}")
    request = RawRequest(
        kw.get("method", "POST"), target, kw.get("body", BODY), kw.get("headers", JSON), name
    )
    return Malformed(name, request, status, says)


class TestConductricsContract(ContractSuite):
    """The Conductrics REST goal call against its doc."""

    protocol = "conductrics"
    vendor = "conductrics"
    pinned = CONFIG

    def doc_cases(self) -> list[DocCase]:
        """The doc's call: visitor lana-123 (also the session), goal g-purchase worth 19.99."""
        lines = fixture_bytes("conductrics/goal_request.http").decode().splitlines()
        query = dict(parse_qsl(urlsplit(lines[0].split()[1]).query))
        converted = event(
            event_id="co-1",
            goal="purchase",
            occurred_at="2026-01-01T00:00:00Z",
            value=19.99,
            customer={"ids": {"conductrics": query["vid"]}},
        )
        expected = {"query": query, "body": fixture_json("conductrics/goal_request.json")}
        return [DocCase("goal_request", CONFIG, converted, expected)]

    def doc_requests(self) -> list[RawRequest]:
        """The doc's call as printed, sent as JSON (the doc shows no headers)."""
        request = http_request("conductrics/goal_request.http")
        return [RawRequest(request.method, request.target, request.body, JSON, "goal_request")]

    def doc_responses(self) -> list[DocResponse]:
        """The doc shows no answer, so any 2xx is delivered whatever its body says."""
        return [
            DocResponse(
                "200 JSON", VendorResponse(200, JSON, b'{"status": 200}'), OutcomeKind.DELIVERED
            ),
            DocResponse("200 empty", VendorResponse(200, {}, b""), OutcomeKind.DELIVERED),
            DocResponse("204", VendorResponse(204, {}, b""), OutcomeKind.DELIVERED),
            DocResponse(
                "400 err",
                VendorResponse(400, JSON, b'{"err": "bad"}'),
                OutcomeKind.REJECT,
                "http_400",
                "bad",
            ),
        ]

    def malformed(self) -> list[Malformed]:
        """Every part of the call the doc requires, missing or wrong once."""
        return [
            bad("no vid", 400, "missing vid", target=f"{PATH}?session=s&apikey=api-1234567890"),
            bad(
                "no session",
                400,
                "missing session",
                target=f"{PATH}?vid=lana-123&apikey=api-1234567890",
            ),
            bad("no apikey", 400, "missing apikey", target=f"{PATH}?vid=lana-123&session=s"),
            bad("empty vid", 400, "missing vid", target=f"{PATH}?vid=&session=s&apikey=k"),
            bad(
                "wrong apikey",
                401,
                "invalid apikey",
                target=f"{PATH}?vid=lana-123&session=s&apikey=other",
            ),
            bad("another account", 404, "not found", target=f"/ac-yyy/v3/agent-api?{QUERY}"),
            bad("old API version", 404, "not found", target=f"/ac-xxx/v2/agent-api?{QUERY}"),
            bad("GET", 405, "method", method="GET", body=b""),
            bad("text body", 415, "application/json", headers={"Content-Type": "text/plain"}),
            bad("not JSON", 400, "not valid JSON", body=b"g=g-purchase"),
            bad("no commands", 400, "commands", body=b'{"goals": []}'),
            bad("empty commands", 400, "non-empty", body=b'{"commands": []}'),
            bad("goal code missing", 400, ".g", body=b'{"commands": [{"v": 1}]}'),
            bad("value as text", 400, ".v", body=b'{"commands": [{"g": "g", "v": "1"}]}'),
            bad(
                "not a goal command", 400, "goal command", body=b'{"commands": [{"a": "a-agent"}]}'
            ),
        ]

    async def test_session_id_is_sent_when_the_event_has_one(
        self, sandbox: Sandbox, transport: Transport
    ) -> None:
        """The event's own session id becomes `session`; the vid stays the visitor."""
        case = self.doc_cases()[0]
        adapter, route = self.adapter(case, sandbox.base_url)
        visit = event(
            event_id="co-2",
            goal="purchase",
            occurred_at="2026-01-01T00:00:00Z",
            customer=msgspec.to_builtins(case.event.customer),
            context={"session_id": "sess-9"},
        )
        assert adapter.classify(await send(transport, adapter.build(visit, route))).kind is (
            OutcomeKind.DELIVERED
        )
        query = sandbox.payloads()[-1]["query"]
        assert (query["vid"], query["session"]) == ("lana-123", "sess-9")

    async def test_identifiers_with_reserved_characters_arrive_intact(
        self, sandbox: Sandbox, transport: Transport
    ) -> None:
        """A vid with spaces, `&`, `+`, `/` and non-ASCII is percent-encoded and arrives intact."""
        case = self.doc_cases()[0]
        adapter, route = self.adapter(case, sandbox.base_url)
        odd = "a b&c=d+e/f?ü"
        visitor = event(
            event_id="co-3",
            goal="purchase",
            occurred_at="2026-01-01T00:00:00Z",
            customer={"ids": {"conductrics": odd}},
        )
        assert adapter.classify(await send(transport, adapter.build(visitor, route))).kind is (
            OutcomeKind.DELIVERED
        )
        assert sandbox.payloads()[-1]["query"]["vid"] == odd
        assert sandbox.payloads()[-1]["body"] == {"commands": [{"g": "g-purchase"}]}
