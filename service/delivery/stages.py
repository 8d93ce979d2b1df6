"""A record's path before it is sent, as small stages: each one either lets the record on or
ends its path with a `Terminal` (skip, dead letter), as `core/routing.py` does for routing.

unreadable → replay filter → tombstone → size → decode → route → dedup → build → (sender)

decode reads the canonical event, or, on a topic with an input (config `inputs:`), maps the
producer's own record (service/core/inputs.py). An Avro record whose schema is not cached yet
is a third outcome of decode, `SchemaPending`: the worker waits for the registry, then reads again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from service.core.exchange import Route, VendorRequest
from service.core.inputs import Input
from service.core.records import Fetched, Unreadable
from service.core.registry import RegistryEventError, SchemaPending
from service.core.routing import Expired, Skip, route_event
from service.delivery.dedup import DedupStore, MemoryDedupStore
from service.delivery.dlq import parse_headers
from service.errors import EventError, VendorInputError
from service.events import ConversionEvent, decode_event
from service.logs import redact
from service.vendors.base import Adapter

# Skip reasons of the stages themselves (routing has its own in core/routing.py).
TOMBSTONE = "tombstone"


class Terminal(msgspec.Struct, frozen=True, kw_only=True):
    """How a record's path ended before any request: what to count and whether to dead-letter."""

    outcome: str | None = None  # deliveries_total outcome label, if counted there
    skip_reason: str | None = None  # skipped_total reason label
    invalid_kind: str | None = None  # events_invalid_total reason label
    dlq_reason: str | None = None  # write a dead letter with this reason
    error: str = ""


def skipped(reason: str, outcome: str | None = "skipped") -> Terminal:
    """Not for this vendor on purpose; the offset completes."""
    return Terminal(outcome=outcome, skip_reason=reason)


def unreadable(record: Any) -> Terminal | None:
    """A record the Kafka client could not read: dead-lettered with its source coordinates."""
    if isinstance(record, Unreadable):
        return Terminal(dlq_reason="unreadable_record", error=redact(record.error))
    return None


def tombstone(record: Any) -> Terminal | None:
    """A null value is Kafka's deletion marker, not an event: skipped with its own reason."""
    return skipped(TOMBSTONE) if record.value is None else None


def too_large(record: Any, max_record_bytes: int) -> Terminal | None:
    """A value over max_record_bytes is not decoded."""
    size = len(record.value or b"")
    if size > max_record_bytes:
        return invalid(EventError(f"record of {size} bytes exceeds max_record_bytes", "too_large"))
    return None


def invalid(error: EventError) -> Terminal:
    """Not a valid conversion event (a registry's record: unknown_schema or undecodable)."""
    reason = error.dlq_reason if isinstance(error, RegistryEventError) else "invalid_event"
    return Terminal(invalid_kind=error.kind, dlq_reason=reason, error=redact(str(error)))


def decode(record: Any) -> ConversionEvent | Terminal:
    """The event, or why the value is not one."""
    try:
        return decode_event(record.value)
    except EventError as error:
        return invalid(error)


class TopicInputs:
    """The decode stage when some topics carry a producer's own events: each record is read by
    its topic's input (config `inputs:`), a dead letter by its source topic's, so that a replay
    reads it as it was first read; other topics are canonical."""

    def __init__(self, inputs: Mapping[str, Input], dlq_topic: str | None) -> None:
        self._inputs = dict(inputs)
        self._dlq_topic = dlq_topic

    def __call__(self, record: Any) -> ConversionEvent | Terminal | SchemaPending:
        """The event, or why the value is not one (a mapping names the field that failed), or
        the schema it waits for."""
        topic = record.topic
        if topic == self._dlq_topic:
            topic = parse_headers(record.headers or ()).source_topic or topic
        chosen = self._inputs.get(topic)
        try:
            if chosen is None:
                return decode_event(record.value)
            return chosen.decode(record.value, record.headers, record)
        except EventError as error:
            return invalid(error)
        except SchemaPending as pending:
            return pending


