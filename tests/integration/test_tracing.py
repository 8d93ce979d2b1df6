"""Delivery traces end to end: a relay on the test broker exports its spans over OTLP/HTTP to a
collector the test runs (an aiohttp server on loopback decoding the protobuf bodies), continuing
each record's `traceparent`; a collector that is down costs a counter, never a delivery."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer

pytest.importorskip("opentelemetry.sdk.trace", reason="the `tracing` extra is not installed")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from service.app import Relay
from service.config import parse_config
from service.devtools.demo import sample_lines
from service.net import free_port
from tests.conftest import goal_reach_vendor, relay_config, wait_for

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guide" / "observability.md"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01".encode()
VENDOR = "sustain_impact"  # the sample events carry a customer id for it (goal reach needs one)


class Collector:
    """An OTLP/HTTP traces receiver: POST /v1/traces, protobuf in, every span kept."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[dict[str, Any]] = []
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _export(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.requests += 1
        for resource_spans in message.resource_spans:
            self.resources.append(_attributes(resource_spans.resource.attributes))
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{self.port}/v1/traces"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def named(self, prefix: str) -> list[Any]:
        return [span for span in self.spans if span.name.startswith(prefix)]


def _attributes(pairs: Any) -> dict[str, Any]:
    """OTLP KeyValues as a dict of plain values."""
    result: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        result[pair.key] = getattr(pair.value, kind) if kind else None
    return result


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    made = Collector()
    yield made
    await made.stop()


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, list[Any]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value, headers in records:
            await producer.send_and_wait(topic, value, headers=headers)
    finally:
        await producer.stop()


def _tracing(endpoint: str, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "endpoint": endpoint, "export_interval_s": 0.05, **extra}


def _sample(relay: Any, reason: str) -> float:
    value = relay.metrics.registry.get_sample_value(
        "conversion_relay_trace_spans_dropped_total", {"reason": reason}
    )
    return float(value or 0.0)


async def test_spans_continue_the_records_traceparent_one_attempt_span_per_try(
    broker, topics, sandbox_factory, run_relay, collector
):
    """A record with a traceparent: its event span is the producer span's child (same trace id,
    parent span id), with one attempt span per try under it (503, then 200); a record without
    one starts a trace of its own. Attributes name vendor, record and answer, nothing personal."""
    sandbox = await sandbox_factory()
    # The first request is answered 503, every later one goes through (no timing involved).
    sandbox.faults.error_rate = 0.5
    sandbox.rng = lambda: 0.0 if len(sandbox.request_times_s) <= 1 else 1.0
    endpoint = await collector.start()
    vendor = goal_reach_vendor(sandbox, retry={"initial_backoff_s": 0.05, "max_backoff_s": 0.1})
    config = relay_config(
        broker, topics, {VENDOR: vendor}, tracing=_tracing(endpoint, service_name="relay-test")
    )
    relay = await run_relay(config)
    traced, untraced = list(sample_lines(2))
    # One after the other, so the first request (the one answered 503) is the traced record's.
    await _produce(broker.bootstrap, topics.source, [(traced, [("traceparent", TRACEPARENT)])])
    await wait_for(lambda: len(sandbox.accepted) == 1, 30, "the traced event delivered")
    await _produce(broker.bootstrap, topics.source, [(untraced, [])])
    await wait_for(lambda: len(sandbox.accepted) == 2, 30, "both events delivered")
    await wait_for(lambda: len(collector.named("deliver")) == 2, 10, "both event spans exported")
    await wait_for(lambda: len(collector.named("attempt")) == 3, 10, "three attempt spans")

    by_trace: dict[str, list[Any]] = {}
    for span in collector.spans:
        by_trace.setdefault(span.trace_id.hex(), []).append(span)
    assert len(by_trace) == 2
    mine = by_trace.pop(TRACE_ID)
    (event,) = [s for s in mine if s.name == f"deliver {VENDOR}"]
    attempts = sorted(
        (s for s in mine if s.name == f"attempt {VENDOR}"),
        key=lambda s: _attributes(s.attributes)["conversion_relay.attempt"],
    )
    assert event.parent_span_id.hex() == PARENT_ID
    assert len(attempts) == 2
    assert all(a.parent_span_id == event.span_id for a in attempts)
    assert event.start_time_unix_nano <= attempts[0].start_time_unix_nano
    assert attempts[1].end_time_unix_nano <= event.end_time_unix_nano

    where = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": topics.source,
        "conversion_relay.vendor": VENDOR,
    }
    first, second = (_attributes(a.attributes) for a in attempts)
    ended = _attributes(event.attributes)
    for attributes in (first, second, ended):
        assert where.items() <= attributes.items()
        assert attributes["messaging.kafka.offset"] == ended["messaging.kafka.offset"]
    assert {k: first[k] for k in ("conversion_relay.attempt", "http.response.status_code")} == {
        "conversion_relay.attempt": 1,
        "http.response.status_code": 503,
    }
    assert (first["conversion_relay.outcome"], first["conversion_relay.reason"]) == (
        "retry",
        "http_503",
    )
    assert second["conversion_relay.outcome"] == "delivered"
    assert (second["conversion_relay.attempt"], second["http.response.status_code"]) == (2, 200)
    assert ended["conversion_relay.outcome"] == "delivered"
    assert ended["conversion_relay.attempts"] == 2
    assert attempts[0].status.code == 2 and event.status.code == 0  # ERROR, UNSET
    assert {a.kind for a in attempts} == {3} and event.kind == 5  # CLIENT, CONSUMER

    (other,) = by_trace.values()
    (root,) = [s for s in other if s.name == f"deliver {VENDOR}"]
    assert root.parent_span_id == b""  # no traceparent: a trace of its own
    assert collector.resources[0]["service.name"] == "relay-test"

    # Nothing of the records' contents: ids, emails, phones, the payload.
    payload = {json.loads(line)["event_id"] for line in (traced, untraced)}
    shown = repr([_attributes(s.attributes) for s in collector.spans])
    assert "@" not in shown and all(event_id not in shown for event_id in payload)
    customer = json.loads(traced)["customer"]
    for value in [*customer.values(), *customer["ids"].values()]:
        if isinstance(value, str):
            assert value not in shown
    # The guide's example is a span this test exported: the same keys, in the same order.
    # The guide's example is the first attempt span this test exported: the same attributes in
    # the same order (the topic's name, partition and offset are this run's own).
    documented = _guide_example()
    assert list(documented) == list(first)
    volatile = {"messaging.destination.name", "messaging.destination.partition.id"}
    assert {k: v for k, v in documented.items() if k not in volatile} == {
        k: v for k, v in first.items() if k not in volatile
    }
    assert _sample(relay, "queue_full") == _sample(relay, "export_failed") == 0


