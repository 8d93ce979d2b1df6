"""The shared HTTP sender: the layers around one request, outermost first, in one place.

dedup      (pipeline: skip an event already delivered to this vendor; mark after delivery)
breaker    wait while the vendor's circuit is open (the pipeline also pauses its fetching)
limiter    the vendor's rate limit and any Retry-After pause (shared over Redis if set)
concurrency  adaptive (AIMD) gate, when enabled; else the worker count is the ceiling
request    one encoded request; aiohttp's errors translated here, once
classify   the adapter's reading of the answer, then this vendor's status overrides
retry      backoff with full jitter, Retry-After honoured, max_attempts and max_elapsed_s;
           never given up while the breaker is open (an outage is not the event's fault)
DLQ        (pipeline: rejected, exhausted or expired records, with their story)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import aiohttp
import msgspec

from service.core.breaker import BreakerState, CircuitBreaker, is_outage
from service.core.concurrency import AdaptiveConcurrency, ConcurrencyConfig, is_overload
from service.core.exchange import (
    Decision,
    DecisionKind,
    Outcome,
    OutcomeKind,
    VendorRequest,
    VendorResponse,
)
from service.core.retry import StatusTable, backoff_s, error_outcome, retry_delay_s
from service.delivery.ratelimit import RateLimiter
from service.errors import DeliveryError, VendorTimeout, VendorUnreachable
from service.metrics import Metrics
from service.vendors.base import Adapter, VendorBase

# Statuses whose Retry-After pauses the whole vendor, not just the one record.
_VENDOR_WIDE_WAIT = frozenset({429, 503})


def _always() -> bool:
    return True


_ABANDONED = Decision(kind=DecisionKind.ABANDONED)


class Attempts(msgspec.Struct, kw_only=True):
    """What happened so far to one record's delivery."""

    count: int = 0
    first_at_s: float = 0.0  # epoch seconds of the first attempt
    last_at_s: float = 0.0


def status_class(status: int) -> str:
    """`2xx`, `4xx`, ... for the HTTP request metric."""
    return f"{status // 100}xx"


def new_session(config: VendorBase) -> aiohttp.ClientSession:
    """One pooled session per vendor: connections up to its concurrency, its own timeout."""
    connector = aiohttp.TCPConnector(limit=config.concurrency, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, raise_for_status=False)


