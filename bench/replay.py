"""Replay: `conversion-relay dlq replay` over a DLQ of N open letters to a sandbox sink, as an
operator runs it (its own process, the default settings): letters per second from the start of
the command to its exit (planning included) and its peak RSS. Bounded memory shows as the same
peak RSS at 1,000 and at 1,000,000 letters (issue 21: within 1.2x).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bench import kafka, relay
from bench.procs import Proc, python_module
from bench.report import Section, mib
from bench.sinks import total_stats
from bench.workload import VENDOR
from service.delivery.dlq import DeadLetter, SourceRecord, to_headers
from service.devtools.demo import sample_lines

if TYPE_CHECKING:
    from bench.run import Bench

POLL_S = 0.2
# Issue 21: the peak RSS at the largest DLQ within this factor of the smallest DLQ's.
RSS_BOUND = 1.2


def rss_ratio(peak: int | None, first: int | None) -> str:
    """A peak RSS as a multiple of the smallest DLQ's ("-" when either is unknown)."""
    if peak is None or not first:
        return "-"
    return f"{peak / first:.2f}x"


async def _preload_letters(bootstrap: str, topic: str, count: int) -> None:
    """`count` open letters of VENDOR (rejected), written as the relay writes them."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    now = datetime.now(UTC)
    try:
        pending: list[asyncio.Future[object]] = []
        for offset, line in enumerate(sample_lines(count)):
            letter = DeadLetter(
                vendor=VENDOR,
                reason="rejected",
                error="HTTP 400: rejected",
                source=SourceRecord(topic, 0, offset, None, line),
                http_status=400,
                attempts=1,
            )
            headers = [(k, v or b"") for k, v in to_headers(letter, now)]
            pending.append(await producer.send(f"{topic}.dlq", value=line, headers=headers))
            if len(pending) >= 5_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def _watch(proc: Proc, timeout_s: float) -> tuple[int | None, float, str]:
    """Peak RSS (VmHWM), seconds to exit, and an error if it did not exit 0 in time."""
    started = time.monotonic()
    peak: int | None = None
    while proc.alive():
        if time.monotonic() - started > timeout_s:
            return peak, time.monotonic() - started, f"still running after {timeout_s:.0f}s"
        usage = proc.usage()
        if usage is not None:
            peak = usage.hwm_bytes
        await asyncio.sleep(POLL_S)
    took_s = time.monotonic() - started
    code = proc.popen.returncode
    return peak, took_s, "" if code == 0 else f"exited {code} (log: {proc.log_path})"


async def replay_scenario(bench: Bench) -> None:
    """Letters/s and peak RSS of `dlq replay` per DLQ size."""
    rows = []
    firsts: tuple[int | None, int | None] | None = None  # the smallest DLQ's peaks
    print("\n== Replay: dlq replay over N open letters", flush=True)
    for count in sorted(bench.s.replay_letters):
        topic = bench.name("replay")
        await kafka.make_topic(bench.broker.bootstrap, topic)
        print(f"preloading {count:,} dead letters into {topic}.dlq ...", flush=True)
        await _preload_letters(bench.broker.bootstrap, topic, count)
        sink = bench.sandbox("replay-sink")
        vendors = relay.single_vendor(sink.base_url, bench.s.concurrency)
        config = relay.relay_config(
            bench.broker.bootstrap, topic, vendors, relay.new_http_port(), bench.name("replay")
        )
        path = relay.write_config(bench.work / f"{bench.name('replay')}.yaml", config)
        args = ["dlq", "replay", "--config", str(path), "--vendor", VENDOR]
        # The plan alone first (`--dry-run`: two streaming passes over the DLQ), then the run.
        plan = python_module("plan", "service", [*args, "--dry-run"], bench.work / f"{topic}-p.log")
        try:
            plan_peak, plan_s, plan_error = await _watch(plan, max(120.0, count / 500))
        finally:
            plan.stop(timeout_s=30)
        proc = python_module("replay", "service", args, bench.work / f"{topic}.log")
        try:
            peak, took_s, error = await _watch(proc, max(120.0, count / 200))
            stats = await total_stats([sink])
        finally:
            proc.stop(timeout_s=30)
            sink.stop()
        rate = stats.accepted / took_s if took_s > 0 else None
        plan_rate = count / plan_s if plan_s > 0 else None
        if firsts is None:
            firsts = (plan_peak, peak)
        rows.append(
            [
                f"{count:,} letters",
                f"{plan_rate:,.0f}" if plan_rate is not None else "-",
                mib(plan_peak),
                rss_ratio(plan_peak, firsts[0]),
                f"{rate:,.0f}" if rate is not None else "-",
                mib(peak),
                rss_ratio(peak, firsts[1]),
                f"{stats.accepted:,}",
                plan_error or error or f"plan {plan_s:.1f}s, replay {took_s:.1f}s (start to exit)",
            ]
        )
        print(f"    {rows[-1]}", flush=True)
    bench.report.add(
        Section(
            "Replay: dlq replay",
            [
                "DLQ",
                "plan letters/s",
                "plan peak RSS MiB",
                "plan RSS vs smallest",
                "replay letters/s",
                "replay peak RSS MiB",
                "replay RSS vs smallest",
                "delivered",
                "notes",
            ],
            rows,
            [
                f"one vendor, concurrency {bench.s.concurrency}, sandbox sink without latency; "
                "plan: `dlq replay --dry-run` (two streaming passes over the DLQ); replay: the "
                "whole command (the plan, then the letters); letters/s from start to exit; "
                "peak RSS is each command's VmHWM (the replay's includes its in-memory dedup "
                'store, 16 windows of deliveries); "vs smallest": that peak over the smallest '
                f"DLQ's (issue 21 asks at most {RSS_BOUND}x at 1,000,000 letters)"
            ],
        )
    )
