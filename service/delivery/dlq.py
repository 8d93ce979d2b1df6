"""Dead letters: the original record plus its story in `relay-*` headers, written until acked."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from service.metrics import Metrics

log = logging.getLogger("conversion_relay.dlq")
RELAY_PREFIX = "relay-"
# What is kept of a value the DLQ topic refuses as too large.
TRUNCATED_VALUE_BYTES = 64 * 1024
# A stub keeps the source key only up to this size, and this much of the error text.
STUB_KEY_BYTES = 1024
STUB_ERROR_BYTES = 512
# The documented set of dead-letter reasons.
REASONS = (
    "invalid_event",
    "rejected",
    "retries_exhausted",
    "expired",
    "unreadable_record",
    # Avro records of a Schema Registry topic: an id the registry does not know, bytes that do
    # not match their schema (service/core/registry.py).
    "unknown_schema",
    "undecodable",
)


class SourceRecord(msgspec.Struct, frozen=True):
    """Where a record came from and what it held, byte for byte."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    # Names that are not UTF-8 arrive as bytes, null values as None (both as Kafka allows).
    headers: Sequence[tuple[str | bytes, bytes | None]] = ()


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A record a vendor will not get, and why."""

    vendor: str
    reason: str
    error: str
    source: SourceRecord
    http_status: int | None = None
    attempts: int = 0
    first_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None


def _iso(moment: datetime) -> bytes:
    return moment.astimezone(UTC).isoformat().encode()


def _header_name(name: str | bytes | None) -> str:
    """A header name the producer can write: a non-UTF-8 one as its escaped bytes."""
    if isinstance(name, bytes):
        return name.decode("utf-8", "backslashreplace")
    return name or ""


def to_headers(letter: DeadLetter, failed_at: datetime) -> list[tuple[str, bytes | None]]:
    """The original headers (minus earlier relay-* ones) followed by this dead letter's story."""
    src = letter.source
    headers: list[tuple[str, bytes | None]] = []
    for key, value in src.headers:
        name = _header_name(key)
        if not name.startswith(RELAY_PREFIX):
            headers.append((name, value))
    headers += [
        ("relay-vendor", letter.vendor.encode()),
        ("relay-reason", letter.reason.encode()),
        ("relay-error", letter.error.encode("utf-8", "replace")[:4096]),
        ("relay-attempts", str(letter.attempts).encode()),
        ("relay-source-topic", src.topic.encode()),
        ("relay-source-partition", str(src.partition).encode()),
        ("relay-source-offset", str(src.offset).encode()),
        ("relay-failed-at", _iso(failed_at)),
    ]
    if letter.http_status is not None:
        headers.append(("relay-http-status", str(letter.http_status).encode()))
    if letter.first_attempt_at is not None:
        headers.append(("relay-first-attempt-at", _iso(letter.first_attempt_at)))
    if letter.last_attempt_at is not None:
        headers.append(("relay-last-attempt-at", _iso(letter.last_attempt_at)))
    return headers


class LetterHeaders(msgspec.Struct, frozen=True, kw_only=True):
    """What a dead letter's relay-* headers say; a missing or unreadable header is None/empty."""

    vendor: str = ""
    reason: str = ""
    error: str = ""
    http_status: int | None = None
    attempts: int = 0
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    failed_at: datetime | None = None
    first_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return value.decode("utf-8", "replace")


def _count(text: str | None) -> int | None:
    """A non-negative decimal of at most 18 digits, else None (a header is not trusted input)."""
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


