"""What the pipelines' consumers are told: the settings that decide fetch latency."""

from __future__ import annotations

import msgspec

from service.config import KafkaConfig
from service.kafka import consumer_kwargs


def kafka(**extra: object) -> KafkaConfig:
    return msgspec.convert({"bootstrap_servers": ["k:9092"], "topics": ["t"], **extra}, KafkaConfig)


def test_the_default_fetch_wait_keeps_a_non_waking_broker_under_the_latency_budget() -> None:
    """A broker that holds every fetch for fetch_max_wait_ms (Tansu does) makes it the latency
    floor: aiokafka's 500 ms default gave a p95 of ~250 ms; the relay's default stays at 25."""
    kwargs = consumer_kwargs(kafka(), "g")
    assert kwargs["fetch_max_wait_ms"] == 25


def test_fetch_max_wait_is_configurable() -> None:
    assert consumer_kwargs(kafka(fetch_max_wait_ms=200), "g")["fetch_max_wait_ms"] == 200


def test_a_fetch_brings_at_most_one_mebibyte_by_default() -> None:
    """aiokafka's 50 MiB default let each pipeline hold fetched bytes it could not deliver for
    a long while (five busy vendors peaked over the 150 MiB budget); 1 MiB is ~1,600 events."""
    assert consumer_kwargs(kafka(), "g")["fetch_max_bytes"] == 1024 * 1024
    assert consumer_kwargs(kafka(fetch_max_bytes=4096), "g")["fetch_max_bytes"] == 4096
