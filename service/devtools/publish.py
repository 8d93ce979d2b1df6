"""Publish events to a topic: a JSON Lines file (sent byte for byte) or generated samples."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer


class _Keyed(msgspec.Struct):
    event_id: str


_key_decoder = msgspec.json.Decoder(_Keyed)


def record_key(line: bytes) -> bytes | None:
    """The event id as the record key (same customer event, same partition), if readable."""
    try:
        return _key_decoder.decode(line).event_id.encode()
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def publish(
    bootstrap: str,
    topic: str,
    lines: Iterable[bytes],
    client: dict[str, Any] | None = None,
    raw: bool = False,
) -> int:
    """Send every non-empty line as one record; returns how many were sent. `client` adds
    connection settings (security) from a config; `raw`: values sent as they are (binary, e.g.
    Avro), none stripped or skipped, no key."""
    kwargs = {**(client or {}), "bootstrap_servers": bootstrap}
    producer = AIOKafkaProducer(**kwargs, acks="all", linger_ms=5)
    sent = 0
    try:
        await producer.start()
        batch = []
        for line in lines:
            if not raw:
                line = line.strip()
                if not line:
                    continue
            key = None if raw else record_key(line)
            batch.append(await producer.send(topic, value=line, key=key))
            sent += 1
            if len(batch) >= 1000:
                for future in batch:
                    await future
                batch.clear()
        for future in batch:
            await future
    finally:
        await producer.stop()
    return sent
