"""Delivery traces, the pure part: a Kafka record's W3C `traceparent`, and the attributes of the
spans (service/delivery/tracing.py exports them with the OpenTelemetry SDK).

Attributes say where a record is (vendor, topic, partition, offset) and what happened to it
(attempt, HTTP status, outcome, reason code), never what it says: no key, value or header of the
record, no event or customer id, and not the vendor's own words (`Outcome.detail`, where a
vendor may echo an email or a key). Reason codes are the relay's own short words (`http_503`,
`timeout`, `vendor_<alnum>`).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from service.core.exchange import Decision, DecisionKind, Outcome

__all__ = [
    "ATTEMPT_KEYS",
    "EVENT_KEYS",
    "TraceParent",
    "attempt_attributes",
    "event_end_attributes",
    "parse_traceparent",
    "record_attributes",
    "record_traceparent",
]

Attributes = dict[str, str | int]

# OpenTelemetry semantic conventions where one fits (messaging, HTTP); the relay's own otherwise.
SYSTEM = "messaging.system"
OPERATION = "messaging.operation.type"
TOPIC = "messaging.destination.name"
PARTITION = "messaging.destination.partition.id"
OFFSET = "messaging.kafka.offset"
STATUS = "http.response.status_code"
VENDOR = "conversion_relay.vendor"
ATTEMPT = "conversion_relay.attempt"
ATTEMPTS = "conversion_relay.attempts"
OUTCOME = "conversion_relay.outcome"
REASON = "conversion_relay.reason"
DLQ_REASON = "conversion_relay.dlq_reason"

_WHERE = frozenset({SYSTEM, OPERATION, TOPIC, PARTITION, OFFSET, VENDOR})
# Every key a span may carry: what the tests hold the attributes to.
ATTEMPT_KEYS = _WHERE | {ATTEMPT, OUTCOME, REASON, STATUS}
EVENT_KEYS = _WHERE | {ATTEMPTS, OUTCOME, REASON, DLQ_REASON, STATUS}

_HEX = frozenset("0123456789abcdef")
_END_OUTCOME = {
    DecisionKind.DELIVERED: "delivered",
    DecisionKind.DEAD_LETTER: "dead_lettered",
    DecisionKind.ABANDONED: "abandoned",
    DecisionKind.RETRY: "retry",
}


class TraceParent(msgspec.Struct, frozen=True, gc=False):
    """The producer's span a record's delivery continues (W3C Trace Context)."""

    trace_id: int
    span_id: int
    sampled: bool


def _hex(text: str, digits: int) -> int | None:
    """The value of exactly `digits` lowercase hex digits, or None."""
    if len(text) != digits or not _HEX.issuperset(text):
        return None
    return int(text, 16)


def parse_traceparent(value: str | bytes | None) -> TraceParent | None:
    """A `traceparent` header's trace id, parent span id and sampled flag; None when it is not
    a valid one (then the delivery starts a trace of its own)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    parts = value.strip().split("-")
    if len(parts) < 4:
        return None
    version = _hex(parts[0], 2)
    # Version ff is forbidden; 00 has exactly four fields; a later one may append more.
    if version is None or version == 0xFF or (version == 0 and len(parts) != 4):
        return None
    trace_id, span_id, flags = _hex(parts[1], 32), _hex(parts[2], 16), _hex(parts[3], 2)
    if not trace_id or not span_id or flags is None:  # all-zero ids are invalid too
        return None
    return TraceParent(trace_id=trace_id, span_id=span_id, sampled=bool(flags & 1))


def record_traceparent(
    headers: Iterable[tuple[str | bytes, bytes | None]] | None,
) -> TraceParent | None:
    """The first `traceparent` header of a Kafka record (name in any case), parsed."""
    for name, value in headers or ():
        if isinstance(name, str) and name.lower() == "traceparent":
            return parse_traceparent(value)
    return None


def record_attributes(vendor: str, topic: str, partition: int, offset: int) -> Attributes:
    """Where the record is, and the vendor it goes to (on every span of its delivery)."""
    return {
        SYSTEM: "kafka",
        OPERATION: "process",
        TOPIC: topic,
        PARTITION: str(partition),
        OFFSET: offset,
        VENDOR: vendor,
    }


def _answer(attributes: Attributes, outcome: Outcome | None) -> Attributes:
    if outcome is not None:
        if outcome.reason:
            attributes[REASON] = outcome.reason
        if outcome.status is not None:
            attributes[STATUS] = outcome.status
    return attributes


def attempt_attributes(attempt: int, outcome: Outcome | None) -> Attributes:
    """One try: its number (1 = first), and what the answer meant (delivered, retry, reject)."""
    attributes: Attributes = {ATTEMPT: attempt}
    if outcome is not None:
        attributes[OUTCOME] = outcome.kind.value
    return _answer(attributes, outcome)


def event_end_attributes(decision: Decision, attempts: int) -> Attributes:
    """An event's end at this vendor: delivered, dead-lettered (and why) or abandoned (its
    partition moved: the new owner delivers it), after how many tries, the last answer."""
    attributes: Attributes = {OUTCOME: _END_OUTCOME[decision.kind]}
    if decision.kind is DecisionKind.DEAD_LETTER and decision.dlq_reason:
        attributes[DLQ_REASON] = decision.dlq_reason
    attributes[ATTEMPTS] = attempts
    return _answer(attributes, decision.outcome)
