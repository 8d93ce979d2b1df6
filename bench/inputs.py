"""The `inputs` and `registry_outage` scenarios (issue 23): the relay reading producers' own events.

`inputs`: the same backlog delivered by the 1-vendor relay (default transport, nginx sink) three
times, alternating, in one run: canonical JSON events; the same events in a CRM's own JSON shape
through a mapped `json` input (`bench.hotpath.MAPPED_FIELDS`: epoch-ms time, a goal map, value
/ 100...); the same CRM records as Confluent-framed Avro (`CRM_SCHEMA`) through the stand-in
Schema Registry (service/devtools/registry.py, started here on loopback, schema registered before
the run). Deliveries/s, CPU µs per delivery and each input's ratio against canonical; issue 23
asks mapped JSON and Avro each >= 0.9x canonical. Every contender must deliver every event
(counted at the sink) and dead-letter none (its DLQ topic's end offset).

`registry_outage`: an Avro input whose registry answers 503 while a large backlog sits in the
topic: the relay at its defaults for a while (peak RSS, the memory scenario's VmHWM), then the
registry returns and the backlog drains. Target: peak RSS within the 150 MiB budget during the
outage, nothing dead-lettered.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import kafka, relay
from bench.hotpath import MAPPED_FIELDS, producer_line
from bench.procs import Proc
from bench.report import Section, mib, num
from bench.sinks import Sink, SinkStats, nginx_binary, total_stats
from service.core.registry import avro_value, parse_for_writing
from service.devtools.demo import sample_lines
from service.devtools.registry import RegistryServer
from service.events import decode_event

if TYPE_CHECKING:
    from bench.run import Bench

POLL_S = 0.2
MIB = 1024 * 1024
# Issue 23: a mapped JSON and an Avro input each deliver at least this fraction of canonical's rate.
TARGET_RATIO = 0.9
# The README's memory budget per relay process.
RSS_BUDGET_BYTES = 150 * MIB
# (kind, what the row is): the order they run in, alternating, each round.
KINDS = (
    ("canonical", "canonical JSON events"),
    ("json", "mapped JSON input (a CRM's shape)"),
    ("avro", "Avro input (Confluent wire format, stand-in registry)"),
)
LABELS = dict(KINDS)
INPUT_NAME = {"json": "crm", "avro": "app"}  # the `inputs:` entry of each generated config
# Each contender runs once per round, each round starting one contender later: over 3 rounds
# each is first once, so no order effect favours one. Quick runs too.
ROUNDS = 3
# --quick's 1,500 events take the relay about 0.1 s: too short a window for a ratio to mean
# anything, so a quick run of this scenario delivers at least this many.
INPUTS_QUICK_MIN_EVENTS = 20_000
OUTAGE_BACKLOG_FULL, OUTAGE_BACKLOG_QUICK = 1_000_000, 20_000
# How long the drain after the registry's return may take before the part delivered is reported.
DRAIN_LIMIT_FULL_S, DRAIN_LIMIT_QUICK_S = 300.0, 60.0

_NULL_STRING: list[Any] = ["null", "string"]
# The CRM shape of bench.hotpath.producer_line as an Avro schema: the same records as the mapped
# JSON contender, so the same MAPPED_FIELDS make the same canonical events of both.
CRM_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "CrmEvent",
    "namespace": "crm",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "type", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "amount_cents", "type": ["null", "long"], "default": None},
        {"name": "currency", "type": _NULL_STRING, "default": None},
        {
            "name": "buyer",
            "type": {
                "type": "record",
                "name": "Buyer",
                "fields": [
                    {"name": key, "type": _NULL_STRING, "default": None}
                    for key in ("email", "phone", "ip", "ua")
                ],
            },
        },
        {"name": "ids", "type": {"type": "map", "values": "string"}},
        {"name": "props", "type": {"type": "map", "values": _NULL_STRING}},
        {"name": "attrs", "type": {"type": "map", "values": _NULL_STRING}},
        {
            "name": "utm",
            "type": {
                "type": "record",
                "name": "Utm",
                "fields": [
                    {"name": "source", "type": _NULL_STRING, "default": None},
                    {"name": "medium", "type": _NULL_STRING, "default": None},
                ],
            },
        },
        {
            "name": "order",
            "type": {
                "type": "record",
                "name": "Order",
                "fields": [{"name": "id", "type": _NULL_STRING, "default": None}],
            },
        },
    ],
}


def round_order(round_no: int) -> list[str]:
    """The contenders' order in a round: rotated by one each round."""
    kinds = [kind for kind, _ in KINDS]
    shift = round_no % len(kinds)
    return kinds[shift:] + kinds[:shift]


