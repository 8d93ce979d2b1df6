"""Delivery traces with the OpenTelemetry SDK, exported over OTLP/HTTP (`tracing.enabled`).

Per vendor and event, one span (`deliver <vendor>`, kind CONSUMER) from its first try to its end
(delivered, dead-lettered, abandoned), the child of the record's W3C `traceparent` when it has
one; under it one span per try (`attempt <vendor>`, kind CLIENT) from the try's start (breaker,
pause, gate and rate token included) to the vendor's answer. Attributes: service/core/tracing.py.

Spans end into the SDK's BatchSpanProcessor: a bounded queue (`max_queue_size`) emptied by its own
thread. Delivery never waits for it: a full queue drops the span, a failed export drops its batch,
both counted in `conversion_relay_trace_spans_dropped_total` (one warning when exports start
failing, one when they work again: a collector that is down costs a counter, not a log storm).

This module imports the SDK only when a `DeliveryTracer` is built, so with tracing off (the
default) no process ever loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from service import __version__
from service.config import TracingConfig
from service.core.exchange import Decision, DecisionKind, VendorRequest
from service.core.tracing import (
    attempt_attributes,
    event_end_attributes,
    record_attributes,
    record_traceparent,
)
from service.metrics import Metrics

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.trace import Span, Tracer

    from service.delivery.pipeline import Work
    from service.delivery.sender import Sender

__all__ = ["DeliveryTracer", "VendorTracer"]

log = logging.getLogger("conversion_relay.tracing")
# The SDK logs every failed export try and every dropped span; the counter and this module's
# one warning per failing stretch say it instead.
_QUIET_LOGGERS = ("opentelemetry.exporter.otlp", "opentelemetry.sdk._shared_internal")
# After the export timeout, the stop waits this much longer for the exporter to give up.
_STOP_SLACK_S = 1.0


class _DropCounter:
    """The BatchSpanProcessor's own drop notices (queue full, after shutdown), counted."""

    def __init__(self, metrics: Metrics) -> None:
        self._queue_full = metrics.trace_spans_dropped.labels("queue_full")

    def register_queue_size(self, get_queue_size: Any) -> None:
        """(The SDK's queue-size gauge: not kept.)"""

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        """Spans the queue could not take."""
        self._queue_full.inc(count)

    def finish_items(self, count: int) -> None:
        """(Spans handed to the exporter: not counted.)"""


def _counting_exporter(inner: SpanExporter, metrics: Metrics) -> SpanExporter:
    """`inner`, with each batch it fails to export counted as dropped spans."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    failed = metrics.trace_spans_dropped.labels("export_failed")

    class CountingExporter(SpanExporter):
        """Counts what the wrapped exporter loses; warns once per failing stretch."""

        def __init__(self) -> None:
            self.failing = False
            self._closed = False

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            try:
                result = inner.export(spans)
            except Exception:  # an exporter bug must not end the export thread either
                result = SpanExportResult.FAILURE
            if result is SpanExportResult.SUCCESS:
                if self.failing:
                    self.failing = False
                    log.info("trace export works again")
                return result
            failed.inc(len(spans))
            if not self.failing:
                self.failing = True
                log.warning(
                    "trace export failing: spans are dropped and counted in "
                    "conversion_relay_trace_spans_dropped_total; delivery goes on"
                )
            return result

        def shutdown(self) -> None:
            if not self._closed:  # called by the stop's timeout and by the SDK's shutdown
                self._closed = True
                inner.shutdown()

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return inner.force_flush(timeout_millis)

    return CountingExporter()


class DeliveryTracer:
    """The process' tracer provider, batch processor and exporter (one per Relay)."""

    def __init__(
        self, config: TracingConfig, metrics: Metrics, exporter: SpanExporter | None = None
    ) -> None:
        """Build the SDK pipeline; `exporter` replaces OTLP/HTTP to `config.endpoint`."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self.config = config
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.endpoint, timeout=config.export_timeout_s)
        self._exporter = _counting_exporter(exporter, metrics)
        processor = BatchSpanProcessor(
            self._exporter,
            max_queue_size=config.max_queue_size,
            schedule_delay_millis=config.export_interval_s * 1000,
            max_export_batch_size=config.max_export_batch_size,
            export_timeout_millis=config.export_timeout_s * 1000,
        )
        # The SDK counts its drops into OpenTelemetry metrics only (off unless its internal
        # metrics are enabled); its hook for them is where Prometheus hears of them.
        inner = getattr(processor, "_batch_processor", None)
        if inner is not None and hasattr(inner, "_metrics"):
            inner._metrics = _DropCounter(metrics)
        else:  # pragma: no cover - an SDK other than the pinned one
            log.warning("this OpenTelemetry SDK hides queue drops: they are not counted")
        self.provider: TracerProvider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            resource=Resource.create(
                {"service.name": config.service_name, "service.version": __version__}
            ),
        )
        self.provider.add_span_processor(processor)

    def for_vendor(self, vendor: str) -> VendorTracer:
        """The tracer of one vendor's pipeline."""
        return VendorTracer(vendor, self.provider.get_tracer("conversion_relay", __version__))

    async def shutdown(self) -> None:
        """Export what is queued, bounded: a collector that does not answer delays the stop by
        about twice export_timeout_s (+2 s) at most, however many spans wait (then they are
        dropped, counted)."""
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def shut() -> None:
            try:
                self.provider.shutdown()
            finally:
                # After the timeout the loop may be gone: nobody waits for this any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(done.set)

        # A daemon thread, not the loop's executor: the loop's close would wait for it.
        threading.Thread(target=shut, name="trace-shutdown", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.export_timeout_s + _STOP_SLACK_S):
                await done.wait()
        if done.is_set():
            return
        # Still exporting to a collector that does not answer: the exporter gives up now (its
        # request in flight ends within its timeout), what is left fails at once and is counted.
        self._exporter.shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.export_timeout_s + _STOP_SLACK_S):
                await done.wait()
        log.warning("trace export still busy at stop: the spans left were dropped")