def route(
    event: ConversionEvent,
    vendor: str,
    goal_ids: Mapping[str, str],
    adapter: Adapter,
    max_event_age_s: float | None,
    now: datetime,
) -> Route | Terminal:
    """The vendor's goal id for the event, or a skip, or `expired`."""
    decision = route_event(
        event, vendor, goal_ids, adapter.missing_identity(event), max_event_age_s, now
    )
    if isinstance(decision, Skip):
        return skipped(decision.reason)
    if isinstance(decision, Expired):
        return Terminal(
            outcome="expired",
            dlq_reason="expired",
            error=f"event is {decision.age_s:.0f}s old, over max_event_age_s",
        )
    return decision


_DEDUPLICATED = Terminal(outcome="deduplicated")
# Stands in for "now" where no age limit reads it.
_NEVER = datetime.min.replace(tzinfo=UTC)


async def deduplicated(
    dedup: DedupStore | None, vendor: str, event: ConversionEvent
) -> Terminal | None:
    """Delivered before (a rebalance, crash or replay brought it back): not again."""
    if dedup is not None and await dedup.seen(vendor, event.event_id):
        return _DEDUPLICATED
    return None


def build(adapter: Adapter, event: ConversionEvent, where: Route) -> VendorRequest | Terminal:
    """The vendor request, or `rejected` when the event cannot be expressed in its API."""
    try:
        return adapter.build(event, where)
    except VendorInputError as error:
        return Terminal(outcome="rejected", dlq_reason="rejected", error=redact(str(error)))


class RecordPath:
    """The stages of one vendor, in order; `prepare` returns the request or the Terminal."""

    def __init__(
        self,
        vendor: str,
        adapter: Adapter,
        goal_ids: Mapping[str, str],
        max_event_age_s: float | None,
        max_record_bytes: int,
        now: Callable[[], datetime],
        accept: Callable[[Any], str | None] | None = None,
        dedup: DedupStore | None = None,
        inputs: Mapping[str, Input] | None = None,
        dlq_topic: str | None = None,
    ) -> None:
        self._vendor = vendor
        # Canonical topics only (the default): the plain decoder, no lookup per record.
        self._decode: Callable[[Any], ConversionEvent | Terminal | SchemaPending] = (
            TopicInputs(inputs, dlq_topic) if inputs else decode
        )
        self._adapter = adapter
        self._goal_ids = goal_ids
        self._max_event_age_s = max_event_age_s
        self._max_record_bytes = max_record_bytes
        self._now = now
        self._accept = accept
        self._dedup = dedup

    def filtered(self, record: Any) -> Terminal | None:
        """Replay's filter: the reason a letter is passed over, counted as a skip only."""
        if self._accept is None:
            return None
        reason = self._accept(record)
        return skipped(reason, outcome=None) if reason is not None else None

    def read(self, record: Any) -> ConversionEvent | Terminal | SchemaPending:
        """The synchronous stages up to a decoded event (or the schema it waits for)."""
        value = record.value
        if (
            self._accept is None
            and type(record) is Fetched
            and value is not None
            and len(value) <= self._max_record_bytes
        ):
            return self._decode(record)  # the common case: each stage below would let it on
        for stage in (unreadable, self.filtered, tombstone):
            ended = stage(record)
            if ended is not None:
                return ended
        ended = too_large(record, self._max_record_bytes)
        return ended if ended is not None else self._decode(record)

    @property
    def awaits(self) -> bool:
        """Whether `prepare` must be awaited (a dedup store that does I/O); else `prepare_now`."""
        return self._dedup is not None and not isinstance(self._dedup, MemoryDedupStore)

    def _route(self, event: ConversionEvent) -> Route | Terminal:
        # The clock is read only when an age limit needs it.
        now = self._now() if self._max_event_age_s is not None else _NEVER
        return route(event, self._vendor, self._goal_ids, self._adapter, self._max_event_age_s, now)

    async def prepare(self, event: ConversionEvent) -> VendorRequest | Terminal:
        """From a decoded event to the request the sender sends."""
        where = self._route(event)
        if isinstance(where, Terminal):
            return where
        ended = await deduplicated(self._dedup, self._vendor, event)
        if ended is not None:
            return ended
        return build(self._adapter, event, where)

    def prepare_now(self, event: ConversionEvent) -> VendorRequest | Terminal:
        """`prepare` without an await, for an in-process dedup store (or none)."""
        where = self._route(event)
        if isinstance(where, Terminal):
            return where
        dedup = self._dedup
        if isinstance(dedup, MemoryDedupStore) and dedup.contains(self._vendor, event.event_id):
            return _DEDUPLICATED
        return build(self._adapter, event, where)
