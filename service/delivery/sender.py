"""The shared HTTP sender: one place that shows the order of the layers around a request.

    attempt:  request → classify          (foreign aiohttp errors translated here, once)
    retry:    backoff with full jitter, Retry-After honoured, max_attempts and max_elapsed_s
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import aiohttp
import msgspec

from service.core.retry import backoff_s
from service.errors import DeliveryError, VendorTimeout, VendorUnreachable
from service.metrics import Metrics
from service.vendors.base import (
    Adapter,
    Outcome,
    OutcomeKind,
    VendorBase,
    VendorRequest,
    VendorResponse,
)


class Attempts(msgspec.Struct, kw_only=True):
    """What happened so far to one record's delivery."""

    count: int = 0
    first_at_s: float = 0.0  # epoch seconds of the first attempt
    last_at_s: float = 0.0


def status_class(status: int) -> str:
    """`2xx`, `4xx`, ... for the HTTP request metric."""
    return f"{status // 100}xx"


def _error_outcome(error: DeliveryError) -> Outcome:
    reason = "timeout" if isinstance(error, VendorTimeout) else "unreachable"
    return Outcome(kind=OutcomeKind.RETRY, reason=reason, detail=str(error))


def new_session(config: VendorBase) -> aiohttp.ClientSession:
    """One pooled session per vendor: connections up to its concurrency, its own timeout."""
    connector = aiohttp.TCPConnector(limit=config.concurrency, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, raise_for_status=False)


class Sender:
    """Sends requests for one vendor and decides whether a failed one is tried again."""

    def __init__(
        self,
        vendor: str,
        adapter: Adapter,
        session: aiohttp.ClientSession,
        config: VendorBase,
        metrics: Metrics,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.vendor = vendor
        self.adapter = adapter
        self._session = session
        self._retry = config.retry
        self._rng = rng
        self._clock = clock
        self._requests = {c: metrics.http_requests.labels(vendor, c)
                          for c in ("2xx", "3xx", "4xx", "5xx", "error")}
        self._duration = metrics.request_duration.labels(vendor)

    async def attempt(self, request: VendorRequest, attempts: Attempts) -> Outcome:
        """One try: send the request and classify the answer."""
        now_s = self._clock()
        if attempts.count == 0:
            attempts.first_at_s = now_s
        attempts.count += 1
        attempts.last_at_s = now_s
        started = time.perf_counter()
        try:
            response = await self._exchange(request)
        except DeliveryError as error:
            self._requests["error"].inc()
            return _error_outcome(error)
        finally:
            self._duration.observe(time.perf_counter() - started)
        self._requests.get(status_class(response.status), self._requests["error"]).inc()
        return self.adapter.classify(response)

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

    def retry_delay_s(self, outcome: Outcome, attempts: Attempts) -> float | None:
        """Seconds to wait before the next try, or None when the retry budget is spent."""
        if not outcome.retriable or attempts.count >= self._retry.max_attempts:
            return None
        delay_s = backoff_s(
            attempts.count, self._retry.initial_backoff_s, self._retry.max_backoff_s, self._rng
        )
        if outcome.retry_after_s is not None:
            delay_s = max(delay_s, outcome.retry_after_s)
        if self._clock() + delay_s - attempts.first_at_s > self._retry.max_elapsed_s:
            return None
        return delay_s


async def close_sessions(sessions: list[aiohttp.ClientSession]) -> None:
    """Close every vendor session."""
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
