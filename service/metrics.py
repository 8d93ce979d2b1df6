"""Every metric of conversion-relay, defined once, on a registry passed in.

With `--workers N` each worker process writes its values to PROMETHEUS_MULTIPROC_DIR and the
supervisor serves them merged; each gauge says how (`multiprocess_mode`): in-flight, lag and
partitions add up over workers, states (paused, breaker, fallback) take the worst.

Labels are a small fixed set (vendor, outcome, reason, topic, partition, status_class); no event
ids or other unbounded values ever become labels.

Process metrics (`process_*`: CPU, RSS, open fds) come from prometheus_client's ProcessCollector
in a single process; with `--workers N` the supervisor reads each worker's /proc entry at scrape
time instead (service/workers.py), one series per `worker`. Garbage collections
(`python_gc_*_total`) are counted by a gc callback into counters, so they add up across workers.
"""

from __future__ import annotations

import contextlib
import gc
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

PREFIX = "conversion_relay"
# HTTP round trips to vendors: 5 ms to 30 s.
REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Event time to delivery: from a few ms (live) to a day (replay of a backlog).
END_TO_END_BUCKETS_S = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    21600.0,
    86400.0,
)
OUTCOMES = (
    "delivered",
    "rejected",
    "retried",
    "skipped",
    "deduplicated",
    "dead_lettered",
    "expired",
)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
TRACE_DROP_REASONS = ("queue_full", "export_failed")