def _guide_example() -> dict[str, Any]:
    """The attempt span's attributes shown in docs/guide/observability.md."""
    text = GUIDE.read_text()
    start = text.index("```json\n", text.index("## Traces")) + len("```json\n")
    block = json.loads(text[start : text.index("```", start)])
    attributes: dict[str, Any] = block["attributes"]
    return attributes


async def test_a_collector_that_is_down_costs_a_counter_never_a_delivery(
    broker, topics, sandbox_factory, caplog
):
    """Exporting to a closed port: every event is delivered as fast as without tracing, the
    spans that cannot go are dropped and counted (full queue, failed export), and the stop
    waits no longer than the export timeout."""
    sandbox = await sandbox_factory()
    closed = f"http://127.0.0.1:{free_port()}/v1/traces"
    tracing = _tracing(closed, max_queue_size=4, max_export_batch_size=4, export_timeout_s=0.5)
    config = relay_config(broker, topics, {VENDOR: goal_reach_vendor(sandbox)}, tracing=tracing)
    relay = Relay(parse_config(config))
    task = asyncio.create_task(relay.run(install_signals=False))
    await wait_for(lambda: not relay.not_ready_reasons() or task.done(), 30, "relay ready")
    lines = list(sample_lines(45))
    # The purchases and signups (goal reach has no route for the sample's leads).
    events = sum(json.loads(line)["goal"] != "lead" for line in lines)
    started_s = time.monotonic()
    await _produce(broker.bootstrap, topics.source, [(line, []) for line in lines])
    await wait_for(lambda: len(sandbox.accepted) == events, 30, "every event delivered")
    delivered_s = time.monotonic() - started_s
    await wait_for(lambda: _sample(relay, "queue_full") > 0, 10, "full queue counted")
    await wait_for(lambda: _sample(relay, "export_failed") > 0, 10, "failed exports counted")
    assert delivered_s < 10, f"{events} deliveries took {delivered_s:.1f}s"

    stop_started_s = time.monotonic()
    relay.request_stop()
    assert await asyncio.wait_for(task, 30) == 0
    stopped_in_s = time.monotonic() - stop_started_s
    # The stop's own drain and leave, plus at most the export timeout and its slack.
    assert stopped_in_s < 10, f"stop took {stopped_in_s:.1f}s"
    # Every span (one per event, one per try) is accounted for: dropped, counted.
    spans = 2 * events
    assert _sample(relay, "queue_full") + _sample(relay, "export_failed") == spans
    # One warning for the whole stretch, none from the SDK per try or per span.
    failing = [r for r in caplog.records if r.getMessage().startswith("trace export failing")]
    assert len(failing) == 1
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]


