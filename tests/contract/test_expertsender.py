"""ExpertSender goal fulfillment: adapter, sandbox and the doc's examples agree."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from service.delivery.transport import Transport
from service.sandbox.base import Sandbox
from service.sandbox.expertsender import GUID_NOT_RECOGNIZED, ExpertSenderContract
from service.vendors.base import OutcomeKind

from .base import (
    ContractSuite,
    DocCase,
    DocResponse,
    Malformed,
    RawRequest,
    event,
    fixture_bytes,
    http_request,
    http_response,
    send,
)

PATH = "/v2/Api/Goals"
XML = {"Content-Type": "application/xml"}
DOC_GUID = "C7015756-95F3-4509-8C6C-759FEEC48F91"
CONFIG = {"api_key": "test_api_key1", "goals": {"purchase": 2}}


def api_request(data: str, api_key: str = "<ApiKey>test_api_key1</ApiKey>") -> bytes:
    """An ApiRequest with the given Data children, written by hand."""
    return f"<ApiRequest>{api_key}<Data>{data}</Data></ApiRequest>".encode()


def bad(name: str, body: bytes, says: str, status: int = 400, **kw: Any) -> Malformed:
    """A malformed POST to the goals path."""
    request = RawRequest(
        kw.get("method", "POST"), kw.get("target", PATH), body, kw.get("headers", XML), name
    )
    return Malformed(name, request, status, says)


GOOD_DATA = f"<GoalId>2</GoalId><MessageGuid>{DOC_GUID}</MessageGuid>"


class TestExpertSenderContract(ContractSuite):
    """The ExpertSender protocol against its doc."""

    protocol = "expertsender"
    vendor = "expertsender"
    pinned = CONFIG

    def doc_cases(self) -> list[DocCase]:
        """The doc's one request: GoalId 2, GoalValue 123, its MessageGuid, key test_api_key1."""
        doc = ET.fromstring(fixture_bytes("expertsender/goal_request.xml"))
        data = doc.find("Data")
        assert data is not None
        expected = {"ApiKey": doc.findtext("ApiKey")}
        expected.update({child.tag: child.text for child in data})
        converted = event(
            event_id="es-1",
            goal="purchase",
            occurred_at="2013-04-17T11:27:02Z",
            value=123.0,
            customer={"ids": {"expertsender_message_guid": expected["MessageGuid"]}},
        )
        return [DocCase("goal_request", CONFIG, converted, expected)]

    def doc_requests(self) -> list[RawRequest]:
        """The doc's request, headers and body as printed."""
        return [http_request("expertsender/goal_request.http")]

    def doc_responses(self) -> list[DocResponse]:
        """201 Created is delivered; the wrong-GUID 400 is rejected with the vendor's words."""
        return [
            DocResponse(
                "created",
                http_response("expertsender/created_response.http"),
                OutcomeKind.DELIVERED,
            ),
            DocResponse(
                "wrong guid",
                http_response("expertsender/wrong_guid_response.http"),
                OutcomeKind.REJECT,
                "vendor_400",
                GUID_NOT_RECOGNIZED,
            ),
        ]

    def malformed(self) -> list[Malformed]:
        """Every rule of the doc broken once."""
        return [
            bad(
                "not a GUID",
                api_request("<GoalId>2</GoalId><MessageGuid>nope</MessageGuid>"),
                GUID_NOT_RECOGNIZED,
            ),
            bad("no MessageGuid", api_request("<GoalId>2</GoalId>"), GUID_NOT_RECOGNIZED),
            bad("no GoalId", api_request(f"<MessageGuid>{DOC_GUID}</MessageGuid>"), "GoalId"),
            bad("GoalId not an integer", api_request(GOOD_DATA.replace(">2<", ">two<")), "GoalId"),
            bad(
                "GoalId over Int32", api_request(GOOD_DATA.replace(">2<", ">2147483648<")), "GoalId"
            ),
            bad(
                "GoalValue not an integer",
                api_request(GOOD_DATA + "<GoalValue>12.5</GoalValue>"),
                "GoalValue",
            ),
            bad("unknown Channel", api_request(GOOD_DATA + "<Channel>Sms</Channel>"), "Channel"),
            bad("unknown Data element", api_request(GOOD_DATA + "<Value>1</Value>"), "Unknown"),
            bad("no ApiKey", api_request(GOOD_DATA, api_key=""), "ApiKey"),
            bad(
                "wrong ApiKey",
                api_request(GOOD_DATA, "<ApiKey>other</ApiKey>"),
                "Invalid API key",
                status=401,
            ),
            bad("not XML", b'{"GoalId": 2}', "not valid XML"),
            bad(
                "JSON media type",
                api_request(GOOD_DATA),
                "XML",
                headers={"Content-Type": "application/json"},
            ),
            bad("wrong root", b"<Request><ApiKey>k</ApiKey></Request>", "ApiRequest"),
            bad("wrong path", api_request(GOOD_DATA), "", status=404, target="/v2/Api/Goal"),
            bad("GET", b"", "", status=405, method="GET"),
        ]

    async def test_unknown_message_guid_is_not_recognized(self, transport: Transport) -> None:
        """A well-formed GUID the vendor never sent gets the doc's own error and is rejected."""
        sandbox = Sandbox(ExpertSenderContract(known_guids=[DOC_GUID]))
        await sandbox.start()
        try:
            unknown = "0F0E0D0C-0B0A-0908-0706-050403020100"
            stranger = event(
                event_id="es-2",
                goal="purchase",
                occurred_at="2026-01-01T00:00:00Z",
                customer={"ids": {"expertsender_message_guid": unknown}},
            )
            case = DocCase("unknown", CONFIG, stranger, {})
            adapter, route = self.adapter(case, sandbox.base_url)
            outcome = adapter.classify(await send(transport, adapter.build(stranger, route)))
            assert (outcome.kind, outcome.reason, outcome.detail) == (
                OutcomeKind.REJECT,
                "vendor_400",
                GUID_NOT_RECOGNIZED,
            )
        finally:
            await sandbox.stop()

    async def test_channel_and_scaled_value_reach_the_vendor(
        self, sandbox: Sandbox, transport: Transport
    ) -> None:
        """A configured Channel and a value multiplied to cents arrive as the vendor's integers."""
        case = self.doc_cases()[0]
        config = {**CONFIG, "channel": "WebPush", "value_multiplier": 100}
        adapter, route = self.adapter(DocCase("cents", config, case.event, {}), sandbox.base_url)
        priced = event(
            event_id="es-3",
            goal="purchase",
            occurred_at="2026-01-01T00:00:00Z",
            value=19.99,
            customer=case.event.customer,
        )
        outcome = adapter.classify(await send(transport, adapter.build(priced, route)))
        assert outcome.kind is OutcomeKind.DELIVERED
        assert sandbox.payloads()[-1]["GoalValue"] == "1999"
        assert sandbox.payloads()[-1]["Channel"] == "WebPush"
