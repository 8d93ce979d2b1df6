"""The relay process: builds every pipeline from the config, serves HTTP, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from service import __version__
from service.config import Config
from service.core.activity import VendorActivity
from service.core.control import VendorControl
from service.core.inputs import Input, inputs_by_topic
from service.core.redact import redact
from service.delivery.control import ControlTopic
from service.delivery.dedup import DedupStore, make_dedup_store
from service.delivery.dlq import DeadLetterWriter
from service.delivery.h1 import H1Transport
from service.delivery.pipeline import VendorPipeline
from service.delivery.progress import GroupProgress, ProgressBook
from service.delivery.ratelimit import (
    LocalRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    partition_share,
)
from service.delivery.redis_config import redis_client
from service.delivery.registry import SchemaRegistryClient
from service.delivery.sender import Sender
from service.delivery.tracing import DeliveryTracer
from service.delivery.transport import Transport, make_transport
from service.http import start_http
from service.kafka import consumer_kwargs, producer_kwargs
from service.metrics import Metrics
from service.vendors import make_adapter
from service.vendors.base import VendorBase

log = logging.getLogger("conversion_relay.app")
_PRODUCER_START_TIMEOUT_S = 30.0
_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
# After the drain's grace, a pipeline's last commit and leaving its group get this long; then it is
# cancelled (what it did not commit is redelivered) with where it was logged, instead of the
# process waiting on a broker call without end until Kubernetes kills it silently (the chart's
# terminationGraceMarginSeconds, 10 s by default, leaves room for this).
STOP_SLACK_S = 8.0
# How long a starting relay reads the control topic before its pipelines start regardless.
_CONTROL_READ_TIMEOUT_S = 10.0
# While Kafka cannot be reached at start, one line per this many seconds says so (naming the
# bootstrap it tries), not a line per try.
UNREACHABLE_REPORT_EVERY_S = 30.0
_RETRY_DELAYS = "0.5-10 s"  # what _start_producer waits between tries, for the report


def unreachable_report(bootstrap: str, exc: BaseException, down_s: float) -> str:
    """The one line saying Kafka cannot be reached, what the relay does meanwhile, and since
    when (after the first report)."""
    why = (
        f"no answer within {_PRODUCER_START_TIMEOUT_S:g} s"
        if isinstance(exc, TimeoutError)
        else type(exc).__name__
    )
    since = f", unreachable for {down_s:.0f} s" if down_s >= 1 else ""
    return (
        f"cannot reach Kafka at {bootstrap} ({why}){since}; retrying every {_RETRY_DELAYS}, "
        f"not ready until it answers; next report in {UNREACHABLE_REPORT_EVERY_S:g} s"
    )


# /status's last_error_at and last_delivery_at are this precise; its minute rate, this smooth.
ACTIVITY_EVERY_S = 1.0
# Outcomes that are an error of the vendor (a failed attempt, a rejection, a dead end).
_ERROR_OUTCOMES = frozenset({"rejected", "retried", "dead_lettered"})


def _iso(epoch_s: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC with milliseconds (None stays None)."""
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


class _BootstrapTries(logging.Filter):
    """Drops aiokafka's line per failed connection try while the relay reports them itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for `Unable connect to ...` (aiokafka's per-try error)."""
        return not str(record.msg).startswith("Unable connect to")