async def test_sampling_is_parent_based_the_ratio_deciding_only_for_records_without_a_parent(
    broker, topics, sandbox_factory, collector
):
    """With `sample_ratio: 0`: a record whose traceparent says sampled is traced all the same,
    one that says not sampled is not, and one without a traceparent is not either."""
    sandbox = await sandbox_factory()
    endpoint = await collector.start()
    tracing = _tracing(endpoint, sample_ratio=0.0)
    config = relay_config(broker, topics, {VENDOR: goal_reach_vendor(sandbox)}, tracing=tracing)
    relay = Relay(parse_config(config))
    task = asyncio.create_task(relay.run(install_signals=False))
    await wait_for(lambda: not relay.not_ready_reasons() or task.done(), 30, "relay ready")
    sampled, unsampled, orphan = list(sample_lines(2)) + list(sample_lines(4))[3:]
    not_sampled = f"00-{'1' * 32}-{'2' * 16}-00".encode()
    records = [
        (sampled, [("traceparent", TRACEPARENT)]),
        (unsampled, [("traceparent", not_sampled)]),
        (orphan, []),
    ]
    await _produce(broker.bootstrap, topics.source, records)
    await wait_for(lambda: len(sandbox.accepted) == 3, 30, "every event delivered")
    relay.request_stop()
    assert await asyncio.wait_for(task, 30) == 0  # the stop exports whatever is queued
    assert {span.trace_id.hex() for span in collector.spans} == {TRACE_ID}
    assert sorted(span.name for span in collector.spans) == [
        f"attempt {VENDOR}",
        f"deliver {VENDOR}",
    ]


async def test_a_collector_that_never_answers_delays_the_stop_by_the_export_timeout_at_most(
    broker, topics, sandbox_factory
):
    """A collector that takes each export and never answers: deliveries go on, and the stop,
    with many spans still queued (each export would wait its full timeout), gives up on them
    after export_timeout_s (+1 s) instead of waiting for every one; they are counted."""
    handlers: list[asyncio.Task[Any]] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sandbox = await sandbox_factory()
    timeout_s = 1.0
    # One span per export request, each waiting the full timeout: ~1 s a span.
    tracing = _tracing(
        f"http://127.0.0.1:{port}/v1/traces",
        max_queue_size=64,
        max_export_batch_size=1,
        export_timeout_s=timeout_s,
    )
    config = relay_config(broker, topics, {VENDOR: goal_reach_vendor(sandbox)}, tracing=tracing)
    relay = Relay(parse_config(config))
    task = asyncio.create_task(relay.run(install_signals=False))
    try:
        await wait_for(lambda: not relay.not_ready_reasons() or task.done(), 30, "relay ready")
        lines = list(sample_lines(30))
        events = sum(json.loads(line)["goal"] != "lead" for line in lines)
        await _produce(broker.bootstrap, topics.source, [(line, []) for line in lines])
        await wait_for(lambda: len(sandbox.accepted) == events, 30, "every event delivered")
        # Twice as many spans as events, one export (of one span) a second: most still wait.
        stop_started_s = time.monotonic()
        relay.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
        stopped_in_s = time.monotonic() - stop_started_s
    finally:
        server.close()
        for handler in handlers:
            handler.cancel()
    assert stopped_in_s < 8, f"stop took {stopped_in_s:.1f}s"
    dropped = _sample(relay, "queue_full") + _sample(relay, "export_failed")
    assert dropped >= 2 * events - 4  # a few exports may have timed out before the stop
