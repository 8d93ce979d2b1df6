"""Dead letters: the original record plus its story in `relay-*` headers, written until acked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from service.metrics import Metrics

log = logging.getLogger("conversion_relay.dlq")
RELAY_PREFIX = "relay-"
# What is kept of a value the DLQ topic refuses as too large.
TRUNCATED_VALUE_BYTES = 64 * 1024
# The documented set of dead-letter reasons.
REASONS = ("invalid_event", "rejected", "retries_exhausted", "expired")


class SourceRecord(msgspec.Struct, frozen=True):
    """Where a record came from and what it held, byte for byte."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


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


def to_headers(letter: DeadLetter, failed_at: datetime) -> list[tuple[str, bytes]]:
    """The original headers (minus earlier relay-* ones) followed by this dead letter's story."""
    src = letter.source
    headers = [(k, v) for k, v in src.headers if not k.startswith(RELAY_PREFIX)]
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


class DeadLetterWriter:
    """Writes dead letters to the DLQ topic and returns only once the broker acknowledged."""

    def __init__(
        self,
        producer: RecordProducer,
        topic: str,
        metrics: Metrics,
        retry_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._retry_backoff_s = retry_backoff_s
        self._max_backoff_s = max_backoff_s

    async def write(self, letter: DeadLetter) -> None:
        """Write one dead letter, retrying until acknowledged (cancellation leaves it unwritten)."""
        headers = to_headers(letter, datetime.now(UTC))
        value = letter.source.value
        backoff_s = self._retry_backoff_s
        while True:
            try:
                await self._producer.send_and_wait(
                    self._topic, value=value, key=letter.source.key, headers=headers
                )
            except MessageSizeTooLargeError:
                # Retrying cannot help: keep the letter (and the partition) moving with the value
                # cut short; the whole record stays in the source topic at relay-source-offset.
                size = len(value or b"")
                value = (value or b"")[:TRUNCATED_VALUE_BYTES]
                headers = [*headers, ("relay-value-truncated-from", str(size).encode())]
                log.warning(
                    "dead letter of %d bytes too large for the DLQ; value truncated",
                    size,
                    extra={"vendor": letter.vendor, "reason": letter.reason},
                )
                continue
            except KafkaError as exc:
                self._metrics.dlq_write_failures.labels(letter.vendor).inc()
                log.warning(
                    "dead letter write failed, retrying in %.1fs: %r",
                    backoff_s,
                    exc,
                    extra={"vendor": letter.vendor, "reason": letter.reason},
                )
                await asyncio.sleep(backoff_s)
                backoff_s = min(self._max_backoff_s, backoff_s * 2)
                continue
            self._metrics.dlq_writes.labels(letter.vendor, letter.reason).inc()
            return
