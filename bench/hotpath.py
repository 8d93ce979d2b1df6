"""The relay's own CPU per delivery, without Kafka I/O or HTTP: the hot path alone.

    python -m bench.hotpath [--events N] [--concurrency C] [--profile]

One real `VendorPipeline` (the 1-vendor bench config: goal reach, every sample goal mapped, the
default in-memory dedup, the real `Sender`, limiter and metrics) is fed N sample events from an
in-memory consumer (records as aiokafka returns them) and sends them to a transport that answers
200 after one loop turn. What it measures is everything the relay does per delivery except
fetching bytes from Kafka and the HTTP exchange: decode, routing, dedup, the request build, the
sender's layers, metrics, offset tracking, queue hand-offs. The `make bench` figure to compare it
with is the relay's CPU per delivery minus its transport's CPU per request (the client ceiling).
`--profile` prints cProfile's top functions (cumulative and own time) instead of just the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import resource
import time
from typing import Any

import msgspec
from aiokafka import TopicPartition

from bench.workload import GOALS, VENDOR
from service.config import PipelineConfig
from service.core.exchange import VendorRequest, VendorResponse
from service.core.records import Fetched
from service.delivery.dedup import MemoryDedupStore
from service.delivery.pipeline import VendorPipeline
from service.delivery.ratelimit import LocalRateLimiter
from service.delivery.sender import Sender
from service.devtools.demo import sample_lines
from service.metrics import Metrics
from service.vendors import make_adapter
from service.vendors.goal_reach import GoalReachConfig

PARTITIONS = 4
_OK = VendorResponse(200, {}, b"")


def cpu_s() -> float:
    """User + system CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class MemoryConsumer:
    """Partitions as lists of records; each fetch returns up to 500 per partition."""

    def __init__(self, logs: dict[TopicPartition, list[Any]]) -> None:
        self.logs = logs
        self.positions = dict.fromkeys(logs, 0)
        self.paused: set[TopicPartition] = set()
        self.listener: Any = None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        await self.listener.on_partitions_assigned(set(self.logs))

    async def stop(self) -> None:
        pass

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        budget = max_records or 10**9
        out = {}
        for tp, log in self.logs.items():
            if tp in self.paused or budget <= 0:
                continue
            pos = self.positions[tp]
            taken = log[pos : pos + min(500, budget)]
            if taken:
                out[tp] = taken
                self.positions[tp] = pos + len(taken)
                budget -= len(taken)
        await asyncio.sleep(0 if out else timeout_ms / 1000)
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        pass

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.logs[tp]) for tp in partitions}

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.logs[tp])

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused -= set(partitions)


class CountingTransport:
    """Answers 200 after one loop turn (as a real client's future would); counts deliveries."""

    def __init__(self, events: int) -> None:
        self.sent = 0
        self.events = events
        self.done = asyncio.Event()
        self.first_at_cpu_s = 0.0

    async def send(self, request: VendorRequest) -> VendorResponse:
        await asyncio.sleep(0)
        self.sent += 1
        if self.sent == 1:
            self.first_at_cpu_s = cpu_s()
        if self.sent >= self.events:
            self.done.set()
        return _OK

    async def aclose(self) -> None:
        pass


def records(events: int) -> dict[TopicPartition, list[Any]]:
    """The sample events spread round-robin over the partitions, as aiokafka records."""
    logs: dict[TopicPartition, list[Any]] = {
        TopicPartition("bench", p): [] for p in range(PARTITIONS)
    }
    now_ms = int(time.time() * 1000)
    for index, line in enumerate(sample_lines(events)):
        tp = TopicPartition("bench", index % PARTITIONS)
        log = logs[tp]
        logs[tp].append(
            Fetched(
                tp.topic, tp.partition, len(log), now_ms, 0, None, line, None, -1, len(line), ()
            )
        )
    return logs


async def measure(events: int, concurrency: int) -> tuple[int, float, float]:
    """(deliveries, CPU µs per delivery, wall seconds) of one pipeline over `events` records."""
    config = msgspec.convert(
        {
            "protocol": "goal_reach",
            "base_url": "http://127.0.0.1:9",
            "goals": dict(GOALS),
            "concurrency": concurrency,
        },
        GoalReachConfig,
    )
    metrics = Metrics()
    transport = CountingTransport(events)
    limiter = LocalRateLimiter({VENDOR: None}, metrics=metrics)
    sender = Sender(VENDOR, make_adapter(VENDOR, config), transport, config, metrics, limiter)

    class NoLetters:
        topic = "bench.dlq"

        async def write(self, letter: Any) -> None:
            raise AssertionError(f"no dead letter expected: {letter.reason} {letter.error}")

    pipeline = VendorPipeline(
        VENDOR,
        config,
        sender,
        NoLetters(),
        MemoryConsumer(records(events)),
        ["bench"],
        PipelineConfig(),
        metrics,
        dedup=MemoryDedupStore(),
    )
    started = time.perf_counter()
    task = asyncio.create_task(pipeline.run())
    await asyncio.wait_for(transport.done.wait(), 600)
    cpu_per_delivery_us = (cpu_s() - transport.first_at_cpu_s) / max(1, transport.sent - 1) * 1e6
    wall_s = time.perf_counter() - started
    pipeline.stop()
    await task
    return transport.sent, cpu_per_delivery_us, wall_s


def main() -> None:
    """Measure (or profile) the hot path on uvloop."""
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    args = parser.parse_args()
    import uvloop

    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    sent, per_delivery_us, wall_s = uvloop.run(measure(args.events, args.concurrency))
    if profiler is not None:
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(30)
        print(out.getvalue())
    print(
        f"{sent} deliveries in {wall_s:.2f}s: {per_delivery_us:.1f} µs CPU per delivery "
        f"(relay hot path, no Kafka I/O, no HTTP){' — under cProfile' if profiler else ''}"
    )


if __name__ == "__main__":
    main()
