"""VendorPipeline: one vendor's consumer group, from fetched record to committed offset.

fetch (always polling; FlowControl pauses partitions by window, records and bytes)
  → queue → N workers: RecordPath stages (read → decode → route → dedup → build) → Sender.deliver
      delivered / skipped                     → offset terminal
      dead letter (rejected, exhausted, ...)  → dead letter acked → offset terminal
      retry                                   → timer re-queues the record (no worker held)
commits: as soon as a partition's progress (PartitionWindow, core/) changes, coalesced over
`commit_coalesce_s`, and on revocation: the commit point, and with it (ProgressStore) the offsets
completed above it and the retry clocks of records waiting to be tried again, read back on the
next assignment so a restart or a rebalance repeats nothing finished and keeps retry budgets.
stop: nothing new starts (queued and retry-waiting records stay in Kafka, their clocks kept);
deliveries already started finish within the grace. TaskSupervisor keeps the tasks alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, RecordTooLargeError

from service.config import PipelineConfig
from service.core import records
from service.core.exchange import Decision, DecisionKind, VendorRequest
from service.core.inputs import Input
from service.core.progress import Progress, encode
from service.core.registry import SchemaPending
from service.core.retry import backoff_s, should_retry
from service.core.routing import SKIP_REASONS
from service.core.window import PartitionWindow
from service.delivery.dedup import DedupStore, MemoryDedupStore
from service.delivery.dlq import REASONS, DeadLetter, SourceRecord, parse_headers
from service.delivery.flow import FlowControl
from service.delivery.sender import Attempts, Sender
from service.delivery.stages import TOMBSTONE, RecordPath, Terminal
from service.delivery.supervisor import TaskSupervisor
from service.delivery.tracing import VendorTracer
from service.errors import INVALID_KINDS
from service.kafka import coordinator_known
from service.logs import redact
from service.metrics import OUTCOMES, Metrics
from service.vendors.base import Outcome, OutcomeKind, VendorBase

log = logging.getLogger("conversion_relay.pipeline")
_WARNED_BEFORE = frozenset({"invalid_event", "unreadable_record", "unknown_schema", "undecodable"})
# A fetch task that dies this many times in a row ends the pipeline (its owner starts a fresh
# consumer, as after the broker vanished).
_FETCH_ESCALATE_AFTER = 5
# How long one `getmany` waits for records (it returns as soon as the fetcher has some).
POLL_TIMEOUT_MS = 200
# How long a record whose dead letter could not be written (a bug) waits before trying again.
_INTERNAL_RETRY_S = 5.0


class Consumer(Protocol):
    """The part of aiokafka's AIOKafkaConsumer a pipeline uses (tests pass a fake)."""

    def subscribe(self, topics: list[str], listener: Any) -> None:
        """Join the group for these topics."""

    async def start(self) -> None:
        """Connect."""

    async def stop(self) -> None:
        """Leave the group and disconnect."""

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        """Fetched records per partition (none for paused partitions)."""
        ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit the group's offsets."""

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of a partition."""
        ...

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The end offset of each partition."""
        ...

    def highwater(self, tp: TopicPartition) -> int | None:
        """The last fetch's high watermark."""
        ...

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop fetching these partitions."""

    def resume(self, *partitions: TopicPartition) -> None:
        """Fetch these partitions again."""

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Fetch this partition from `offset` next (an operator's reset)."""


Restored = tuple[int | None, Progress | None]  # (committed offset, progress seen from it)


class ProgressStore(Protocol):
    """Where a group's commits and the progress above them go (service.delivery.progress)."""

    @property
    def max_chars(self) -> int:
        """Longest progress text one commit carries."""
        ...

    async def save(self, entries: dict[TopicPartition, tuple[int, str]]) -> None:
        """Commit each partition's offset with its progress text."""

    async def load(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, Restored]:
        """Each partition's committed offset and the progress kept above it."""
        ...


class DeadLetters(Protocol):
    """The part of the DeadLetterWriter a pipeline uses."""

    @property
    def topic(self) -> str:
        """The DLQ topic (records read from it carry trusted relay-* headers)."""
        ...

    async def write(self, letter: DeadLetter) -> None:
        """Write one letter; returns once acknowledged."""


def _size(record: Any) -> int:
    """Bytes a fetched record holds in memory (key, value, headers)."""
    key, value, headers = record.key, record.value, record.headers
    size = (len(key) if key else 0) + (len(value) if value else 0)
    if headers:
        for name, header in headers:
            size += len(name or b"") + len(header or b"")
    return size