class VendorTracer:
    """Spans of one vendor's deliveries: `deliver` wraps `Sender.deliver`."""

    def __init__(self, vendor: str, tracer: Tracer) -> None:
        from opentelemetry import context, trace

        self.vendor = vendor
        self._tracer = tracer
        self._event_name = f"deliver {vendor}"
        self._attempt_name = f"attempt {vendor}"
        self._empty = context.Context()  # never the ambient context: each record its own trace
        self._in_context = trace.set_span_in_context
        self._remote = trace.NonRecordingSpan
        self._span_context = trace.SpanContext
        self._flags = trace.TraceFlags
        self._consumer, self._client = trace.SpanKind.CONSUMER, trace.SpanKind.CLIENT
        self._error = trace.Status(trace.StatusCode.ERROR)

    def _parent(self, record: Any) -> Context:
        """The record's traceparent as a remote parent, else an empty context (a new trace)."""
        parent = record_traceparent(record.headers)
        if parent is None:
            return self._empty
        remote = self._span_context(
            trace_id=parent.trace_id,
            span_id=parent.span_id,
            is_remote=True,
            trace_flags=self._flags(1 if parent.sampled else 0),
        )
        return self._in_context(self._remote(remote), self._empty)

    def _event(self, work: Work) -> Span:
        """The event's span, started at its first try (kept on the work across retries)."""
        span: Span | None = work.span
        if span is None:
            record = work.record
            span = work.span = self._tracer.start_span(
                self._event_name, context=self._parent(record), kind=self._consumer
            )
            if span.is_recording():  # an unsampled span is not given what it would drop
                span.set_attributes(
                    record_attributes(self.vendor, record.topic, record.partition, record.offset)
                )
        return span

    async def deliver(self, sender: Sender, request: VendorRequest, work: Work) -> Decision:
        """`sender.deliver` of one try, in an attempt span under the event's span; the event's
        span ends with the try that ends the event (anything but a retry)."""
        event = self._event(work)
        if not event.is_recording():  # not sampled: nor are its tries (parent-based)
            decision = await sender.deliver(request, work, work.is_current)
            if decision.kind is not DecisionKind.RETRY:
                work.span = None
            return decision
        record = work.record
        before = work.count
        attempt = self._tracer.start_span(
            self._attempt_name,
            context=self._in_context(event, self._empty),
            kind=self._client,
            attributes=record_attributes(
                self.vendor, record.topic, record.partition, record.offset
            ),
        )
        decision = await sender.deliver(request, work, work.is_current)
        outcome = decision.outcome
        if work.count > before:  # a request went out (an abandoned try sent nothing: no span)
            attempt.set_attributes(attempt_attributes(work.count, outcome))
            if decision.kind is not DecisionKind.DELIVERED:
                attempt.set_status(self._error)
            attempt.end()
        if decision.kind is not DecisionKind.RETRY:
            event.set_attributes(event_end_attributes(decision, work.count))
            if decision.kind is DecisionKind.DEAD_LETTER:
                event.set_status(self._error)
            event.end()
            work.span = None
        return decision