def subject(topic: str) -> str:
    """The subject a producer's AvroSerializer registers the topic's value schema under."""
    return f"{topic}-value"


def crm_record(line: bytes) -> dict[str, Any]:
    """A canonical sample event in the CRM's shape (the mapped JSON contender's record)."""
    record: dict[str, Any] = orjson.loads(producer_line(line))
    return record


def avro_values(lines: Iterable[bytes], schema_id: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) per canonical line: the event id and the CRM record as framed Avro."""
    parsed = parse_for_writing(CRM_SCHEMA)
    for line in lines:
        record = crm_record(line)
        yield record["id"].encode(), avro_value(schema_id, parsed, record)


def json_values(lines: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) per canonical line: the event id and the CRM record as JSON."""
    for line in lines:
        yield decode_event(line).event_id.encode(), producer_line(line)


def canonical_values(lines: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) per canonical line: the event id and the line itself."""
    for line in lines:
        yield decode_event(line).event_id.encode(), line


def input_extra(kind: str, topic: str, registry_url: str | None = None) -> dict[str, Any]:
    """The top-level config sections that make `topic` read as `kind` (none for canonical)."""
    if kind == "canonical":
        return {}
    if kind == "json":
        entry = {"topic": topic, "format": "json", "fields": dict(MAPPED_FIELDS)}
        return {"inputs": {INPUT_NAME[kind]: entry}}
    if kind == "avro":
        if registry_url is None:
            raise ValueError("an avro input needs the registry's URL")
        entry = {"topic": topic, "format": "avro", "fields": dict(MAPPED_FIELDS)}
        return {"inputs": {INPUT_NAME[kind]: entry}, "schema_registry": {"url": registry_url}}
    raise ValueError(kind)


def input_config(
    bootstrap: str,
    topic: str,
    kind: str,
    base_url: str,
    concurrency: int,
    http_port: int,
    group_prefix: str,
    registry_url: str | None = None,
) -> dict[str, Any]:
    """The 1-vendor bench config (default transport) reading `topic` as `kind`."""
    return relay.relay_config(
        bootstrap,
        topic,
        relay.single_vendor(base_url, concurrency),
        http_port,
        group_prefix,
        **input_extra(kind, topic, registry_url),
    )


async def preload_pairs(bootstrap: str, topic: str, pairs: Iterable[tuple[bytes, bytes]]) -> int:
    """Append every (key, value) as one record, as bench.kafka.preload does; return the count."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    sent = 0
    try:
        pending: list[asyncio.Future[object]] = []
        for key, value in pairs:
            pending.append(await producer.send(topic, value=value, key=key))
            sent += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def dead_lettered(bootstrap: str, topic: str) -> int:
    """Records in the topic's DLQ (`<topic>.dlq`, the bench configs' `dlq.topic`)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        dlq = f"{topic}.dlq"
        await consumer.topics()  # a metadata refresh: a consumer without a subscription has none
        partitions = consumer.partitions_for_topic(dlq) or set()
        ends = await consumer.end_offsets([TopicPartition(dlq, p) for p in partitions])
        return sum(ends.values())
    finally:
        await consumer.stop()


# ---- inputs: the report ------------------------------------------------------------------------


@dataclass
class InputRun:
    """One contender's run over the backlog."""

    kind: str
    rate: float | None  # deliveries/s, first to last accepted request
    cpu_us: float | None  # relay CPU µs per delivery (from the first delivery)
    delivered: int
    expected: int
    dead: int
    note: str = ""

    @property
    def complete(self) -> bool:
        """Every event delivered, none dead-lettered."""
        return self.delivered >= self.expected and self.dead == 0


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def medians(runs: list[InputRun]) -> dict[str, tuple[float | None, float | None]]:
    """Per kind: (median deliveries/s, median CPU µs per delivery) over its rounds."""
    return {
        kind: (
            _median([r.rate for r in runs if r.kind == kind]),
            _median([r.cpu_us for r in runs if r.kind == kind]),
        )
        for kind, _ in KINDS
        if any(r.kind == kind for r in runs)
    }


