"""The benchmark: `python -m bench.run [--events N] [--scenario ...] [--quick]` (or `make bench`).

Starts its own Tansu broker and sinks on loopback, preloads a backlog, runs every contender over
the same backlog (a fresh consumer group each), one at a time, each in its own process measured
from /proc, and prints the report (written to bench/RESULTS.md on a full run). See
bench/README.md for what each scenario measures and how to read the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import kafka, relay
from bench.adaptive import adaptive_section
from bench.ceilings.consume_latency import describe_consumer
from bench.hotpath_scenario import hotpath_scenario
from bench.inputs import inputs_scenario, registry_outage_scenario
from bench.memory_stuck import memory_stuck
from bench.procs import Proc, Usage, install_signal_handlers, python_module, stop_all, usage
from bench.replay import replay_scenario
from bench.report import Noise, Row, Section, busy_s, machine, mib, num, throughput_section
from bench.sinks import (
    ConsumeCeiling,
    NginxSink,
    SandboxSink,
    Sink,
    SinkStats,
    nginx_binary,
    total_stats,
)
from bench.tls_scenario import tls_scenario
from bench.workload import VENDOR, expected_deliveries
from service.config import KafkaConfig, PipelineConfig, parse_config
from service.delivery.pipeline import POLL_TIMEOUT_MS
from service.devtools.demo import sample_lines
from service.devtools.embedded import EmbeddedBroker

RESULTS = Path(__file__).with_name("RESULTS.md")
SCENARIOS = (
    "throughput",
    "nginx",
    "latency",
    "memory",
    "memory_stuck",
    "ratelimit",
    "workers",
    "adaptive",
    "tls",
    "replay",
    "hotpath",
    "inputs",
    "registry_outage",
)
# The client ceilings: contender name → the HTTP library it posts with (bench/ceilings).
CLIENTS = {
    "client": "aiohttp",
    "client_pyreqwest": "pyreqwest",
    "client_h1": "h1",
    "client_aiosonic": "aiosonic",
    "client_niquests": "niquests",
    "client_httpx": "httpx",
}
# The relay with its transport set (`http.transport`); `relay1` runs the relay's default.
RELAY_TRANSPORTS = {"relay1_aiohttp": "aiohttp", "relay1_pyreqwest": "pyreqwest"}
CONTENDERS = (
    "kafka",
    *CLIENTS,
    "naive",
    "faststream",
    "faststream64",
    "relay1",
    *RELAY_TRANSPORTS,
    "relay5",
)
# Run by default only in the nginx scenario (where the sink is not the limit); the throughput
# scenario runs them only when named with --only, to keep `make bench` within its time.
NGINX_DEFAULT = frozenset({*CLIENTS, *RELAY_TRANSPORTS} - {"client"})
POLL_S = 0.1
MACHINE = "machine"  # watch()'s key for every process's CPU (/proc/stat)


@dataclass
class Settings:
    """Sizes and limits of one run (full or --quick)."""

    events: int
    concurrency: int
    max_s: float  # per contender, from its first delivery
    max_s_5: float = 300.0  # per five-vendor run: long enough to finish its backlog
    startup_s: float = 60.0  # per contender, to its first delivery
    latencies_ms: tuple[int, ...] = (0, 20)
    latency_rate: float = 1000.0
    latency_s: float = 20.0
    latency_warmup_s: float = 5.0
    latency_contenders: tuple[str, ...] = ("ceiling", "relay1", "naive", "faststream64")
    memory_backlogs: tuple[int, ...] = (10_000, 1_000_000)
    replay_letters: tuple[int, ...] = (1_000, 1_000_000)  # DLQ sizes of the replay scenario
    memory_latency_ms: int = 50
    memory_s: float = 30.0
    rate_limit_per_s: float = 200.0
    rate_sink_limit_per_s: float = 240.0
    rate_s: float = 20.0
    workers: int = 2
    # The workers scenario's own backlog: one worker delivers 50,000 in under 2 s, too short for
    # a second worker to join the group and take its partitions.
    workers_events: int = 200_000
    tls_handshakes: int = 1000  # requests (each a new connection) per handshake run
    only: tuple[str, ...] = CONTENDERS
    only_given: bool = False  # --only named the contenders (NGINX_DEFAULT ones run anywhere)
    sink: str = "sandbox"


@dataclass
class Measured:
    """What one contender did, as seen by the sinks and /proc."""

    stats: SinkStats
    cpu_s: float | None
    peak_rss_bytes: int | None
    completed: bool
    error: str = ""
    # CPU s of other processes (sink, broker) over the same window, when asked for.
    others_cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_window_s: float = 0.0  # wall time the CPU figures span (poll to poll)

    @property
    def window_s(self) -> float:
        """First to last accepted request."""
        return max(0.0, self.stats.last_s - self.stats.first_s)

    @property
    def rate(self) -> float | None:
        """Accepted requests per second over the window."""
        n = self.stats.accepted
        return (n - 1) / self.window_s if n > 1 and self.window_s > 0 else None


@dataclass
class Report:
    """Everything measured so far, in order."""

    sections: list[Section] = field(default_factory=list)

    def add(self, section: Section) -> None:
        """Add a section and print it at once (long runs show progress)."""
        self.sections.append(section)
        print("\n" + section.markdown(), flush=True)


async def watch(
    proc: Proc,
    sinks: list[Sink],
    expected: int,
    max_s: float,
    tree: bool = False,
    startup_s: float = 60.0,
    others: dict[str, tuple[int, bool]] | None = None,
) -> Measured:
    """Poll the sinks and the process until `expected` deliveries, the time limit or an exit.

    CPU is the process's (tree's) user + system time from the last poll before the first
    delivery to the end; peak RSS is VmHWM (summed over the tree). `others` (name → pid, whole
    tree?) are read over the same window, to show where the rest of the cores went.
    """
    started = time.monotonic()
    first_seen: float | None = None
    cpu_start: float | None = None
    cpu_start_at = cpu_end_at = started
    last: Usage | None = None
    others = others or {}
    others_start: dict[str, float] = {}
    others_last: dict[str, float] = {}
    error = ""
    while True:
        stats = await total_stats(sinks)
        now = time.monotonic()
        used = proc.usage(tree)
        if used is not None:
            last, cpu_end_at = used, now
        for other, (pid, other_tree) in others.items():
            other_usage = usage(pid, other_tree)
            if other_usage is not None:
                others_last[other] = other_usage.cpu_s
        if others:  # every process on the machine, for what the named ones leave out
            others_last[MACHINE] = busy_s()
        if stats.accepted == 0:
            if used is not None:
                cpu_start, cpu_start_at = used.cpu_s, now
            others_start.update(others_last)
            if now - started > startup_s:
                error = f"no delivery within {startup_s:.0f}s"
                break
        else:
            if first_seen is None:
                first_seen = now
            if stats.accepted >= expected:
                break
            if now - first_seen > max_s:
                break
        if not proc.alive():
            error = f"exited with {proc.popen.returncode}"
            break
        await asyncio.sleep(POLL_S)
    cpu_s = last.cpu_s - cpu_start if last is not None and cpu_start is not None else None
    others_cpu_s = {k: v - others_start[k] for k, v in others_last.items() if k in others_start}
    return Measured(
        stats,
        cpu_s,
        last.hwm_bytes if last else None,
        stats.accepted >= expected,
        error,
        others_cpu_s,
        cpu_end_at - cpu_start_at,
    )


def to_row(
    name: str,
    kind: str,
    measured: Measured,
    expected: int,
    events_total: int | None = None,
) -> Row:
    """A table row from a measurement; events/s is deliveries/s unless a fan-out is given."""
    rate = measured.rate
    row = Row(name, kind, deliveries=measured.stats.accepted, expected=expected)
    row.deliveries_per_s = rate
    if rate is not None:
        if events_total and expected:
            # Fan-out: each event is `expected / events_total` deliveries on average.
            row.events_per_s = rate * events_total / expected
        else:
            row.events_per_s = rate
    if measured.cpu_s is not None and measured.stats.accepted:
        row.cpu_s_per_1k = measured.cpu_s / measured.stats.accepted * 1000
    row.peak_rss_bytes = measured.peak_rss_bytes
    notes = []
    if not measured.completed:
        notes.append(
            f"stopped at the time limit ({measured.window_s:.0f}s)"
            if not measured.error
            else measured.error
        )
    if measured.stats.refused:
        notes.append(f"{measured.stats.refused} refused by the sink: {measured.stats.refusals[:1]}")
    non_ok = {k: v for k, v in measured.stats.statuses.items() if not k.startswith("2")}
    if non_ok:
        notes.append(f"statuses {non_ok}")
    row.note = "; ".join(notes)
    return row


class Bench:
    """One benchmark run: the broker, the work directory and the report."""

    def __init__(
        self, settings: Settings, broker: EmbeddedBroker, work: Path, session: aiohttp.ClientSession
    ) -> None:
        self.s = settings
        self.broker = broker
        self.work = work
        self.session = session
        self.report = Report()
        self._n = 0
        self._transports: dict[str, tuple[bool, str]] = {}

    def name(self, what: str) -> str:
        """A unique name for a topic, group or file."""
        self._n += 1
        return f"{what}-{self._n}-{uuid.uuid4().hex[:6]}"

    async def backlog(self, count: int) -> tuple[str, list[bytes] | None]:
        """A fresh topic holding `count` sample events; the lines too when they are few."""
        topic = self.name("backlog")
        await kafka.make_topic(self.broker.bootstrap, topic)
        print(f"preloading {count:,} events into {topic} ...", flush=True)
        started = time.monotonic()
        keep = count <= 200_000
        lines = list(sample_lines(count)) if keep else None
        sent = await kafka.preload(
            self.broker.bootstrap, topic, lines if lines is not None else sample_lines(count)
        )
        print(f"  {sent:,} events in {time.monotonic() - started:.1f}s", flush=True)
        return topic, lines

    # ---- sinks ---------------------------------------------------------------------------------

    def sandbox(self, name: str, latency_ms: float = 0.0, **kwargs: Any) -> SandboxSink:
        """Start the strict sandbox sink and wait until it listens."""
        sink = SandboxSink(
            self.name(name), self.work, self.session, latency_s=latency_ms / 1000, **kwargs
        )
        sink.wait_ready()
        return sink

    def sink(self, kind: str, latency_ms: float) -> Sink:
        """The throughput sink: the sandbox, or nginx (latency 0 only)."""
        if kind == "nginx":
            sink = NginxSink(self.work)
            sink.wait_ready()
            return sink
        return self.sandbox("sink", latency_ms)

    # ---- contenders ----------------------------------------------------------------------------

    async def run_http(
        self,
        name: str,
        kind: str,
        start: Callable[[Sink], Proc],
        sink: Sink,
        expected: int,
        ready: Callable[[Proc], Awaitable[None]] | None = None,
        tree: bool = False,
        max_s: float | None = None,
        others: bool = False,
    ) -> tuple[Row, Measured]:
        """Start a contender against a started sink, measure it, stop both.

        `others`: also read the sink's and the broker's CPU over the same window.
        """
        print(f"  {name} ...", flush=True)
        proc = start(sink)
        watched = self.others_pids(sink) if others else None
        try:
            if ready is not None:
                await ready(proc)
            measured = await watch(
                proc, [sink], expected, max_s or self.s.max_s, tree, self.s.startup_s, watched
            )
        finally:
            proc.stop(timeout_s=30)
            sink.stop()
        if measured.error:
            measured.error += f" (log: {proc.log_path})"
        row = to_row(name, kind, measured, expected)
        print(
            f"    {num(row.deliveries_per_s)} deliveries/s, "
            f"{num(row.cpu_s_per_1k, 3)} CPU s/1k, {mib(row.peak_rss_bytes)} MiB "
            f"{row.note}",
            flush=True,
        )
        return row, measured

    def others_pids(self, sink: Sink) -> dict[str, tuple[int, bool]]:
        """The sink's process tree (nginx: master and worker) and the broker's process."""
        pids = {f"sink ({sink.name})": (sink.proc.pid, True)}
        broker = getattr(self.broker, "_process", None)  # EmbeddedBroker keeps its Popen there
        if broker is not None:
            pids["broker"] = (broker.pid, False)
        return pids

    def transport(self, transport: str) -> tuple[bool, str]:
        """Whether the relay accepts `http.transport: <transport>` (asked once per run)."""
        if transport not in self._transports:
            self._transports[transport] = relay.transport_support(
                self.work, self.broker.bootstrap, transport
            )
        return self._transports[transport]

    def kafka_ceiling(self, topic: str, events: int) -> Row:
        """aiokafka consume + msgspec decode (self-timed; it exits when done)."""
        print("  ceiling: aiokafka consume + msgspec decode ...", flush=True)
        proc = python_module(
            "kafka-ceiling",
            "bench.ceilings.kafka_decode",
            [
                "--bootstrap",
                self.broker.bootstrap,
                "--topic",
                topic,
                "--group",
                self.name("ceiling"),
                "--events",
                str(events),
            ],
            self.work / "kafka-ceiling.log",
        )
        try:
            proc.popen.wait(max(120.0, self.s.max_s * 2))
        finally:
            proc.stop()
        row = Row("ceiling: aiokafka consume + msgspec decode", "ceiling")
        for line in proc.tail(100_000).splitlines():
            if line.startswith("RESULT "):
                data = json.loads(line[7:])
                row.events_per_s = data["events_per_s"]
                row.cpu_s_per_1k = data["cpu_us_per_event"] / 1000
                row.peak_rss_bytes = data["peak_rss_bytes"]
                row.note = f"{data['measured']:,} records; CPU per 1k records, not deliveries"
                print(f"    {num(row.events_per_s)} events/s", flush=True)
                return row
        row.note = f"failed: {proc.tail(500)!r}"
        return row

    def client(
        self, events: int, library: str = "aiohttp", ca_bundle: str | None = None
    ) -> Callable[[Sink], Proc]:
        """A plain HTTP client ceiling (aiohttp, pyreqwest, h1, aiosonic, niquests, httpx);
        `ca_bundle`: the CA it trusts for an HTTPS sink (aiohttp, pyreqwest, h1)."""
        tls = ["--ca-bundle", ca_bundle] if ca_bundle else []
        return lambda sink: python_module(
            f"client-{library}",
            "bench.ceilings.http_client",
            [
                "--url",
                sink.base_url,
                "--events",
                str(events),
                "--concurrency",
                str(self.s.concurrency),
                "--client",
                library,
                *tls,
            ],
            self.work / f"{self.name(f'client-{library}')}.log",
        )

    def naive(self, topic: str) -> Callable[[Sink], Proc]:
        """The naive relay baseline."""
        return lambda sink: python_module(
            "naive",
            "bench.baselines.naive",
            [
                "--bootstrap",
                self.broker.bootstrap,
                "--topic",
                topic,
                "--group",
                self.name("naive"),
                "--url",
                sink.base_url,
            ],
            self.work / f"{self.name('naive')}.log",
        )

    def faststream(self, topic: str, max_workers: int | None) -> Callable[[Sink], Proc]:
        """The FastStream baseline (default, or with max_workers)."""
        env = {"BENCH_BOOTSTRAP": self.broker.bootstrap, "BENCH_TOPIC": topic}
        if max_workers:
            env["BENCH_MAX_WORKERS"] = str(max_workers)

        def start(sink: Sink) -> Proc:
            return python_module(
                "faststream",
                "bench.baselines.faststream_relay",
                [],
                self.work / f"{self.name('faststream')}.log",
                env={**env, "BENCH_GROUP": self.name("faststream"), "BENCH_URL": sink.base_url},
            )

        return start

    def relay_proc(
        self,
        topic: str,
        vendors: dict[str, dict[str, Any]],
        name: str,
        extra_args: list[str] | None = None,
        transport: str | None = None,
        ca_bundle: str | None = None,
        **extra: Any,
    ) -> relay.RelayProcess:
        """A relay subprocess over `topic` with these vendors (and transport, None: default;
        `ca_bundle`: `http.ca_bundle`, for an HTTPS sink)."""
        config = relay.relay_config(
            self.broker.bootstrap,
            topic,
            vendors,
            relay.new_http_port(),
            self.name("relay"),
            transport,
            ca_bundle,
            **extra,
        )
        return relay.RelayProcess(self.name(name), config, self.work, extra_args)

    def relay1(
        self,
        topic: str,
        transport: str | None = None,
        ca_bundle: str | None = None,
        **vendor_extra: Any,
    ) -> Callable[[Sink], Proc]:
        """conversion-relay with one vendor pointed at the sink (transport None: its default;
        `ca_bundle`: the CA it trusts for an HTTPS sink)."""

        def start(sink: Sink) -> Proc:
            vendors = relay.single_vendor(sink.base_url, self.s.concurrency, **vendor_extra)
            return self.relay_proc(
                topic, vendors, "relay1", transport=transport, ca_bundle=ca_bundle
            ).proc

        return start

    async def relay5(
        self, topic: str, latency_ms: float, lines: list[bytes], sink_kind: str = "sandbox"
    ) -> Row:
        """conversion-relay with all five vendors: each to its own strict sandbox, or all to one
        nginx (one location per vendor protocol, a path prefix per vendor to count them).

        It runs until its whole backlog is delivered (`max_s_5`), not the single-vendor limit.
        """
        name = "conversion-relay, 5 vendors"
        print(f"  {name} ({sink_kind}) ...", flush=True)
        nginx: NginxSink | None = None
        sinks: list[Sink] = []
        if sink_kind == "nginx":
            nginx = NginxSink(self.work)
            sinks.append(nginx)
            urls = {vendor: nginx.vendor_url(vendor) for vendor in relay.FIVE_VENDORS}
        else:
            ports = {vendor: relay.new_http_port() for vendor in relay.FIVE_VENDORS}
            urls = {vendor: f"http://127.0.0.1:{port}" for vendor, port in ports.items()}
        vendors = {
            vendor: relay.vendor_section(vendor, url, self.s.concurrency)
            for vendor, url in urls.items()
        }
        parsed = parse_config(relay.relay_config(self.broker.bootstrap, topic, vendors, 1, "x"))
        per_vendor = expected_deliveries(lines, dict(parsed.vendors))
        expected = sum(per_vendor.values())
        proc = self.relay_proc(topic, vendors, "relay5")
        try:
            if nginx is not None:
                nginx.wait_ready()
            else:
                for vendor, port in ports.items():
                    sinks.append(
                        SandboxSink(
                            vendor,
                            self.work,
                            self.session,
                            latency_s=latency_ms / 1000,
                            config_path=proc.config_path,
                            vendor=vendor,
                            port=port,
                        )
                    )
                for sink in sinks:
                    assert isinstance(sink, SandboxSink)
                    sink.wait_ready()
            measured = await watch(
                proc.proc, sinks, expected, self.s.max_s_5, startup_s=self.s.startup_s
            )
            if nginx is not None:
                delivered = dict(nginx.per_vendor)
            else:
                parts = [await sink.stats() for sink in sinks]
                delivered = {
                    sink.name: part.accepted for sink, part in zip(sinks, parts, strict=True)
                }
        finally:
            proc.proc.stop(timeout_s=30)
            for sink in sinks:
                sink.stop()
        row = to_row(name, "relay", measured, expected, events_total=len(lines))
        row.transport = relay.default_transport()
        if not measured.completed and not measured.error:
            # Say which limit: the backlog did not finish within --max-seconds-5.
            row.note = row.note.replace(
                "the time limit (", f"the 5-vendor time limit of {self.s.max_s_5:.0f}s (window "
            )
        row.note = "; ".join(
            filter(
                None,
                [
                    "delivered / expected per vendor "
                    + ", ".join(
                        f"{k} {delivered.get(k, 0):,} / {v:,}" for k, v in per_vendor.items()
                    ),
                    f"transport {row.transport} (default)",
                    row.note,
                ],
            )
        )
        print(
            f"    {num(row.deliveries_per_s)} deliveries/s, {num(row.events_per_s)} events/s "
            f"{row.note}",
            flush=True,
        )
        return row

    # ---- scenarios -----------------------------------------------------------------------------

    async def throughput(
        self, sink_kind: str, latencies_ms: tuple[int, ...], topic: str, lines: list[bytes]
    ) -> None:
        """Every contender over the same backlog, per sink latency."""
        n = len(lines)
        only = set(self.s.only)
        if sink_kind != "nginx" and not self.s.only_given:
            only -= NGINX_DEFAULT
        default_transport = relay.default_transport()
        for latency_ms in latencies_ms:
            title = (
                f"Throughput: {n:,}-event backlog, {sink_kind} sink, "
                f"latency {latency_ms} ms, concurrency {self.s.concurrency}"
            )
            print(f"\n== {title}", flush=True)
            rows: list[Row] = []
            if "kafka" in only and latency_ms == latencies_ms[0] and sink_kind == "sandbox":
                rows.append(self.kafka_ceiling(topic, n))
            # (name, kind, start, transport, why it cannot run or "")
            plan: list[tuple[str, str, Callable[[Sink], Proc], str | None, str]] = []
            for key, library in CLIENTS.items():
                if key in only:
                    plan.append(
                        (
                            f"ceiling: {library} client (concurrency {self.s.concurrency}, "
                            "no Kafka)",
                            "ceiling",
                            self.client(n, library),
                            library,
                            "",
                        )
                    )
            if "naive" in only:
                plan.append(("naive relay", "baseline", self.naive(topic), "aiohttp", ""))
            fs_missing = "" if faststream_installed() else FASTSTREAM_MISSING
            if "faststream" in only:
                plan.append(
                    (
                        "FastStream, default",
                        "baseline",
                        self.faststream(topic, None),
                        "aiohttp",
                        fs_missing,
                    )
                )
            if "faststream64" in only:
                plan.append(
                    (
                        f"FastStream, max_workers={self.s.concurrency}",
                        "baseline",
                        self.faststream(topic, self.s.concurrency),
                        "aiohttp",
                        fs_missing,
                    )
                )
            if "relay1" in only:
                plan.append(
                    (
                        "conversion-relay, 1 vendor",
                        "relay",
                        self.relay1(topic),
                        default_transport,
                        "",
                    )
                )
            for key, transport in RELAY_TRANSPORTS.items():
                if key not in only:
                    continue
                ok, message = self.transport(transport)
                plan.append(
                    (
                        f"conversion-relay, 1 vendor, {transport} transport",
                        "relay",
                        self.relay1(topic, transport=transport),
                        transport,
                        ""
                        if ok
                        else "not available: the relay's config does not accept "
                        f"`http.transport: {transport}` yet ({message})",
                    )
                )
            for name, kind, start, http_library, missing in plan:
                if missing:
                    rows.append(Row(name, kind, note=missing, transport=http_library))
                    continue
                row, _ = await self.run_http(name, kind, start, self.sink(sink_kind, latency_ms), n)
                row.transport = http_library
                if name == "conversion-relay, 1 vendor":
                    row.note = "; ".join(
                        filter(None, [f"transport {http_library} (default)", row.note])
                    )
                rows.append(row)
            if "relay5" in only:
                rows.append(await self.relay5(topic, latency_ms, lines, sink_kind))
            notes = [
                f"each contender stops at {self.s.max_s:.0f}s after its first delivery "
                "(rates are over the part it did); the 5-vendor relay runs until its backlog "
                f"is delivered or {self.s.max_s_5:.0f}s",
                "× client: against the aiohttp client ceiling; × own client: against the client "
                "ceiling of the row's own HTTP library (the baselines use aiohttp)",
            ]
            self.report.add(throughput_section(title, rows, notes))

    async def latency(self) -> None:
        """A steady producer; Kafka record timestamp → sink receipt, per contender."""
        s = self.s
        rows = []
        plan = [
            (name, key)
            for name, key in (
                (CONSUME_CEILING, "ceiling"),
                ("conversion-relay, 1 vendor", "relay1"),
                ("naive relay", "naive"),
                (f"FastStream, max_workers={s.concurrency}", "faststream64"),
            )
            if key in s.latency_contenders
        ]
        print(f"\n== Latency at {s.latency_rate:.0f} events/s", flush=True)
        fetch_ms = POLL_TIMEOUT_MS
        for name, key in plan:
            if key == "faststream64" and not faststream_installed():
                rows.append([name, "–", "–", "–", "–", "–", FASTSTREAM_MISSING])
                continue
            print(f"  {name} ...", flush=True)
            topic = self.name("steady")
            await kafka.make_topic(self.broker.bootstrap, topic)
            relay_run = None
            ceiling: ConsumeCeiling | None = None
            sink: Sink
            if key == "ceiling":
                # No sink: the consumer reports its own samples, served as a sink serves them.
                ceiling = self.consume_ceiling(topic)
                sink, proc = ceiling, ceiling.proc
            else:
                sink = self.sandbox("latency-sink", 0, latency_samples=True)
            starters: dict[str, Callable[[Sink], Proc]] = {
                "naive": self.naive(topic),
                "faststream64": self.faststream(topic, s.concurrency),
            }
            if key == "relay1":
                vendors = relay.single_vendor(sink.base_url, s.concurrency)
                relay_run = self.relay_proc(topic, vendors, "latency-relay1")
                proc = relay_run.proc
            elif ceiling is None:
                proc = starters[key](sink)
            try:
                if relay_run is not None:
                    await relay_run.wait_ready()  # joined its group
                elif ceiling is not None:
                    await ceiling.wait_ready()  # holds its partitions
                else:
                    await asyncio.sleep(3.0)  # no readiness signal: time to join the group
                duration_s = s.latency_warmup_s + s.latency_s
                started = time.time()
                sent = await kafka.steady(self.broker.bootstrap, topic, s.latency_rate, duration_s)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    if (await sink.stats()).accepted >= sent:
                        break
                    await asyncio.sleep(POLL_S)
                samples = await sink.samples()
                stats = await sink.stats()
            finally:
                proc.stop(timeout_s=30)
                sink.stop()
            cutoff = started + s.latency_warmup_s
            # A sample's record timestamp is its receipt time minus its latency.
            kept = sorted(
                lat * 1000
                for lat, at in zip(samples["latencies_s"], samples["receipts_s"], strict=True)
                if at - lat >= cutoff
            )
            rows.append(
                [
                    name,
                    f"{len(kept):,} / {sent:,}",
                    *(num(percentile(kept, q), 1) for q in (50, 95, 99)),
                    num(max(kept, default=None), 1),
                    f"{stats.accepted:,} of {sent:,} "
                    + ("consumed" if ceiling is not None else "delivered"),
                ]
            )
        self.report.add(
            Section(
                f"Latency: {s.latency_rate:.0f} events/s for {s.latency_s:.0f}s "
                f"(after {s.latency_warmup_s:.0f}s warm-up), sandbox sink 0 ms",
                ["contender", "samples", "p50 ms", "p95 ms", "p99 ms", "max ms", "notes"],
                rows,
                [
                    "from the Kafka record timestamp (set by the producer at send, = the event's "
                    "occurred_at) to the sink's receipt",
                    f"{CONSUME_CEILING}: the relay's consumer settings "
                    "(service.kafka.consumer_kwargs of the same generated config) polled as the "
                    f"pipeline polls, getmany(timeout_ms={fetch_ms}, max_records="
                    f"{PipelineConfig().max_in_flight}) (max_records = "
                    "pipeline.max_in_flight, an idle pipeline's room); record timestamp to the "
                    "moment the decoded record is in hand, no HTTP; consumer: "
                    + describe_consumer(self.latency_kafka_config()),
                    kafka.steady_producer_settings()
                    + " (the producer's waiting is in every row, as a user's producer's would be)",
                ],
            )
        )

    def latency_kafka_config(self) -> KafkaConfig:
        """The Kafka settings every latency contender's generated relay config has."""
        probe = relay.relay_config(
            self.broker.bootstrap,
            "probe",
            relay.single_vendor("http://127.0.0.1:9", self.s.concurrency),
            relay.new_http_port(),
            "probe",
        )
        return parse_config(probe).kafka

    def consume_ceiling(self, topic: str) -> ConsumeCeiling:
        """The produce → consume ceiling over `topic`, with the latency relay's exact config."""
        config = relay.relay_config(
            self.broker.bootstrap,
            topic,
            relay.single_vendor("http://127.0.0.1:9", self.s.concurrency),
            relay.new_http_port(),
            self.name("relay"),
        )
        name = self.name("latency-ceiling")
        path = relay.write_config(self.work / f"{name}.yaml", config)
        # The group id a vendor pipeline would use (group_prefix.vendor), fresh per run.
        group = f"{config['kafka']['group_prefix']}.{VENDOR}"
        return ConsumeCeiling(name, self.work, self.session, path, group)

    async def memory(self) -> None:
        """Peak RSS of the relay over a small and a huge backlog, vendor slow."""
        s = self.s
        rows = []
        peaks: list[int] = []
        print(f"\n== Memory, sink latency {s.memory_latency_ms} ms", flush=True)
        for backlog in s.memory_backlogs:
            topic, _ = await self.backlog(backlog)
            row, measured = await self.run_http(
                f"conversion-relay, 1 vendor, backlog {backlog:,}",
                "relay",
                self.relay1(topic),
                self.sandbox("memory-sink", s.memory_latency_ms),
                backlog,
                max_s=s.memory_s,
            )
            if measured.peak_rss_bytes:
                peaks.append(measured.peak_rss_bytes)
            rows.append(
                [
                    f"{backlog:,}",
                    mib(row.peak_rss_bytes),
                    f"{row.deliveries:,}",
                    num(row.deliveries_per_s),
                    f"{measured.window_s:.0f}",
                    row.note,
                ]
            )
        notes = [
            "each run stops after its backlog or "
            f"{s.memory_s:.0f}s of deliveries, whichever is first; peak RSS is the "
            "relay process's VmHWM"
        ]
        if len(peaks) == 2:
            notes.append(f"largest / smallest backlog peak RSS: {peaks[1] / peaks[0]:.2f}×")
        self.report.add(
            Section(
                f"Memory: peak RSS while the vendor is slow ({s.memory_latency_ms} ms, "
                f"concurrency {s.concurrency})",
                ["backlog", "peak RSS MiB", "deliveries", "deliveries/s", "seconds", "notes"],
                rows,
                notes,
            )
        )

    async def ratelimit(self) -> None:
        """A configured 200/s against a sink that answers 429 above 240/s."""
        s = self.s
        title = (
            f"Rate-limit accuracy: rate_limit per_s {s.rate_limit_per_s:.0f} for "
            f"{s.rate_s:.0f}s, sink limited at {s.rate_sink_limit_per_s:.0f}/s"
        )
        print(f"\n== {title}", flush=True)
        limit = {"rate_limit": {"per_s": s.rate_limit_per_s}}
        probe = relay.relay_config(
            self.broker.bootstrap,
            "probe",
            relay.single_vendor("http://127.0.0.1:9", 8, **limit),
            relay.new_http_port(),
            "probe",
        )
        ok, message = relay.check_config(relay.write_config(self.work / "probe.yaml", probe))
        if not ok:
            self.report.add(
                Section(
                    title,
                    ["result"],
                    [
                        [
                            "not available: the relay's config does not accept "
                            f"`vendors.{VENDOR}.rate_limit` yet ({message.splitlines()[0]})"
                        ]
                    ],
                )
            )
            return
        count = int(s.rate_limit_per_s * (s.rate_s + 15))
        topic, _ = await self.backlog(count)
        sink = self.sandbox("rate-sink", 0, rate_limit_per_s=s.rate_sink_limit_per_s)
        proc = self.relay1(topic, rate_limit=limit["rate_limit"])(sink)
        try:
            measured = await watch(proc, [sink], count, s.rate_s + 1, startup_s=s.startup_s)
            samples = await sink.samples()
            stats = await sink.stats()
        finally:
            proc.stop(timeout_s=30)
            sink.stop()
        first = stats.first_s
        times = sorted(at for at in samples["receipts_s"] if first <= at < first + s.rate_s)
        rate = len(times) / s.rate_s
        error_pct = (rate - s.rate_limit_per_s) / s.rate_limit_per_s * 100
        settle_s = min(2.0, s.rate_s / 4)
        steady = sum(1 for at in times if at >= first + settle_s) / (s.rate_s - settle_s)
        busiest, start = 0, 0
        for end, at in enumerate(times):  # the most deliveries in any one-second window
            while at - times[start] >= 1.0:
                start += 1
            busiest = max(busiest, end - start + 1)
        self.report.add(
            Section(
                title,
                [
                    "configured /s",
                    "delivered /s",
                    "error",
                    f"after the first {settle_s:.0f}s /s",
                    "busiest 1 s",
                    "429s from the sink",
                    "notes",
                ],
                [
                    [
                        num(s.rate_limit_per_s),
                        num(rate, 1),
                        f"{error_pct:+.1f} %",
                        num(steady, 1),
                        str(busiest),
                        str(stats.statuses.get("429", 0)),
                        measured.error
                        or f"{len(times):,} deliveries in the {s.rate_s:.0f}s from the first",
                    ]
                ],
                [
                    f"configured exactly `rate_limit: {{per_s: {s.rate_limit_per_s:g}}}` "
                    "(no `burst`: the relay's default)"
                ],
            )
        )

    async def workers(self, topic: str, lines: list[bytes]) -> None:
        """The relay with 1 and N worker processes (same consumer groups)."""
        s = self.s
        sink_kind = "nginx" if nginx_binary() else "sandbox"
        title = (
            f"Workers: conversion-relay, 1 vendor, 1 vs {s.workers} processes, "
            f"{len(lines):,}-event backlog, {sink_kind} sink 0 ms"
        )
        print(f"\n== {title}", flush=True)
        how = self.workers_support()
        if how is None:
            self.report.add(
                Section(
                    title,
                    ["result"],
                    [
                        [
                            "not available: neither `run --workers N` nor a `workers` setting "
                            "is accepted by the relay yet"
                        ]
                    ],
                )
            )
            return
        rows = []
        spent: list[tuple[int, Measured]] = []
        for count in (1, s.workers):
            args: list[str] = []
            extra: dict[str, Any] = {}
            if how == "--workers":
                args = ["--workers", str(count)]
            elif how == "workers":
                extra = {"workers": count}
            else:
                extra = {"pipeline": {"workers": count}}

            def start(sink: Sink, args: list[str] = args, extra: dict[str, Any] = extra) -> Proc:
                vendors = relay.single_vendor(sink.base_url, s.concurrency)
                return self.relay_proc(topic, vendors, "workers", args, **extra).proc

            row, measured = await self.run_http(
                f"conversion-relay, {count} worker(s)",
                "relay",
                start,
                self.sink(sink_kind, 0),
                len(lines),
                tree=True,
                others=True,
            )
            rows.append(row)
            spent.append((count, measured))
        section = throughput_section(
            title, rows, [f"workers set with {how}; CPU and peak RSS summed over the process tree"]
        )
        if len(rows) == 2 and rows[0].deliveries_per_s and rows[1].deliveries_per_s:
            section.notes.append(
                f"{s.workers} workers / 1 worker: "
                f"{rows[1].deliveries_per_s / rows[0].deliveries_per_s:.2f}×"
            )
        section.notes.extend(cores_notes(spent))
        self.report.add(section)

    def workers_support(self) -> str | None:
        """How the relay takes a worker count: '--workers', 'workers', 'pipeline.workers'."""
        if "--workers" in relay.run_help():
            return "--workers"
        for key, extra in (
            ("workers", {"workers": 2}),
            ("pipeline.workers", {"pipeline": {"workers": 2}}),
        ):
            probe = relay.relay_config(
                self.broker.bootstrap,
                "probe",
                relay.single_vendor("http://127.0.0.1:9", 8),
                relay.new_http_port(),
                "probe",
                **extra,
            )
            ok, _ = relay.check_config(relay.write_config(self.work / "probe.yaml", probe))
            if ok:
                return key
        return None


