"""`dlq replay` as a process: plan, join the vendor's replay group, feed its pipeline, stop.

The pipeline is the vendor's own (rate limiter, breaker, retries, expiry, dedup); its consumer
is a ReplaySource (service.delivery.replay), a member of the vendor's replay group that feeds
only the letters to send and keeps the group's progress exactly. On stop no new letter is fed or
sent; deliveries already started finish within `pipeline.shutdown_grace_s`, and what did not is
counted as left in flight.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from service.app import Relay
from service.config import Config
from service.delivery.replay import (
    LetterFilter,
    ReplayPlan,
    ReplaySource,
    WriteBackWriter,
    plan_replay,
)

REPLAY_WINDOW_PER_CONCURRENCY = 4
# The in-memory dedup store of a replay remembers this many windows of deliveries (at least
# 15/16 of them), not every letter: each letter is sent once by the replay group's progress
# (service.core.replay_lane); the store only has to catch a letter fed again in this process
# (its partition revoked and assigned back before its progress was committed), which is at
# most what was in flight and finished since the last commit. Redis (shared) is left as it is.
REPLAY_DEDUP_WINDOWS = 16
# The summary's outcomes, in order; a letter written back counts under its new reason.
OUTCOMES = (
    "delivered",
    "skipped",
    "deduplicated",
    "rejected",
    "dead_lettered",
    "expired",
    "invalid",
    "left",
)
FAILED = ("rejected", "dead_lettered", "expired", "invalid")
_WRITE_BACK_OUTCOME = {
    "rejected": "rejected",
    "retries_exhausted": "dead_lettered",
    "expired": "expired",
    "invalid_event": "invalid",
    "unreadable_record": "invalid",
    "unknown_schema": "invalid",
    "undecodable": "invalid",
}


class Replay:
    """Re-delivers a vendor's open dead letters matching a filter, as one replay group member."""

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
            dedup = config.dedup
            if dedup.backend == "memory":
                remembered = REPLAY_DEDUP_WINDOWS * pipeline.max_in_flight
                dedup = msgspec.structs.replace(
                    dedup, max_entries=min(dedup.max_entries, remembered)
                )
            config = msgspec.structs.replace(config, pipeline=pipeline, dedup=dedup)
        self.relay = Relay(config, vendors=[vendor])
        self.vendor = vendor
        self.letters = letters
        self.plan = plan
        self.source: ReplaySource | None = None
        self._writer: WriteBackWriter | None = None
        self._stop = asyncio.Event()

    @property
    def total(self) -> int | None:
        """How many letters the plan counted (None until planned)."""
        return self.plan.count if self.plan is not None else None

    @property
    def done(self) -> int:
        """Letters this run finished (delivered, skipped or written back) and committed."""
        return self.source.sent if self.source is not None else 0

    @property
    def waiting(self) -> bool:
        """Joined, but another replay of this vendor holds every partition so far."""
        source = self.source
        return source is not None and not source.assigned_once

    def counts(self) -> dict[str, int]:
        """Every outcome so far: the pipeline's metrics, write-backs by new reason, and the
        letters fed but unfinished when the run stopped (`left`)."""
        sample = self.relay.metrics.registry.get_sample_value
        result = dict.fromkeys(OUTCOMES, 0)
        for outcome in ("delivered", "skipped", "deduplicated"):
            labels = {"vendor": self.vendor, "outcome": outcome}
            result[outcome] = int(sample("conversion_relay_deliveries_total", labels) or 0)
        if self._writer is not None:
            for reason, n in self._writer.reasons.items():
                result[_WRITE_BACK_OUTCOME.get(reason, "dead_lettered")] += n
        if self.source is not None:
            result["left"] = self.source.left_in_flight
        return result

    def failed(self, counts: dict[str, int]) -> int:
        """Letters that failed again (each written back as a new open letter)."""
        return sum(counts[o] for o in FAILED)

    def stop(self) -> None:
        """Stop early: nothing new is sent; letters in flight finish within the grace."""
        self._stop.set()
        if self.source is not None:
            self.source.stop_feeding()

    async def run(self) -> dict[str, int]:
        """Plan (unless given a plan), replay as a group member until done or stopped."""
        config = self.relay.config
        topic = config.dlq.topic
        if self.plan is None:
            self.plan = await plan_replay(config.kafka, topic, self.vendor, self.letters)
        if not self.plan.count or self._stop.is_set():
            return self.counts()
        await self.relay.start_shared()
        producer = self.relay._producer
        if producer is None:  # stopped before the broker answered
            await self.relay.close()
            return self.counts()
        source = self.source = ReplaySource(
            config.kafka, topic, self.vendor, self.letters, self.plan, producer
        )
        writer = self._writer = WriteBackWriter(producer, topic, self.relay.metrics)
        pipeline = self.relay.make_pipeline(
            self.vendor, topics=[topic], consumer=source, dlq=writer, progress=source
        )
        task = asyncio.create_task(pipeline.run())
        waits: set[asyncio.Future[Any]] = {
            asyncio.ensure_future(source.finished.wait()),
            asyncio.ensure_future(self._stop.wait()),
        }
        try:
            await asyncio.wait({task, *waits}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            source.stop_feeding()
            pipeline.stop()
            await task
            await self.relay.close()
        return self.counts()