def ratios(runs: list[InputRun]) -> dict[str, float | None]:
    """Per input: its median deliveries/s over canonical's (None when either is unknown)."""
    found = medians(runs)
    base = found.get("canonical", (None, None))[0]
    return {
        kind: (rate / base if rate is not None and base else None)
        for kind, (rate, _) in found.items()
        if kind != "canonical"
    }


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def inputs_rows(runs: list[InputRun]) -> list[list[str]]:
    """One row per kind: median rate and CPU, the ratios to canonical, delivered and DLQ totals."""
    found = medians(runs)
    base_rate, base_cpu = found.get("canonical", (None, None))
    rows = []
    for kind, (rate, cpu_us) in found.items():
        mine = [r for r in runs if r.kind == kind]
        rate_x = rate / base_rate if rate is not None and base_rate else None
        cpu_x = cpu_us / base_cpu if cpu_us is not None and base_cpu else None
        notes = "; ".join(r.note for r in mine if r.note)
        rows.append(
            [
                LABELS[kind],
                num(rate),
                num(cpu_us, 1),
                "1.00×" if kind == "canonical" else _x(rate_x),
                "1.00×" if kind == "canonical" else _x(cpu_x),
                f"{sum(r.delivered for r in mine):,} / {sum(r.expected for r in mine):,}",
                f"{sum(r.dead for r in mine):,}",
                notes,
            ]
        )
    return rows


def inputs_verdict(runs: list[InputRun], target: float = TARGET_RATIO) -> str:
    """Issue 23's target, met or not, with the figures (not measured when a run fell short)."""
    short = [r for r in runs if not r.complete]
    if short:
        which = ", ".join(
            f"{LABELS[r.kind]} delivered {r.delivered:,} of {r.expected:,}, "
            f"dead-lettered {r.dead:,}"
            for r in short
        )
        return f"target not measured: not every run delivered its whole backlog ({which})"
    found = ratios(runs)
    shown = ", ".join(f"{LABELS[kind]} {_x(value)}" for kind, value in found.items())
    if len(found) < 2 or any(value is None for value in found.values()):
        return f"target not measured: a rate is missing ({shown})"
    met = all(value is not None and value >= target for value in found.values())
    return (
        f"issue 23's target (mapped JSON and Avro each >= {target}× canonical deliveries/s): "
        f"{'met' if met else 'NOT met'}: {shown}"
    )


