"""The sandbox server shared by every protocol: recording, fault injection, up/down control."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

CONTROL_PREFIX = "/_sandbox"


@dataclass
class Faults:
    """What the sandbox does wrong on purpose; change the fields at any time."""

    error_rate: float = 0.0  # share of requests answered with error_status
    error_status: int = 503
    latency_s: float = 0.0  # added before every answer
    latency_jitter_s: float = 0.0  # plus a uniform random extra in [0, latency_jitter_s]
    throttle_rate: float = 0.0  # share of requests answered 429 with Retry-After
    retry_after_s: int | None = None  # when set: every request is answered 429 + Retry-After
    # When set: every request is answered 429 with this Retry-After verbatim (an HTTP date, say).
    retry_after: str | None = None
    rate_limit_per_s: float | None = None  # above this rate (1 s window): 429
    reject_next: int = 0  # the next N valid requests get the protocol's documented rejection
    # At most this many requests served at once (each taking latency_s); the rest queue.
    max_concurrent: int | None = None
    # Requests whose body contains these bytes are answered error_status (one poisoned event
    # failing while every other goes through).
    fail_matching: bytes | None = None


@dataclass
class Received:
    """One request as the sandbox saw it."""

    at_s: float  # time.time() on receipt
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    payload: Any = None  # the validated, parsed body


class Verdict(Protocol):
    """A contract's answer to one request: accepted (with the parsed payload) or an error."""

    response: web.StreamResponse
    payload: Any


@dataclass
class Accepted:
    """The request satisfied the contract."""

    response: web.StreamResponse
    payload: Any


@dataclass
class Refused:
    """The request broke the contract; the response is the vendor's documented error."""

    response: web.StreamResponse
    payload: Any = None
    reason: str = ""


class Contract(Protocol):
    """One protocol's strict rules."""

    name: str

    def check(self, request: web.Request, body: bytes) -> Accepted | Refused:
        """Validate one request exactly as the vendor's doc says."""
        ...

    def rejection(self) -> web.StreamResponse:
        """The vendor's documented permanent rejection (used by `reject_next`)."""
        ...


@dataclass
class Sandbox:
    """A strict fake vendor on a loopback port; `stop`/`go_down` close it, `go_up` reopens it."""

    contract: Contract
    faults: Faults = field(default_factory=Faults)
    accepted: list[Received] = field(default_factory=list)
    refused: list[Received] = field(default_factory=list)
    request_times_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    answers: list[tuple[float, int]] = field(default_factory=list)  # (arrival time, status)
    host: str = "127.0.0.1"
    port: int = 0
    # At most about this many of each record list kept (dev mode: memory stays flat however
    # long `make run` runs); None keeps everything (tests read what was received).
    keep: int | None = None
    accepted_total: int = 0  # every request accepted, kept or not
    refused_total: int = 0
    rng: Callable[[], float] = random.random
    serving: int = 0  # requests inside the max_concurrent limit now
    queued: int = 0  # requests waiting for it now
    peak_queued: int = 0
    _slots: asyncio.Semaphore | None = None
    _slots_for: int | None = None
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None

    @property
    def base_url(self) -> str:
        """Where the adapters should send requests."""
        return f"http://{self.host}:{self.port}"

    def make_app(self) -> web.Application:
        """The aiohttp app: the control routes, then every other path goes to the contract."""
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_get(f"{CONTROL_PREFIX}/stats", self._stats)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def start(self) -> str:
        """Listen on the configured (or a free) loopback port; return the base URL."""
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await self._open()
        return self.base_url

    async def _open(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        if self.port == 0:
            self.port = self._runner.addresses[-1][1]

    async def go_down(self) -> None:
        """Close the listening socket and open connections: clients get connection refused."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self._runner.server if self._runner is not None else None
        for connection in list(server.connections) if server is not None else ():
            connection.force_close()  # pooled keep-alive connections would otherwise be served

    async def go_up(self) -> None:
        """Listen again on the same port."""
        if self._site is None:
            await self._open()

    async def stop(self) -> None:
        """Shut the server down for good."""
        await self.go_down()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def reset(self) -> None:
        """Forget what was received and clear every fault."""
        self.accepted.clear()
        self.refused.clear()
        self.accepted_total = self.refused_total = 0
        self.request_times_s.clear()
        self.statuses.clear()
        self.answers.clear()
        self.faults = Faults()

    def payloads(self) -> list[Any]:
        """The parsed bodies of every accepted request, in arrival order."""
        return [r.payload for r in self.accepted]

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "accepted": self.accepted_total,
                "refused": self.refused_total,
                "statuses": {str(k): v for k, v in self.statuses.items()},
            }
        )

    def _answer(self, response: web.StreamResponse, arrived_s: float) -> web.StreamResponse:
        self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
        self._remember(self.answers, (arrived_s, response.status))
        return response

    def _over_rate(self, now_s: float) -> bool:
        limit = self.faults.rate_limit_per_s
        if limit is None:
            return False
        times = self.request_times_s
        window = [t for t in times[-int(limit * 2) - 2 :] if now_s - t < 1.0]
        return len(window) > limit

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        limit = self.faults.max_concurrent
        if limit is None:
            return await self._serve(request)
        if self._slots is None or self._slots_for != limit:
            self._slots, self._slots_for = asyncio.Semaphore(limit), limit
        slots = self._slots
        self.queued += 1
        self.peak_queued = max(self.peak_queued, self.queued)
        async with slots:
            self.queued -= 1
            self.serving += 1
            try:
                return await self._serve(request)
            finally:
                self.serving -= 1

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        now_s = time.time()
        self._remember(self.request_times_s, now_s)
        faults = self.faults
        delay_s = faults.latency_s + faults.latency_jitter_s * self.rng()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if faults.retry_after is not None:
            return self._answer(
                web.Response(status=429, headers={"Retry-After": faults.retry_after}), now_s
            )
        if faults.retry_after_s is not None or (
            faults.throttle_rate > 0 and self.rng() < faults.throttle_rate
        ):
            wait_s = faults.retry_after_s if faults.retry_after_s is not None else 1
            return self._answer(
                web.Response(status=429, headers={"Retry-After": str(wait_s)}), now_s
            )
        if self._over_rate(now_s):
            return self._answer(web.Response(status=429, headers={"Retry-After": "1"}), now_s)
        if faults.error_rate > 0 and self.rng() < faults.error_rate:
            return self._answer(web.Response(status=faults.error_status), now_s)
        if faults.fail_matching is not None and faults.fail_matching in body:
            return self._answer(web.Response(status=faults.error_status), now_s)
        verdict = self.contract.check(request, body)
        received = Received(
            at_s=now_s,
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
            payload=verdict.payload,
        )
        if isinstance(verdict, Refused):
            self.refused_total += 1
            self._remember(self.refused, received)
            return self._answer(verdict.response, now_s)
        if faults.reject_next > 0:
            faults.reject_next -= 1
            self.refused_total += 1
            self._remember(self.refused, received)
            return self._answer(self.contract.rejection(), now_s)
        self.accepted_total += 1
        self._remember(self.accepted, received)
        return self._answer(verdict.response, now_s)

    def _remember(self, items: list[Any], item: Any) -> None:
        """Append, dropping the oldest past twice `keep` (amortised: one cut per `keep`)."""
        items.append(item)
        keep = self.keep
        if keep is not None and len(items) > 2 * keep:
            del items[: len(items) - keep]
