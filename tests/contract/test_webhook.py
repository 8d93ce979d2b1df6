"""Generic webhook: the vendors guide's worked example, through adapter and sandbox."""

from __future__ import annotations

from typing import Any

import msgspec
import yaml

from service.delivery.transport import Transport
from service.events import decode_event
from service.sandbox.base import Contract, Sandbox
from service.sandbox.registry import contract_for
from service.vendors.base import OutcomeKind, Route, VendorResponse

from .base import (
    FIXTURES,
    ContractSuite,
    DocCase,
    DocResponse,
    Malformed,
    RawRequest,
    fixture_bytes,
    http_request,
    make_config,
    send,
)

JSON = {"Content-Type": "application/json"}
TOKEN = "s3cr3t"


def worked_config() -> dict[str, Any]:
    """The worked example's vendor config, `${CRM_HOOK_TOKEN}` resolved as the loader would."""
    raw: dict[str, Any] = yaml.safe_load((FIXTURES / "webhook/config.yaml").read_text())
    config = {k: v for k, v in raw["crm_hook"].items() if k not in ("protocol", "base_url")}
    config["headers"] = {"Authorization": f"Bearer {TOKEN}"}
    return config


def documented_request() -> RawRequest:
    """The request the worked example says the relay sends."""
    return http_request("webhook/request.http", "worked example")


def bad(name: str, status: int, says: str, **kw: Any) -> Malformed:
    """A request differing from the worked example's in what `kw` names."""
    good = documented_request()
    request = RawRequest(
        kw.get("method", "POST"),
        kw.get("target", good.target),
        kw.get("body", good.body),
        kw.get("headers", JSON),
        name,
    )
    return Malformed(name, request, status, says)


class TestWebhookContract(ContractSuite):
    """The webhook protocol against its own documented worked example."""

    protocol = "webhook"
    vendor = "crm_hook"

    def make_contract(self) -> Contract:
        """The sandbox listens on the worked example's path and method only."""
        return contract_for(self.protocol, make_config(self.protocol, "http://x", worked_config()))

    def doc_cases(self) -> list[DocCase]:
        """The worked example: its event becomes the documented JSON body."""
        converted = decode_event(fixture_bytes("webhook/event.json"))
        expected = msgspec.json.decode(documented_request().body)
        return [DocCase("worked example", worked_config(), converted, expected)]

    def doc_requests(self) -> list[RawRequest]:
        """The documented request, sent as printed."""
        return [documented_request()]

    def doc_responses(self) -> list[DocResponse]:
        """The example's status overrides: 409 delivered, 423 retried, 410 rejected."""
        return [
            DocResponse("409 already have it", VendorResponse(409, {}, b""), OutcomeKind.DELIVERED),
            DocResponse("423 locked", VendorResponse(423, {}, b""), OutcomeKind.RETRY, "http_423"),
            DocResponse(
                "410 gone", VendorResponse(410, {}, b"gone"), OutcomeKind.REJECT, "http_410", "gone"
            ),
            DocResponse(
                "unlisted 400",
                VendorResponse(400, {}, b"bad"),
                OutcomeKind.REJECT,
                "http_400",
                "bad",
            ),
        ]

    def malformed(self) -> list[Malformed]:
        """What a JSON receiver refuses: other paths and methods, non-JSON media and bodies."""
        return [
            bad("another path", 404, "not found", target="/conversion/sale"),
            bad("no goal segment", 404, "not found", target="/conversions/"),
            bad("PUT", 405, "method", method="PUT"),
            bad(
                "form body",
                415,
                "JSON",
                body=b"id=1",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
            bad("text body", 415, "JSON", headers={"Content-Type": "text/plain"}),
            bad("broken JSON", 400, "not valid JSON", body=b'{"id": '),
            bad("empty body", 400, "not valid JSON", body=b""),
        ]

    async def test_path_placeholders_are_url_quoted(
        self, sandbox: Sandbox, transport: Transport
    ) -> None:
        """A goal id with `/`, spaces and `?` stays one path segment and arrives decoded."""
        case = self.doc_cases()[0]
        adapter, _ = self.adapter(case, sandbox.base_url)
        odd = "a/b c?d"
        request = adapter.build(case.event, Route("x", odd))
        outcome = adapter.classify(await send(transport, request))
        assert outcome.kind is OutcomeKind.DELIVERED
        assert sandbox.accepted[-1].path == f"/conversions/{odd}"
        assert sandbox.payloads()[-1]["type"] == odd

    async def test_configured_headers_are_sent(
        self, sandbox: Sandbox, transport: Transport
    ) -> None:
        """The configured Authorization header (a resolved secret) reaches the receiver."""
        _, request = self.first_request(sandbox.base_url)
        await send(transport, request)
        assert sandbox.accepted[-1].headers["Authorization"] == f"Bearer {TOKEN}"
        assert sandbox.accepted[-1].headers["Content-Type"] == "application/json"