async def inputs_scenario(bench: Bench) -> None:
    """Canonical, mapped JSON and Avro over the same backlog, alternating, nginx sink."""
    s = bench.s
    quick = s.max_s < 10
    rounds = ROUNDS
    lines = list(sample_lines(max(s.events, INPUTS_QUICK_MIN_EVENTS) if quick else s.events))
    n = len(lines)
    title = (
        f"Inputs: {n:,}-event backlog as canonical JSON, mapped JSON and Avro, nginx sink, "
        f"concurrency {s.concurrency}, transport {relay.default_transport()} (default)"
    )
    print(f"\n== {title}", flush=True)
    registry = RegistryServer()
    await registry.start()
    runs: list[InputRun] = []
    try:
        topics: dict[str, str] = {}
        for kind, _ in KINDS:
            topic = bench.name(f"inputs-{kind}")
            await kafka.make_topic(bench.broker.bootstrap, topic)
            if kind == "avro":  # registered before the run, as a producer's serializer does
                schema_id = registry.register(subject(topic), CRM_SCHEMA)
                pairs: Iterable[tuple[bytes, bytes]] = avro_values(lines, schema_id)
            elif kind == "json":
                pairs = json_values(lines)
            else:
                pairs = canonical_values(lines)
            print(f"preloading {n:,} {kind} records into {topic} ...", flush=True)
            await preload_pairs(bench.broker.bootstrap, topic, pairs)
            topics[kind] = topic
        for round_no in range(rounds):
            for kind in round_order(round_no):
                topic, label = topics[kind], LABELS[kind]

                def start(
                    sink: Sink, topic: str = topic, kind: str = kind, round_no: int = round_no
                ) -> Proc:
                    name = bench.name(f"inputs-{kind}")
                    config = input_config(
                        bench.broker.bootstrap,
                        topic,
                        kind,
                        sink.base_url,
                        s.concurrency,
                        relay.new_http_port(),
                        # A fresh consumer group each round: every round reads the whole topic.
                        bench.name(f"relay-{kind}-{round_no}"),
                        registry.url,
                    )
                    return relay.RelayProcess(name, config, bench.work).proc

                dead_before = await dead_lettered(bench.broker.bootstrap, topic)
                row, measured = await bench.run_http(
                    f"{label}, round {round_no + 1}", "relay", start, bench.sink("nginx", 0), n
                )
                dead = await dead_lettered(bench.broker.bootstrap, topic) - dead_before
                cpu_us = row.cpu_s_per_1k * 1000 if row.cpu_s_per_1k is not None else None
                runs.append(
                    InputRun(kind, row.deliveries_per_s, cpu_us, measured.stats.accepted, n, dead)
                )
                if row.note:
                    runs[-1].note = f"round {round_no + 1}: {row.note}"
    finally:
        await registry.stop()
    notes = [
        inputs_verdict(runs),
        f"{rounds} rounds, the three contenders alternating, each round starting one later "
        "(each is first once); each figure is the median over its rounds; each run a fresh "
        "relay process and consumer group reads the whole topic",
        "mapped JSON: the CRM shape of bench/hotpath.py (`producer_line`), read through "
        "`inputs: {format: json, fields: MAPPED_FIELDS}` (epoch-ms time, a goal map, "
        "amount_cents / 100, nested buyer fields); Avro: the same CRM records in "
        "bench/inputs.py's `CRM_SCHEMA`, framed as confluent-kafka's AvroSerializer frames them "
        "(magic byte, schema id), read through `format: avro` with the same fields from the "
        "stand-in registry (service/devtools/registry.py) on loopback, the schema registered "
        "before the run; the mapped events equal the canonical ones (occurred_at to the ms)",
        "× canonical: the row's median deliveries/s over canonical's (the target's figure); "
        "CPU × canonical: its CPU µs per delivery over canonical's (below 1: cheaper); CPU is "
        "the relay process's from the last poll before its first delivery to the end",
        "delivered is counted at the sink (nginx's access log, 2xx), summed over the rounds; "
        "dead-lettered: the records each run added to its topic's DLQ, summed over the rounds",
    ]
    bench.report.add(
        Section(
            title,
            [
                "input",
                "deliveries/s",
                "CPU µs/delivery",
                "× canonical",
                "CPU × canonical",
                "delivered / expected",
                "dead-lettered",
                "notes",
            ],
            inputs_rows(runs),
            notes,
        )
    )


# ---- registry_outage ---------------------------------------------------------------------------


@dataclass
class OutageRun:
    """What the relay did while its registry was down and after it returned."""

    backlog: int
    outage_s: float
    peak_outage_bytes: int | None
    peak_after_bytes: int | None
    delivered_outage: int  # deliveries while the registry was down (none expected: no schema)
    delivered: int  # deliveries in all
    dead: int
    drain_s: float | None  # registry's return to the last delivery, when all were delivered
    first_after_s: float | None  # registry's return to the first delivery
    drain_limit_s: float
    error: str = ""
    waiting: int | None = None  # records_waiting in /status at the end of the outage

    @property
    def drained(self) -> bool:
        """The whole backlog delivered."""
        return self.delivered >= self.backlog


