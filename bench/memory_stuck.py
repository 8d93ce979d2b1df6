"""Memory when records do not finish: peak RSS of the relay behind a vendor that never answers
(every request stuck: the windows from the commit points and the in-flight caps must hold), and
over a backlog of large records behind a slow vendor (`pipeline.max_in_flight_bytes` must hold).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import orjson

from bench import kafka
from bench.procs import Proc
from bench.report import Section, mib
from bench.sinks import total_stats
from service.devtools.demo import sample_lines

if TYPE_CHECKING:
    from bench.run import Bench

POLL_S = 0.2


async def _peak_rss(proc: Proc, seconds: float) -> tuple[int | None, str]:
    """VmHWM of the process after `seconds` (or when it exited), and an error if it did."""
    deadline = time.monotonic() + seconds
    peak: int | None = None
    while time.monotonic() < deadline:
        if not proc.alive():
            return peak, f"exited with {proc.popen.returncode} (log: {proc.log_path})"
        usage = proc.usage()
        if usage is not None:
            peak = usage.hwm_bytes
        await asyncio.sleep(POLL_S)
    return peak, ""


def _large_lines(count: int, pad_bytes: int) -> list[bytes]:
    """Sample events each carrying an ignored field of pad_bytes (unknown fields are allowed)."""
    lines = []
    for line in sample_lines(count):
        event = orjson.loads(line)
        event["padding"] = "x" * pad_bytes
        lines.append(orjson.dumps(event))
    return lines


async def memory_stuck(bench: Bench) -> None:
    """Peak RSS under stuck records and under a backlog of large records."""
    s = bench.s
    quick = s.memory_s <= 5
    backlog = 20_000 if quick else 200_000
    large, pad_bytes = (200, 128 * 1024) if quick else (1_000, 256 * 1024)
    rows = []
    print("\n== Memory under stuck records and large records", flush=True)

    topic, _ = await bench.backlog(backlog)
    sink = bench.sandbox("stuck-sink", latency_ms=3_600_000)  # answers after an hour
    proc = bench.relay1(topic, timeout_s=3600)(sink)
    try:
        peak, error = await _peak_rss(proc, s.memory_s * 2)
        stats = await total_stats([sink])
    finally:
        proc.stop(timeout_s=30, sig=9)
        sink.stop()
    rows.append(
        [
            f"vendor never answers, backlog {backlog:,}",
            mib(peak),
            f"{stats.accepted:,}",
            error or "every request stuck; windows and caps hold the rest in Kafka",
        ]
    )

    topic = bench.name("large")
    await kafka.make_topic(bench.broker.bootstrap, topic)
    print(f"preloading {large:,} records of {pad_bytes // 1024} KiB into {topic} ...", flush=True)
    await kafka.preload(bench.broker.bootstrap, topic, _large_lines(large, pad_bytes))
    sink = bench.sandbox("large-sink", latency_ms=s.memory_latency_ms)
    proc = bench.relay1(topic)(sink)
    try:
        peak, error = await _peak_rss(proc, s.memory_s * 2)
        stats = await total_stats([sink])
    finally:
        proc.stop(timeout_s=30)
        sink.stop()
    rows.append(
        [
            f"{large:,} records of {pad_bytes // 1024} KiB, vendor {s.memory_latency_ms} ms",
            mib(peak),
            f"{stats.accepted:,}",
            error or "in-flight bytes capped by pipeline.max_in_flight_bytes (32 MiB)",
        ]
    )
    for row in rows:
        print(f"    {row[0]}: peak RSS {row[1]} MiB, {row[2]} deliveries", flush=True)
    bench.report.add(
        Section(
            "Memory: peak RSS when records do not finish",
            ["case", "peak RSS MiB", "deliveries", "notes"],
            rows,
            [f"each case runs {s.memory_s * 2:.0f}s at the relay's defaults; peak RSS is VmHWM"],
        )
    )
