"""`conversion-relay dev`: embedded broker, vendor sandboxes, the relay and demo traffic, with a
live view (a plain line per vendor every few seconds when stdout is not a terminal), a control
endpoint to break a vendor by hand, and `--chaos` for a scripted fault tour. Ctrl-C or SIGTERM
stops everything it started within about two seconds, whatever stdout is."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import msgspec
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client import Metric
from rich import box
from rich.console import Console
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from service.app import Relay
from service.config import Config, parse_config
from service.devtools.chaos import run_tour, tour
from service.devtools.control import SandboxControl, start_control
from service.devtools.demo import sample_event
from service.devtools.demo_avro import avro_traffic
from service.devtools.demo_crm import crm_traffic
from service.devtools.embedded import EmbeddedBroker, create_topics
from service.devtools.paths import default_config_path, state_path
from service.devtools.publish import record_key
from service.devtools.registry import RegistryServer
from service.devtools.view import (
    COLUMNS,
    DROP_ORDER,
    PauseClock,
    VendorCounts,
    legend,
    paused_note,
    row,
    short_count,
)
from service.errors import RelayError
from service.events import encode_event
from service.net import free_port
from service.sandbox.base import Sandbox
from service.sandbox.registry import contract_for
from service.vendors import protocol_tag

INVALID_EVERY = 97  # one malformed record now and then, so the DLQ has something to show
PLAIN_EVERY_S = 5.0  # how often a plain progress block is printed when stdout is no terminal
SHUTDOWN_S = 0.5  # the relay's drain is cut off after this; the whole exit stays under 2 s
# Requests each sandbox remembers (for GET /vendors/{name}/received): a dev run left up for a
# day keeps its memory flat; the counts in /stats are whole.
DEV_KEEP = 1_000
# The tour breaks these first (the rest of the dev vendors stay healthy).
CHAOS_ORDER = ("expertsender", "sustain_impact", "altcraft")
_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")


class DevOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What `conversion-relay dev` was asked for."""

    events_per_s: float = 20.0
    http_port: int = 8080  # 0 = a free one
    chaos: bool = False
    control_port: int = 0  # 0 = a free one
    config_out: str | None = None  # None = default_config_path()


def _template() -> str:
    return resources.files("service.devtools").joinpath("dev_config.yaml").read_text()


def dev_config_text(
    bootstrap: str, http_port: int, sandbox_urls: dict[str, str], registry_url: str = ""
) -> str:
    """The demo config as YAML with the broker, HTTP port, sandbox URLs and the stand-in Schema
    Registry's URL filled in."""
    env = {
        "KAFKA_BOOTSTRAP": bootstrap,
        "HTTP_PORT": str(http_port),
        "SCHEMA_REGISTRY_URL": registry_url or "http://127.0.0.1:8081",
    }
    env.update({f"SANDBOX_{name.upper()}_URL": url for name, url in sandbox_urls.items()})
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), _template())


def dev_config(bootstrap: str, http_port: int, sandbox_urls: dict[str, str]) -> Config:
    """The demo config with the broker, HTTP port and sandbox URLs filled in."""
    return parse_config(yaml.safe_load(dev_config_text(bootstrap, http_port, sandbox_urls)), {})


def _dev_vendors() -> dict[str, str]:
    raw = yaml.safe_load(_template())
    return {name: vendor["protocol"] for name, vendor in raw["vendors"].items()}


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on (or holds) the port."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


class Output:
    """Writes to stdout and survives it: a closed pipe or fd means the rest goes to /dev/null
    (dev mode must still stop everything it started)."""

    def __init__(self, stream: TextIO | None) -> None:
        self.broken = stream is None
        self.stream: TextIO = stream if stream is not None else open(os.devnull, "w")  # noqa: SIM115
        self.tty = not self.broken and self.stream.isatty()
        self.console = Console(file=self.stream, force_terminal=self.tty or None)

    def line(self, text: str) -> None:
        """Print one plain line (no markup)."""
        self.guard(lambda: print(text, file=self.stream, flush=True))

    def guard(self, write: Callable[[], object]) -> None:
        """Run a write; on a broken stdout switch to /dev/null and carry on."""
        if self.broken:
            return
        try:
            write()
        except (BrokenPipeError, OSError, ValueError):
            self.broken = True
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
            self.stream = open(os.devnull, "w")  # noqa: SIM115
            self.console = Console(file=self.stream)