CONSUME_CEILING = "ceiling: produce → consume (no HTTP)"
FASTSTREAM_MISSING = "not run: FastStream is not installed (bench/setup.sh installs it)"


def faststream_installed() -> bool:
    """Whether the FastStream baseline can run (`make env` removes it; bench/setup.sh adds it)."""
    import importlib.util

    return importlib.util.find_spec("faststream") is not None


def cores_notes(spent: list[tuple[int, Measured]]) -> list[str]:
    """Where the machine's cores went in each workers run: relay, sink and broker CPU seconds
    over the same window (from the last poll before the first delivery to the end)."""
    cores = os.cpu_count() or 1
    notes = []
    for count, measured in spent:
        wall_s = measured.cpu_window_s
        if measured.cpu_s is None or wall_s <= 0:
            continue
        parts = {"relay": measured.cpu_s, **measured.others_cpu_s}
        total = parts.pop(MACHINE, None)
        if total is not None:
            parts["the rest (harness, other work)"] = max(0.0, total - sum(parts.values()))
        else:
            total = sum(parts.values())
        shown = ", ".join(f"{name} {cpu_s:.2f}" for name, cpu_s in parts.items())
        busy = total / wall_s
        verdict = (
            "the cores were full: the machine limits the scaling"
            if busy >= 0.9 * cores
            else "the cores were not full: the relay limits it (a process uses one core at most)"
        )
        notes.append(
            f"{count} worker(s), CPU s over the {wall_s:.1f} s its CPU was measured: {shown}; "
            f"{busy:.2f} of the machine's {cores} cores busy, {verdict}"
        )
    return notes


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of sorted values."""
    if not sorted_values:
        return None
    rank = max(1, round(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def run_scenario(
    bench: Bench, scenario: str, shared: tuple[str, list[bytes] | None] | None
) -> None:
    """One scenario (those over the shared backlog need it)."""
    settings = bench.s
    lines = shared[1] if shared is not None else None
    if scenario == "throughput" and shared is not None and lines is not None:
        await bench.throughput(settings.sink, settings.latencies_ms, shared[0], lines)
    elif scenario == "nginx" and shared is not None and lines is not None:
        if nginx_binary() is None:
            print("nginx is not installed (bench/setup.sh): skipping the nginx sink", flush=True)
        else:
            await bench.throughput("nginx", (0,), shared[0], lines)
    elif scenario == "latency":
        await bench.latency()
    elif scenario == "memory":
        await bench.memory()
    elif scenario == "memory_stuck":
        await memory_stuck(bench)
    elif scenario == "replay":
        await replay_scenario(bench)
    elif scenario == "hotpath":  # no broker, no sink: bench.hotpath in its own process
        await hotpath_scenario(bench, 20_000 if settings.max_s < 10 else 100_000)
    elif scenario == "ratelimit":
        await bench.ratelimit()
    elif scenario == "workers" and shared is not None and lines is not None:
        if settings.workers_events > len(lines):
            topic, own = await bench.backlog(settings.workers_events)
            await bench.workers(topic, own if own is not None else lines)
        else:
            await bench.workers(shared[0], lines)
    elif scenario == "adaptive":  # quick runs have max_s of a few seconds
        bench.report.add(await adaptive_section(quick=settings.max_s < 10))
    elif scenario == "tls" and shared is not None and lines is not None:
        if nginx_binary() is None:
            print("nginx is not installed (bench/setup.sh): skipping the TLS scenario", flush=True)
        else:
            await tls_scenario(bench, shared[0], lines)
    elif scenario == "inputs":  # its own three topics; nginx, as the nginx scenario
        if nginx_binary() is None:
            print(
                "nginx is not installed (bench/setup.sh): skipping the inputs scenario", flush=True
            )
        else:
            await inputs_scenario(bench)
    elif scenario == "registry_outage":
        await registry_outage_scenario(bench)


async def run(settings: Settings, scenarios: list[str]) -> str:
    """Run the scenarios and write the report."""
    noise = Noise.start()
    work = Path(tempfile.mkdtemp(prefix="conversion-relay-bench-"))
    print(f"logs and configs: {work}", flush=True)
    broker = EmbeddedBroker(log_path=work / "broker.log")
    broker.start()
    took: dict[str, float] = {}  # seconds per scenario, for planning a full run's time
    try:
        async with aiohttp.ClientSession() as session:
            bench = Bench(settings, broker, work, session)
            shared: tuple[str, list[bytes] | None] | None = None
            began = time.monotonic()
            if {"throughput", "nginx", "workers", "tls"} & set(scenarios):
                shared = await bench.backlog(settings.events)
            took["backlog preload"] = time.monotonic() - began
            for scenario in scenarios:
                began = time.monotonic()
                await run_scenario(bench, scenario, shared)
                took[scenario] = time.monotonic() - began
                print(f"  ({scenario}: {took[scenario]:.0f}s)", flush=True)
    finally:
        stop_all()
        broker.stop()
    text = "\n".join(
        [
            "# conversion-relay benchmark results",
            "",
            "Produced by `python -m bench.run` (bench/README.md explains every figure).",
            "",
            *machine(noise),
            f"- command: `python -m bench.run {' '.join(sys.argv[1:])}`",
            "- seconds per scenario: " + ", ".join(f"{k} {v:.0f}" for k, v in took.items()),
            "",
            *(section.markdown() for section in bench.report.sections),
        ]
    )
    return text


def parse_args(argv: list[str] | None = None) -> tuple[Settings, list[str], Path | None]:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, help="backlog size (default 50,000; quick 1,500)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable; default: all)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=CONTENDERS,
        help="run only this contender in the throughput and TLS tables (repeatable)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small smoke run (< 2 minutes); writes no RESULTS.md"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="per contender, from its first delivery (default 60; quick 4)",
    )
    parser.add_argument(
        "--max-seconds-5",
        type=float,
        help="per 5-vendor run, from its first delivery: long enough to deliver the whole "
        "backlog (default 300; quick 60)",
    )
    parser.add_argument(
        "--memory-backlog",
        type=int,
        action="append",
        help="backlog sizes of the memory scenario (default 10,000 and 1,000,000)",
    )
    parser.add_argument(
        "--replay-letters",
        type=int,
        action="append",
        help="DLQ sizes of the replay scenario (default 1,000 and 1,000,000; quick 200, 2,000)",
    )
    parser.add_argument(
        "--sink-latency-ms",
        type=int,
        action="append",
        help="sink latencies of the throughput scenario (default 0 and 20)",
    )
    parser.add_argument("--workers", type=int, default=2, help="the worker count to compare")
    parser.add_argument(
        "--handshakes",
        type=int,
        help="tls scenario: requests (each on a new connection) per handshake run "
        "(default 1,000; quick 200)",
    )
    parser.add_argument(
        "--sink",
        choices=("sandbox", "nginx"),
        default="sandbox",
        help="sink of the throughput scenario (nginx: latency 0 only)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="write the Markdown report here (default bench/RESULTS.md, none with --quick)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        settings = Settings(
            events=args.events or 1_500,
            concurrency=args.concurrency,
            max_s=args.max_seconds or 4.0,
            max_s_5=args.max_seconds_5 or 60.0,
            latency_s=4.0,
            latency_warmup_s=1.0,
            latency_contenders=("ceiling", "relay1"),
            latencies_ms=(0,),
            memory_backlogs=tuple(args.memory_backlog or (1_500, 15_000)),
            memory_s=4.0,
            rate_s=4.0,
            startup_s=30.0,
            workers_events=0,  # the shared backlog
            tls_handshakes=200,
        )
        output = args.output
    else:
        settings = Settings(
            events=args.events or 50_000,
            concurrency=args.concurrency,
            max_s=args.max_seconds or 60.0,
            max_s_5=args.max_seconds_5 or 300.0,
            memory_backlogs=tuple(args.memory_backlog or (10_000, 1_000_000)),
        )
        output = args.output or RESULTS
    settings.workers = args.workers
    quick_letters = (200, 2_000) if args.quick else settings.replay_letters
    settings.replay_letters = tuple(args.replay_letters or quick_letters)
    if args.handshakes:
        settings.tls_handshakes = args.handshakes
    settings.sink = args.sink
    if args.sink_latency_ms:
        settings.latencies_ms = tuple(args.sink_latency_ms)
    if args.sink == "nginx":
        settings.latencies_ms = (0,)
    if args.only:
        settings.only = tuple(args.only)
        settings.only_given = True
    settings.memory_s = min(settings.memory_s, settings.max_s)
    # Always in SCENARIOS' order (and once each), whatever the order of --scenario.
    scenarios = [s for s in SCENARIOS if s in (args.scenario or SCENARIOS)]
    if args.quick and not args.scenario:  # the nginx-sink scenarios only when named
        scenarios = [s for s in SCENARIOS if s not in ("nginx", "tls", "inputs")]
    return settings, scenarios, output


def main() -> None:
    """Entry point: run, and stop every process started, whatever happens."""
    settings, scenarios, output = parse_args()
    install_signal_handlers()
    try:
        text = asyncio.run(run(settings, scenarios))
        print("\n" + text, flush=True)
        if output is not None:
            output.write_text(text)
            print(f"\nwritten to {output}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: stopped every process the benchmark started", file=sys.stderr)
        sys.exit(130)
    finally:
        stop_all()


if __name__ == "__main__":
    main()
