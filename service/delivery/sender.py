"""The sender: the delivery layers of one vendor, composed in one place (`Sender.deliver`).

Outermost first, each a small object tested alone:

    breaker        wait while the vendor's circuit is open (one jittered probe per interval)
    pause          sit out a vendor-wide Retry-After pause (bounded, floored: at least the base
                   backoff, doubling while the vendor keeps throttling), outside the gate
    gate           adaptive (AIMD) concurrency gate; fed the true in-flight count
    rate token     the vendor's rate limit (shared over Redis if set), taken inside the gate
                   so requests queued at the gate do not burst out together
    transport      one prepared request out, a bounded answer back (`Transport`)
    classify       the adapter's reading; a 3xx is a redirect never followed, never delivered;
                   Retry-After bounded by max_retry_after_s, an unparseable one noted and ignored
    overrides      this vendor's `status_actions`
    retry policy   delivered / dead letter / retry after a delay; time spent waiting for the
                   vendor (open breaker, Retry-After pause) is never charged to the record

The pipeline (dedup before, DLQ after) calls only `deliver`; it also reads `sending_blocked()`,
`breaker_state`, `concurrency.limit` and `adapter`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

import msgspec
import yarl

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
from service.core.retry import (
    RetryConfig,
    StatusTable,
    ThrottleBackoff,
    backoff_s,
    bounded_retry_after,
    error_outcome,
    retry_delay_s,
)
from service.delivery.ratelimit import RateLimiter
from service.delivery.transport import Transport, close_sessions, new_session
from service.errors import DeliveryError
from service.logs import redact
from service.metrics import Metrics
from service.vendors.base import Adapter, VendorBase

__all__ = [
    "Attempts",
    "BreakerLayer",
    "ConcurrencyGate",
    "PauseLayer",
    "RetryPolicy",
    "Sender",
    "close_sessions",
    "new_session",
    "status_class",
]

log = logging.getLogger("conversion_relay.sender")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Statuses whose Retry-After pauses the whole vendor, not just the one record.
VENDOR_WIDE_WAIT = frozenset({429, 503})


def _always() -> bool:
    return True


_ABANDONED = Decision(kind=DecisionKind.ABANDONED)


class Attempts(msgspec.Struct, gc=False, kw_only=True):
    """What happened so far to one record's delivery."""

    count: int = 0
    first_at_s: float = 0.0  # epoch seconds of the first attempt
    last_at_s: float = 0.0
    # Waiting for the vendor (open breaker, Retry-After pause) is not the record's fault:
    # neither this time nor these attempts are charged to its retry budget.
    excused_s: float = 0.0
    excused_count: int = 0


def status_class(status: int) -> str:
    """`2xx`, `4xx`, ... for the HTTP request metric."""
    return f"{status // 100}xx"


# ---- breaker -----------------------------------------------------------------------------------