async def _traffic(
    bootstrap: str, topic: str, per_s: float, stop: asyncio.Event, burst: asyncio.Queue[int]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    rng = random.Random()
    index = 0
    try:
        while not stop.is_set():
            index += 1
            if index % INVALID_EVERY == 0:
                value = b'{"event_id": "broken-%d", "goal": 42}' % index
            else:
                value = encode_event(sample_event(rng, index))
            await producer.send(topic, value=value, key=record_key(value))
            while not burst.empty():
                for n in range(burst.get_nowait()):
                    await producer.send(topic, value=b'{"event_id": "chaos-%d"' % n)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0 / per_s)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 0.5)


def _samples(metric: Metric | None, vendor: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for sample in metric.samples if metric is not None else ():
        if sample.labels.get("vendor") == vendor and sample.name.endswith("_total"):
            key = sample.labels.get("outcome") or sample.labels.get("reason") or "all"
            values[key] = values.get(key, 0.0) + sample.value
    return values


def vendor_counts(
    relay: Relay, pauses: dict[str, PauseClock], now_s: float | None = None
) -> dict[str, VendorCounts]:
    """Per vendor, the counters the table shows, from the relay's metrics; `pauses` (one clock
    per vendor, kept between calls) adds the Retry-After pauses seen to the rate-limit wait."""
    metrics = {m.name: m for m in relay.metrics.registry.collect()}
    now_s = time.monotonic() if now_s is None else now_s

    def total(name: str, vendor: str) -> float:
        return sum(_samples(metrics.get(f"conversion_relay_{name}"), vendor).values())

    counts = {}
    for name in relay.vendor_names:
        outcomes = _samples(metrics.get("conversion_relay_deliveries"), name)
        paused_s = 0.0
        if name in pauses:
            paused_s = pauses[name].sample(now_s, relay.pause_left_s(name))
        counts[name] = VendorCounts(
            consumed=total("events_consumed", name),
            delivered=outcomes.get("delivered", 0.0),
            deduplicated=outcomes.get("deduplicated", 0.0),
            skipped=total("skipped", name),
            rejected=outcomes.get("rejected", 0.0),
            dead_lettered=outcomes.get("dead_lettered", 0.0),
            expired=outcomes.get("expired", 0.0),
            invalid=total("events_invalid", name),
            unreadable=total("records_unreadable", name),
            retried=outcomes.get("retried", 0.0),
            dlq_writes=total("dlq_writes", name),
            wait_s=total("ratelimit_wait_seconds", name) + paused_s,
        )
    return counts


def view_rows(
    relay: Relay, control: SandboxControl | None, pauses: dict[str, PauseClock]
) -> list[dict[str, str]]:
    """Per vendor: injected fault, breaker state, the counts that add up, retries, DLQ writes,
    rate-limit wait (Retry-After pauses included) and lag, as the table shows them."""
    rows = []
    for name, counts in vendor_counts(relay, pauses).items():
        pipeline = relay.pipelines.get(name)
        fault = control.describe(name) if control and name in control.sandboxes else "-"
        breaker = pipeline.sender.breaker_state if pipeline else "-"
        state = relay.controls.get(name)  # an operator's pause (the control topic)
        paused = (
            ""
            if state is None or not state.paused
            else paused_note(name, state.by, state.reason, state.at_s)
        )
        rows.append(row(name, counts, fault, breaker, pipeline.lag() if pipeline else 0, paused))
    return rows


def _dlq_total(rows: list[dict[str, str]]) -> str:
    return short_count(sum(_count(r["dlq"]) for r in rows))


def _count(text: str) -> float:
    """A shortened count read back (for the caption's total)."""
    scale = {"k": 1e3, "M": 1e6, "G": 1e9}.get(text[-1:], 1.0)
    return float(text[:-1] if scale != 1.0 else text) * scale


def _build(rows: list[dict[str, str]], columns: list[str]) -> Table:
    paused = " · ".join(r["paused"] for r in rows if r.get("paused"))
    table = Table(
        title=f"dev · DLQ: {_dlq_total(rows)} letters · Ctrl-C stops"
        + (f"\n{paused}" if paused else ""),
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for column in columns:
        table.add_column(
            column,
            justify="left" if column in ("vendor", "fault", "breaker") else "right",
            no_wrap=True,
        )
    for shown in rows:
        style = "red" if shown["breaker"] == "open" or shown["fault"] not in ("ok", "-") else None
        table.add_row(*(Text(shown[c]) for c in columns), style=style)
    return table


def table_for(rows: list[dict[str, str]], width: int) -> tuple[Table, list[str]]:
    """The table for a terminal `width` wide, and the columns it kept: columns are dropped in
    DROP_ORDER until every cell fits whole at its natural width (numbers are never cut)."""
    columns = list(COLUMNS)
    dropping = list(DROP_ORDER)
    measuring = Console(file=io.StringIO(), width=10_000)  # measures unclamped
    while True:
        table = _build(rows, columns)
        natural = Measurement.get(measuring, measuring.options, table).maximum
        if natural <= width or not dropping:
            table.caption = legend(columns, min(natural, width))  # one line under the table
            return table, columns
        columns.remove(dropping.pop(0))


def _table(rows: list[dict[str, str]], console: Console) -> Table:
    return table_for(rows, console.width)[0]


def _plain(rows: list[dict[str, str]], elapsed_s: float, first: bool) -> list[str]:
    lines = [f"t={elapsed_s:.0f}s dlq={_dlq_total(rows)}"]
    if first:  # what each number counts, once
        lines.insert(0, legend(COLUMNS, 1000))
    for r in rows:
        lines.append(
            f"  {r['vendor']}: in={r['in']} ok={r['ok']} skip={r['skip']} dead={r['dead']} "
            f"flight={r['flight']} retry={r['retry']} dlq={r['dlq']} breaker={r['breaker']} "
            f"rl_wait={r['rl wait']} lag={r['lag']} fault={r['fault']}"
            + (f" ({r['paused']})" if r.get("paused") else "")
        )
    return lines


def _cli() -> str:
    """How to call this command line again from the same shell."""
    script = Path(sys.argv[0])
    if script.name == "conversion-relay":
        with contextlib.suppress(ValueError):
            relative = os.path.relpath(script)
            if not relative.startswith(".."):
                return relative if "/" in relative else f"./{relative}"
        return str(script.absolute())
    return "conversion-relay" if shutil.which("conversion-relay") else "python -m service"


def commands(config_path: Path, control_url: str) -> list[str]:
    """Ready-to-paste commands for the running stack."""
    cli, cfg = _cli(), str(config_path)
    return [
        f"{cli} publish --config {cfg} --sample 10",
        f"{cli} fault altcraft reject 5 --state {state_path(config_path)}",
        f"curl -s -X POST {control_url}/vendors/altcraft/down   # or errors?rate=0.3, ok",
        f"{cli} dlq inspect --config {cfg}",
        f"{cli} dlq replay --config {cfg} --vendor altcraft --dry-run",
    ]


async def run_dev(options: DevOptions | None = None) -> int:
    """Start everything, show the live view until Ctrl-C/SIGTERM, then stop everything."""
    options = options or DevOptions()
    out = Output(sys.stdout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    broker: EmbeddedBroker | None = None

    def on_signal() -> None:
        if stop.is_set() and broker is not None:  # a second Ctrl-C: quit now
            broker.stop(kill=True)
            os._exit(130)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    for flag, port in (("--port", options.http_port), ("--control-port", options.control_port)):
        if port and port_in_use(port):
            raise RelayError(
                f"port {port} is already in use by another process; "
                f"pick another with {flag} P, or {flag} 0 for a free one"
            )
    broker = EmbeddedBroker()
    await asyncio.to_thread(broker.start)
    sandboxes: dict[str, Sandbox] = {}
    tasks: list[asyncio.Task[Any]] = []
    control_runner = None
    relay: Relay | None = None
    registry: RegistryServer | None = None
    started_s = time.monotonic()
    try:
        ports = {name: free_port() for name in _dev_vendors()}
        http_port = options.http_port or free_port()
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        registry = RegistryServer()  # the Avro stream's (shop.orders) stand-in Schema Registry
        await registry.start()
        text = dev_config_text(broker.bootstrap, http_port, urls, registry.url)
        config = parse_config(yaml.safe_load(text), {})
        for name, vendor in config.vendors.items():
            # Pinned to the vendor's config: the sandbox checks its credentials and account too.
            sandbox = Sandbox(
                contract_for(protocol_tag(vendor), vendor), port=ports[name], keep=DEV_KEEP
            )
            sandboxes[name] = sandbox
            await sandbox.start()
        control = SandboxControl(sandboxes)
        control_runner, control_port = await start_control(control, options.control_port)
        control_url = f"http://127.0.0.1:{control_port}"
        await create_topics(
            broker.bootstrap, {t: 4 for t in config.kafka.topics} | {config.dlq.topic: 1}
        )
        config_path = Path(options.config_out) if options.config_out else default_config_path()
        config_path.write_text(text)
        state_path(config_path).write_text(
            json.dumps({"control_url": control_url, "config": str(config_path)})
        )
        relay = Relay(config)
        ready = asyncio.Event()
        relay_task = asyncio.create_task(
            relay.run(install_signals=False, on_ready=lambda _: ready.set())
        )
        tasks.append(relay_task)
        ready_task = asyncio.create_task(ready.wait())
        await asyncio.wait({relay_task, ready_task}, return_when=asyncio.FIRST_COMPLETED)
        ready_task.cancel()
        if relay_task.done():
            relay_task.result()  # raises what stopped the relay (e.g. its port was taken)
        burst: asyncio.Queue[int] = asyncio.Queue()
        tasks.append(
            asyncio.create_task(
                _traffic(
                    broker.bootstrap, config.kafka.topics[0], options.events_per_s, stop, burst
                )
            )
        )
        streams = [f"{config.kafka.topics[0]} (canonical JSON, {options.events_per_s:g}/s)"]
        producer_per_s = options.events_per_s / 4  # each producer's own stream: a quarter
        for entry in config.inputs.values():
            if entry.format == "avro":  # the shop's orders, through the stand-in registry
                traffic = avro_traffic(
                    broker.bootstrap, entry.topic, registry.url, producer_per_s, stop
                )
                shape = "a shop's Avro"
            elif entry.format == "json":  # the CRM's orders and leads in its own JSON
                traffic = crm_traffic(broker.bootstrap, entry.topic, producer_per_s, stop)
                shape = "a CRM's own JSON"
            else:
                continue
            tasks.append(asyncio.create_task(traffic))
            streams.append(f"{entry.topic} ({shape}, {producer_per_s:g}/s)")
        port = relay.http_port or http_port
        out.line(
            f"broker {broker.bootstrap}   metrics http://127.0.0.1:{port}/metrics   "
            f"status http://127.0.0.1:{port}/status   control {control_url}/vendors"
        )
        out.line(f"  streams: {', '.join(streams)}")
        for name, sandbox in sandboxes.items():
            out.line(f"  sandbox {name}: {sandbox.base_url}")
        out.line(f"config written to {config_path}; try, in another shell:")
        for command in commands(config_path, control_url):
            out.line(f"  {command}")
        out.line("Ctrl-C stops everything.")
        if options.chaos:

            async def malformed(count: int) -> None:
                burst.put_nowait(count)

            tasks.append(
                asyncio.create_task(
                    run_tour(
                        tour([v for v in CHAOS_ORDER if v in sandboxes] or list(sandboxes)),
                        control,
                        malformed,
                        out.line,
                        time.monotonic,
                    )
                )
            )
        await _watch(relay, relay_task, control, out, stop, started_s)
    finally:
        await _shutdown(relay, tasks, stop, control_runner, sandboxes, broker)
        if registry is not None:
            await registry.stop()
    out.line("stopped everything dev mode started")
    return 0


async def _watch(
    relay: Relay,
    relay_task: asyncio.Task[int],
    control: SandboxControl,
    out: Output,
    stop: asyncio.Event,
    started_s: float,
) -> None:
    """Refresh the view until stopped (or the relay ended on its own)."""
    pauses = {name: PauseClock() for name in relay.vendor_names}
    if out.tty:

        def table() -> Table:
            return _table(view_rows(relay, control, pauses), out.console)

        live = Live(table(), console=out.console, auto_refresh=False)
        out.guard(live.start)
        try:
            while not stop.is_set() and not relay_task.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                out.guard(lambda: live.update(table(), refresh=True))
        finally:
            out.guard(live.stop)
        return
    last_s = 0.0
    first = True
    while not stop.is_set() and not relay_task.done():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
        rows = view_rows(relay, control, pauses)  # every 0.5 s, so the pause clocks see pauses
        now_s = time.monotonic()
        if now_s - last_s >= PLAIN_EVERY_S:
            last_s = now_s
            for line in _plain(rows, now_s - started_s, first):
                out.line(line)
            first = False


async def _shutdown(
    relay: Relay | None,
    tasks: list[asyncio.Task[Any]],
    stop: asyncio.Event,
    control_runner: Any,
    sandboxes: dict[str, Sandbox],
    broker: EmbeddedBroker,
) -> None:
    """Stop in a bounded time: the relay drains for at most SHUTDOWN_S, then is cancelled;
    the sandboxes and the control endpoint close meanwhile (a request they held fails at once
    instead of holding the drain: nothing dev mode started outlives it anyway)."""
    stop.set()
    if relay is not None:
        relay.request_stop()
    closing = [sandbox.stop() for sandbox in sandboxes.values()]
    if control_runner is not None:
        closing.append(control_runner.cleanup())

    async def close_rest() -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), 0.3)

    closer = asyncio.create_task(close_rest())
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_S)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=0.2)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a failure was reported already or is moot at exit
    await closer
    broker.stop(kill=True)  # memory storage: nothing to flush
    if any(not task.done() for task in tasks):
        # A task ignored its cancellation (an aiokafka close stuck on a dead broker): exiting
        # now is what Ctrl-C asked for; asyncio.run would otherwise wait for it for good.
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(0)
