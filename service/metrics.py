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

import gc
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

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


class Metrics:
    """The metric catalogue; one instance per process (tests make their own registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = PREFIX
        # A gauge of 1 rather than an Info: Info does not work across worker processes.
        self.build_info = Gauge(
            f"{p}_build_info",
            "Version, git sha and vendors (comma-separated) of the running relay (always 1).",
            ["version", "git_sha", "vendors"],
            registry=r,
            multiprocess_mode="livemax",
        )
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
        self.events_invalid = Counter(
            f"{p}_events_invalid_total",
            "Records that are not valid conversion events.",
            ["vendor", "reason"],
            registry=r,
        )
        self.deliveries = Counter(
            f"{p}_deliveries_total",
            "Terminal and retry outcomes of deliveries, per vendor.",
            ["vendor", "outcome"],
            registry=r,
        )
        self.skipped = Counter(
            f"{p}_skipped_total",
            "Events not sent to a vendor on purpose, by reason.",
            ["vendor", "reason"],
            registry=r,
        )
        self.http_requests = Counter(
            f"{p}_http_requests_total",
            "HTTP requests sent to vendors, by status class.",
            ["vendor", "status_class"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{p}_request_duration_seconds",
            "Vendor HTTP round-trip time.",
            ["vendor"],
            buckets=REQUEST_BUCKETS_S,
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            f"{p}_end_to_end_latency_seconds",
            "From the event's occurred_at (or Kafka timestamp) to its delivery.",
            ["vendor"],
            buckets=END_TO_END_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge(
            f"{p}_in_flight",
            "Records fetched and not yet terminal, per vendor.",
            ["vendor"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.paused = Gauge(
            f"{p}_paused",
            "1 while a vendor pipeline has paused fetching (in-flight cap).",
            ["vendor"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.dlq_writes = Counter(
            f"{p}_dlq_writes_total",
            "Dead letters written, per vendor and reason.",
            ["vendor", "reason"],
            registry=r,
        )
        self.dlq_write_failures = Counter(
            f"{p}_dlq_write_failures_total",
            "Failed attempts to write a dead letter (retried).",
            ["vendor"],
            registry=r,
        )
        self.commits = Counter(
            f"{p}_commits_total", "Offset commits, per vendor group.", ["vendor"], registry=r
        )
        self.commit_failures = Counter(
            f"{p}_commit_failures_total", "Offset commits that failed.", ["vendor"], registry=r
        )
        self.rebalances = Counter(
            f"{p}_rebalances_total",
            "Partition assignments received, per vendor group.",
            ["vendor"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            f"{p}_assigned_partitions",
            "Partitions currently assigned, per vendor group.",
            ["vendor"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.consumer_lag = Gauge(
            f"{p}_consumer_lag",
            "High watermark minus committed offset, per vendor group.",
            ["vendor", "topic", "partition"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ratelimit_fallback = Gauge(
            f"{p}_ratelimit_fallback",
            "1 while the shared (Redis) rate limit is unreachable and this replica limits alone.",
            ["vendor"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.ratelimit_wait_seconds = Counter(
            f"{p}_ratelimit_wait_seconds_total",
            "Seconds requests waited for the rate limiter.",
            ["vendor"],
            registry=r,
        )
        self.retry_after_pauses = Counter(
            f"{p}_retry_after_pauses_total",
            "Vendor-wide pauses ordered by a Retry-After answer.",
            ["vendor"],
            registry=r,
        )
        self.concurrency_limit = Gauge(
            f"{p}_concurrency_limit",
            "Requests a vendor may have in flight now (adaptive).",
            ["vendor"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.breaker_state = Gauge(
            f"{p}_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["vendor"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.task_failures = Counter(
            f"{p}_task_failures_total",
            "Pipeline tasks (worker, fetch, commit, lag) that died and were restarted.",
            ["vendor", "task"],
            registry=r,
        )
        self.records_unreadable = Counter(
            f"{p}_records_unreadable_total",
            "Records the Kafka client could not read (dead-lettered as unreadable_record).",
            ["vendor", "topic"],
            registry=r,
        )
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

    def watch_gc(self) -> Callable[[], None]:
        """Count this process's garbage collections from now on; returns the function to stop."""

        # Children resolved once: the callback runs on every collection, on the hot path.
        counters = {
            generation: (
                self.gc_collections.labels(str(generation)),
                self.gc_objects_collected.labels(str(generation)),
                self.gc_objects_uncollectable.labels(str(generation)),
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
