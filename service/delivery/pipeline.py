"""VendorPipeline: one vendor's consumer group, from fetched record to committed offset.

fetch (bounded in-flight: pause at the cap, resume under the low-water mark)
  → queue → N workers: decode → route → build → sender.attempt → classify
      delivered / skipped            → offset terminal
      rejected / exhausted / expired → dead letter acked → offset terminal
      retry                          → timer re-queues the record (no worker held)
commit loop: every interval, and on revocation, the lowest non-terminal offset per partition
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from service.config import PipelineConfig
from service.core.exchange import DecisionKind
from service.core.offsets import OffsetTracker
from service.core.routing import SKIP_REASONS, Expired, Skip, route_event
from service.delivery.dedup import DedupStore
from service.delivery.dlq import REASONS, DeadLetter, DeadLetterWriter, SourceRecord
from service.delivery.sender import Attempts, Sender
from service.errors import INVALID_KINDS, EventError, VendorInputError
from service.events import ConversionEvent, decode_event
from service.kafka import coordinator_known
from service.metrics import OUTCOMES, Metrics
from service.vendors.base import Outcome, OutcomeKind, VendorBase, VendorRequest

log = logging.getLogger("conversion_relay.pipeline")


class Work:
    """One fetched record on its way through the pipeline (kept across retries)."""

    __slots__ = ("attempts", "epoch", "event", "record", "request", "tp")

    def __init__(self, record: Any, tp: TopicPartition, epoch: int) -> None:
        self.record = record
        self.tp = tp
        self.epoch = epoch
        self.event: ConversionEvent | None = None
        self.request: VendorRequest | None = None
        self.attempts = Attempts()

    def source(self) -> SourceRecord:
        """The original record, for a dead letter (a replayed letter keeps its first source)."""
        r = self.record
        headers = list(r.headers or ())
        origin = dict(headers)
        try:
            return SourceRecord(
                origin["relay-source-topic"].decode(),
                int(origin["relay-source-partition"]),
                int(origin["relay-source-offset"]),
                r.key,
                r.value,
                headers,
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            return SourceRecord(r.topic, r.partition, r.offset, r.key, r.value, headers)

    def prior_attempts(self) -> int:
        """Attempts made before this record was dead-lettered and replayed (0 for new records)."""
        for key, value in self.record.headers or ():
            if key == "relay-attempts":
                try:
                    return int(value)
                except ValueError:
                    return 0
        return 0


def _at(epoch_s: float) -> datetime | None:
    return datetime.fromtimestamp(epoch_s, UTC) if epoch_s else None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forwards aiokafka's rebalance callbacks to the pipeline."""

    def __init__(self, pipeline: VendorPipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._pipeline.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._pipeline.on_assigned(set(assigned))


class VendorPipeline:
    """Delivers every record of the configured topics to one vendor, at least once."""

    def __init__(
        self,
        vendor: str,
        config: VendorBase,
        sender: Sender,
        dlq: DeadLetterWriter,
        consumer: Any,
        topics: list[str],
        settings: PipelineConfig,
        metrics: Metrics,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        accept: Callable[[Any], str | None] | None = None,
        dedup: DedupStore | None = None,
    ) -> None:
        self.vendor = vendor
        self._config = config
        self._adapter = sender.adapter
        self._goal_ids = config.goal_ids()
        self._sender = sender
        self._dlq = dlq
        self._consumer = consumer
        self._topics = topics
        self._settings = settings
        self._metrics = metrics
        self._now = now
        # Replay's filter: None to process a record, or the reason it is passed over.
        self._accept = accept
        self._dedup = dedup
        self._queue: asyncio.Queue[Work] = asyncio.Queue()
        self._trackers: dict[TopicPartition, OffsetTracker] = {}
        self._epochs: dict[TopicPartition, int] = {}
        self._next_epoch = itertools.count(1)
        self._active: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._lag: dict[TopicPartition, int] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._capacity = asyncio.Event()
        self._progress = asyncio.Event()  # set whenever a worker finishes a step
        self._stopping = asyncio.Event()
        self._paused = False
        self.joined = False
        self.last_error = ""
        # Create every label set up front, so the first increment shows in rate()/increase().
        self._outcomes = {o: metrics.deliveries.labels(vendor, o) for o in OUTCOMES}
        for reason in REASONS:
            metrics.dlq_writes.labels(vendor, reason)
        for kind in INVALID_KINDS:
            metrics.events_invalid.labels(vendor, kind)
        self._skips = {r: metrics.skipped.labels(vendor, r) for r in SKIP_REASONS}
        self._decoded = metrics.events_decoded.labels(vendor)
        metrics.rebalances.labels(vendor)
        metrics.assigned_partitions.labels(vendor)
        metrics.ratelimit_wait_seconds.labels(vendor)
        metrics.retry_after_pauses.labels(vendor)
        metrics.commits.labels(vendor)
        metrics.commit_failures.labels(vendor)
        metrics.dlq_write_failures.labels(vendor)
        self._in_flight_gauge = metrics.in_flight.labels(vendor)
        self._paused_gauge = metrics.paused.labels(vendor)
        self._delivered = self._outcomes["delivered"]
        self._retried = self._outcomes["retried"]
        self._e2e = metrics.end_to_end_latency.labels(vendor)

    # ---- state -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Joined its group, in touch with the group coordinator, and not shutting down."""
        return self.joined and not self._stopping.is_set() and coordinator_known(self._consumer)

    @property
    def sender(self) -> Sender:
        """The vendor's sender (breaker, concurrency, limiter state)."""
        return self._sender

    @property
    def paused(self) -> bool:
        """Whether fetching is paused (in-flight cap reached or breaker open)."""
        return self._paused

    @property
    def in_flight(self) -> int:
        """Records fetched and not yet terminal, over every assigned partition."""
        return sum(t.in_flight for t in self._trackers.values())

    async def group_committed(self) -> dict[TopicPartition, int]:
        """The group's committed offset per assigned partition (this run's or an earlier one's)."""
        result = dict(self._committed)
        for tp in self._epochs:
            if tp not in result:
                offset = await self._consumer.committed(tp)
                if offset is not None:
                    result[tp] = offset
        return result

    @property
    def assigned(self) -> list[TopicPartition]:
        """The partitions this pipeline owns now."""
        return sorted(self._epochs, key=lambda tp: (tp.topic, tp.partition))

    def stop(self) -> None:
        """Begin the drain: stop fetching, finish in-flight records, commit, leave the group."""
        self._stopping.set()
        self._capacity.set()

    # ---- main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until `stop()`, then drain within the grace period and leave the group."""
        self._consumer.subscribe(self._topics, listener=_Rebalance(self))
        await self._consumer.start()
        workers = [asyncio.create_task(self._worker()) for _ in range(self._config.concurrency)]
        helpers = [asyncio.create_task(self._commit_loop()), asyncio.create_task(self._lag_loop())]
        try:
            await self._fetch_loop()
        finally:
            self._stopping.set()
            await self._drain(workers, helpers)

    async def _fetch_loop(self) -> None:
        cap = self._settings.max_in_flight
        consumed = {t: self._metrics.events_consumed.labels(self.vendor, t) for t in self._topics}
        while not self._stopping.is_set():
            in_flight = self.in_flight
            self._in_flight_gauge.set(in_flight)
            if in_flight >= cap or self._sender.sending_blocked():
                # At the cap, or the vendor's breaker is open: events wait in Kafka.
                self._set_paused(True)
            elif self._paused and in_flight <= self._settings.low_water:
                self._set_paused(False)
            if self._paused:
                self._capacity.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._capacity.wait(), 0.2)
                continue
            batch = await self._consumer.getmany(timeout_ms=200, max_records=cap - in_flight)
            for tp, records in batch.items():
                self._dispatch(tp, records)
                counter = consumed.get(tp.topic)
                if counter is not None:
                    counter.inc(len(records))

    def _dispatch(self, tp: TopicPartition, records: list[Any]) -> None:
        epoch = self._epochs.get(tp)
        tracker = self._trackers.get(tp)
        if epoch is None or tracker is None:
            return  # fetched just before a revocation: the next owner reads them again
        for record in records:
            last = tracker.last_dispatched
            if last is not None and record.offset <= last:
                continue  # a re-fetch of a record already tracked
            tracker.dispatch(record.offset)
            self._queue.put_nowait(Work(record, tp, epoch))

    def _set_paused(self, paused: bool) -> None:
        if paused == self._paused:
            return
        self._paused = paused
        self._paused_gauge.set(1 if paused else 0)
        partitions = list(self._epochs)
        if paused:
            self._consumer.pause(*partitions)
        else:
            self._consumer.resume(*partitions)

    # ---- workers -----------------------------------------------------------------------------

    def _current(self, work: Work) -> bool:
        return self._epochs.get(work.tp) == work.epoch

    async def _worker(self) -> None:
        while True:
            work = await self._queue.get()
            if not self._current(work):
                continue  # its partition was revoked; the new owner delivers it
            self._active[work.tp] = self._active.get(work.tp, 0) + 1
            try:
                await self._process(work)
            except Exception as exc:  # a bug must neither kill the worker nor lose the record
                log.exception(
                    "unexpected error; the record is retried, then dead-lettered",
                    extra={"vendor": self.vendor, "offset": work.record.offset},
                )
                self.last_error = f"internal error: {exc!r}"[:300]
                await self._internal_error(work, exc)
            finally:
                self._active[work.tp] -= 1
                self._progress.set()

    async def _process(self, work: Work) -> None:
        if work.request is None:
            request = await self._prepare(work)
            if request is None:
                return
            work.request = request
        decision = await self._sender.deliver(
            work.request, work.attempts, lambda: self._current(work)
        )
        outcome = decision.outcome
        if decision.kind is DecisionKind.ABANDONED or outcome is None:
            return  # its partition was revoked while it waited; the new owner delivers it
        if decision.kind is DecisionKind.DELIVERED:
            self._delivered.inc()
            event = work.event
            if event is not None:
                self._e2e.observe(max(0.0, (self._now() - event.occurred_at).total_seconds()))
                if self._dedup is not None:
                    await self._dedup.mark(self.vendor, event.event_id)
            self._complete(work)
            return
        self.last_error = f"{outcome.reason}: {outcome.detail}"[:300]
        if decision.kind is DecisionKind.DEAD_LETTER:
            await self._dead_letter(work, decision.dlq_reason, outcome)
            return
        self._retried.inc()
        self._schedule(work, decision.delay_s)

    async def _internal_error(self, work: Work, exc: Exception) -> None:
        """Retry the record like a transient failure; past its budget, dead-letter it."""
        outcome = Outcome(kind=OutcomeKind.RETRY, reason="internal_error", detail=repr(exc))
        attempts = work.attempts
        attempts.count += 1  # the failure spends an attempt, so a lasting bug ends in the DLQ
        attempts.last_at_s = datetime.now(UTC).timestamp()
        attempts.first_at_s = attempts.first_at_s or attempts.last_at_s
        delay_s = self._sender.retry_delay_s(outcome, work.attempts)
        if delay_s is None:
            await self._dead_letter(work, "retries_exhausted", outcome)
        else:
            self._schedule(work, delay_s)

    async def _prepare(self, work: Work) -> VendorRequest | None:
        """Decode, route and build; None when the record became terminal on the way."""
        record = work.record
        if self._accept is not None:
            passed_over = self._accept(record)
            if passed_over is not None:
                self._metrics.skipped.labels(self.vendor, passed_over).inc()
                self._complete(work)
                return None
        if record.value is not None and len(record.value) > self._settings.max_record_bytes:
            error = EventError(
                f"record of {len(record.value)} bytes exceeds max_record_bytes", kind="too_large"
            )
            await self._invalid(work, error)
            return None
        try:
            event = decode_event(record.value)
        except EventError as error:
            await self._invalid(work, error)
            return None
        self._decoded.inc()
        work.event = event
        decision = route_event(
            event,
            self.vendor,
            self._goal_ids,
            self._adapter.missing_identity(event),
            self._config.max_event_age_s,
            self._now(),
        )
        if isinstance(decision, Skip):
            self._skips[decision.reason].inc()
            self._outcomes["skipped"].inc()
            self._complete(work)
            return None
        if isinstance(decision, Expired):
            error_text = f"event is {decision.age_s:.0f}s old, over max_event_age_s"
            await self._write_dead_letter(work, "expired", error_text, None)
            self._outcomes["expired"].inc()
            return None
        if self._dedup is not None and await self._dedup.seen(self.vendor, event.event_id):
            # Delivered before (a rebalance, crash or replay brought it back): not again.
            self._outcomes["deduplicated"].inc()
            self._complete(work)
            return None
        try:
            return self._adapter.build(event, decision)
        except VendorInputError as error:
            self.last_error = str(error)[:300]
            await self._dead_letter(work, "rejected", None, str(error))
            return None

    def _schedule(self, work: Work, delay_s: float) -> None:
        loop = asyncio.get_running_loop()

        def requeue() -> None:
            self._timers.discard(handle)
            self._queue.put_nowait(work)

        handle = loop.call_later(delay_s, requeue)
        self._timers.add(handle)

    def _complete(self, work: Work) -> None:
        if not self._current(work):
            return  # finished after its partition moved on; the new owner tracks it
        self._trackers[work.tp].complete(work.record.offset)
        if self._paused:
            self._capacity.set()

    async def _invalid(self, work: Work, error: EventError) -> None:
        self._metrics.events_invalid.labels(self.vendor, error.kind).inc()
        log.warning(
            "invalid event: %s",
            error,
            extra={
                "vendor": self.vendor,
                "topic": work.tp.topic,
                "partition": work.tp.partition,
                "offset": work.record.offset,
            },
        )
        await self._write_dead_letter(work, "invalid_event", str(error), None)

    async def _dead_letter(
        self, work: Work, reason: str, outcome: Outcome | None, error: str = ""
    ) -> None:
        outcome_text = f"{outcome.reason}: {outcome.detail}".strip(": ") if outcome else ""
        status = outcome.status if outcome else None
        outcome_label = "rejected" if reason == "rejected" else "dead_lettered"
        self._outcomes[outcome_label].inc()
        await self._write_dead_letter(work, reason, error or outcome_text, status)

    async def _write_dead_letter(
        self, work: Work, reason: str, error: str, status: int | None
    ) -> None:
        letter = DeadLetter(
            vendor=self.vendor,
            reason=reason,
            error=error,
            source=work.source(),
            http_status=status,
            attempts=work.prior_attempts() + work.attempts.count,
            first_attempt_at=_at(work.attempts.first_at_s),
            last_attempt_at=_at(work.attempts.last_at_s),
        )
        await self._dlq.write(letter)
        log.info(
            "dead-lettered",
            extra={
                "vendor": self.vendor,
                "reason": reason,
                "status": status,
                "event_id": work.event.event_id if work.event else None,
                "attempt": work.attempts.count,
            },
        )
        self._complete(work)

    # ---- commits and rebalances --------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.commit_interval_s)
            await self.commit()

    async def commit(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Commit the commit point of each (given) partition that moved since the last commit."""
        offsets = {}
        for tp in self._trackers if partitions is None else partitions:
            tracker = self._trackers.get(tp)
            point = tracker.commit_point() if tracker is not None else None
            if point is not None and point > self._committed.get(tp, -1):
                offsets[tp] = point
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            self._metrics.commit_failures.labels(self.vendor).inc()
            log.warning("commit failed: %r", exc, extra={"vendor": self.vendor})
            return
        self._committed.update(offsets)
        self._metrics.commits.labels(self.vendor).inc()

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Wait (bounded) for started deliveries of revoked partitions, commit, forget them."""
        revoked &= set(self._epochs)
        await self._wait_until(
            lambda: not any(self._active.get(tp, 0) for tp in revoked),
            self._settings.revoke_timeout_s,
        )
        await self.commit(revoked)
        for tp in revoked:
            self._epochs.pop(tp, None)
            self._trackers.pop(tp, None)
            self._committed.pop(tp, None)
            self._lag.pop(tp, None)
            with contextlib.suppress(KeyError):  # never had a lag sample
                self._metrics.consumer_lag.remove(self.vendor, tp.topic, str(tp.partition))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start tracking newly assigned partitions (a new epoch each)."""
        for tp in assigned:
            self._epochs[tp] = next(self._next_epoch)
            self._trackers[tp] = OffsetTracker()
            self._committed.pop(tp, None)
        if self._paused and assigned:
            self._consumer.pause(*assigned)
        self.joined = True
        self._metrics.rebalances.labels(self.vendor).inc()
        self._metrics.assigned_partitions.labels(self.vendor).set(len(self._epochs))
        log.info(
            "partitions assigned: %s",
            sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
            extra={"vendor": self.vendor},
        )

    async def _lag_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.lag_interval_s)
            await self.update_lag()

    async def update_lag(self) -> None:
        """Set the lag gauge: end offset minus committed offset, per assigned partition."""
        partitions = self.assigned
        if not partitions:
            return
        try:
            listed = await self._consumer.end_offsets(partitions)
        except KafkaError as exc:
            log.debug("end offsets unavailable: %r", exc)
            return
        for tp, listed_end in listed.items():
            # Tansu's ListOffsets undercounts batched partitions; the last fetch's high
            # watermark does not (it only goes stale while the partition is paused).
            end = max(listed_end, self._consumer.highwater(tp) or 0)
            committed = self._committed.get(tp)
            if committed is None:
                committed = await self._consumer.committed(tp) or 0
            self._lag[tp] = max(0, end - committed)
            self._metrics.consumer_lag.labels(self.vendor, tp.topic, str(tp.partition)).set(
                self._lag[tp]
            )

    def lag(self) -> int:
        """Total lag over this pipeline's partitions, as of the last lag update."""
        return sum(self._lag.get(tp, 0) for tp in self._epochs)

    async def _wait_until(self, condition: Callable[[], bool], timeout_s: float) -> None:
        """Wait for a condition re-checked whenever a record finishes, at most timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not condition():
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                return
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), min(remaining_s, 0.5))

    # ---- shutdown ----------------------------------------------------------------------------

    async def _drain(
        self, workers: list[asyncio.Task[None]], helpers: list[asyncio.Task[None]]
    ) -> None:
        await self._wait_until(lambda: not self.in_flight, self._settings.shutdown_grace_s)
        if self.in_flight:
            log.warning(
                "grace period over with %d records in flight; they will be redelivered",
                self.in_flight,
                extra={"vendor": self.vendor},
            )
        for handle in self._timers:
            handle.cancel()
        for task in (*workers, *helpers):
            task.cancel()
        await asyncio.gather(*workers, *helpers, return_exceptions=True)
        await self.commit()
        await self._consumer.stop()
        self.joined = False