class _Gate:
    """A semaphore whose limit may change while requests are in flight."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._freed = asyncio.Event()

    async def acquire(self) -> None:
        while self.active >= self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._freed.set()


class Sender:
    """Sends requests for one vendor and decides whether a failed one is tried again."""

    def __init__(
        self,
        vendor: str,
        adapter: Adapter,
        session: aiohttp.ClientSession,
        config: VendorBase,
        metrics: Metrics,
        limiter: RateLimiter,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.vendor = vendor
        self.adapter = adapter
        self._session = session
        self._config = config
        self._retry = config.retry
        self._limiter = limiter
        self._table = StatusTable(config.status_actions)
        self._rng = rng
        self._clock = clock
        self._monotonic = monotonic
        self.breaker = CircuitBreaker(config.breaker) if config.breaker.enabled else None
        self.concurrency = AdaptiveConcurrency(
            ConcurrencyConfig(max=config.concurrency, adaptive=config.adaptive_concurrency),
            monotonic(),
        )
        self._gate = _Gate(self.concurrency.limit) if config.adaptive_concurrency else None
        self._requests = {
            c: metrics.http_requests.labels(vendor, c)
            for c in ("2xx", "3xx", "4xx", "5xx", "error")
        }
        self._duration = metrics.request_duration.labels(vendor)
        self._breaker_gauge = metrics.breaker_state.labels(vendor)
        self._breaker_gauge.set(0)
        self._shown_state = BreakerState.CLOSED
        self._limit_gauge = metrics.concurrency_limit.labels(vendor)
        self._limit_gauge.set(self.concurrency.limit)

    @property
    def breaker_state(self) -> str:
        """closed | half_open | open, for /status."""
        return self.breaker.state.value if self.breaker is not None else "disabled"

    def sending_blocked(self) -> bool:
        """Whether the breaker forbids requests right now (the pipeline pauses fetching then)."""
        return self.breaker is not None and self.breaker.retry_in_s(self._monotonic()) > 0

    async def deliver(
        self, request: VendorRequest, attempts: Attempts, current: Callable[[], bool] = _always
    ) -> Decision:
        """One try, and what the pipeline does next: delivered, dead letter, retry later, or
        abandoned when `current()` says the record's partition was revoked before it was sent."""
        outcome = await self.attempt(request, attempts, current)
        if outcome is None:
            return _ABANDONED
        if outcome.kind is OutcomeKind.DELIVERED:
            return Decision(kind=DecisionKind.DELIVERED, outcome=outcome)
        if outcome.kind is OutcomeKind.REJECT:
            return Decision(kind=DecisionKind.DEAD_LETTER, outcome=outcome, dlq_reason="rejected")
        delay_s = self.retry_delay_s(outcome, attempts)
        if delay_s is None:
            return Decision(
                kind=DecisionKind.DEAD_LETTER, outcome=outcome, dlq_reason="retries_exhausted"
            )
        return Decision(kind=DecisionKind.RETRY, outcome=outcome, delay_s=delay_s)

    async def attempt(
        self, request: VendorRequest, attempts: Attempts, current: Callable[[], bool] = _always
    ) -> Outcome | None:
        """One try through breaker, rate limiter and concurrency gate; the answer classified
        (None when `current()` turned false while waiting: nothing was sent)."""
        await self._wait_for_breaker()
        await self._limiter.acquire(self.vendor)
        gate = self._gate
        if gate is not None:
            await gate.acquire()
        if not current():
            if gate is not None:
                gate.release()
            return None
        now_s = self._clock()
        if attempts.count == 0:
            attempts.first_at_s = now_s
        attempts.count += 1
        attempts.last_at_s = now_s
        started = time.perf_counter()
        try:
            outcome = await self._send(request)
        finally:
            rtt_s = time.perf_counter() - started
            self._duration.observe(rtt_s)
            if gate is not None:
                gate.release()
        await self._observe(outcome, rtt_s)
        return outcome

    async def _send(self, request: VendorRequest) -> Outcome:
        try:
            response = await self._exchange(request)
        except DeliveryError as error:
            self._requests["error"].inc()
            return error_outcome(error)
        self._requests.get(status_class(response.status), self._requests["error"]).inc()
        return self._table.apply(self.adapter.classify(response))

    async def _exchange(self, request: VendorRequest) -> VendorResponse:
        """The HTTP round trip; aiohttp's errors become the relay's own here."""
        try:
            async with self._session.request(
                request.method, request.url, data=request.body, headers=request.headers
            ) as resp:
                body = await resp.read()
                return VendorResponse(resp.status, resp.headers, body)
        except TimeoutError as exc:
            raise VendorTimeout(f"no answer from {self.vendor}") from exc
        except aiohttp.ClientError as exc:
            raise VendorUnreachable(f"{type(exc).__name__}: {exc}") from exc

    async def _wait_for_breaker(self) -> None:
        breaker = self.breaker
        if breaker is None:
            return
        while not breaker.allow(self._monotonic()):
            self._show_breaker(breaker.state)
            await asyncio.sleep(min(1.0, max(0.05, breaker.retry_in_s(self._monotonic()))))
        self._show_breaker(breaker.state)

    def _show_breaker(self, state: BreakerState) -> None:
        """Update the gauge only on a change (this runs for every request)."""
        if state is not self._shown_state:
            self._shown_state = state
            self._breaker_gauge.set(state.gauge_value)

    async def _observe(self, outcome: Outcome, rtt_s: float) -> None:
        """Feed the breaker and the AIMD controller; turn a Retry-After into a vendor pause."""
        now_s = self._monotonic()
        if self.breaker is not None:
            self.breaker.record(not is_outage(outcome), now_s)
            self._show_breaker(self.breaker.state)
        if self._gate is not None:
            limit = self.concurrency.observe(rtt_s, is_overload(outcome), now_s, self._gate.active)
            if limit != self._gate.limit:
                self._gate.limit = limit
                self._limit_gauge.set(limit)
        if outcome.retry_after_s is not None and outcome.status in _VENDOR_WIDE_WAIT:
            await self._limiter.pause_until(self.vendor, self._clock() + outcome.retry_after_s)

    def retry_delay_s(self, outcome: Outcome, attempts: Attempts) -> float | None:
        """Seconds to wait before the next try, or None when the retry budget is spent."""
        breaker = self.breaker
        if outcome.retriable and breaker is not None and breaker.state is not BreakerState.CLOSED:
            # A vendor-wide outage: the record waits with the others instead of burning its budget.
            delay_s = backoff_s(
                attempts.count, self._retry.initial_backoff_s, self._retry.max_backoff_s, self._rng
            )
            return max(delay_s, outcome.retry_after_s or 0.0, breaker.retry_in_s(self._monotonic()))
        return retry_delay_s(
            outcome, attempts.count, attempts.first_at_s, self._clock(), self._retry, self._rng
        )


async def close_sessions(sessions: list[aiohttp.ClientSession]) -> None:
    """Close every vendor session."""
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
