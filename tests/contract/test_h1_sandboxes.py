"""Every vendor's contract suite again, its requests sent through H1Transport instead of aiohttp.

Each class below inherits one vendor's whole `ContractSuite` (doc examples built by the adapter,
doc bodies verbatim, malformed variants, reject_next, 429, 5xx, and the vendor's own extra
tests) and swaps only the `http` fixture: `base.send` calls `http.request(...)`, which here goes
through a real `H1Transport` to the strict sandbox on its loopback port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from types import TracebackType

import pytest

from service.core.exchange import VendorRequest, VendorResponse
from service.delivery.h1 import H1Transport

from . import test_altcraft, test_conductrics, test_expertsender, test_goal_reach, test_webhook


class _Answer:
    """The part of an aiohttp response that `base.send` reads."""

    def __init__(self, response: VendorResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self._body = response.body

    async def read(self) -> bytes:
        """The whole body."""
        return self._body


class _Exchange:
    """`async with http.request(...) as response`, one H1Transport.send inside."""

    def __init__(self, transport: H1Transport, request: VendorRequest) -> None:
        self._transport = transport
        self._request = request

    async def __aenter__(self) -> _Answer:
        return _Answer(await self._transport.send(self._request))

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None


class H1Session:
    """The one method of aiohttp.ClientSession that the contract helpers call, on H1Transport."""

    def __init__(self, transport: H1Transport) -> None:
        self.transport = transport

    def request(
        self, method: str, url: str, *, data: bytes, headers: Mapping[str, str]
    ) -> _Exchange:
        """One exchange, sent exactly as given."""
        return _Exchange(self.transport, VendorRequest(method, url, headers, data))


class OnH1:
    """Mixin: the suite's `http` fixture is H1Transport (pool of 4, the relay's default limits)."""

    @pytest.fixture
    async def http(self) -> AsyncIterator[H1Session]:
        """A real H1Transport behind the aiohttp-shaped call the suite makes."""
        transport = H1Transport("sandbox", pool_size=4, timeout_s=10.0, connect_timeout_s=5.0)
        yield H1Session(transport)
        await transport.aclose()


class TestAltcraftOnH1(OnH1, test_altcraft.TestAltcraftContract):
    """Altcraft's contract through H1Transport."""


class TestConductricsOnH1(OnH1, test_conductrics.TestConductricsContract):
    """Conductrics' contract through H1Transport."""


class TestExpertSenderOnH1(OnH1, test_expertsender.TestExpertSenderContract):
    """ExpertSender's contract through H1Transport."""


class TestGoalReachOnH1(OnH1, test_goal_reach.TestGoalReachContract):
    """Both goal-reach vendors' contracts through H1Transport."""


class TestWebhookOnH1(OnH1, test_webhook.TestWebhookContract):
    """The webhook contract through H1Transport."""
