"""VendorPipeline on its own: a fake consumer, sender and DLQ (no broker, no network), so each
rule of the record's path, flow control, commits and supervision is shown directly."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import msgspec
import orjson
import pytest
from aiokafka import TopicPartition

import service.delivery.pipeline as pipeline_module
from service.config import PipelineConfig
from service.core.exchange import Decision, DecisionKind, Outcome, OutcomeKind
from service.core.progress import decode
from service.core.records import Fetched
from service.delivery.dlq import DeadLetter
from service.delivery.pipeline import VendorPipeline
from service.metrics import Metrics
from service.vendors import VendorConfig, make_adapter

TOPIC = "events"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
GOAL = "299837db-9b51-45a4-996b-844d3fd05bbd"


def event(event_id: str) -> bytes:
    """A valid purchase event for the goal-reach vendor."""
    return orjson.dumps(
        {
            "event_id": event_id,
            "goal": "purchase",
            "occurred_at": datetime.now(UTC).isoformat(),
            "customer": {"ids": {"sustain_impact": "6f1c2a57-0d5e-4f39-9a43-4c1fbbd1a0e1"}},
            "params": {"id": event_id},
        }
    )


def record(tp: TopicPartition, offset: int, value: bytes | None, key=None, headers=()) -> Any:
    """A record as the relay's consumer's getmany returns it (service.kafka's reader)."""
    size = len(value) if value is not None else -1
    return Fetched(tp.topic, tp.partition, offset, 0, 0, key, value, None, -1, size, tuple(headers))


class FakeConsumer:
    """Partitions as lists of records; a fetch returns at most `per_fetch` per partition."""

    def __init__(self, logs: dict[TopicPartition, list[Any]], per_fetch: int = 10) -> None:
        self.logs = logs
        self.per_fetch = per_fetch
        self.positions = dict.fromkeys(logs, 0)
        self.paused: set[TopicPartition] = set()
        self.getmany_calls = 0
        self.commits: list[tuple[float, dict[TopicPartition, int]]] = []
        self.listener: Any = None
        self._coordinator = SimpleNamespace(coordinator_id=1)

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        await self.listener.on_partitions_assigned(set(self.logs))

    async def stop(self) -> None:
        pass

    async def getmany(self, *partitions, timeout_ms: int = 0, max_records=None):
        self.getmany_calls += 1
        budget = max_records or 10**9
        out = {}
        for tp, log in self.logs.items():
            if tp in self.paused or budget <= 0:
                continue
            pos = self.positions[tp]
            taken = log[pos : pos + min(self.per_fetch, budget)]
            if taken:
                out[tp] = taken
                self.positions[tp] = pos + len(taken)
                budget -= len(taken)
        await asyncio.sleep(0 if out else timeout_ms / 1000)
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append((time.monotonic(), dict(offsets)))

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    async def end_offsets(self, partitions):
        return {tp: len(self.logs[tp]) for tp in partitions}

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.logs[tp])

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused -= set(partitions)

    def committed_at(self, tp: TopicPartition) -> int | None:
        """The last offset committed for a partition."""
        points = [offsets[tp] for _, offsets in self.commits if tp in offsets]
        return points[-1] if points else None


