"""The checks every vendor contract test shares (subclass `ContractSuite` once per protocol).

For each vendor: every request example of its doc, rebuilt by the adapter from an equivalent
canonical event, is accepted by the strict sandbox and carries the doc's values; the doc's own
bodies are accepted verbatim; malformed variants are refused in the vendor's documented error
shape and read by the adapter as rejections; and every other answer the sandbox can give (the
doc's own answers, reject_next, 429 + Retry-After, 5xx) is classified as the protocol says.
Everything runs against a real sandbox on a loopback port through the relay's own transport,
once on each (`transport` is parametrised: h1, pyreqwest and aiohttp).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import msgspec
import pytest

from service.delivery.transport import Transport
from service.events import ConversionEvent, decode_event
from service.sandbox.base import Contract, Received, Sandbox
from service.sandbox.registry import contract_for
from service.vendors import VendorConfig, make_adapter
from service.vendors.base import (
    Adapter,
    OutcomeKind,
    Route,
    VendorBase,
    VendorRequest,
    VendorResponse,
)
from tests.transports import TRANSPORTS, transport_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vendor_docs"


def fixture_bytes(relative: str) -> bytes:
    """A verbatim doc example."""
    return (FIXTURES / relative).read_bytes()


def fixture_json(relative: str) -> Any:
    """A verbatim doc example, parsed."""
    return msgspec.json.decode(fixture_bytes(relative))


@dataclass(frozen=True)
class RawRequest:
    """A request written by hand or copied from a doc, sent exactly as it is."""

    method: str
    target: str  # path and query
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True)
class Malformed:
    """A request the sandbox must refuse, the status it answers and words its error must hold."""

    name: str
    request: RawRequest
    status: int
    says: str | tuple[str, ...]  # every fragment must appear in the answer


@dataclass(frozen=True)
class DocCase:
    """A doc request example and a canonical event that says the same thing."""

    name: str
    config: Mapping[str, Any]  # vendor config besides `protocol` and `base_url`
    event: ConversionEvent
    expected: Mapping[str, Any]  # values the sandbox must have received (a subset)
    vendor: str = ""


@dataclass(frozen=True)
class DocResponse:
    """An answer the doc shows, and what it must be classified as."""

    name: str
    response: VendorResponse
    kind: OutcomeKind
    reason: str = ""
    detail: str = ""


def _split_message(text: str) -> tuple[list[str], bytes]:
    head, _, body = text.partition("\n\n")
    return head.splitlines(), body.encode()


def http_request(relative: str, name: str = "") -> RawRequest:
    """A doc's HTTP request example; only Content-Type is kept (Content-Length etc. are stale)."""
    lines, body = _split_message((FIXTURES / relative).read_text(encoding="utf-8"))
    method, url = lines[0].split()[:2]
    headers = dict(line.split(": ", 1) for line in lines[1:])
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    kept = {k: v for k, v in headers.items() if k.lower() == "content-type"}
    return RawRequest(method, target, body, kept, name or relative)


def http_response(relative: str) -> VendorResponse:
    """A doc's HTTP response example as the adapter would see it."""
    lines, body = _split_message((FIXTURES / relative).read_text(encoding="utf-8"))
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return VendorResponse(int(lines[0].split()[1]), headers, body)


def event(**fields: Any) -> ConversionEvent:
    """A canonical event from plain data, through the one real decoder."""
    return decode_event(msgspec.json.encode(fields))


def make_config(protocol: str, base_url: str, raw: Mapping[str, Any]) -> VendorBase:
    """A vendor config from plain data, validated as the config loader does."""
    config: VendorBase = msgspec.convert(
        {"protocol": protocol, "base_url": base_url, **raw}, VendorConfig
    )
    return config


async def send(
    transport: Transport, request: VendorRequest | RawRequest, base_url: str = ""
) -> VendorResponse:
    """Send one request through the relay's transport, as its sender does."""
    if isinstance(request, RawRequest):
        url = base_url + request.target
        request = VendorRequest(request.method, url, dict(request.headers), request.body)
    return await transport.send(request)