async def _stop_producer(producer: Any) -> None:
    """Stop a producer that never started (bounded: it holds no connection worth waiting for)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), 1.0)


def awaiting(task: asyncio.Task[Any]) -> str:
    """Where a suspended task is: its whole chain of awaits, outermost first, as a traceback.

    `Task.print_stack` shows only the task's own coroutine frame; the call that does not return
    is at the other end of the chain (`cr_await`, or `gi_yieldfrom` through a generator).
    """
    frames = []
    step: Any = task.get_coro()
    while step is not None:
        frame = getattr(step, "cr_frame", None) or getattr(step, "gi_frame", None)
        if frame is None:
            break
        frames.append((frame, frame.f_lineno))
        step = getattr(step, "cr_await", None) or getattr(step, "gi_yieldfrom", None)
    lines = traceback.StackSummary.extract(frames).format()
    return f"{task.get_name()} (outermost call first):\n{''.join(lines)}".rstrip()


class Relay:
    """Every vendor pipeline of one process, their shared DLQ producer and the HTTP server."""

    def __init__(
        self, config: Config, vendors: list[str] | None = None, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        enabled = config.enabled_vendors()
        unknown = sorted(set(vendors or ()) - set(enabled))
        if unknown:
            raise ValueError(f"--vendor {', '.join(unknown)}: not an enabled vendor")
        self.vendor_names = [v for v in enabled if not vendors or v in vendors]
        self.metrics.build_info.labels(
            __version__, os.environ.get("GIT_SHA", "unknown"), ",".join(sorted(self.vendor_names))
        ).set(1)
        self.pipelines: dict[str, VendorPipeline] = {}
        self.http_port: int | None = None
        self._stop = asyncio.Event()
        self._transports: dict[str, Transport] = {}
        self._producer: Any = None
        self._dlq: DeadLetterWriter | None = None
        self._redis: Any = None
        self._limiter: RateLimiter | None = None
        self._dedup: DedupStore | None = None
        self._progress: ProgressBook | None = None
        # Each vendor's operator state from the control topic (`vendor pause` / `resume`).
        self.controls: dict[str, VendorControl] = {}
        self._control: ControlTopic | None = None
        self._control_task: asyncio.Task[None] | None = None
        self._resets_seen: set[str] = set()
        self._reset_tasks: set[asyncio.Task[None]] = set()
        self._activity = {name: VendorActivity() for name in self.vendor_names}
        self._started_s: float | None = None  # monotonic, when run() began
        self._started_at: float | None = None  # epoch seconds, the same moment
        # The Schema Registry of `avro` inputs (its session opens at the first schema fetched).
        self.schema_registry: SchemaRegistryClient | None = (
            SchemaRegistryClient(config.schema_registry, self.metrics)
            if config.schema_registry is not None
            else None
        )
        # Each `inputs:` topic's mapping, compiled once for every pipeline of the process.
        self.inputs: dict[str, Input] = inputs_by_topic(config.inputs, self.schema_registry)
        # Traces only when asked for: off, the OpenTelemetry SDK is not even imported.
        self.tracer: DeliveryTracer | None = (
            DeliveryTracer(config.tracing, self.metrics) if config.tracing.enabled else None
        )

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM and SIGINT do)."""
        if not self._stop.is_set():
            log.info("shutdown requested: draining")
        self._stop.set()
        for pipeline in self.pipelines.values():
            pipeline.stop()

    @property
    def stopping(self) -> bool:
        """Whether a shutdown has begun."""
        return self._stop.is_set()

    def pause_left_s(self, vendor: str) -> float:
        """Seconds left of the vendor's Retry-After pause in this process (0.0 when none)."""
        return self._limiter.pause_left_s(vendor) if self._limiter is not None else 0.0

    def not_ready_reasons(self) -> dict[str, str]:
        """Why the relay is not ready, per vendor; empty when ready."""
        if self.stopping:
            return {"relay": "shutting down"}
        reasons = {}
        for name in self.vendor_names:
            pipeline = self.pipelines.get(name)
            if pipeline is None:
                reasons[name] = "pipeline not started"
            elif not pipeline.joined:
                reasons[name] = "consumer has not joined its group"
            elif pipeline.down_tasks:
                reasons[name] = f"tasks died, restarting: {', '.join(pipeline.down_tasks)}"
            elif not pipeline.ready:
                reasons[name] = "Kafka group coordinator unreachable"
        return reasons

    def status(self) -> dict[str, Any]:
        """Per-vendor state for /status."""
        vendors: dict[str, Any] = {}
        for name, vendor in self.config.vendors.items():
            entry: dict[str, Any] = {"enabled": vendor.enabled, "running_here": False}
            pipeline = self.pipelines.get(name)
            if pipeline is not None:
                entry.update(
                    running_here=True,
                    ready=pipeline.ready,
                    assigned_partitions=[f"{tp.topic}:{tp.partition}" for tp in pipeline.assigned],
                    lag=pipeline.lag(),
                    in_flight=pipeline.in_flight,
                    in_flight_bytes=pipeline.in_flight_bytes,
                    window=pipeline.window,
                    paused=pipeline.paused,
                    breaker=pipeline.sender.breaker_state,
                    concurrency_limit=pipeline.sender.concurrency.limit,
                    concurrency_max=vendor.concurrency,
                    rate_limit_per_s=vendor.rate_limit.per_s if vendor.rate_limit else None,
                    last_error=redact(pipeline.last_error) if pipeline.last_error else None,
                )
            control = self.controls.get(name)
            entry["control"] = {
                "paused": bool(control and control.paused),
                "by": control.by if control else None,
                "reason": control.reason if control else None,
                "at": _iso(control.at_s) if control and control.at_s else None,
            }
            activity = self._activity.get(name)
            if activity is not None:
                entry.update(
                    last_error_at=_iso(activity.last_error_at),
                    last_delivery_at=_iso(activity.last_delivery_at),
                    delivered_last_60s=activity.delivered_in_window(),
                    delivered_per_s_last_60s=round(activity.per_s(), 3),
                )
            vendors[name] = entry
        uptime_s = time.monotonic() - self._started_s if self._started_s is not None else 0.0
        found = {
            "version": __version__,
            "ready": not self.not_ready_reasons(),
            "started_at": _iso(self._started_at),
            "uptime_s": round(uptime_s, 1),
            "vendors": vendors,
        }
        if self.schema_registry is not None:
            found["schema_registry"] = self.schema_registry.status()
        return found

    def sample_activity(self) -> None:
        """Note each vendor's deliveries and errors so far (for /status: when each last
        happened, and the last minute's deliveries)."""
        self.metrics.flush()
        delivered: dict[str, float] = {}
        errors: dict[str, float] = {}
        for family in (self.metrics.deliveries, self.metrics.task_failures):
            for metric in family.collect():
                for sample in metric.samples:
                    if not sample.name.endswith("_total"):
                        continue
                    vendor = sample.labels["vendor"]
                    outcome = sample.labels.get("outcome")
                    if outcome == "delivered":
                        delivered[vendor] = delivered.get(vendor, 0.0) + sample.value
                    elif outcome is None or outcome in _ERROR_OUTCOMES:
                        errors[vendor] = errors.get(vendor, 0.0) + sample.value
        now_s, wall_s = time.monotonic(), time.time()
        for name, activity in self._activity.items():
            pipeline = self.pipelines.get(name)
            activity.observe(
                now_s,
                wall_s,
                delivered.get(name, 0.0),
                errors.get(name, 0.0),
                pipeline.last_error if pipeline is not None else "",
            )

    async def _watch_activity(self) -> None:
        """Sample the activity every ACTIVITY_EVERY_S until stopped (off the hot path)."""
        while not self.stopping:
            self.sample_activity()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), ACTIVITY_EVERY_S)

    async def _until_stopped(self, step: Any) -> bool:
        """Await `step` unless a shutdown begins first (then cancel it): True if it finished."""
        task = asyncio.ensure_future(step)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            return False
        task.result()  # raises what the step raised
        return True

    async def _start_producer(self) -> None:
        delay_s = 0.5
        bootstrap = ",".join(self.config.kafka.bootstrap_servers)
        down_since_s: float | None = None
        reported_s = -math.inf
        # The relay reports an unreachable broker itself, once per interval; aiokafka would add
        # an ERROR line per try (every 0.5-10 s) for as long as it lasts.
        noise = _BootstrapTries()
        aiokafka_log = logging.getLogger("aiokafka")
        aiokafka_log.addFilter(noise)
        try:
            while not self.stopping:
                producer = AIOKafkaProducer(**producer_kwargs(self.config.kafka))
                try:
                    # Bounded: a broker that accepts the connection but never answers must not
                    # hold the relay silently before it even subscribes; and a shutdown
                    # (SIGTERM) ends the wait at once.
                    started = await self._until_stopped(
                        asyncio.wait_for(producer.start(), _PRODUCER_START_TIMEOUT_S)
                    )
                except (KafkaError, OSError, TimeoutError) as exc:
                    await _stop_producer(producer)
                    now_s = time.monotonic()
                    down_since_s = now_s if down_since_s is None else down_since_s
                    if now_s - reported_s >= UNREACHABLE_REPORT_EVERY_S:
                        reported_s = now_s
                        log.warning(unreachable_report(bootstrap, exc, now_s - down_since_s))
                    await self._until_stopped(asyncio.sleep(delay_s))
                    delay_s = min(10.0, delay_s * 2)
                    continue
                if not started:  # a shutdown began while connecting
                    await _stop_producer(producer)
                    return
                if down_since_s is not None:
                    log.info(
                        "Kafka at %s answers after %.0f s unreachable",
                        bootstrap,
                        time.monotonic() - down_since_s,
                    )
                log.info("DLQ producer connected; starting %d pipelines", len(self.vendor_names))
                self._producer = producer
                self._dlq = DeadLetterWriter(producer, self.config.dlq.topic, self.metrics)
                self._progress = ProgressBook(
                    self.config.kafka, None, make_producer=self._progress_producer
                )
                return
        finally:
            aiokafka_log.removeFilter(noise)

    async def _progress_producer(self) -> AIOKafkaProducer:
        """A started producer for the progress topic alone (never the DLQ producer)."""
        producer = AIOKafkaProducer(**producer_kwargs(self.config.kafka))
        try:
            await asyncio.wait_for(producer.start(), _PRODUCER_START_TIMEOUT_S)
        except BaseException:
            await _stop_producer(producer)
            raise
        return producer

    def _make_transport(self, name: str, vendor: VendorBase) -> Transport:
        """The vendor's transport, its transport-level re-sends counted."""
        transport = make_transport(name, vendor, self.config.http)
        if isinstance(transport, H1Transport):
            transport.on_resend = self.metrics.transport_resends.labels(name).inc
        return transport

    def make_pipeline(
        self,
        name: str,
        topics: list[str] | None = None,
        group: str | None = None,
        accept: Callable[[Any], str | None] | None = None,
        consumer: Any = None,
        dlq: DeadLetterWriter | None = None,
        progress: Any = None,
    ) -> VendorPipeline:
        """A vendor's pipeline: live topics and group by default; replay passes its own consumer
        (the letters to send only), dead-letter writer (write-backs) and progress store (its
        replay group's, service.delivery.replay)."""
        vendor = self.config.vendors[name]
        # One transport per vendor for the process' life: a restarted pipeline keeps its pool.
        transport = self._transports.get(name)
        if transport is None:
            transport = self._transports[name] = self._make_transport(name, vendor)
        assert self._limiter is not None, "start_shared() first"
        sender = Sender(
            name, make_adapter(name, vendor), transport, vendor, self.metrics, self._limiter
        )
        kafka = self.config.kafka
        live = topics is None and consumer is None  # not replay (it brings its own consumer)
        group = group or f"{kafka.group_prefix}.{name}"
        if consumer is None:
            consumer = AIOKafkaConsumer(**consumer_kwargs(kafka, group))
        if live:  # the live group's partition share is this process' share of the fleet
            self._limiter.set_share(name, partition_share(consumer, list(kafka.topics)))
        dlq = dlq or self._dlq
        assert dlq is not None
        # Live groups keep their progress above the commit point in Kafka; replay brings its
        # own store, which keeps its replay group's.
        if live and progress is None and self._progress is not None:
            progress = GroupProgress(consumer, group, self._progress)
        return VendorPipeline(
            name,
            vendor,
            sender,
            dlq,
            consumer,
            topics or list(kafka.topics),
            self.config.pipeline,
            self.metrics,
            accept=accept,
            dedup=self._dedup,
            progress=progress,
            inputs=self.inputs,
            tracer=self.tracer.for_vendor(name) if self.tracer is not None else None,
        )

    async def start_shared(self) -> None:
        """What every pipeline shares: DLQ producer, limiter, dedup store, vendor transports."""
        config = self.config
        limits = {name: vendor.rate_limit for name, vendor in config.vendors.items()}
        if config.redis is not None:
            self._redis = redis_client(config.redis)
            self._limiter = RedisRateLimiter.from_config(
                self._redis, limits, config.redis, self.metrics
            )
            log.info("rate limits and Retry-After pauses shared through Redis")
        else:
            self._limiter = LocalRateLimiter(limits, metrics=self.metrics)
            for name in self.vendor_names:  # never on a fallback: there is nothing shared
                self.metrics.ratelimit_fallback.labels(name).set(0)
        self._dedup = make_dedup_store(
            config.dedup, self._redis, config.redis.key_prefix if config.redis else ""
        )
        for name in self.vendor_names:  # now, so an unusable http.ca_bundle stops the start
            if name not in self._transports:
                vendor = config.vendors[name]
                self._transports[name] = self._make_transport(name, vendor)
                kind = vendor.transport or config.http.transport
                log.info("HTTP client: %s", kind, extra={"vendor": name})
        await self._start_producer()

    def vendor_paused(self, vendor: str) -> bool:
        """Whether an operator has paused this vendor fleet-wide."""
        control = self.controls.get(vendor)
        return bool(control and control.paused)

    def resend_marks(self, vendor: str) -> dict[TopicPartition, tuple[int, int]]:
        """The stretches an operator's backward reset sends again past dedup."""
        control = self.controls.get(vendor)
        marks = control.resend if control is not None else ()
        return {TopicPartition(t, p): (start, until) for t, p, start, until in marks}

    async def _start_control(self) -> None:
        """Read the control topic to its end (so a paused vendor starts paused), then follow it."""
        for name in self.vendor_names:
            self.metrics.vendor_paused.labels(name).set(0)
        control = self._control = ControlTopic(self.config.kafka)
        try:
            states = await asyncio.wait_for(control.read_all(), _CONTROL_READ_TIMEOUT_S)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning(
                "control topic %s not read (%r): vendors start unpaused until it is",
                control.topic,
                exc,
            )
            states = {}
        for state in states.values():
            self._on_control(state, live=False)
        self._control_task = asyncio.create_task(self._watch_control(control), name="control")

    async def _watch_control(self, control: ControlTopic) -> None:
        """Follow the control topic; if it cannot be read, try again (1 s doubling to 30 s),
        saying so at the first failure and then once per 30 s, not per try."""
        delay_s, reported_s = 1.0, -math.inf
        while not self.stopping:
            try:
                await control.watch(self._on_control)
            except Exception as exc:
                now_s = time.monotonic()
                if now_s - reported_s >= UNREACHABLE_REPORT_EVERY_S:
                    reported_s = now_s
                    log.warning(
                        "control topic %s not read (%r): pauses are not followed meanwhile; "
                        "trying again",
                        control.topic,
                        exc,
                    )
                await asyncio.sleep(delay_s)
                delay_s = min(30.0, delay_s * 2)

    def _on_control(self, state: VendorControl, live: bool = True) -> None:
        """A vendor's operator state: pause or resume its pipeline here; apply a reset once
        (only one arriving while this process runs: one read at start-up is history)."""
        name = state.vendor
        before = self.controls.get(name)
        self.controls[name] = state
        if name not in self.vendor_names:
            return
        self.metrics.vendor_paused.labels(name).set(1 if state.paused else 0)
        pipeline = self.pipelines.get(name)
        if pipeline is not None:
            pipeline.hold(state.paused)
            pipeline.set_resend(self.resend_marks(name))
        if before is None or before.paused != state.paused:
            what = "paused" if state.paused else "resumed"
            log.info(
                "vendor %s by %s%s",
                what,
                state.by or "?",
                f": {state.reason}" if state.reason else "",
                extra={"vendor": name},
            )
        reset = state.reset
        if reset is None or reset.id in self._resets_seen:
            return
        self._resets_seen.add(reset.id)
        if live and state.paused and pipeline is not None:
            offsets = {TopicPartition(t, p): o for t, p, o in reset.offsets}
            task = asyncio.create_task(self._apply_reset(pipeline, offsets), name="reset")
            self._reset_tasks.add(task)
            task.add_done_callback(self._reset_tasks.discard)

    async def _apply_reset(
        self, pipeline: VendorPipeline, offsets: dict[TopicPartition, int]
    ) -> None:
        try:
            await pipeline.apply_reset(offsets)
        except Exception as exc:  # the command sees the offsets unchanged and says so
            log.warning("offset reset failed: %r", exc, extra={"vendor": pipeline.vendor})

    async def close(self) -> None:
        """Close vendor transports, the producer and the Redis client."""
        if self._control_task is not None:
            self._control_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._control_task
            self._control_task = None
        if self._control is not None:
            await self._control.close()
            self._control = None
        transports, self._transports = list(self._transports.values()), {}
        await asyncio.gather(*(t.aclose() for t in transports), return_exceptions=True)
        if self._progress is not None:
            await self._progress.close()
            self._progress = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self.tracer is not None:  # last: the spans of the drain's deliveries go too
            await self.tracer.shutdown()
        if self.schema_registry is not None:
            await self.schema_registry.aclose()

    async def _stopped(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for the pipelines to drain and leave; cancel (and show) any that overrun."""
        limit_s = self.config.pipeline.shutdown_grace_s + STOP_SLACK_S
        done, pending = await asyncio.wait(tasks, timeout=limit_s)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: _supervise logs what it catches itself
        if not pending:
            return
        log.error(
            "%s still stopping %.0fs after the shutdown began; cancelled (records not yet "
            "committed will be redelivered). Where they were:\n%s",
            ", ".join(sorted(task.get_name() for task in pending)),
            limit_s,
            "\n".join(awaiting(task) for task in pending),
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _supervise(self, name: str) -> None:
        """Run a vendor's pipeline; if it fails (e.g. the broker vanished), start a fresh one."""
        failures = 0
        while not self.stopping:
            pipeline = self.pipelines[name] = self.make_pipeline(name)
            pipeline.hold(self.vendor_paused(name))
            pipeline.set_resend(self.resend_marks(name))
            try:
                await pipeline.run()
                failures = 0
            except Exception as exc:
                delay_s = _RESTART_BACKOFF_S[min(failures, len(_RESTART_BACKOFF_S) - 1)]
                failures += 1
                pipeline.last_error = repr(exc)[:300]
                log.warning(
                    "pipeline failed (%r); restarting in %.1fs",
                    exc,
                    delay_s,
                    extra={"vendor": name},
                )
                await asyncio.sleep(delay_s)

    async def run(
        self, install_signals: bool = True, on_ready: Callable[[Relay], None] | None = None
    ) -> int:
        """Run until stopped; returns the process exit code."""
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        http = self.config.http
        runner = await start_http(self, http.host, http.port)
        self.http_port = runner.addresses[0][1] if runner.addresses else http.port
        log.info("serving / /livez /readyz /metrics /status on port %s", self.http_port)
        if on_ready is not None:
            on_ready(self)
        stop_gc_count = self.metrics.watch_gc()
        self._started_s, self._started_at = time.monotonic(), time.time()
        watching = asyncio.create_task(self._watch_activity(), name="activity")
        try:
            await self.start_shared()
            if not self.stopping:
                await self._start_control()
            tasks = [
                asyncio.create_task(self._supervise(n), name=f"pipeline {n}")
                for n in self.vendor_names
            ]
            await self._stop.wait()
            await self._stopped(tasks)
        finally:
            watching.cancel()
            stop_gc_count()
            await self.close()
            await runner.cleanup()
        log.info("stopped")
        return 0
