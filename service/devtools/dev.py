"""`conversion-relay dev`: embedded broker, vendor sandboxes, the relay and demo traffic, with a
live view. Ctrl-C stops everything it started."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from importlib import resources

import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client import Metric
from rich.console import Console
from rich.live import Live
from rich.table import Table

from service.app import Relay
from service.config import Config, parse_config
from service.devtools.demo import sample_event
from service.devtools.embedded import EmbeddedBroker, create_topics
from service.devtools.publish import record_key
from service.events import encode_event
from service.net import free_port
from service.sandbox.base import Sandbox
from service.sandbox.registry import contract_for
from service.vendors import protocol_tag

INVALID_EVERY = 97  # one malformed record now and then, so the DLQ has something to show


def dev_config(bootstrap: str, http_port: int, sandbox_urls: dict[str, str]) -> Config:
    """The demo config with the broker, HTTP port and sandbox URLs filled in."""
    raw = yaml.safe_load(
        resources.files("service.devtools").joinpath("dev_config.yaml").read_text()
    )
    env = {"KAFKA_BOOTSTRAP": bootstrap, "HTTP_PORT": str(http_port)}
    env.update({f"SANDBOX_{name.upper()}_URL": url for name, url in sandbox_urls.items()})
    return parse_config(raw, env)


def _dev_vendors() -> dict[str, str]:
    raw = yaml.safe_load(
        resources.files("service.devtools").joinpath("dev_config.yaml").read_text()
    )
    return {name: vendor["protocol"] for name, vendor in raw["vendors"].items()}


async def _traffic(bootstrap: str, topic: str, per_s: float, stop: asyncio.Event) -> None:
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
            await asyncio.sleep(1.0 / per_s)
    finally:
        await producer.stop()


def _samples(metric: Metric, vendor: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for sample in metric.samples:
        if sample.labels.get("vendor") == vendor and sample.name.endswith("_total"):
            key = sample.labels.get("outcome") or sample.labels.get("reason") or "all"
            values[key] = values.get(key, 0.0) + sample.value
    return values


def _view(relay: Relay) -> Table:
    table = Table(
        title="conversion-relay dev — per vendor",
        caption=(
            "in: consumed · ok: delivered · dead: dead-lettered after retries · dlq: DLQ writes"
        ),
    )
    table.add_column("vendor", no_wrap=True)
    for column in ("in", "ok", "skip", "retry", "rejected", "dead", "dlq", "inflight", "lag"):
        table.add_column(column, justify="right")
    metrics = {m.name: m for m in relay.metrics.registry.collect()}
    prefix = "conversion_relay_"
    for name in relay.vendor_names:
        consumed = sum(_samples(metrics[prefix + "events_consumed"], name).values())
        outcomes = _samples(metrics[prefix + "deliveries"], name)
        dlq = sum(_samples(metrics[prefix + "dlq_writes"], name).values())
        pipeline = relay.pipelines.get(name)
        table.add_row(
            name,
            f"{consumed:.0f}",
            f"{outcomes.get('delivered', 0):.0f}",
            f"{outcomes.get('skipped', 0):.0f}",
            f"{outcomes.get('retried', 0):.0f}",
            f"{outcomes.get('rejected', 0):.0f}",
            f"{outcomes.get('dead_lettered', 0):.0f}",
            f"{dlq:.0f}",
            str(pipeline.in_flight if pipeline else 0),
            str(pipeline.lag() if pipeline else 0),
        )
    return table


async def run_dev(events_per_s: float = 20.0, http_port: int = 8080) -> int:
    """Start everything, show the live view until Ctrl-C, then stop everything."""
    console = Console()
    broker = EmbeddedBroker()
    broker.start()
    sandboxes: dict[str, Sandbox] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        ports = {name: free_port() for name in _dev_vendors()}
        config = dev_config(
            broker.bootstrap,
            http_port or free_port(),
            {name: f"http://127.0.0.1:{port}" for name, port in ports.items()},
        )
        for name, vendor in config.vendors.items():
            # Pinned to the vendor's config: the sandbox checks its credentials and account too.
            sandbox = Sandbox(contract_for(protocol_tag(vendor), vendor), port=ports[name])
            sandboxes[name] = sandbox
            await sandbox.start()
        await create_topics(
            broker.bootstrap, {t: 4 for t in config.kafka.topics} | {config.dlq.topic: 1}
        )
        relay = Relay(config)
        relay_task = asyncio.create_task(relay.run(install_signals=False))
        traffic = asyncio.create_task(
            _traffic(broker.bootstrap, config.kafka.topics[0], events_per_s, stop)
        )
        console.print(
            f"[bold]broker[/] {broker.bootstrap}   [bold]metrics[/] "
            f"http://127.0.0.1:{config.http.port}/metrics   [bold]status[/] "
            f"http://127.0.0.1:{config.http.port}/status   (Ctrl-C to stop)"
        )
        for name, sandbox in sandboxes.items():
            console.print(f"  sandbox {name}: {sandbox.base_url}")
        with Live(_view(relay), console=console, refresh_per_second=2) as live:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                live.update(_view(relay))
        relay.request_stop()
        await traffic
        await relay_task
    finally:
        for sandbox in sandboxes.values():
            await sandbox.stop()
        broker.stop()
    console.print("stopped everything dev mode started")
    return 0