class Work(Attempts, gc=False, kw_only=True):
    """One fetched record on its way through the pipeline, with its attempts (kept across
    retries); a struct built in C and left out of the collector (it is in no cycle)."""

    record: Any
    tp: TopicPartition
    epoch: int
    window: PartitionWindow
    windows: dict[TopicPartition, PartitionWindow]
    # What its completion needs of the decoded event, kept instead of the event: the event is
    # dropped once its request is built, not held through the exchange (a request in flight
    # holds less memory, and the next decode reuses the event's, still in cache).
    event_id: str | None = None
    occurred_s: float = 0.0
    request: VendorRequest | None = None
    span: Any = None  # its delivery's trace span across retries (`tracing.enabled` only)

    def is_current(self) -> bool:
        """Whether its partition is still assigned as when it was fetched (same epoch), and the
        pipeline is not stopping (then a request not yet sent is not sent)."""
        window = self.window
        return self.windows.get(self.tp) is window and not window.closing


class WorkQueue:
    """The workers' FIFO: `put` never waits, and a worker awaits `get` only when it is empty
    (workers pop `items` directly otherwise: no coroutine per record)."""

    __slots__ = ("_waiters", "items")

    def __init__(self) -> None:
        self.items: deque[Work] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self.items)

    def put(self, work: Work) -> None:
        """Append a record and wake one waiting worker."""
        self.items.append(work)
        self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def get(self) -> Work:
        """The oldest record, waiting while there is none."""
        items = self.items
        while not items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                if items and not waiter.cancelled():
                    self._wake()  # this worker was woken and leaves: wake another one
                raise
        return items.popleft()


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _at(epoch_s: float) -> datetime | None:
    return datetime.fromtimestamp(epoch_s, UTC) if epoch_s else None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forwards aiokafka's rebalance callbacks to the pipeline."""

    def __init__(self, pipeline: VendorPipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._pipeline.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._pipeline.on_assigned(set(assigned))


class VendorPipeline:
    """Delivers every record of the configured topics to one vendor, at least once."""

    def __init__(
        self,
        vendor: str,
        config: VendorBase,
        sender: Sender,
        dlq: DeadLetters,
        consumer: Consumer,
        topics: list[str],
        settings: PipelineConfig,
        metrics: Metrics,
        now: Callable[[], datetime] = _utcnow,
        accept: Callable[[Any], str | None] | None = None,
        dedup: DedupStore | None = None,
        progress: ProgressStore | None = None,
        inputs: Mapping[str, Input] | None = None,
        tracer: VendorTracer | None = None,
    ) -> None:
        self.vendor = vendor
        self._tracer = tracer  # None unless `tracing.enabled`: then each try goes through it
        self._config = config
        self._sender = sender
        self._adapter = sender.adapter  # the stages' adapter (tests wrap its build)
        self._dlq = dlq
        self._consumer = consumer
        self._topics = topics
        self._settings = settings
        self._metrics = metrics
        self._now = now
        # Epoch seconds for the end-to-end latency: a float per delivery, not a datetime.
        self._now_s: Callable[[], float] = (
            time.time if now is _utcnow else lambda: now().timestamp()
        )
        self._dedup = dedup
        self._path = RecordPath(
            vendor,
            sender.adapter,
            config.goal_ids(),
            config.max_event_age_s,
            settings.max_record_bytes,
            now,
            accept=accept,  # replay's filter: None to process a record, or why it is passed over
            dedup=dedup,
            inputs=inputs,  # topics of a producer's own events: how each becomes an event
            dlq_topic=dlq.topic,
        )
        self._queue = WorkQueue()
        self._windows: dict[TopicPartition, PartitionWindow] = {}
        self._progress_store = progress
        # Records fetched for a partition whose progress is still being read.
        self._held: dict[TopicPartition, list[Any]] = {}
        self._next_epoch = itertools.count(1)
        self._lag: dict[TopicPartition, int] = {}
        # Retry timers by their work's id: the callback takes the work as an argument (a closure
        # over its own handle would be a cycle holding the record until the collector runs).
        self._timers: dict[int, asyncio.TimerHandle] = {}
        # Set when fetching paused at the caps may resume (records finished down to low water).
        self._capacity = asyncio.Event()
        self._progress = asyncio.Event()  # set whenever a worker finishes a step
        self._advanced = asyncio.Event()  # set when a partition's progress changed
        self._stopping = asyncio.Event()
        # Paused by an operator (the control topic, fleet-wide): fetch nothing, start nothing.
        self.operator_paused = False
        self._unheld = asyncio.Event()
        self._unheld.set()
        # Stretches an operator's backward reset sends again past dedup: [from, until) offsets.
        self.resend: dict[TopicPartition, tuple[int, int]] = {}
        # An operator's reset, kept while paused for partitions this pipeline is assigned later.
        self._reset_pending: dict[TopicPartition, int] = {}
        self._plain_path: RecordPath | None = None
        self.joined = False
        self.last_error = ""
        self._flow = FlowControl(consumer, settings, metrics.paused.labels(vendor))
        self._supervisor = TaskSupervisor(vendor, metrics.task_failures, self._task_failed)
        # Create every label set up front, so the first increment shows in rate()/increase().
        # Hot-path metrics bound once and batched (handed to prometheus on every scrape).
        self._outcomes = {
            o: metrics.batched_counter(metrics.deliveries.labels(vendor, o)) for o in OUTCOMES
        }
        for reason in REASONS:
            metrics.dlq_writes.labels(vendor, reason)
        for kind in INVALID_KINDS:
            metrics.events_invalid.labels(vendor, kind)
        for reason in (*SKIP_REASONS, TOMBSTONE):
            metrics.skipped.labels(vendor, reason)
        for topic in topics:
            metrics.records_unreadable.labels(vendor, topic)
        self._decoded = metrics.batched_counter(metrics.events_decoded.labels(vendor))
        metrics.rebalances.labels(vendor)
        metrics.assigned_partitions.labels(vendor)
        metrics.ratelimit_wait_seconds.labels(vendor)
        metrics.retry_after_pauses.labels(vendor)
        metrics.commits.labels(vendor)
        metrics.commit_failures.labels(vendor)
        metrics.dlq_write_failures.labels(vendor)
        self._in_flight_gauge = metrics.in_flight.labels(vendor)
        self._delivered = self._outcomes["delivered"]
        self._retried = self._outcomes["retried"]
        self._e2e = metrics.batched_histogram(metrics.end_to_end_latency.labels(vendor))

    # ---- state -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Joined, in touch with the group coordinator, every task alive, not shutting down."""
        return (
            self.joined
            and not self._stopping.is_set()
            and not self._supervisor.down
            and coordinator_known(self._consumer)
        )

    @property
    def down_tasks(self) -> list[str]:
        """Tasks that died and are not back yet (the pipeline is not ready meanwhile)."""
        return sorted(self._supervisor.down)

    @property
    def sender(self) -> Sender:
        """The vendor's sender (breaker, concurrency, limiter state)."""
        return self._sender

    @property
    def paused(self) -> bool:
        """Whether fetching of any partition is paused (window, caps or breaker)."""
        return bool(self._flow.paused)

    @property
    def in_flight(self) -> int:
        """Records fetched and not yet terminal, over every assigned partition."""
        return sum(w.in_flight for w in self._windows.values())

    @property
    def in_flight_bytes(self) -> int:
        """Bytes of the records fetched and not yet terminal."""
        return sum(w.bytes_in_flight for w in self._windows.values())

    @property
    def window(self) -> int:
        """Records held from the commit points on, over every assigned partition."""
        return sum(w.size for w in self._windows.values())

    async def group_committed(self) -> dict[TopicPartition, int]:
        """The group's committed offset per assigned partition (this run's or an earlier one's)."""
        result = {}
        for tp, window in list(self._windows.items()):
            offset = window.committed
            if offset is None:
                offset = await self._consumer.committed(tp)
            if offset is not None:
                result[tp] = offset
        return result

    @property
    def assigned(self) -> list[TopicPartition]:
        """The partitions this pipeline owns now."""
        return sorted(self._windows, key=lambda tp: (tp.topic, tp.partition))

    def hold(self, paused: bool) -> None:
        """Pause (True) or resume (False) this vendor by an operator's order: every partition
        paused (the group is still polled), records not yet started wait."""
        self.operator_paused = paused
        if paused:
            self._unheld.clear()
        else:
            self._reset_pending = {}
            self._unheld.set()
            self._capacity.set()  # the fetch loop re-checks its paused set now

    async def apply_reset(self, offsets: Mapping[TopicPartition, int]) -> list[TopicPartition]:
        """An operator's offset reset, while paused: each assigned partition named starts over
        from its new offset (a fresh window, so what was queued or waits on a retry timer for
        the old one is dropped), committed with no progress above it; returns those moved."""
        if self.operator_paused:
            self._reset_pending.update(offsets)
        moved = [tp for tp in offsets if tp in self._windows]
        await self._wait_until(
            lambda: not any(self._windows[tp].active for tp in moved if tp in self._windows),
            self._settings.revoke_timeout_s,
        )
        entries: dict[TopicPartition, tuple[int, str]] = {}
        for tp in moved:
            if tp not in self._windows:
                continue
            window = PartitionWindow(next(self._next_epoch))
            window.restore(offsets[tp], None)
            window.closing = self._stopping.is_set()
            self._windows[tp] = window
            self._held.pop(tp, None)
            self._consumer.seek(tp, offsets[tp])
            # Not empty: a base-only text, so a broker dropping metadata gets the record too.
            entries[tp] = (offsets[tp], encode(Progress(offsets[tp]), 4000))
        if not entries:
            return []
        if self._progress_store is not None:
            # The progress record is rewritten too: an older one above the new offset must not
            # mark records of the re-delivered stretch as done.
            await self._progress_store.save(entries)
        else:
            await self._consumer.commit({tp: point for tp, (point, _) in entries.items()})
        log.info(
            "offsets reset by an operator: %s",
            sorted(f"{tp.topic}:{tp.partition}@{point}" for tp, (point, _) in entries.items()),
            extra={"vendor": self.vendor},
        )
        return sorted(entries, key=lambda tp: (tp.topic, tp.partition))

    def set_resend(self, marks: Mapping[TopicPartition, tuple[int, int]]) -> None:
        """The stretches to send again past dedup (an operator's backward reset)."""
        self.resend.clear()
        self.resend.update(marks)

    def _resending(self, work: Work) -> bool:
        stretch = self.resend.get(work.tp)
        return stretch is not None and stretch[0] <= work.record.offset < stretch[1]

    def _without_dedup(self) -> RecordPath:
        """The record path with no dedup check (records of a stretch sent again)."""
        if self._plain_path is None:
            plain = copy.copy(self._path)
            plain._dedup = None
            self._plain_path = plain
        return self._plain_path

    def stop(self) -> None:
        """Begin the drain: stop fetching and starting records, finish the deliveries started,
        commit, leave the group."""
        self._stopping.set()
        self._capacity.set()
        for window in self._windows.values():
            window.closing = True

    def _task_failed(self, name: str, exc: BaseException) -> None:
        self.last_error = redact(f"task {name} died: {exc!r}")[:300]

    # ---- main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until `stop()`, then drain within the grace period and leave the group."""
        self._consumer.subscribe(self._topics, listener=_Rebalance(self))
        await self._consumer.start()
        supervisor = self._supervisor
        for index in range(self._config.concurrency):
            supervisor.start(f"worker-{index}", "worker", self._worker)
        supervisor.start("commit", "commit", self._commit_loop)
        supervisor.start("lag", "lag", self._lag_loop)
        supervisor.start("fetch", "fetch", self._fetch_loop, _FETCH_ESCALATE_AFTER)
        try:
            await supervisor.wait("fetch")
        finally:
            self._stopping.set()
            await self._drain()

    async def _fetch_loop(self) -> None:
        metrics = self._metrics
        consumed = {
            t: metrics.batched_counter(metrics.events_consumed.labels(self.vendor, t))
            for t in self._topics
        }
        flow = self._flow
        while not self._stopping.is_set():
            # Batched hot-path counts reach prometheus once per fetch (<= ~0.2 s apart): a
            # scrape flushes them itself, but `--workers` files are read by the supervisor.
            metrics.flush()
            self._in_flight_gauge.set(self.in_flight)
            flow.update(self._windows, self.operator_paused or self._sender.sending_blocked())
            timeout_ms = POLL_TIMEOUT_MS
            if flow.all_paused:
                # Nothing to fetch until records finish; still poll, or the group drops us.
                self._capacity.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await self._capacity.wait()
                timeout_ms = 0
            try:
                batch = await self._consumer.getmany(
                    *flow.fetchable(self._windows),
                    timeout_ms=timeout_ms,
                    max_records=flow.room(self._windows),
                )
            except RecordTooLargeError as exc:
                batch = self._too_large_for_fetch(exc)
            for tp, fetched in batch.items():
                self._dispatch(tp, fetched)
                counter = consumed.get(tp.topic)
                if counter is not None:
                    counter.inc(len(fetched))

    def _too_large_for_fetch(self, exc: RecordTooLargeError) -> dict[TopicPartition, list[Any]]:
        """aiokafka steps over a record larger than the fetch size: dead-letter it, not lose it."""
        args = exc.args
        if len(args) >= 3 and isinstance(args[1], TopicPartition) and isinstance(args[2], int):
            tp, offset = args[1], args[2]
            why = "record larger than the consumer's max_partition_fetch_bytes"
            return {tp: [records.unreadable(tp.topic, tp.partition, offset, why)]}
        raise exc

    def _dispatch(self, tp: TopicPartition, fetched: list[Any]) -> None:
        window = self._windows.get(tp)
        if window is None:
            return  # fetched just before a revocation: the next owner reads them again
        if window.loading:  # its progress is being read: these wait for it
            self._held.setdefault(tp, []).extend(fetched)
            return
        windows, queue = self._windows, self._queue
        for record in fetched:
            offset = record.offset
            if window.skip_restored(offset):
                continue  # terminal before this assignment (progress kept in Kafka)
            if window.dispatch(offset, _size(record)):
                work = Work(
                    record=record, tp=tp, epoch=window.epoch, window=window, windows=windows
                )
                clock = window.clock(offset)
                if clock is not None:  # tried before a restart or a move: its budget goes on
                    work.count = clock.count
                    work.first_at_s = float(clock.first_at_s)
                    work.excused_s = float(clock.excused_s)
                queue.put(work)
        if window.unsaved:
            self._advanced.set()

    # ---- workers -----------------------------------------------------------------------------

    async def _worker(self) -> None:
        # One coroutine per worker holds the whole happy path (decode → deliver → complete):
        # each coroutine called per delivery is a frame more to create and resume, at every
        # one of the requests in flight.
        queue, windows = self._queue, self._windows
        items = queue.items
        path, sender, delivered = self._path, self._sender, DecisionKind.DELIVERED
        awaits = path.awaits  # a dedup store doing I/O (Redis) must be awaited
        tracer = self._tracer
        resend = self.resend  # changed in place (set_resend)
        while True:
            work = items.popleft() if items else await queue.get()
            if (
                self.operator_paused
            ):  # paused by an operator: the record waits here (not yet started)
                await self._unheld.wait()
            window = windows.get(work.tp)
            if window is None or window.epoch != work.epoch or window.closing:
                continue  # revoked (the new owner delivers it) or stopping (left in Kafka)
            window.active += 1
            try:
                try:
                    request = work.request
                    if request is None:
                        read = path.read(work.record)
                        if isinstance(read, SchemaPending):  # Avro: its schema comes first
                            self._await_schema(work, read)
                            continue
                        if isinstance(read, Terminal):
                            await self._finish(work, read)
                            continue
                        self._decoded.inc()
                        work.event_id = read.event_id
                        work.occurred_s = read.occurred_at.timestamp()
                        # An in-process dedup store (the default) needs no await.
                        if resend and self._resending(work):
                            prepared = self._without_dedup().prepare_now(read)
                        else:
                            prepared = (
                                await path.prepare(read) if awaits else path.prepare_now(read)
                            )
                        del read  # the event is not held through the exchange
                        if isinstance(prepared, Terminal):
                            await self._finish(work, prepared)
                            continue
                        request = work.request = prepared
                    if tracer is None:
                        decision = await sender.deliver(request, work, work.is_current)
                    else:
                        decision = await tracer.deliver(sender, request, work)
                    if decision.kind is delivered and decision.outcome is not None:
                        if not self._delivered_now(work):
                            await self._mark(work)
                    else:
                        await self._after(work, decision)
                except Exception as exc:  # a bug must neither kill the worker nor lose the record
                    await self._on_bug(work, exc)
            except Exception:
                # Not lost: the record is tried again; the supervisor restarts this worker.
                self._schedule(work, _INTERNAL_RETRY_S)
                raise
            finally:
                window.active -= 1
                self._progress.set()

    def _await_schema(self, work: Work, pending: SchemaPending) -> None:
        """The record goes back in the queue once the registry gave its schema, however long it
        is down: it stays in its window meanwhile (nothing past it commits), holding no worker,
        like a record waiting for its retry (revoked meanwhile, the worker drops it)."""
        pending.when_ready(lambda: self._queue.put(work))

    async def _on_bug(self, work: Work, exc: Exception) -> None:
        log.exception(
            "unexpected error; the record is retried, then dead-lettered",
            extra={"vendor": self.vendor, "offset": work.record.offset},
        )
        self.last_error = redact(f"internal error: {exc!r}")[:300]
        await self._internal_error(work, exc)

    def _delivered_now(self, work: Work) -> bool:
        """Count a delivery and complete its record; False if a dedup store must be awaited
        first (then `_mark` completes it)."""
        self._delivered.inc()
        event_id = work.event_id
        if event_id is not None:
            self._e2e.observe(max(0.0, self._now_s() - work.occurred_s))
            dedup = self._dedup
            if isinstance(dedup, MemoryDedupStore):
                dedup.add(self.vendor, event_id)
            elif dedup is not None:
                return False
        self._complete(work)
        return True

    async def _mark(self, work: Work) -> None:
        """Mark a delivered event in a shared dedup store, then complete its record."""
        if self._dedup is not None and work.event_id is not None:
            await self._dedup.mark(self.vendor, work.event_id)
        self._complete(work)

    async def _after(self, work: Work, decision: Decision) -> None:
        """A try that did not deliver: abandoned, dead-lettered or scheduled again."""
        outcome = decision.outcome
        if decision.kind is DecisionKind.ABANDONED or outcome is None:
            return  # its partition was revoked while it waited; the new owner delivers it
        self.last_error = redact(f"{outcome.reason}: {outcome.detail}")[:300]
        if decision.kind is DecisionKind.DEAD_LETTER:
            await self._dead_letter(work, decision.dlq_reason, outcome)
            return
        self._retried.inc()
        self._keep_clock(work)
        self._schedule(work, decision.delay_s)

    async def _internal_error(self, work: Work, exc: Exception) -> None:
        """Retry the record like a transient failure; past its budget, dead-letter it."""
        outcome = Outcome(
            kind=OutcomeKind.RETRY, reason="internal_error", detail=redact(repr(exc))[:500]
        )
        work.count += 1  # the failure spends an attempt, so a lasting bug ends in the DLQ
        work.last_at_s = datetime.now(UTC).timestamp()
        work.first_at_s = work.first_at_s or work.last_at_s
        retry = self._config.retry
        if not should_retry(work.count, work.first_at_s, work.last_at_s, retry):
            await self._dead_letter(work, "retries_exhausted", outcome)
            return
        delay_s = backoff_s(work.count, retry.initial_backoff_s, retry.max_backoff_s, random.random)
        self._keep_clock(work)
        self._schedule(work, delay_s)

    def _keep_clock(self, work: Work) -> None:
        """A record waits to be tried again: its retry clock goes with the next commit."""
        if self._progress_store is None:
            return
        work.window.note_attempt(work.record.offset, work.first_at_s, work.count, work.excused_s)
        self._advanced.set()

    async def _finish(self, work: Work, end: Terminal) -> None:
        """Count a path that ended before a request, and dead-letter it if it says so."""
        if end.outcome is not None:
            self._outcomes[end.outcome].inc()
        if end.skip_reason is not None:
            self._metrics.skipped.labels(self.vendor, end.skip_reason).inc()
        where = {
            "vendor": self.vendor,
            "topic": work.tp.topic,
            "partition": work.tp.partition,
            "offset": work.record.offset,
        }
        if end.invalid_kind is not None:
            self._metrics.events_invalid.labels(self.vendor, end.invalid_kind).inc()
            log.warning("invalid event: %s", end.error, extra=where)
        if end.dlq_reason == "unreadable_record":
            self._metrics.records_unreadable.labels(self.vendor, work.tp.topic).inc()
            log.warning("unreadable record, dead-lettered: %s", end.error, extra=where)
        if end.dlq_reason is None:
            self._complete(work)
            return
        if end.outcome == "rejected":
            self.last_error = end.error[:300]
        await self._write_dead_letter(work, end.dlq_reason, end.error, None)

    def _schedule(self, work: Work, delay_s: float) -> None:
        self._timers[id(work)] = asyncio.get_running_loop().call_later(delay_s, self._requeue, work)

    def _requeue(self, work: Work) -> None:
        """A retry timer fired: the record goes back in the queue."""
        self._timers.pop(id(work), None)
        self._queue.put(work)

    def _complete(self, work: Work) -> None:
        window = self._windows.get(work.tp)
        if window is None or window.epoch != work.epoch:
            return  # finished after its partition moved on; the new owner tracks it
        if window.complete(work.record.offset) or self._progress_store is not None:
            self._advanced.set()  # the commit point moved, or the progress above it did
        flow = self._flow
        # Wake the fetch loop once, at low water, not at every record that finishes (each wake
        # re-checks every window): between the caps and low water it would only pause again.
        if flow.all_paused and flow.may_resume(self._windows):
            self._capacity.set()

    async def _dead_letter(
        self, work: Work, reason: str, outcome: Outcome | None, error: str = ""
    ) -> None:
        outcome_text = f"{outcome.reason}: {outcome.detail}".strip(": ") if outcome else ""
        status = outcome.status if outcome else None
        outcome_label = "rejected" if reason == "rejected" else "dead_lettered"
        self._outcomes[outcome_label].inc()
        await self._write_dead_letter(work, reason, error or outcome_text, status)

    def _source(self, work: Work) -> tuple[SourceRecord, int]:
        """The record for its dead letter, and the attempts made before it was read.

        `relay-source-*` and `relay-attempts` are trusted only on records of the DLQ topic (a
        replay keeps a letter's first source); on live records they are anybody's headers.
        """
        r = work.record
        headers = tuple(r.headers or ())
        own = SourceRecord(r.topic, r.partition, r.offset, r.key, r.value, headers)
        if r.topic != self._dlq.topic:
            return own, 0
        told = parse_headers(headers)
        if told.source_topic is None or told.source_partition is None:
            return own, told.attempts
        if told.source_offset is None:
            return own, told.attempts
        source = SourceRecord(
            told.source_topic, told.source_partition, told.source_offset, r.key, r.value, headers
        )
        return source, told.attempts

    async def _write_dead_letter(
        self, work: Work, reason: str, error: str, status: int | None
    ) -> None:
        source, prior_attempts = self._source(work)
        letter = DeadLetter(
            vendor=self.vendor,
            reason=reason,
            error=error,
            source=source,
            http_status=status,
            attempts=prior_attempts + work.count,
            first_attempt_at=_at(work.first_at_s),
            last_attempt_at=_at(work.last_at_s),
        )
        await self._dlq.write(letter)
        # A vendor's refusal or an exhausted budget is what operators grep for; invalid and
        # unreadable records were already warned about where they were found.
        level = logging.INFO if reason in _WARNED_BEFORE else logging.WARNING
        log.log(
            level,
            "dead-lettered",
            extra={
                "vendor": self.vendor,
                "reason": reason,
                "status": status,
                "event_id": work.event_id,
                "attempt": work.count,
            },
        )
        self._complete(work)

    # ---- commits and rebalances --------------------------------------------------------------

    async def _commit_loop(self) -> None:
        """Commit soon after progress changes (coalesced), and at least every interval."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), self._settings.commit_interval_s)
            await asyncio.sleep(self._settings.commit_coalesce_s)
            self._advanced.clear()
            await self.commit()

    async def commit(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Commit the progress of each (given) partition that changed since the last commit."""
        chosen = self._windows if partitions is None else partitions
        windows = {tp: self._windows[tp] for tp in chosen if tp in self._windows}
        if self._progress_store is not None:
            await self._save_progress(self._progress_store, windows)
            return
        offsets = {}
        for tp, window in windows.items():
            point = window.uncommitted()
            if point is not None:
                offsets[tp] = point
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            self._metrics.commit_failures.labels(self.vendor).inc()
            log.warning("commit failed: %r", exc, extra={"vendor": self.vendor})
            return
        for tp, point in offsets.items():
            window = windows[tp]
            window.committed = max(point, window.committed or 0)
        self._metrics.commits.labels(self.vendor).inc()

    async def _save_progress(
        self, store: ProgressStore, windows: dict[TopicPartition, PartitionWindow]
    ) -> None:
        """Commit each changed partition's point with the progress above it (one request)."""
        entries: dict[TopicPartition, tuple[int, str]] = {}
        marks: dict[TopicPartition, int] = {}
        for tp, window in windows.items():
            if not window.unsaved:
                continue
            kept = window.progress()
            if kept is None:
                continue
            committed = window.committed
            if committed is not None and kept.base < committed:
                kept = kept.since(committed)  # never commit backwards
                if kept is None:
                    continue
            entries[tp] = (kept.base, encode(kept, store.max_chars))
            marks[tp] = window.changes
        if not entries:
            return
        try:
            await store.save(entries)
        except KafkaError as exc:
            self._metrics.commit_failures.labels(self.vendor).inc()
            log.warning("commit failed: %r", exc, extra={"vendor": self.vendor})
            return
        for tp, (point, _) in entries.items():
            window = windows[tp]
            window.saved = max(window.saved, marks[tp])
            window.committed = max(point, window.committed or 0)
        self._metrics.commits.labels(self.vendor).inc()

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Wait (bounded) for started deliveries of revoked partitions, commit, forget them."""
        revoked &= set(self._windows)
        await self._wait_until(
            lambda: not any(self._windows[tp].active for tp in revoked if tp in self._windows),
            self._settings.revoke_timeout_s,
        )
        await self.commit(revoked)
        for tp in revoked:
            self._windows.pop(tp, None)
            self._held.pop(tp, None)
            self._lag.pop(tp, None)
            self._metrics.drop_lag(self.vendor, tp.topic, tp.partition)
        self._flow.forget(revoked)

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start tracking newly assigned partitions (a new epoch each) from their progress."""
        store = self._progress_store
        fresh = {}
        for tp in assigned:
            window = PartitionWindow(next(self._next_epoch), loading=store is not None)
            window.closing = self._stopping.is_set()
            self._windows[tp] = fresh[tp] = window
        self.joined = True
        self._metrics.rebalances.labels(self.vendor).inc()
        self._metrics.assigned_partitions.labels(self.vendor).set(len(self._windows))
        log.info(
            "partitions assigned: %s",
            sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
            extra={"vendor": self.vendor},
        )
        if store is not None:
            await self._restore(store, fresh)
        pending = self._reset_pending
        if self.operator_paused and pending and set(pending) & set(fresh):
            # Assigned while an operator's reset waits for its partitions (a rebalance took
            # them meanwhile): still paused, so nothing moved since; apply it to them too.
            await self.apply_reset({tp: pending[tp] for tp in fresh if tp in pending})

    async def _restore(
        self, store: ProgressStore, fresh: dict[TopicPartition, PartitionWindow]
    ) -> None:
        """Read the progress kept for new partitions; then release what was fetched meanwhile."""
        restored: dict[TopicPartition, Restored] = {}
        try:
            async with asyncio.timeout(self._settings.revoke_timeout_s):
                restored = await store.load(set(fresh))
        except Exception as exc:  # never leave a partition waiting: start from its offset
            log.warning(
                "progress above the commit point not read (%r): records finished after it "
                "may be delivered again",
                exc,
                extra={"vendor": self.vendor},
            )
        done = clocks = 0
        for tp, window in fresh.items():
            if self._windows.get(tp) is not window:
                continue  # revoked while its progress was read
            committed, kept = restored.get(tp, (None, None))
            window.restore(committed, kept)
            if kept is not None:
                done += len(kept.done)
                clocks += len(kept.attempts)
            held = self._held.pop(tp, None)
            if held:
                self._dispatch(tp, held)
        if done or clocks:
            log.info(
                "progress restored: %d records above the commit points already finished, %d "
                "retry clocks carried over",
                done,
                clocks,
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
            window = self._windows.get(tp)
            if window is None:
                continue  # revoked while the end offsets were asked for
            # Tansu's ListOffsets undercounts batched partitions; the last fetch's high
            # watermark does not (it only goes stale while the partition is paused).
            end = max(listed_end, self._consumer.highwater(tp) or 0)
            committed = window.committed
            if committed is None:
                committed = await self._consumer.committed(tp) or 0
            self._lag[tp] = max(0, end - committed)
            self._metrics.consumer_lag.labels(self.vendor, tp.topic, str(tp.partition)).set(
                self._lag[tp]
            )

    def lag(self) -> int:
        """Total lag over this pipeline's partitions, as of the last lag update."""
        return sum(self._lag.get(tp, 0) for tp in self._windows)

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

    @property
    def sending(self) -> int:
        """Deliveries started and not finished."""
        return sum(w.active for w in self._windows.values())

    @property
    def unparked(self) -> int:
        """Deliveries started that a stop waits for: on the wire, or preparing, marking or
        dead-lettering; not those still waiting to be sent (the stop cancels those)."""
        return self.sending - self.sender.parked

    async def _drain(self) -> None:
        # Records waiting on a retry timer or in the queue are not in flight: they stay in Kafka
        # (the commit below keeps their retry clocks); only deliveries already started finish.
        for window in self._windows.values():
            window.closing = True
        for handle in self._timers.values():
            handle.cancel()
        # Deliveries still waiting to be sent (an open breaker, a Retry-After pause, the gate,
        # the rate limit) are not in flight: nothing of theirs went out, so the stop does not
        # wait for them (an open breaker would hold it one probe interval per record) and the
        # supervisor's stop below cancels them; their records stay in Kafka.
        await self._wait_until(lambda: self.unparked <= 0, self._settings.shutdown_grace_s)
        if self.unparked > 0:
            log.warning(
                "grace period over with %d deliveries in flight; they will be redelivered",
                self.unparked,
                extra={"vendor": self.vendor},
            )
        await self._supervisor.stop()
        await self.commit()
        await self._consumer.stop()
        self.joined = False