def _moment(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_headers(headers: Iterable[tuple[str | bytes | None, bytes | None]]) -> LetterHeaders:
    """Read the relay-* headers of a DLQ record: null, non-UTF-8, missing and duplicate headers
    never raise (the last of a duplicated header wins, as the writer writes each once)."""
    found: dict[str, str | None] = {}
    for key, value in headers or ():
        name = _text(key)
        if name is not None and name.startswith(RELAY_PREFIX):
            found[name[len(RELAY_PREFIX) :]] = _text(value)
    return LetterHeaders(
        vendor=found.get("vendor") or "",
        reason=found.get("reason") or "",
        error=found.get("error") or "",
        http_status=_count(found.get("http-status")),
        attempts=_count(found.get("attempts")) or 0,
        source_topic=found.get("source-topic") or None,
        source_partition=_count(found.get("source-partition")),
        source_offset=_count(found.get("source-offset")),
        failed_at=_moment(found.get("failed-at")),
        first_attempt_at=_moment(found.get("first-attempt-at")),
        last_attempt_at=_moment(found.get("last-attempt-at")),
    )


class RecordProducer(Protocol):
    """The part of aiokafka's AIOKafkaProducer the writer uses."""

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        """Send one record and wait for the broker's acknowledgement."""
        ...


class _Warnings:
    """At most one warning per kind per interval; the ones held back are counted in the next."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args: Any, extra: dict[str, Any]) -> None:
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        suffix = f" ({held} more like it since the last warning)" if held else ""
        log.warning(message + suffix, *args, extra=extra)


def _fits(
    letter: DeadLetter, failed_at: datetime
) -> Iterator[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]]:
    """The letter as (key, value, headers), then ever smaller cuts of it for a DLQ that refuses
    it as too large: the value cut, then the value and the source headers dropped (the relay's
    own kept), then a stub without key that names the source coordinates."""
    src = letter.source
    relay = to_headers(msgspec.structs.replace(letter, source=_without_headers(src)), failed_at)
    full = to_headers(letter, failed_at)
    value = src.value
    size = len(value or b"")
    if src.key is None and value is None:
        value = b""  # a record needs a key or a value; the source's were both null
    yield src.key, value, full
    if size > TRUNCATED_VALUE_BYTES:
        cut = [*full, ("relay-value-truncated-from", str(size).encode())]
        yield src.key, (value or b"")[:TRUNCATED_VALUE_BYTES], cut
    dropped = [*relay, ("relay-value-truncated-from", str(size).encode())]
    dropped.append(("relay-truncated", b"value,headers"))
    if src.key is not None and len(src.key) <= STUB_KEY_BYTES:
        yield src.key, b"", dropped
    stub = [
        (name, value[:STUB_ERROR_BYTES] if name == "relay-error" and value else value)
        for name, value in relay
    ]
    stub += [
        ("relay-value-truncated-from", str(size).encode()),
        ("relay-truncated", b"value,headers,key"),
    ]
    yield None, b"", stub


def _without_headers(src: SourceRecord) -> SourceRecord:
    return msgspec.structs.replace(src, headers=())


class DeadLetterWriter:
    """Writes dead letters to the DLQ topic and returns only once the broker acknowledged.

    A letter the DLQ refuses as too large is cut down until it fits (`_fits`); any other
    failure is retried with exponential back-off. Every try awaits, so a letter that cannot be
    written holds its partition but never the event loop; warnings are rate-limited.
    """

    def __init__(
        self,
        producer: RecordProducer,
        topic: str,
        metrics: Metrics,
        retry_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        warn_every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._retry_backoff_s = retry_backoff_s
        self._max_backoff_s = max_backoff_s
        self._warnings = _Warnings(warn_every_s, clock)

    @property
    def topic(self) -> str:
        """The DLQ topic."""
        return self._topic

    async def write(self, letter: DeadLetter, extra: Sequence[tuple[str, bytes]] = ()) -> None:
        """Write one dead letter, retrying until acknowledged (cancellation leaves it unwritten);
        `extra` headers (a replay's write-back: relay-* ones its letter carried) go on every
        shape of it."""
        shapes = (
            (k, v, [*h, *extra]) if extra else (k, v, h)
            for k, v, h in _fits(letter, datetime.now(UTC))
        )
        key, value, headers = next(shapes)
        backoff_s = self._retry_backoff_s
        where = {"vendor": letter.vendor, "reason": letter.reason}
        while True:
            try:
                await self._producer.send_and_wait(
                    self._topic, value=value, key=key, headers=_wire(headers)
                )
            except MessageSizeTooLargeError as exc:
                smaller = next(shapes, None)
                if smaller is not None:
                    # Retrying the same bytes cannot help: cut the letter (the whole record
                    # stays in the source topic at relay-source-offset).
                    self._warnings.warn(
                        "too_large",
                        "dead letter of %d bytes too large for the DLQ topic; cut down to fit",
                        _bytes(key, value, headers),
                        extra=where,
                    )
                    key, value, headers = smaller
                    await asyncio.sleep(0)
                    continue
                backoff_s = await self._back_off(exc, backoff_s, letter.vendor, where)
                continue
            except KafkaError as exc:
                backoff_s = await self._back_off(exc, backoff_s, letter.vendor, where)
                continue
            self._metrics.dlq_writes.labels(letter.vendor, letter.reason).inc()
            return

    async def _back_off(
        self, exc: KafkaError, backoff_s: float, vendor: str, where: dict[str, Any]
    ) -> float:
        self._metrics.dlq_write_failures.labels(vendor).inc()
        self._warnings.warn(
            "failed", "dead letter write failed, retrying in %.1fs: %r", backoff_s, exc, extra=where
        )
        await asyncio.sleep(backoff_s)
        return min(self._max_backoff_s, backoff_s * 2)


def _bytes(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]) -> int:
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers)


def _wire(headers: list[tuple[str, bytes | None]]) -> list[tuple[str, bytes]]:
    """Headers as the producer takes them (a null header value stays null on the wire)."""
    return headers  # type: ignore[return-value]
