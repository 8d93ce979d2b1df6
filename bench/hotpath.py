"""The relay's own CPU per delivery, without Kafka I/O or HTTP: the hot path alone.

    python -m bench.hotpath [--events N] [--concurrency C] [--profile] [--mapped] [--tracing]

One real `VendorPipeline` (the 1-vendor bench config: goal reach, every sample goal mapped, the
default in-memory dedup, the real `Sender`, limiter and metrics) is fed N sample events from an
in-memory consumer (records as aiokafka returns them) and sends them to a transport that answers
200 after one loop turn. What it measures is everything the relay does per delivery except
fetching bytes from Kafka and the HTTP exchange: decode, routing, dedup, the request build, the
sender's layers, metrics, offset tracking, queue hand-offs. The `make bench` figure to compare it
with is the relay's CPU per delivery minus its transport's CPU per request (the client ceiling).
`--profile` prints cProfile's top functions (cumulative and own time) instead of just the figure.
`--tracing` adds the rows of delivery traces (`tracing:`): the whole hot path with tracing off
(the default) and on (sampled 100 %, the real OTLP/HTTP exporter sending to a loopback receiver
in a child process, its CPU not ours; alternating runs, best of 3 each), and the off path's own
cost against no tracing code at all (CPU time, interleaved, best of 9).
`--mapped` adds the row of the same events in a producer's own JSON shape (a CRM's), read through
an `inputs:` mapping (`MAPPED_FIELDS`) into the same events and requests: the mapping's added
cost per record, as the whole hot path (alternating runs, best of 3 each) and as the decode
stage alone (canonical decode vs mapped decode of the same events, CPU time, interleaved, best
of 9).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import resource
import subprocess
import sys
import time
import timeit
from typing import Any

import msgspec
from aiokafka import TopicPartition

from bench.workload import GOALS, VENDOR
from service.config import PipelineConfig, TracingConfig
from service.core.exchange import VendorRequest, VendorResponse
from service.core.inputs import Input, JsonInput
from service.core.records import Fetched
from service.delivery.dedup import MemoryDedupStore
from service.delivery.pipeline import VendorPipeline, Work
from service.delivery.ratelimit import LocalRateLimiter
from service.delivery.sender import Attempts, Sender
from service.devtools.demo import sample_lines
from service.events import decode_event
from service.metrics import Metrics
from service.vendors import make_adapter
from service.vendors.goal_reach import GoalReachConfig

PARTITIONS = 4
_OK = VendorResponse(200, {}, b"")
# A CRM's own shape for the sample events, and the mapping that makes the same events of it.
MAPPED_FIELDS = {
    "event_id": "$.id",
    "goal": {"from": "$.type", "map": {"order.paid": "purchase", "user.created": "signup"}},
    "occurred_at": "$.ts | epoch_ms",
    "value": "$.amount_cents / 100",
    "currency": "$.currency",
    "customer.email": "$.buyer.email",
    "customer.phone": "$.buyer.phone",
    "customer.ip": "$.buyer.ip",
    "customer.user_agent": "$.buyer.ua",
    "customer.ids": "$.ids",
    "params": "$.props",
    "attributes": "$.attrs",
    "context.utm_source": "$.utm.source",
    "context.utm_medium": "$.utm.medium",
    "order.order_id": "$.order.id",
}
_PRODUCER_TYPES = {"purchase": "order.paid", "signup": "user.created"}


def producer_line(line: bytes) -> bytes:
    """A canonical sample event re-shaped as a CRM would emit it (MAPPED_FIELDS maps it back)."""
    event = decode_event(line)
    value = event.value
    record = {
        "id": event.event_id,
        "type": _PRODUCER_TYPES.get(event.goal, event.goal),
        "ts": int(event.occurred_at.timestamp() * 1000),
        "amount_cents": round(value * 100) if value is not None else None,
        "currency": event.currency,
        "buyer": {
            "email": event.customer.email,
            "phone": event.customer.phone,
            "ip": event.customer.ip,
            "ua": event.customer.user_agent,
        },
        "ids": event.customer.ids,
        "props": event.params,
        "attrs": event.attributes,
        "utm": {"source": event.context.utm_source, "medium": event.context.utm_medium},
        "order": {"id": event.order.order_id},
    }
    return msgspec.json.encode(record)


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


def records(events: int, mapped: bool = False) -> dict[TopicPartition, list[Any]]:
    """The sample events spread round-robin over the partitions, as aiokafka records (in the
    CRM's shape when `mapped`)."""
    logs: dict[TopicPartition, list[Any]] = {
        TopicPartition("bench", p): [] for p in range(PARTITIONS)
    }
    now_ms = int(time.time() * 1000)
    lines = sample_lines(events)
    if mapped:
        lines = (producer_line(line) for line in lines)
    for index, line in enumerate(lines):
        tp = TopicPartition("bench", index % PARTITIONS)
        log = logs[tp]
        logs[tp].append(
            Fetched(
                tp.topic, tp.partition, len(log), now_ms, 0, None, line, None, -1, len(line), ()
            )
        )
    return logs


async def measure(
    events: int,
    concurrency: int,
    mapped: bool = False,
    traces_to: str | None = None,
    sample_ratio: float = 1.0,
) -> tuple[int, float, float]:
    """(deliveries, CPU µs per delivery, wall seconds) of one pipeline over `events` records
    (canonical, or in the CRM's shape through MAPPED_FIELDS when `mapped`); traced, every span
    exported to the OTLP/HTTP endpoint `traces_to` (the CPU until all are exported), when set,
    `sample_ratio` of them sampled."""
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
    tracer = None
    if traces_to is not None:
        from service.delivery.tracing import DeliveryTracer

        # Room for every span: the row is the cost of exporting them all, not of dropping some.
        tracing = TracingConfig(
            enabled=True,
            endpoint=traces_to,
            max_queue_size=2 * events + 1,
            sample_ratio=sample_ratio,
        )
        tracer = DeliveryTracer(tracing, metrics)

    class NoLetters:
        topic = "bench.dlq"

        async def write(self, letter: Any) -> None:
            raise AssertionError(f"no dead letter expected: {letter.reason} {letter.error}")

    pipeline = VendorPipeline(
        VENDOR,
        config,
        sender,
        NoLetters(),
        MemoryConsumer(records(events, mapped)),
        ["bench"],
        PipelineConfig(),
        metrics,
        dedup=MemoryDedupStore(),
        inputs={"bench": JsonInput(MAPPED_FIELDS)} if mapped else None,
        tracer=tracer.for_vendor(VENDOR) if tracer is not None else None,
    )
    started = time.perf_counter()
    task = asyncio.create_task(pipeline.run())
    await asyncio.wait_for(transport.done.wait(), 600)
    if tracer is not None:  # every span exported: their cost is the row's
        await asyncio.to_thread(tracer.provider.force_flush)
        dropped = metrics.registry.get_sample_value(
            "conversion_relay_trace_spans_dropped_total", {"reason": "queue_full"}
        )
        assert not dropped, f"{dropped} spans dropped"
    cpu_per_delivery_us = (cpu_s() - transport.first_at_cpu_s) / max(1, transport.sent - 1) * 1e6
    wall_s = time.perf_counter() - started
    pipeline.stop()
    await task
    if tracer is not None:
        await tracer.shutdown()
    return transport.sent, cpu_per_delivery_us, wall_s


# A loopback OTLP/HTTP receiver for the tracing row, in a child process (its CPU is not ours):
# it reads each export request and answers 200 with an empty protobuf body.
_RECEIVER = """
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class _NoSpanWork(Attempts, gc=False, kw_only=True):
    """`Work` as it was before tracing: the same fields but `span`."""

    record: Any
    tp: TopicPartition
    epoch: int
    window: Any
    windows: Any
    event_id: str | None = None
    occurred_s: float = 0.0
    request: VendorRequest | None = None


def tracing_off_cost_ns(count: int = 200_000) -> tuple[float, float]:
    """(ns per delivery of the worker's `tracer is None` test, ns per `Work` built with its
    `span` field vs without it): what tracing off adds to a delivery, CPU time, best of 9."""
    tracer = None
    tp = TopicPartition("bench", 0)
    ranged = range(count)

    def branch() -> None:
        for _ in ranged:
            if tracer is None:
                pass

    def plain() -> None:
        for _ in ranged:
            pass

    def with_span() -> None:
        for _ in ranged:
            Work(record=None, tp=tp, epoch=1, window=None, windows=None)  # type: ignore[arg-type]

    def without_span() -> None:
        for _ in ranged:
            _NoSpanWork(record=None, tp=tp, epoch=1, window=None, windows=None)

    best = [float("inf")] * 4
    for _ in range(9):
        for slot, run in enumerate((branch, plain, with_span, without_span)):
            spent_s = timeit.Timer(run, timer=time.process_time).timeit(number=1)
            best[slot] = min(best[slot], spent_s / count * 1e9)
    return max(0.0, best[0] - best[1]), max(0.0, best[2] - best[3])


def tracing_rows(events: int, concurrency: int) -> None:
    """Print the tracing rows: off vs on (sampled 100 %, exported), and the off path's cost."""
    import uvloop

    receiver = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout is not None
        endpoint = f"http://127.0.0.1:{receiver.stdout.readline().strip()}/v1/traces"
        # Off, on sampling every trace, on sampling none (the spans made but not recorded).
        best = {None: float("inf"), 1.0: float("inf"), 0.0: float("inf")}
        for _ in range(3):
            for ratio in best:
                traces_to = endpoint if ratio is not None else None
                sent, spent_us, _ = uvloop.run(
                    measure(events, concurrency, traces_to=traces_to, sample_ratio=ratio or 0.0)
                )
                best[ratio] = min(best[ratio], spent_us)
    finally:
        receiver.kill()
        receiver.wait()
    off = best[None]
    print(
        f"tracing: {sent} deliveries a run (best of 3 alternating runs each): off {off:.1f} µs "
        f"CPU per delivery; on, sampled 100 % (every span exported over OTLP/HTTP) "
        f"{best[1.0]:.1f} µs ({best[1.0] - off:+.1f} µs); on, sampled 0 % "
        f"{best[0.0]:.1f} µs ({best[0.0] - off:+.1f} µs)"
    )
    branch_ns, field_ns = tracing_off_cost_ns()
    print(
        f"tracing off vs no tracing code: the worker's `tracer is None` test {branch_ns:.1f} ns, "
        f"Work's `span` field {field_ns:.1f} ns per delivery: "
        f"{(branch_ns + field_ns) / 1000:.3f} µs (target <= 0.5 µs)"
    )


def decode_cost_us(count: int = 2000) -> tuple[float, float]:
    """(canonical, mapped) µs per record of the decode stage alone, over the same events."""
    canonical = list(sample_lines(count))
    shaped = [producer_line(line) for line in canonical]
    mapper: Input = JsonInput(MAPPED_FIELDS)
    for plain, own in zip(canonical, shaped, strict=True):  # the mapping makes the same event
        event, made = decode_event(plain), mapper.decode(own, ())
        assert abs((made.occurred_at - event.occurred_at).total_seconds()) < 0.001  # epoch ms
        same = msgspec.structs.replace(made, occurred_at=event.occurred_at) == event
        assert same, "MAPPED_FIELDS drifted from the sample events"

    def plain_pass() -> None:
        for line in canonical:
            decode_event(line)

    def mapped_pass() -> None:
        for line in shaped:
            mapper.decode(line, ())

    # CPU time (not wall: neighbours on a shared machine preempt us), interleaved, best of 9.
    best = [float("inf"), float("inf")]
    for _ in range(9):
        for slot, run in enumerate((plain_pass, mapped_pass)):
            spent_s = timeit.Timer(run, timer=time.process_time).timeit(number=1)
            best[slot] = min(best[slot], spent_s / count * 1e6)
    return best[0], best[1]


def avro_decode_cost_us(count: int = 2000) -> tuple[float, float]:
    """(canonical, Avro) µs per record of the decode stage alone over the same events: dev
    mode's shop orders framed in the Schema Registry wire format (schema cached, as after the
    first record of its id), and the canonical events their mapping makes of them."""
    import random

    from service.core.inputs import AvroInput
    from service.core.registry import AvroSchema, avro_value, parse_for_writing
    from service.devtools.demo_avro import ORDER_FIELDS, ORDER_SCHEMA, sample_order
    from service.events import encode_event

    schema = AvroSchema(1, ORDER_SCHEMA)

    class Cached:
        def cached(self, schema_id: int) -> AvroSchema:
            return schema

        def when_ready(self, schema_id: int, callback: Any) -> None:
            callback()

    rng, parsed = random.Random(7), parse_for_writing(ORDER_SCHEMA)
    framed = [avro_value(1, parsed, sample_order(rng, i)) for i in range(count)]
    avro = AvroInput(ORDER_FIELDS, Cached())
    canonical = [encode_event(avro.decode(value, ())) for value in framed]

    def plain_pass() -> None:
        for line in canonical:
            decode_event(line)

    def avro_pass() -> None:
        for value in framed:
            avro.decode(value, ())

    best = [float("inf"), float("inf")]
    for _ in range(9):  # CPU time, interleaved, best of 9 (as decode_cost_us)
        for slot, run in enumerate((plain_pass, avro_pass)):
            spent_s = timeit.Timer(run, timer=time.process_time).timeit(number=1)
            best[slot] = min(best[slot], spent_s / count * 1e6)
    return best[0], best[1]


def main() -> None:
    """Measure (or profile) the hot path on uvloop."""
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    parser.add_argument(
        "--mapped", action="store_true", help="add the row of a mapped JSON input (inputs:)"
    )
    parser.add_argument(
        "--tracing", action="store_true", help="add the rows of delivery traces (tracing:)"
    )
    parser.add_argument(
        "--avro",
        action="store_true",
        help="add the row of an Avro input (Schema Registry wire format, schema cached)",
    )
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
    if args.mapped:
        # Canonical and mapped runs alternate, best of 3 each: one run on a shared machine
        # moves by more than the difference measured.
        best = {False: per_delivery_us, True: float("inf")}
        for mapped in (True, False, True, False, True):
            sent, spent_us, wall_s = uvloop.run(measure(args.events, args.concurrency, mapped))
            best[mapped] = min(best[mapped], spent_us)
        print(
            f"mapped JSON: {sent} deliveries a run: {best[True]:.1f} µs CPU per delivery, "
            f"canonical {best[False]:.1f} µs (best of 3 alternating runs each): "
            f"{best[True] - best[False]:+.1f} µs"
        )
        plain_us, own_us = decode_cost_us()
        print(
            f"decode stage alone: canonical {plain_us:.2f} µs, mapped JSON {own_us:.2f} µs per "
            f"record: the mapping adds {own_us - plain_us:.2f} µs (target <= 3 µs)"
        )
    if args.tracing:
        tracing_rows(args.events, args.concurrency)
    if args.avro:
        plain_us, avro_us = avro_decode_cost_us()
        print(
            f"decode stage alone: canonical {plain_us:.2f} µs, Avro {avro_us:.2f} µs per record "
            f"(the same events): the Avro input adds {avro_us - plain_us:.2f} µs (target <= 3 µs)"
        )


if __name__ == "__main__":
    main()