def outage_verdict(run: OutageRun, budget_bytes: int = RSS_BUDGET_BYTES) -> str:
    """The target (outage peak RSS within budget, nothing dead-lettered), with the figures."""
    if run.peak_outage_bytes is None:
        return f"target not measured: no RSS sample during the outage ({run.error or 'no error'})"
    within = run.peak_outage_bytes <= budget_bytes
    met = within and run.dead == 0
    drained = (
        f"drained all {run.backlog:,}"
        if run.drained
        else f"delivered {run.delivered:,} of {run.backlog:,} within the "
        f"{run.drain_limit_s:.0f} s drain limit"
    )
    return (
        f"target (peak RSS during the outage <= {budget_bytes / MIB:.0f} MiB, dead-lettered 0): "
        f"{'met' if met else 'NOT met'}: peak RSS {mib(run.peak_outage_bytes)} MiB, "
        f"dead-lettered {run.dead:,}; after the registry's return it {drained}"
    )


def outage_rows(run: OutageRun) -> list[list[str]]:
    """The outage table: one row for the outage, one for the recovery."""

    def secs(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f}"

    waiting = "" if run.waiting is None else f"; /status records_waiting {run.waiting:,}"
    rows = [
        [
            f"registry down (503) for {run.outage_s:.0f} s",
            mib(run.peak_outage_bytes),
            f"{run.delivered_outage:,}",
            "–",
            f"{run.backlog:,} records waiting in the topic{waiting}",
        ],
        [
            "registry back, drain",
            mib(run.peak_after_bytes),
            f"{run.delivered:,} / {run.backlog:,}",
            f"{run.dead:,}",
            run.error
            or (
                f"first delivery {secs(run.first_after_s)} s after the return; "
                + (
                    f"all delivered {secs(run.drain_s)} s after it"
                    if run.drained
                    else f"stopped at the {run.drain_limit_s:.0f} s drain limit"
                )
            ),
        ],
    ]
    return rows


async def _status_waiting(session: aiohttp.ClientSession, port: int) -> int | None:
    """`schema_registry.records_waiting` from the relay's /status (None when unreadable)."""
    try:
        async with session.get(f"http://127.0.0.1:{port}/status") as resp:
            data = await resp.json(content_type=None)
        waiting = data["schema_registry"]["records_waiting"]
        return int(waiting) if waiting is not None else None
    except (aiohttp.ClientError, KeyError, TypeError, ValueError):
        return None


async def _hold(proc: Proc, seconds: float) -> tuple[int | None, str]:
    """VmHWM of the process after `seconds` (or when it exited), and an error if it did."""
    deadline = time.monotonic() + seconds
    peak: int | None = None
    while time.monotonic() < deadline:
        if not proc.alive():
            return peak, f"exited with {proc.popen.returncode} (log: {proc.log_path})"
        used = proc.usage()
        if used is not None:
            peak = used.hwm_bytes
        await asyncio.sleep(POLL_S)
    return peak, ""


async def _drain(
    proc: Proc, sink: Sink, expected: int, limit_s: float
) -> tuple[int | None, SinkStats, str]:
    """Poll until `expected` deliveries, `limit_s` or an exit: (VmHWM, sink stats, error)."""
    deadline = time.monotonic() + limit_s
    peak: int | None = None
    while True:
        stats = await total_stats([sink])
        used = proc.usage()
        if used is not None:
            peak = used.hwm_bytes
        if stats.accepted >= expected or time.monotonic() > deadline:
            return peak, stats, ""
        if not proc.alive():
            return peak, stats, f"exited with {proc.popen.returncode} (log: {proc.log_path})"
        await asyncio.sleep(POLL_S)