class ContractSuite:
    """Shared contract checks; a subclass names the protocol and supplies the doc's examples."""

    protocol: ClassVar[str]
    vendor: ClassVar[str]
    # Config the sandbox contract is pinned to (credentials, account, path); None = unpinned.
    pinned: ClassVar[Mapping[str, Any] | None] = None

    def doc_cases(self) -> list[DocCase]:
        """Every request example of the doc as an equivalent canonical event."""
        raise NotImplementedError

    def doc_requests(self) -> list[RawRequest]:
        """Every example body of the doc, to send verbatim."""
        raise NotImplementedError

    def malformed(self) -> list[Malformed]:
        """Requests breaking the doc (at least five)."""
        raise NotImplementedError

    def doc_responses(self) -> list[DocResponse]:
        """The answers the doc shows."""
        return []

    def recorded(self, received: Received) -> Mapping[str, Any]:
        """What the sandbox received, in the shape `DocCase.expected` is written in."""
        payload: Mapping[str, Any] = received.payload
        return payload

    def make_contract(self) -> Contract:
        """The sandbox contract under test."""
        if self.pinned is None:
            return contract_for(self.protocol)
        return contract_for(self.protocol, make_config(self.protocol, "http://x", self.pinned))

    def adapter(self, case: DocCase, base_url: str) -> tuple[Adapter, Route]:
        """The adapter for a case, pointed at the sandbox, and the case's route."""
        vendor = case.vendor or self.vendor
        config = make_config(self.protocol, base_url, case.config)
        return make_adapter(vendor, config), Route(vendor, config.goal_ids()[case.event.goal])

    def first_request(self, base_url: str) -> tuple[Adapter, VendorRequest]:
        """A valid request built by the adapter (the first doc case)."""
        case = self.doc_cases()[0]
        adapter, route = self.adapter(case, base_url)
        return adapter, adapter.build(case.event, route)

    @pytest.fixture
    async def sandbox(self) -> AsyncIterator[Sandbox]:
        """The strict sandbox on a free loopback port."""
        server = Sandbox(self.make_contract())
        await server.start()
        yield server
        await server.stop()

    @pytest.fixture(params=TRANSPORTS)
    async def transport(self, request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
        """The relay's transport of a vendor at the defaults, of each kind in turn."""
        made = transport_for(request.param)
        yield made
        await made.aclose()

    async def test_doc_examples_built_by_the_adapter_are_accepted(
        self, sandbox: Sandbox, transport: Transport
    ) -> None:
        """Every doc request example, rebuilt from an equivalent event, is accepted as sent."""
        cases = self.doc_cases()
        assert cases
        for case in cases:
            adapter, route = self.adapter(case, sandbox.base_url)
            assert adapter.missing_identity(case.event) is None, case.name
            response = await send(transport, adapter.build(case.event, route))
            outcome = adapter.classify(response)
            assert outcome.kind is OutcomeKind.DELIVERED, (case.name, outcome, sandbox.refused)
            got = self.recorded(sandbox.accepted[-1])
            wrong = {k: (got.get(k), v) for k, v in case.expected.items() if got.get(k) != v}
            assert not wrong, f"{case.name}: (sent, doc) differ: {wrong}"
        assert not sandbox.refused
        assert len(sandbox.accepted) == len(cases)

    async def test_doc_bodies_are_accepted_verbatim(
        self, sandbox: Sandbox, transport: Transport
    ) -> None:
        """The doc's own example bodies, sent byte for byte, satisfy the strict sandbox."""
        adapter, _ = self.first_request(sandbox.base_url)
        requests = self.doc_requests()
        assert requests
        for raw in requests:
            response = await send(transport, raw, sandbox.base_url)
            assert not sandbox.refused, (raw.name, response.status, response.body)
            assert adapter.classify(response).kind is OutcomeKind.DELIVERED, raw.name
        assert [r.body for r in sandbox.accepted] == [raw.body for raw in requests]

    async def test_malformed_variants_are_refused_in_the_documented_shape(
        self, sandbox: Sandbox, transport: Transport
    ) -> None:
        """Requests that break the doc are refused in its error shape and read as rejections."""
        adapter, _ = self.first_request(sandbox.base_url)
        variants = self.malformed()
        assert len(variants) >= 5
        for bad in variants:
            response = await send(transport, bad.request, sandbox.base_url)
            assert response.status == bad.status, (bad.name, response.status, response.body)
            fragments = (bad.says,) if isinstance(bad.says, str) else bad.says
            text = response.body.decode()
            assert all(f in text for f in fragments), (bad.name, response.body)
            outcome = adapter.classify(response)
            assert outcome.kind is OutcomeKind.REJECT, (bad.name, outcome)
            assert outcome.reason, bad.name
        assert not sandbox.accepted
        assert len(sandbox.refused) == len(variants)

    def test_doc_responses_are_classified_as_the_doc_says(self) -> None:
        """Each answer shown in the doc is classified as what the doc says it means."""
        answers = self.doc_responses()
        if not answers:
            pytest.skip("the doc shows no answer")
        adapter, _ = self.first_request("http://127.0.0.1:9")
        for answer in answers:
            outcome = adapter.classify(answer.response)
            assert (outcome.kind, outcome.reason) == (answer.kind, answer.reason), answer.name
            assert answer.detail in outcome.detail, answer.name

    async def test_reject_next_is_classified_as_a_rejection(
        self, sandbox: Sandbox, transport: Transport
    ) -> None:
        """The sandbox's permanent rejection is dead-lettered, not retried; the next one passes."""
        adapter, request = self.first_request(sandbox.base_url)
        sandbox.faults.reject_next = 1
        rejected = adapter.classify(await send(transport, request))
        assert rejected.kind is OutcomeKind.REJECT
        assert rejected.reason and rejected.detail
        assert adapter.classify(await send(transport, request)).kind is OutcomeKind.DELIVERED

    async def test_throttling_is_retried_after_the_vendors_wait(
        self, sandbox: Sandbox, transport: Transport
    ) -> None:
        """A 429 with Retry-After is retried after exactly the wait the vendor asked for."""
        adapter, request = self.first_request(sandbox.base_url)
        sandbox.faults.retry_after_s = 7
        outcome = adapter.classify(await send(transport, request))
        assert (outcome.kind, outcome.status, outcome.retry_after_s) == (
            OutcomeKind.RETRY,
            429,
            7.0,
        )

    @pytest.mark.parametrize(
        ("status", "kind"),
        [(500, OutcomeKind.RETRY), (503, OutcomeKind.RETRY), (501, OutcomeKind.REJECT)],
    )
    async def test_server_errors_follow_the_default_table(
        self, sandbox: Sandbox, transport: Transport, status: int, kind: OutcomeKind
    ) -> None:
        """A 5xx is retried (an outage is not a failure) except 501, which no retry fixes."""
        adapter, request = self.first_request(sandbox.base_url)
        sandbox.faults.error_rate, sandbox.faults.error_status = 1.0, status
        outcome = adapter.classify(await send(transport, request))
        assert (outcome.kind, outcome.reason) == (kind, f"http_{status}")