class BreakerLayer:
    """Holds requests while the breaker is open; logs one warning when it opens, one when it
    closes (with the outage's length and how many events waited)."""

    def __init__(
        self,
        vendor: str,
        breaker: CircuitBreaker | None,
        on_state: Callable[[BreakerState], None],
        monotonic: Clock,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.vendor = vendor
        self.breaker = breaker
        self._on_state = on_state
        self._monotonic = monotonic
        self._sleep = sleep
        self._shown = BreakerState.CLOSED
        self._waited: set[int] = set()  # ids of the records held during this outage

    @property
    def state(self) -> BreakerState:
        """The breaker's state (CLOSED when there is no breaker)."""
        return self.breaker.state if self.breaker is not None else BreakerState.CLOSED

    def blocked(self) -> bool:
        """Whether a request would have to wait now."""
        breaker = self.breaker
        return breaker is not None and breaker.retry_in_s(self._monotonic()) > 0

    async def wait(self, attempts: Attempts) -> float:
        """Wait until the breaker lets this request through; return the seconds waited."""
        breaker = self.breaker
        if breaker is None:
            return 0.0
        started_s = self._monotonic()
        while not breaker.allow(self._monotonic()):
            self._waited.add(id(attempts))
            self._sync()
            # Until the next probe may go (at most one interval): the probe itself is the first
            # delivery once the vendor is back, so waking later costs the others < 1 interval.
            delay_s = min(breaker.config.probe_interval_s, breaker.retry_in_s(self._monotonic()))
            await self._sleep(max(0.01, delay_s))
        self._sync()
        return self._monotonic() - started_s

    def record(self, outcome: Outcome, sent_at_s: float, attempts: Attempts) -> None:
        """Feed the breaker one fresh answer (it ignores answers older than its state)."""
        breaker = self.breaker
        if breaker is None:
            return
        breaker.record(not is_outage(outcome), self._monotonic(), sent_at_s)
        state = breaker.state
        if state is BreakerState.CLOSED and self._shown is BreakerState.CLOSED:
            return  # the common case: nothing changed, nothing waited
        if state is not BreakerState.CLOSED and outcome.retriable:
            self._waited.add(id(attempts))
        self._sync()

    def _sync(self) -> None:
        """Publish a change of state: gauge and log."""
        state = self.state
        if state is self._shown:
            return
        was = self._shown
        self._shown = state
        self._on_state(state)
        breaker = self.breaker
        if breaker is None:
            return
        if was is BreakerState.CLOSED:
            log.warning(
                "vendor %s is failing: breaker open, sending only a probe every ~%gs",
                self.vendor,
                breaker.config.probe_interval_s,
                extra={"vendor": self.vendor, "breaker": state.value},
            )
        elif state is BreakerState.CLOSED:
            started_s = breaker.outage_started_s
            outage_s = self._monotonic() - started_s if started_s is not None else 0.0
            log.warning(
                "vendor %s is back: breaker closed after %.1fs; %d events waited",
                self.vendor,
                outage_s,
                len(self._waited),
                extra={"vendor": self.vendor, "breaker": state.value},
            )
            self._waited.clear()


# ---- limiter pause -----------------------------------------------------------------------------


class PauseLayer:
    """Holds requests during a vendor-wide Retry-After pause (before they take a gate slot), and
    turns a 429/503's Retry-After into such a pause, floored by the vendor's throttle streak
    (`ThrottleBackoff`: `Retry-After: 0` is a short pause, doubling while the vendor keeps
    throttling); one warning per pause start."""

    def __init__(
        self,
        vendor: str,
        limiter: RateLimiter,
        throttle: ThrottleBackoff,
        clock: Clock,
        monotonic: Clock,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.vendor = vendor
        self.throttle = throttle
        self._limiter = limiter
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep

    async def wait(self) -> float:
        """Sit out the pause this process knows of; return the seconds waited."""
        waited_s = 0.0
        while (left_s := self._limiter.pause_left_s(self.vendor)) > 0:
            await self._sleep(left_s)
            waited_s += left_s
        return waited_s

    @staticmethod
    def is_vendor_wide(outcome: Outcome) -> bool:
        """Whether the outcome pauses the whole vendor (429/503 with a usable Retry-After)."""
        return outcome.retry_after_s is not None and outcome.status in VENDOR_WIDE_WAIT

    async def after(self, outcome: Outcome, sent_at_s: float) -> None:
        """Pause the vendor when the answer (to a request sent at monotonic `sent_at_s`) asks it
        to: its Retry-After (already bounded), at least the throttle streak's floor."""
        if not self.is_vendor_wide(outcome) or outcome.retry_after_s is None:
            return
        pause_s = self.throttle.pause_s(outcome.retry_after_s, sent_at_s, self._monotonic())
        if pause_s <= 0:
            return  # an answer the current pause already covers, asking for no more
        was_paused = self._limiter.pause_left_s(self.vendor) > 0
        await self._limiter.pause_until(self.vendor, self._clock() + pause_s)
        if not was_paused and self._limiter.pause_left_s(self.vendor) > 0:
            log.warning(
                "vendor %s asked to wait: every request paused %.1fs (HTTP %s, Retry-After %gs)",
                self.vendor,
                pause_s,
                outcome.status,
                outcome.retry_after_s,
                extra={"vendor": self.vendor, "status": outcome.status},
            )


# ---- concurrency gate --------------------------------------------------------------------------


class ConcurrencyGate:
    """A semaphore whose limit the AIMD controller moves: `enter()` / `leave()` hold one place.

    Off (fixed concurrency), it only counts: the pipeline's workers already bound the requests
    in flight, so entering never waits and costs no await.
    """

    def __init__(
        self,
        controller: AdaptiveConcurrency,
        on_limit: Callable[[int], None],
        monotonic: Clock,
    ) -> None:
        self.controller = controller
        self.enabled = controller.config.adaptive
        self.active = 0
        self._on_limit = on_limit
        self._monotonic = monotonic
        self._freed = asyncio.Event()

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return self.controller.limit

    def must_wait(self) -> bool:
        """Whether `enter()` would wait now."""
        return self.enabled and self.active >= self.controller.limit

    async def enter(self) -> None:
        """Take a place, waiting while the gate is full."""
        while self.enabled and self.active >= self.controller.limit:
            self._freed.clear()
            await self._freed.wait()
        self.active += 1

    def leave(self) -> None:
        """Give the place back."""
        self.active -= 1
        if self.enabled:
            self._freed.set()

    def observe(self, rtt_s: float, overloaded: bool) -> None:
        """Feed the controller a round trip while its place is still held."""
        if not self.enabled:
            return
        # In flight as it was while this request was out: itself included, before release.
        before = self.controller.limit
        limit = self.controller.observe(rtt_s, overloaded, self._monotonic(), self.active)
        if limit != before:
            self._on_limit(limit)
            self._freed.set()  # a raised limit lets waiters in now


# ---- classify and overrides --------------------------------------------------------------------


def redirect_outcome(
    response: VendorResponse, request: VendorRequest, table: StatusTable
) -> Outcome:
    """A 3xx: never followed, never delivered; the table says retry or reject (default)."""
    location = response.headers.get("Location", "")
    try:
        host = yarl.URL(location).host or yarl.URL(request.url).host or "?"
    except ValueError:
        host = "?"
    kind = table.action(response.status)
    return Outcome(
        kind=OutcomeKind.REJECT if kind is OutcomeKind.DELIVERED else kind,
        reason="redirect",
        detail=redact(f"HTTP {response.status} redirect to {host} not followed"),
        status=response.status,
    )


def bound_retry_after(outcome: Outcome, response: VendorResponse, max_s: float) -> Outcome:
    """The outcome with its Retry-After cut to `max_s`, or dropped (with a note) if unusable."""
    if not outcome.retriable:
        return outcome  # (delivered answers' headers are never read)
    header = response.headers.get("Retry-After")
    if header is None:
        return outcome
    wait_s, note = bounded_retry_after(header, outcome.retry_after_s, max_s)
    if not note:
        return outcome
    detail = f"{outcome.detail} ({note})" if outcome.detail else note
    return msgspec.structs.replace(outcome, retry_after_s=wait_s, detail=redact(detail))


# ---- retry policy ------------------------------------------------------------------------------


class RetryPolicy:
    """Delivered, dead letter or retry: the budget is time, and waiting for the vendor is free."""

    def __init__(self, config: RetryConfig, rng: Callable[[], float], clock: Clock) -> None:
        self.config = config
        self._rng = rng
        self._clock = clock

    def decide(self, outcome: Outcome, attempts: Attempts, vendor_wait_s: float | None) -> Decision:
        """The decision after one try; `vendor_wait_s` is set when the vendor as a whole asked
        to wait (open breaker, Retry-After pause): then the try is not charged."""
        if outcome.kind is OutcomeKind.DELIVERED:
            return Decision(kind=DecisionKind.DELIVERED, outcome=outcome)
        if outcome.kind is OutcomeKind.REJECT:
            return Decision(kind=DecisionKind.DEAD_LETTER, outcome=outcome, dlq_reason="rejected")
        delay_s = self.delay_s(outcome, attempts, vendor_wait_s)
        if delay_s is None:
            return Decision(
                kind=DecisionKind.DEAD_LETTER, outcome=outcome, dlq_reason="retries_exhausted"
            )
        return Decision(kind=DecisionKind.RETRY, outcome=outcome, delay_s=delay_s)

    def delay_s(
        self, outcome: Outcome, attempts: Attempts, vendor_wait_s: float | None
    ) -> float | None:
        """Seconds before the next try, or None when the record's budget is spent."""
        cfg = self.config
        if outcome.retriable and vendor_wait_s is not None:
            delay_s = backoff_s(
                attempts.count - attempts.excused_count,
                cfg.initial_backoff_s,
                cfg.max_backoff_s,
                self._rng,
            )
            delay_s = max(delay_s, vendor_wait_s)
            attempts.excused_count += 1
            attempts.excused_s += delay_s
            return delay_s
        return retry_delay_s(
            outcome,
            attempts.count - attempts.excused_count,
            attempts.first_at_s,
            self._clock(),
            cfg,
            self._rng,
            attempts.excused_s,
        )


# ---- the sender --------------------------------------------------------------------------------


class Sender:
    """Sends requests for one vendor through its layers and decides what happens next."""

    def __init__(
        self,
        vendor: str,
        adapter: Adapter,
        transport: Transport,
        config: VendorBase,
        metrics: Metrics,
        limiter: RateLimiter,
        rng: Callable[[], float] = random.random,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.vendor = vendor
        self.adapter = adapter
        self.parked = 0  # deliveries waiting to be sent (breaker, pause, gate, rate limit)
        self._transport = transport
        self._config = config
        self._limiter = limiter
        self._table = StatusTable(config.status_actions)
        self._clock = clock
        self._monotonic = monotonic
        self._max_retry_after_s = config.retry.max_retry_after_s
        self._breaker_gauge = metrics.breaker_state.labels(vendor)
        self._breaker_gauge.set(0)
        self._limit_gauge = metrics.concurrency_limit.labels(vendor)
        self.breaker = CircuitBreaker(config.breaker, rng) if config.breaker.enabled else None
        self.concurrency = AdaptiveConcurrency(
            ConcurrencyConfig(max=config.concurrency, adaptive=config.adaptive_concurrency),
            monotonic(),
        )
        self._limit_gauge.set(self.concurrency.limit)
        # The layers, outermost first (composed in `deliver`).
        self._breaker_layer = BreakerLayer(
            vendor,
            self.breaker,
            lambda s: self._breaker_gauge.set(s.gauge_value),
            monotonic,
            sleep,
        )
        self._pause = PauseLayer(
            vendor, limiter, ThrottleBackoff(config.retry, rng), clock, monotonic, sleep
        )
        self._gate = ConcurrencyGate(self.concurrency, self._limit_gauge.set, monotonic)
        self._retry = RetryPolicy(config.retry, rng, clock)
        # Bound once; counted in plain numbers, handed to prometheus on every scrape.
        requests = {
            c: metrics.batched_counter(metrics.http_requests.labels(vendor, c))
            for c in ("2xx", "3xx", "4xx", "5xx", "error")
        }
        self._request_errors = requests["error"]
        # By status // 100; a 1xx final answer is no HTTP a vendor should give: an error.
        self._by_class = [requests["error"], requests["error"]]
        self._by_class += [requests[f"{n}xx"] for n in range(2, 6)]
        self._duration = metrics.batched_histogram(metrics.request_duration.labels(vendor))
        self._limited = limiter.limited(vendor)
        deprecated = config.breaker.deprecated_fields
        if deprecated:
            log.warning(
                "vendor %s: breaker %s no longer used (the breaker probes every "
                "probe_interval_s); remove them from the config",
                vendor,
                ", ".join(deprecated),
                extra={"vendor": vendor},
            )

    @property
    def breaker_state(self) -> str:
        """closed | half_open | open, for /status."""
        return self.breaker.state.value if self.breaker is not None else "disabled"

    def sending_blocked(self) -> bool:
        """Whether the breaker forbids requests right now (the pipeline pauses fetching then)."""
        return self._breaker_layer.blocked()

    async def deliver(
        self, request: VendorRequest, attempts: Attempts, current: Callable[[], bool] = _always
    ) -> Decision:
        """One try through every layer, outermost first, and what the pipeline does next:
        delivered, dead letter, retry later, or abandoned when `current()` turns false before
        the request leaves (its partition was revoked: nothing is sent).

        Each layer is awaited only when it holds the request (open breaker, pause, full gate,
        rate limit): on the happy path the only await is the exchange itself."""
        breaker = self.breaker
        vendor_wait_s = 0.0
        waited = False  # a pause may start while a request waits: then look again below
        # Parked until the request leaves: a stop does not wait for what waits on the breaker,
        # a pause, the gate or the rate limit (nothing of it is on the wire); it cancels it.
        self.parked += 1
        parked = True
        try:
            if breaker is not None and breaker.state is not BreakerState.CLOSED:
                vendor_wait_s = await self._breaker_layer.wait(attempts)  # breaker
                waited = True
            limiter = self._limiter
            paused = limiter.pause_left_s(self.vendor) > 0
            if paused:
                vendor_wait_s += await self._pause.wait()  # limiter pause (Retry-After, bounded)
                waited = True
            gate = self._gate
            if gate.must_wait():
                await gate.enter()  # concurrency gate (AIMD)
                waited = True
            else:
                gate.active += 1
            try:
                if waited:
                    paused = limiter.pause_left_s(self.vendor) > 0
                if self._limited or paused:
                    await limiter.acquire(self.vendor)  # rate token, inside the gate
                if vendor_wait_s:
                    attempts.excused_s += vendor_wait_s
                if not current():
                    return _ABANDONED
                self.parked -= 1
                parked = False
                self._count_attempt(attempts)
                sent_at_s = self._monotonic()
                started_s = time.perf_counter()  # the real round trip, whatever clock is injected
                try:
                    answer: VendorResponse | DeliveryError = await self._transport.send(request)
                except DeliveryError as error:  # transport
                    # Without its traceback: kept in this frame, it would hold the frame (and
                    # the request) in a cycle only the collector frees.
                    answer = error.with_traceback(None)
                rtt_s = time.perf_counter() - started_s
                self._duration.observe(rtt_s)
                outcome = self._classify(request, answer)  # classify + status overrides
                if gate.enabled:
                    gate.observe(rtt_s, is_overload(outcome))
            finally:
                gate.leave()
        finally:
            if parked:
                self.parked -= 1
        if breaker is not None:
            self._breaker_layer.record(outcome, sent_at_s, attempts)
        if outcome.kind is OutcomeKind.DELIVERED:
            if self._pause.throttle.throttles:
                self._pause.throttle.delivered(sent_at_s)  # the vendor takes requests again
            return self._retry.decide(outcome, attempts, None)
        if outcome.retry_after_s is not None:
            await self._pause.after(outcome, sent_at_s)
        return self._retry.decide(outcome, attempts, self._vendor_wait_s(outcome))  # retry

    def retry_delay_s(self, outcome: Outcome, attempts: Attempts) -> float | None:
        """Seconds to wait before the next try, or None when the retry budget is spent."""
        return self._retry.delay_s(outcome, attempts, self._vendor_wait_s(outcome))

    def _vendor_wait_s(self, outcome: Outcome) -> float | None:
        """How long the vendor as a whole asks everyone to wait, or None if it does not."""
        waits: list[float] = []
        breaker = self.breaker
        if breaker is not None and breaker.state is not BreakerState.CLOSED:
            waits.append(breaker.retry_in_s(self._monotonic()))
        if self._pause.is_vendor_wide(outcome):
            waits.append(max(outcome.retry_after_s or 0.0, self._limiter.pause_left_s(self.vendor)))
        return max(waits) if waits else None

    def _count_attempt(self, attempts: Attempts) -> None:
        now_s = self._clock()
        if attempts.count == 0:
            attempts.first_at_s = now_s
        attempts.count += 1
        attempts.last_at_s = now_s

    def _classify(self, request: VendorRequest, answer: VendorResponse | DeliveryError) -> Outcome:
        """The answer's meaning: adapter (or redirect), bounded Retry-After, status overrides."""
        if isinstance(answer, DeliveryError):
            self._request_errors.inc()
            return error_outcome(answer)
        status = answer.status
        by_class = self._by_class
        (by_class[status // 100] if 0 <= status < 600 else self._request_errors).inc()
        if 300 <= status < 400:
            return redirect_outcome(answer, request, self._table)
        outcome = self.adapter.classify(answer)
        outcome = bound_retry_after(outcome, answer, self._max_retry_after_s)
        return self._table.apply(outcome) if self._table.overrides else outcome