async def registry_outage_scenario(bench: Bench) -> None:
    """An Avro input's registry down while a large backlog waits; then back, and the drain."""
    s = bench.s
    quick = s.memory_s <= 5
    backlog = OUTAGE_BACKLOG_QUICK if quick else OUTAGE_BACKLOG_FULL
    outage_s = s.memory_s * 2  # as long as memory_stuck's cases
    limit_s = DRAIN_LIMIT_QUICK_S if quick else DRAIN_LIMIT_FULL_S
    use_nginx = nginx_binary() is not None
    title = (
        f"Registry outage: an Avro input, {backlog:,}-record backlog, registry down "
        f"{outage_s:.0f} s, then back ({'nginx' if use_nginx else 'sandbox'} sink 0 ms)"
    )
    print(f"\n== {title}", flush=True)
    registry = RegistryServer()
    await registry.start()
    try:
        topic = bench.name("outage")
        await kafka.make_topic(bench.broker.bootstrap, topic)
        schema_id = registry.register(subject(topic), CRM_SCHEMA)
        registry.outage = True  # down before the relay asks: no schema is cached
        print(f"preloading {backlog:,} Avro records into {topic} ...", flush=True)
        started = time.monotonic()
        await preload_pairs(
            bench.broker.bootstrap, topic, avro_values(sample_lines(backlog), schema_id)
        )
        print(f"  in {time.monotonic() - started:.1f}s", flush=True)
        sink = bench.sink("nginx" if use_nginx else "sandbox", 0)
        config = input_config(
            bench.broker.bootstrap,
            topic,
            "avro",
            sink.base_url,
            s.concurrency,
            relay.new_http_port(),
            bench.name("relay"),
            registry.url,
        )
        relay_run = relay.RelayProcess(bench.name("outage-relay"), config, bench.work)
        proc = relay_run.proc
        try:
            peak_outage, error = await _hold(proc, outage_s)
            waiting = await _status_waiting(bench.session, relay_run.http_port)
            during = (await total_stats([sink])).accepted
            back_at = time.time()
            registry.outage = False
            peak_after, stats, drain_error = await _drain(proc, sink, backlog, limit_s)
        finally:
            proc.stop(timeout_s=30)
            sink.stop()
        dead = await dead_lettered(bench.broker.bootstrap, topic)
    finally:
        await registry.stop()
    run = OutageRun(
        backlog=backlog,
        outage_s=outage_s,
        peak_outage_bytes=peak_outage,
        peak_after_bytes=peak_after,
        delivered_outage=during,
        delivered=stats.accepted,
        dead=dead,
        drain_s=stats.last_s - back_at if stats.accepted >= backlog else None,
        first_after_s=stats.first_s - back_at if stats.accepted else None,
        drain_limit_s=limit_s,
        error=error or drain_error,
        waiting=waiting,
    )
    print(f"    {outage_verdict(run)}", flush=True)
    fetches = registry.requests.get("GET /schemas/ids/{id}", 0)
    bench.report.add(
        Section(
            title,
            ["phase", "peak RSS MiB", "delivered", "dead-lettered", "notes"],
            outage_rows(run),
            [
                outage_verdict(run),
                "the relay at its defaults (1 vendor, concurrency "
                f"{s.concurrency}, default transport); the stand-in registry answers 503 "
                "(Confluent's 50003) from before the relay starts, so no schema is cached and "
                f"every record waits; it returns after {outage_s:.0f} s; peak RSS is the relay "
                "process's VmHWM (during the outage: at its end; after: at the end of the "
                "drain, so the whole run's peak)",
                f"the drain runs until the whole backlog is delivered or {limit_s:.0f} s after "
                "the registry's return (the part delivered is shown when the limit comes first); "
                "dead-lettered: records in the topic's DLQ; delivered: counted at the sink",
                f"the registry answered GET /schemas/ids/{{id}} {fetches:,} times (503s while "
                "down, retried every `retry_interval_s`)",
            ],
        )
    )
