"""The relay process: builds every pipeline from the config, serves HTTP, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import traceback
from collections.abc import Callable
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from service import __version__
from service.config import Config
from service.core.redact import redact
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
from service.delivery.replay import (
    LetterFilter,
    ReplayConsumer,
    ReplayPlan,
    WriteBackWriter,
    plan_replay,
    wait_done,
)
from service.delivery.sender import Sender
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
            vendors[name] = entry
        return {"version": __version__, "ready": not self.not_ready_reasons(), "vendors": vendors}

    async def _start_producer(self) -> None:
        delay_s = 0.5
        while not self.stopping:
            producer = AIOKafkaProducer(**producer_kwargs(self.config.kafka))
            try:
                # Bounded: a broker that accepts the connection but never answers must not
                # hold the relay silently before it even subscribes.
                await asyncio.wait_for(producer.start(), _PRODUCER_START_TIMEOUT_S)
            except (KafkaError, TimeoutError) as exc:
                await producer.stop()
                log.warning("Kafka unavailable for the DLQ producer (%r); retrying", exc)
                await asyncio.sleep(delay_s)
                delay_s = min(10.0, delay_s * 2)
                continue
            log.info("DLQ producer connected; starting %d pipelines", len(self.vendor_names))
            self._producer = producer
            self._dlq = DeadLetterWriter(producer, self.config.dlq.topic, self.metrics)
            self._progress = ProgressBook(
                self.config.kafka, None, make_producer=self._progress_producer
            )
            return

    async def _progress_producer(self) -> AIOKafkaProducer:
        """A started producer for the progress topic alone (never the DLQ producer)."""
        producer = AIOKafkaProducer(**producer_kwargs(self.config.kafka))
        try:
            await asyncio.wait_for(producer.start(), _PRODUCER_START_TIMEOUT_S)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 1.0)
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
    ) -> VendorPipeline:
        """A vendor's pipeline: live topics and group by default; replay passes its own consumer
        (the planned letters only) and dead-letter writer (write-backs)."""
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
        # own consumer, whose commits are replay marks.
        progress = None
        if live and self._progress is not None:
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

    async def close(self) -> None:
        """Close vendor transports, the producer and the Redis client."""
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
        log.info("serving /livez /readyz /metrics /status on port %s", self.http_port)
        if on_ready is not None:
            on_ready(self)
        stop_gc_count = self.metrics.watch_gc()
        try:
            await self.start_shared()
            tasks = [
                asyncio.create_task(self._supervise(n), name=f"pipeline {n}")
                for n in self.vendor_names
            ]
            await self._stop.wait()
            await self._stopped(tasks)
        finally:
            stop_gc_count()
            await self.close()
            await runner.cleanup()
        log.info("stopped")
        return 0


REPLAY_WINDOW_PER_CONCURRENCY = 4
REPLAY_OUTCOMES = ("delivered", "rejected", "dead_lettered", "expired", "skipped", "deduplicated")


class Replay:
    """Re-delivers the planned dead letters to one vendor through its pipeline, then stops.

    The plan (end offsets taken at the start, the vendor's open letters matching the filter) is
    the same one `--dry-run` shows; nothing written during the run is read by it.
    """

    def __init__(
        self, config: Config, vendor: str, letters: LetterFilter, plan: ReplayPlan | None = None
    ) -> None:
        if vendor in config.vendors:
            # A short window in flight, so Ctrl-C finishes a few letters and stops promptly
            # (the rest stay open for the next run) instead of working off a long queue.
            window = max(2, REPLAY_WINDOW_PER_CONCURRENCY * config.vendors[vendor].concurrency)
            pipeline = msgspec.structs.replace(
                config.pipeline, max_in_flight=min(config.pipeline.max_in_flight, window)
            )
            config = msgspec.structs.replace(config, pipeline=pipeline)
        self.relay = Relay(config, vendors=[vendor])
        self.vendor = vendor
        self.letters = letters
        self.plan = plan
        self._consumer: ReplayConsumer | None = None
        self._stop = asyncio.Event()

    @property
    def total(self) -> int | None:
        """How many letters this run replays (None until planned)."""
        return len(self.plan.letters) if self.plan is not None else None

    @property
    def done(self) -> int:
        """Letters finished (delivered, skipped or written back) and marked so far."""
        return self._consumer.done if self._consumer is not None else 0

    def counts(self) -> dict[str, int]:
        """Outcomes so far, from the relay's own metrics."""
        sample = self.relay.metrics.registry.get_sample_value
        return {
            o: int(
                sample("conversion_relay_deliveries_total", {"vendor": self.vendor, "outcome": o})
                or 0
            )
            for o in REPLAY_OUTCOMES
        }

    def stop(self) -> None:
        """Stop early: letters in flight finish and are marked; the rest wait for the next run."""
        self._stop.set()

    async def run(self) -> dict[str, int]:
        """Plan (unless given a plan), replay the planned letters, mark them, stop."""
        config = self.relay.config
        topic = config.dlq.topic
        if self.plan is None:
            self.plan = await plan_replay(config.kafka, topic, self.vendor, self.letters)
        if not self.plan.letters:
            return self.counts()
        await self.relay.start_shared()
        producer = self.relay._producer
        if producer is None:  # stopped before the broker answered
            await self.relay.close()
            return self.counts()
        consumer = self._consumer = ReplayConsumer(config.kafka, topic, self.plan, producer)
        pipeline = self.relay.make_pipeline(
            self.vendor,
            topics=[topic],
            consumer=consumer,
            dlq=WriteBackWriter(producer, topic, self.relay.metrics),
        )
        task = asyncio.create_task(pipeline.run())
        try:
            done = asyncio.create_task(wait_done(consumer, self._stop))
            await asyncio.wait({task, done}, return_when=asyncio.FIRST_COMPLETED)
            done.cancel()
        finally:
            pipeline.stop()
            await task
            await self.relay.close()
        return self.counts()