class FakeSender:
    """Delivers at once, except events whose id is in `stuck` (never answered)."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self.blocked = False
        self.parked = 0  # as Sender: deliveries waiting to be sent (none here: all go at once)
        self.stuck: set[str] = set()
        self.rejects: set[str] = set()
        self.fails: set[str] = set()  # answered "retry in retry_delay_s", charging an attempt
        self.retry_delay_s = 0.2
        self.tries = 0  # failed tries answered
        self.first_tries: dict[str, float] = {}  # first_at_s each failing event was sent with
        self.hold: asyncio.Event | None = None
        self.sent: list[str] = []
        self.breaker_state = "closed"
        self.concurrency = SimpleNamespace(limit=4)

    def sending_blocked(self) -> bool:
        return self.blocked

    async def deliver(self, request, attempts, current: Callable[[], bool]) -> Decision:
        event_id = str(orjson.loads(request.body)["CustomUserScopeParams"])
        if any(s in event_id for s in self.stuck):
            await asyncio.Event().wait()
        if self.hold is not None:
            await self.hold.wait()
        if not current():
            return Decision(kind=DecisionKind.ABANDONED)
        if any(s in event_id for s in self.fails):
            attempts.count += 1
            attempts.first_at_s = attempts.first_at_s or time.time()
            token = next(s for s in self.fails if s in event_id)
            self.first_tries.setdefault(token, attempts.first_at_s)
            self.tries += 1
            outcome = Outcome(kind=OutcomeKind.RETRY, reason="http_503", status=503)
            return Decision(kind=DecisionKind.RETRY, outcome=outcome, delay_s=self.retry_delay_s)
        if any(s in event_id for s in self.rejects):
            outcome = Outcome(kind=OutcomeKind.REJECT, reason="http_400", status=400)
            return Decision(kind=DecisionKind.DEAD_LETTER, outcome=outcome, dlq_reason="rejected")
        self.sent.append(event_id)
        return Decision(kind=DecisionKind.DELIVERED, outcome=Outcome(kind=OutcomeKind.DELIVERED))


class FakeDeadLetters:
    """Keeps letters; raises `failures` times first."""

    topic = "events.dlq"

    def __init__(self, failures: int = 0) -> None:
        self.letters: list[DeadLetter] = []
        self.failures = failures

    async def write(self, letter: DeadLetter) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("a bug in the dead-letter path")
        self.letters.append(letter)


def vendor_config(**extra: Any) -> Any:
    return msgspec.convert(
        {
            "protocol": "goal_reach",
            "base_url": "http://vendor.invalid",
            "goals": {"purchase": GOAL},
            "concurrency": 4,
            **extra,
        },
        VendorConfig,
    )


class Harness:
    """A pipeline over fakes, run in the background."""

    def __init__(
        self, logs, settings: dict[str, Any] | None = None, dlq=None, vendor=None, progress=None
    ):
        self.consumer = FakeConsumer(logs)
        config = vendor or vendor_config()
        self.sender = FakeSender(make_adapter("sustain_impact", config))
        self.dlq = dlq or FakeDeadLetters()
        self.metrics = Metrics()
        self.pipeline = VendorPipeline(
            "sustain_impact",
            config,
            self.sender,  # type: ignore[arg-type]
            self.dlq,
            self.consumer,
            [TOPIC],
            PipelineConfig(**{"shutdown_grace_s": 1.0, **(settings or {})}),
            self.metrics,
            progress=progress,
        )
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        self.task = asyncio.create_task(self.pipeline.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.pipeline.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"vendor": "sustain_impact", **labels})
        return value or 0.0


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_a_tombstone_is_skipped_with_its_own_reason_and_its_offset_completes():
    """A null value (Kafka's deletion marker; null key too) is counted as a tombstone skip, not
    dead-lettered, and the commit point passes it."""
    logs = {P0: [record(P0, 0, None), record(P0, 1, event("e1"))]}
    async with Harness(logs) as h:
        await until(lambda: h.consumer.committed_at(P0) == 2)
    assert h.sample("conversion_relay_skipped_total", reason="tombstone") == 1
    assert h.dlq.letters == []


async def test_relay_headers_of_a_live_record_are_not_trusted():
    """Forged or null `relay-source-*`/`relay-attempts` headers on a live record neither crash
    the dead-letter path nor change the letter's source or attempt count."""
    headers = [
        ("relay-attempts", None),
        ("relay-source-topic", None),
        ("relay-source-topic", b"other"),
        ("relay-source-partition", b"7"),
        ("relay-source-offset", b"99"),
        ("relay-attempts", b"12"),
    ]
    logs = {P0: [record(P0, 0, b"not json", headers=headers), record(P0, 1, b"{", headers=[])]}
    async with Harness(logs) as h:
        await until(lambda: len(h.dlq.letters) == 2 and h.consumer.committed_at(P0) == 2)
    first = h.dlq.letters[0]
    assert (first.source.topic, first.source.partition, first.source.offset) == (TOPIC, 0, 0)
    assert first.attempts == 0


async def test_an_unreadable_record_is_dead_lettered_and_the_rest_of_its_batch_delivered():
    """A record the client could not read goes to the DLQ as `unreadable_record` at its source
    coordinates, loudly; the valid records around it are delivered."""
    from service.core.records import unreadable

    logs = {
        P0: [
            record(P0, 0, event("e0")),
            unreadable(TOPIC, 0, 1, "unreadable record: bad header"),
            record(P0, 2, event("e2")),
        ]
    }
    async with Harness(logs) as h:
        await until(lambda: h.consumer.committed_at(P0) == 3)
    [letter] = h.dlq.letters
    assert letter.reason == "unreadable_record"
    assert (letter.source.topic, letter.source.partition, letter.source.offset) == (TOPIC, 0, 1)
    assert len(h.sender.sent) == 2
    assert h.sample("conversion_relay_records_unreadable_total", topic=TOPIC) == 1


async def test_a_worker_that_dies_is_counted_unready_restarted_and_its_record_not_lost(
    monkeypatch,
):
    """An error inside the error path kills the worker: it is counted, the pipeline is not ready
    while it is down, it is restarted, and its record is dead-lettered later."""
    monkeypatch.setattr(pipeline_module, "_INTERNAL_RETRY_S", 0.3)
    vendor = vendor_config(concurrency=1, retry={"max_attempts": 1})
    logs = {P0: [record(P0, 0, b"not json"), record(P0, 1, event("e1"))]}
    async with Harness(logs, dlq=FakeDeadLetters(failures=2), vendor=vendor) as h:
        await until(lambda: h.sample("conversion_relay_task_failures_total", task="worker") >= 1)
        assert not h.pipeline.ready
        await until(lambda: h.consumer.committed_at(P0) == 2)
        await until(lambda: h.pipeline.ready)
    assert [letter.source.offset for letter in h.dlq.letters] == [0]


async def test_fetching_keeps_polling_while_every_partition_is_paused():
    """While the vendor is out every partition is paused, and getmany is still called (a
    consumer that stops polling leaves its group after max_poll_interval_ms)."""
    logs = {P0: [record(P0, i, event(f"e{i}")) for i in range(5)], P1: []}
    async with Harness(logs) as h:
        h.sender.blocked = True
        await until(lambda: h.consumer.paused == {P0, P1})
        calls = h.consumer.getmany_calls
        await asyncio.sleep(1.0)
        assert h.consumer.getmany_calls - calls >= 4
        h.sender.blocked = False
        await until(lambda: h.consumer.committed_at(P0) == 5)


async def test_a_stuck_record_bounds_its_partition_window_and_holds_back_no_other_partition():
    """Behind one record that never finishes, its partition fetches at most the window from the
    commit point; the other partition is delivered in full."""
    logs = {
        P0: [record(P0, 0, event("stuck-0"))]
        + [record(P0, i, event(f"a{i}")) for i in range(1, 2000)],
        P1: [record(P1, i, event(f"b{i}")) for i in range(2000)],
    }
    async with Harness(logs, {"max_in_flight": 50}) as h:
        h.sender.stuck.add("stuck-0")
        await until(lambda: h.consumer.committed_at(P1) == 2000, 20)
        await asyncio.sleep(0.3)
        assert h.consumer.positions[P0] <= 50 + h.consumer.per_fetch
        assert h.pipeline.in_flight == 1


async def test_in_flight_bytes_are_capped():
    """Records of 100 KB behind a stuck vendor stop being fetched at max_in_flight_bytes."""
    big = b"k" * 100_000
    logs = {P0: [record(P0, i, event(f"stuck-{i}"), key=big) for i in range(500)]}
    async with Harness(logs, {"max_in_flight_bytes": 1_000_000}) as h:
        h.sender.stuck.add("stuck-")
        await until(lambda: h.consumer.positions[P0] > 0)
        await asyncio.sleep(0.5)
        assert h.pipeline.in_flight_bytes <= 1_000_000 + h.consumer.per_fetch * 100_500
        assert h.consumer.positions[P0] <= 20


async def test_a_moved_commit_point_is_committed_within_the_coalescing_delay():
    """Deliveries are committed about commit_coalesce_s after they finish, not at the next
    commit_interval_s tick (fewer repeats after a crash)."""
    logs = {P0: [record(P0, i, event(f"e{i}")) for i in range(5)]}
    async with Harness(logs, {"commit_interval_s": 30.0}) as h:
        started = time.monotonic()
        await until(lambda: h.consumer.committed_at(P0) == 5, 2.0)
        assert time.monotonic() - started < 1.0


async def test_work_of_a_revoked_partition_is_never_sent():
    """A record whose partition is revoked while it waits for the vendor is abandoned: the
    sender's `current()` says no right before the request."""
    logs = {P0: [record(P0, 0, event("e0"))]}
    async with Harness(logs, {"revoke_timeout_s": 0.2}) as h:
        h.sender.hold = asyncio.Event()
        await until(lambda: h.pipeline.in_flight == 1)
        await h.pipeline.on_revoked({P0})
        h.sender.hold.set()
        await asyncio.sleep(0.1)
    assert h.sender.sent == []


@pytest.mark.parametrize("field", ["max_in_flight_bytes", "commit_coalesce_s"])
def test_new_pipeline_settings_have_defaults(field):
    """The new flow-control settings exist with documented defaults."""
    assert getattr(PipelineConfig(), field) > 0


async def test_a_vendor_dead_letter_is_one_warning_and_an_invalid_record_is_not_logged_twice(
    caplog: pytest.LogCaptureFixture,
):
    """Rejected, exhausted and expired letters are what operators grep for: one warning each;
    an invalid record's own warning is not followed by a second one for its letter."""
    logs = {P0: [record(P0, 0, event("e0")), record(P0, 1, b"not json")]}
    with caplog.at_level(logging.INFO, logger="conversion_relay.pipeline"):
        h = Harness(logs)
        h.sender.rejects.add("e0")
        async with h:
            await until(lambda: len(h.dlq.letters) == 2 and h.consumer.committed_at(P0) == 2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    dead = [r for r in warnings if r.getMessage() == "dead-lettered"]
    assert [getattr(r, "reason", None) for r in dead] == ["rejected"]
    assert len([r for r in warnings if r.getMessage().startswith("invalid event")]) == 1


class FlakyConsumer(FakeConsumer):
    """end_offsets and commit raise an unexpected error the first time each is called."""

    def __init__(self, logs) -> None:
        super().__init__(logs)
        self.broken = {"end_offsets", "commit"}

    async def end_offsets(self, partitions):
        if "end_offsets" in self.broken:
            self.broken.discard("end_offsets")
            raise RuntimeError("lag bug")
        return await super().end_offsets(partitions)

    async def commit(self, offsets) -> None:
        if "commit" in self.broken:
            self.broken.discard("commit")
            raise RuntimeError("commit bug")
        await super().commit(offsets)


async def test_a_lag_or_commit_task_that_dies_is_counted_and_restarted():
    """The lag and commit loops are supervised like the workers: a death is counted, and the
    restarted loop goes on (the lag gauge is set, the offsets are committed)."""
    logs = {P0: [record(P0, i, event(f"e{i}")) for i in range(3)]}
    h = Harness(logs, {"lag_interval_s": 0.05})
    h.consumer = FlakyConsumer(logs)
    h.pipeline._consumer = h.consumer
    h.pipeline._flow._consumer = h.consumer
    async with h:
        await until(lambda: h.consumer.committed_at(P0) == 3)
        await until(lambda: h.pipeline.lag() == 0 and P0 in h.pipeline._lag)
    assert h.sample("conversion_relay_task_failures_total", task="lag") == 1
    assert h.sample("conversion_relay_task_failures_total", task="commit") == 1


class FakeProgressStore:
    """A group's commits and progress texts, kept across pipelines (as Kafka keeps them)."""

    max_chars = 4000

    def __init__(self) -> None:
        self.saved: dict[TopicPartition, tuple[int, str]] = {}

    async def save(self, entries: dict[TopicPartition, tuple[int, str]]) -> None:
        self.saved.update(entries)

    async def load(self, partitions):
        found = {}
        for tp in partitions:
            if tp in self.saved:
                offset, text = self.saved[tp]
                found[tp] = (offset, decode(text))
        return found


async def test_offsets_finished_behind_a_retrying_head_are_kept_and_skipped_by_the_next_owner():
    """One record retrying at the head: the 20 delivered after it are committed as progress
    above the point, and the next owner of the partition sends only the head, with the head's
    first-attempt time carried over."""
    logs = {P0: [record(P0, i, event(f"r{i}.")) for i in range(21)]}
    store = FakeProgressStore()
    async with Harness(logs, progress=store) as first:
        first.sender.fails.add("r0.")
        await until(lambda: len(first.sender.sent) == 20)
        await until(lambda: store.saved.get(P0, (0, ""))[1] != "" and not first.pipeline.sending)
    offset, text = store.saved[P0]
    kept = decode(text)
    assert offset == 0 and kept is not None
    assert kept.done == tuple(range(1, 21))
    [clock] = kept.attempts
    assert clock.offset == 0 and clock.count >= 1
    first_try = first.sender.first_tries["r0."]
    assert clock.first_at_s == int(first_try)

    async with Harness(logs, progress=store) as second:
        second.sender.fails.add("r0.")
        await until(lambda: "r0." in second.sender.first_tries)
        second.sender.fails.clear()
        await until(lambda: store.saved[P0][0] == 21)
    assert second.sender.sent == [str({"id": "r0."})]
    assert second.sender.first_tries["r0."] == float(int(first_try))


async def test_a_stop_does_not_wait_for_a_record_waiting_to_be_retried():
    """With only a retrying record left (waiting on its timer, nothing on the wire), the drain
    ends at once instead of waiting out shutdown_grace_s; its clock is committed."""
    logs = {P0: [record(P0, i, event(f"r{i}.")) for i in range(3)]}
    store = FakeProgressStore()
    async with Harness(logs, {"shutdown_grace_s": 10.0}, progress=store) as h:
        h.sender.fails.add("r1.")
        await until(lambda: len(h.sender.sent) == 2 and "r1." in h.sender.first_tries)
        started = time.monotonic()
    assert time.monotonic() - started < 2.0
    kept = decode(store.saved[P0][1])
    assert store.saved[P0][0] == 1 and kept is not None
    assert kept.done == (2,) and [a.offset for a in kept.attempts] == [1]


async def test_a_retried_record_leaves_no_reference_cycle_for_the_collector():
    """1,000 retries of one record (each waiting on a timer) leave no garbage cycle, such as a
    timer's callback holding its own handle, that would keep the record alive until the
    collector runs."""
    import gc

    logs = {P0: [record(P0, 0, event("r0."))]}
    async with Harness(logs) as h:
        h.sender.retry_delay_s = 0.0
        h.sender.fails.add("r0.")
        await until(lambda: h.sender.tries >= 10)
        gc.collect()
        gc.disable()
        try:
            start = h.sender.tries
            await until(lambda: h.sender.tries >= start + 1_000, timeout_s=30)
            found = gc.collect()
        finally:
            gc.enable()
        h.sender.fails.clear()
    assert found < 100, f"{found} objects in reference cycles after 1,000 retries"