class BatchedCounter:
    """A counter child on the hot path: `inc` adds to a plain number, `flush` hands it over.

    prometheus_client takes a lock per increment (an mmap write per increment with `--workers`);
    a delivery makes several, so they are summed here and added in one call per flush.
    """

    __slots__ = ("_child", "pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Count `amount` (added to the metric at the next flush)."""
        self.pending += amount

    def flush(self) -> None:
        """Add what was counted since the last flush to the metric."""
        if self.pending:
            amount, self.pending = self.pending, 0.0
            self._child.inc(amount)


class BatchedHistogram:
    """A histogram child on the hot path: observations kept as bucket counts until `flush`."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        # prometheus_client's own bounds (+Inf last) and per-bucket (not cumulative) values.
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        """Observe `amount` (added to the metric at the next flush)."""
        # bisect_left finds the first bound >= amount: the bucket `amount <= bound` picks.
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        """Add the observations since the last flush to the metric."""
        counts = self._counts
        if not any(counts):
            return
        buckets = self._child._buckets
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)
                counts[index] = 0
        amount, self._sum = self._sum, 0.0
        self._child._sum.inc(amount)


class _FlushFirst(Collector):
    """Registered before every metric: a scrape flushes the batched children, then reads."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def collect(self) -> Iterable[Metric]:
        """Flush; yields no metric of its own."""
        self._flush()
        return ()


class Metrics:
    """The metric catalogue; one instance per process (tests make their own registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = PREFIX
        self._batched: list[BatchedCounter | BatchedHistogram] = []
        # First in the registry, so every scrape (and get_sample_value) sees flushed values.
        r.register(_FlushFirst(self.flush))
        # The version, git sha and vendors (comma-separated, sorted) of the running relay. The
        # dashboard and the alert rules recognise relay targets by this series, whatever their job
        # is called.
        # A gauge of 1 rather than an Info: Info does not work across worker processes.
        self.build_info = Gauge(
            f"{p}_build_info",
            "Version, git sha and vendors (comma-separated) of the running relay (always 1).",
            ["version", "git_sha", "vendors"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # Kafka records fetched by each vendor's pipeline.
        self.events_consumed = Counter(
            f"{p}_events_consumed_total",
            "Kafka records fetched, per vendor pipeline and topic.",
            ["vendor", "topic"],
            registry=r,
        )
        self.events_decoded = Counter(
            f"{p}_events_decoded_total",
            "Records decoded into valid conversion events.",
            ["vendor"],
            registry=r,
        )
        # Records that are not valid events (`reason`: `not_json`, `schema` or `too_large`). They go
        # to the DLQ as `invalid_event`.
        self.events_invalid = Counter(
            f"{p}_events_invalid_total",
            "Records that are not valid conversion events.",
            ["vendor", "reason"],
            registry=r,
        )
        # Delivery outcomes. `delivered`: the vendor accepted it. `rejected`: the vendor refused it
        # (4xx, error body), so it was dead-lettered. `retried`: one more attempt is scheduled (this
        # outcome is not terminal). `skipped`: not for this vendor on purpose. `deduplicated`:
        # already delivered. `dead_lettered`: retries were exhausted. `expired`: older than
        # `max_event_age_s`, so it was dead-lettered.
        self.deliveries = Counter(
            f"{p}_deliveries_total",
            "Terminal and retry outcomes of deliveries, per vendor.",
            ["vendor", "outcome"],
            registry=r,
        )
        # Events not sent to a vendor on purpose: `no_route` (no goal mapping), `not_listed` (the
        # event's `vendors` leaves this vendor out), `missing_identity` (no customer id this vendor
        # needs), `tombstone` (a null value: Kafka's deletion marker, not an event).
        self.skipped = Counter(
            f"{p}_skipped_total",
            "Events not sent to a vendor on purpose, by reason.",
            ["vendor", "reason"],
            registry=r,
        )
        # HTTP requests sent to vendors, by `2xx`/`3xx`/`4xx`/`5xx`, or `error` (timeout,
        # connection).
        self.http_requests = Counter(
            f"{p}_http_requests_total",
            "HTTP requests sent to vendors, by status class.",
            ["vendor", "status_class"],
            registry=r,
        )
        # Requests the transport sent a second time by itself (the h1 transport only): a kept-alive
        # connection closed after it was taken from the pool and before the request was written,
        # so the server cannot have read it. A written request is never re-sent this way.
        self.transport_resends = Counter(
            f"{p}_transport_resends_total",
            "Requests re-sent on a fresh connection, never having been written.",
            ["vendor"],
            registry=r,
        )
        # Round-trip time of vendor HTTP requests, 5 ms to 30 s buckets (`_bucket`, `_sum`,
        # `_count`).
        self.request_duration = Histogram(
            f"{p}_request_duration_seconds",
            "Vendor HTTP round-trip time.",
            ["vendor"],
            buckets=REQUEST_BUCKETS_S,
            registry=r,
        )
        # Time from the event's `occurred_at` (or its Kafka timestamp) to its delivery, 10 ms to 1
        # day buckets.
        self.end_to_end_latency = Histogram(
            f"{p}_end_to_end_latency_seconds",
            "From the event's occurred_at (or Kafka timestamp) to its delivery.",
            ["vendor"],
            buckets=END_TO_END_BUCKETS_S,
            registry=r,
        )
        # Records fetched but not yet terminal. At most `pipeline.max_in_flight` per replica.
        self.in_flight = Gauge(
            f"{p}_in_flight",
            "Records fetched and not yet terminal, per vendor.",
            ["vendor"],
            registry=r,
            multiprocess_mode="livesum",
        )
        # 1 while the pipeline has paused fetching: its in-flight cap was reached, or deliveries are
        # held (for example by an open breaker).
        self.paused = Gauge(
            f"{p}_paused",
            "1 while a vendor pipeline has paused fetching (in-flight cap).",
            ["vendor"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # Dead letters written. `reason` is one of `invalid_event`, `rejected`, `retries_exhausted`
        # or `expired`.
        self.dlq_writes = Counter(
            f"{p}_dlq_writes_total",
            "Dead letters written, per vendor and reason.",
            ["vendor", "reason"],
            registry=r,
        )
        # Failed attempts to write a dead letter. They are retried, and the offset waits.
        self.dlq_write_failures = Counter(
            f"{p}_dlq_write_failures_total",
            "Failed attempts to write a dead letter (retried).",
            ["vendor"],
            registry=r,
        )
        # Offset commits of the vendor's consumer group.
        self.commits = Counter(
            f"{p}_commits_total", "Offset commits, per vendor group.", ["vendor"], registry=r
        )
        self.commit_failures = Counter(
            f"{p}_commit_failures_total", "Offset commits that failed.", ["vendor"], registry=r
        )
        # Partition assignments the vendor's group received.
        self.rebalances = Counter(
            f"{p}_rebalances_total",
            "Partition assignments received, per vendor group.",
            ["vendor"],
            registry=r,
        )
        # Partitions currently assigned to this replica for the vendor.
        self.assigned_partitions = Gauge(
            f"{p}_assigned_partitions",
            "Partitions currently assigned, per vendor group.",
            ["vendor"],
            registry=r,
            multiprocess_mode="livesum",
        )
        # High watermark minus committed offset, for each vendor group and partition.
        self.consumer_lag = Gauge(
            f"{p}_consumer_lag",
            "High watermark minus committed offset, per vendor group.",
            ["vendor", "topic", "partition"],
            registry=r,
            multiprocess_mode="livesum",
        )
        # 1 while the Schema Registry of `avro` inputs cannot be reached (their records wait for
        # it: none is dead-lettered); 0 otherwise.
        self.schema_registry_down = Gauge(
            f"{p}_schema_registry_down",
            "1 while the Schema Registry is unreachable and records wait for their schemas.",
            registry=r,
            multiprocess_mode="livemax",
        )
        # Schema fetches from the registry by `result`: ok, unknown (40403) or error (down, slow,
        # refused).
        self.schema_registry_requests = Counter(
            f"{p}_schema_registry_requests_total",
            "Schema fetches from the Schema Registry, by result (ok, unknown, error).",
            ["result"],
            registry=r,
        )
        for result in ("ok", "unknown", "error"):  # every series exported from the start
            self.schema_registry_requests.labels(result)
        # 1 while the shared (Redis) rate limiter is unreachable and this replica limits on its own
        # share.
        self.ratelimit_fallback = Gauge(
            f"{p}_ratelimit_fallback",
            "1 while the shared (Redis) rate limit is unreachable and this replica limits alone.",
            ["vendor"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # 1 while an operator has paused the vendor fleet-wide (`conversion-relay vendor pause`):
        # the dashboard marks it and the no-deliveries alert stays quiet for it.
        self.vendor_paused = Gauge(
            f"{p}_vendor_paused",
            "1 while an operator has paused the vendor fleet-wide (control topic).",
            ["vendor"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # Total seconds requests spent waiting for the rate limiter. As a `rate()`, it is about the
        # number of requests waiting at any moment.
        self.ratelimit_wait_seconds = Counter(
            f"{p}_ratelimit_wait_seconds_total",
            "Seconds requests waited for the rate limiter.",
            ["vendor"],
            registry=r,
        )
        # Vendor-wide pauses ordered by a `Retry-After` answer (429/503).
        self.retry_after_pauses = Counter(
            f"{p}_retry_after_pauses_total",
            "Vendor-wide pauses ordered by a Retry-After answer.",
            ["vendor"],
            registry=r,
        )
        # How many requests the vendor may have in flight now (adaptive).
        self.concurrency_limit = Gauge(
            f"{p}_concurrency_limit",
            "Requests a vendor may have in flight now (adaptive).",
            ["vendor"],
            registry=r,
            multiprocess_mode="livesum",
        )
        # Circuit breaker state: 0 closed, 1 half-open, 2 open.
        self.breaker_state = Gauge(
            f"{p}_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["vendor"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # Pipeline tasks (`worker`, `fetch`, `commit`, `lag`) that died with an error; each is
        # logged with its traceback and restarted, and `/readyz` is 503 meanwhile. Any increase is a
        # bug to report.
        self.task_failures = Counter(
            f"{p}_task_failures_total",
            "Pipeline tasks (worker, fetch, commit, lag) that died and were restarted.",
            ["vendor", "task"],
            registry=r,
        )
        # Records the Kafka client could not read (unparseable record, corrupt batch, undecodable
        # compression); each is dead-lettered as `unreadable_record` at its source coordinates.
        self.records_unreadable = Counter(
            f"{p}_records_unreadable_total",
            "Records the Kafka client could not read (dead-lettered as unreadable_record).",
            ["vendor", "topic"],
            registry=r,
        )
        # Trace spans lost (`tracing.enabled`): `queue_full` (more spans than max_queue_size
        # waiting: the collector is slow or down), `export_failed` (the collector refused them
        # or could not be reached within export_timeout_s). Delivery never waits for tracing.
        self.trace_spans_dropped = Counter(
            f"{p}_trace_spans_dropped_total",
            "Trace spans dropped instead of exported (queue full, export failed).",
            ["reason"],
            registry=r,
        )
        for reason in TRACE_DROP_REASONS:
            self.trace_spans_dropped.labels(reason)
        # Process metrics of this process (ignored by the --workers supervisor, which reads its
        # workers' /proc itself: a collector's values do not travel through the multiprocess files).
        ProcessCollector(registry=r)
        self.gc_collections = Counter(
            "python_gc_collections",
            "Garbage collections of this process, per generation.",
            ["generation"],
            registry=r,
        )
        self.gc_objects_collected = Counter(
            "python_gc_objects_collected",
            "Objects the garbage collector freed, per generation.",
            ["generation"],
            registry=r,
        )
        self.gc_objects_uncollectable = Counter(
            "python_gc_objects_uncollectable",
            "Objects the garbage collector found but could not free, per generation.",
            ["generation"],
            registry=r,
        )
        for generation in ("0", "1", "2"):
            self.gc_collections.labels(generation)
            self.gc_objects_collected.labels(generation)
            self.gc_objects_uncollectable.labels(generation)

    def drop_lag(self, vendor: str, topic: str, partition: int) -> None:
        """Forget a revoked partition's lag. Zeroed first: under `--workers` the process' file
        keeps the last value it was given, which the merged sum would go on counting."""
        labels = (vendor, topic, str(partition))
        try:
            child: Any = self.consumer_lag._metrics[labels]  # an existing sample, never a new one
        except KeyError:
            return  # never had a lag sample
        child.set(0)
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(*labels)

    def batched_counter(self, child: Any) -> BatchedCounter:
        """A hot-path view of a counter child, flushed on every scrape and by `flush()`."""
        batched = BatchedCounter(child)
        self._batched.append(batched)
        return batched

    def batched_histogram(self, child: Any) -> BatchedHistogram:
        """A hot-path view of a histogram child, flushed on every scrape and by `flush()`."""
        batched = BatchedHistogram(child)
        self._batched.append(batched)
        return batched

    def flush(self) -> None:
        """Hand every batched count to its metric (scrapes do; each pipeline's fetch loop does
        once per fetch, so `--workers` files, read by the supervisor, stay within ~0.2 s)."""
        for batched in self._batched:
            batched.flush()

    def watch_gc(self) -> Callable[[], None]:
        """Count this process's garbage collections from now on; returns the function to stop."""

        # Batched: the callback only adds to plain numbers. A collection can start inside
        # prometheus_client while it holds its (non-reentrant) multiprocess lock, e.g. creating
        # a labelled child under `--workers`; an increment from the callback then deadlocked.
        counters = {
            generation: (
                self.batched_counter(self.gc_collections.labels(str(generation))),
                self.batched_counter(self.gc_objects_collected.labels(str(generation))),
                self.batched_counter(self.gc_objects_uncollectable.labels(str(generation))),
            )
            for generation in range(3)
        }

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if phase != "stop":
                return
            collections, collected, uncollectable = counters[info["generation"]]
            collections.inc()
            if info["collected"]:
                collected.inc(info["collected"])
            if info["uncollectable"]:
                uncollectable.inc(info["uncollectable"])

        gc.callbacks.append(on_gc)
        return lambda: gc.callbacks.remove(on_gc)
