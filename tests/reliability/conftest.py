"""Fault-drill helpers: three-vendor setups, who-got-what accounting, HTTP probes, a durable
broker (Tansu on S3 storage over a local moto), paced publishing and a metrics scrape. Everything
real: Tansu, aiokafka, strict sandboxes, relay subprocesses.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from service.devtools.embedded import EmbeddedBroker
from service.net import free_port
from service.sandbox.altcraft import AltcraftContract
from service.sandbox.base import Sandbox
from tests.conftest import GOAL_PURCHASE, GOAL_SIGNUP, goal_reach_vendor

GOAL_LEAD = "5a3e7c2b-61d4-4b8e-9f0a-2c1d3e4f5a6b"
ALTCRAFT_TOKEN = "drill-token-7f3a"
GOAL_REACH_VENDORS = ("sustain_impact", "sales_ninja")
THREE_VENDORS = (*GOAL_REACH_VENDORS, "altcraft")


def all_goals_vendor(sandbox: Sandbox, **extra: Any) -> dict[str, Any]:
    """A goal-reach vendor section routing every demo goal (purchase, signup, lead)."""
    return goal_reach_vendor(
        sandbox,
        goals={"purchase": GOAL_PURCHASE, "signup": GOAL_SIGNUP, "lead": GOAL_LEAD},
        **extra,
    )


def altcraft_vendor(sandbox: Sandbox, **extra: Any) -> dict[str, Any]:
    """An Altcraft vendor section (email matching, every demo goal) pointing at a sandbox."""
    return {
        "protocol": "altcraft",
        "base_url": sandbox.base_url,
        "token": ALTCRAFT_TOKEN,
        "db_id": 1,
        "pixel_id": 1,
        "goals": {"purchase": "purchase", "signup": "signup", "lead": "lead"},
        "retry": {"initial_backoff_s": 0.05, "max_backoff_s": 0.5},
        **extra,
    }


async def three_sandboxes(sandbox_factory: Callable[..., Any]) -> dict[str, Sandbox]:
    """Strict sandboxes for two goal-reach vendors and Altcraft (pinned to the drill token)."""
    made = {name: await sandbox_factory() for name in GOAL_REACH_VENDORS}
    made["altcraft"] = await sandbox_factory(AltcraftContract(tokens={ALTCRAFT_TOKEN}))
    return made


def three_vendor_sections(sandboxes: dict[str, Sandbox], **extra: Any) -> dict[str, Any]:
    """Vendor config for `three_sandboxes`, with the same extra settings for each."""
    return {
        "sustain_impact": all_goals_vendor(sandboxes["sustain_impact"], **extra),
        "sales_ninja": all_goals_vendor(sandboxes["sales_ninja"], **extra),
        "altcraft": altcraft_vendor(sandboxes["altcraft"], **extra),
    }


@dataclass
class Ledger:
    """Which event each vendor should get, and which one each accepted request carried."""

    events: list[dict[str, Any]]
    expected: dict[str, set[str]] = field(default_factory=dict)
    _by_customer: dict[str, dict[str, str]] = field(default_factory=dict)

    id_keys: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls, lines: Iterable[bytes], vendors: Iterable[str], id_keys: dict[str, str] | None = None
    ) -> Ledger:
        """Index demo events (every goal routed) for the given vendors; `id_keys` names the
        `customer.ids` key of a goal-reach vendor whose `customer_id_key` is not its name."""
        events = [orjson.loads(line) for line in lines]
        ledger = cls(events, id_keys={v: v for v in GOAL_REACH_VENDORS} | (id_keys or {}))
        for vendor in vendors:
            ledger.expected[vendor] = {e["event_id"] for e in events if ledger.routed(e, vendor)}
            key = ledger.id_keys.get(vendor)
            if key is not None:
                ledger._by_customer[vendor] = {
                    e["customer"]["ids"][key]: e["event_id"]
                    for e in events
                    if key in e["customer"]["ids"]
                }
        return ledger

    def routed(self, event: dict[str, Any], vendor: str) -> bool:
        """Whether the vendor has the identity it needs (every goal is routed in the drills)."""
        if vendor == "altcraft":
            return bool(event["customer"].get("email"))
        return self.id_keys[vendor] in event["customer"].get("ids", {})

    def event_id(self, vendor: str, payload: dict[str, Any]) -> str:
        """The event an accepted request carried."""
        if vendor == "altcraft":
            return str(payload["external_event_id"])
        return self._by_customer[vendor][payload["CustomerId"]]

    def received(self, vendor: str, sandbox: Sandbox) -> Counter[str]:
        """How many times the sandbox accepted each event."""
        return Counter(self.event_id(vendor, r.payload) for r in list(sandbox.accepted))

    def missing(self, sandboxes: dict[str, Sandbox]) -> dict[str, int]:
        """Per vendor, how many expected events have not arrived yet."""
        return {
            v: len(self.expected[v] - set(self.received(v, sandboxes[v]))) for v in self.expected
        }

    def complete(self, sandboxes: dict[str, Sandbox]) -> bool:
        """Whether every vendor got every event routed to it (cheap count check first)."""
        if any(len(sandboxes[v].accepted) < len(self.expected[v]) for v in self.expected):
            return False
        return not any(self.missing(sandboxes).values())

    def duplicates(self, sandboxes: dict[str, Sandbox]) -> dict[str, int]:
        """Per vendor, accepted requests beyond the first for each event."""
        return {
            v: sum(n - 1 for n in self.received(v, sandboxes[v]).values()) for v in self.expected
        }

    def repeated_first_seen(self, sandboxes: dict[str, Sandbox]) -> list[float]:
        """For each accepted request beyond an event's first, when that event first arrived."""
        times = []
        for vendor in self.expected:
            first: dict[str, float] = {}
            for received in list(sandboxes[vendor].accepted):
                event_id = self.event_id(vendor, received.payload)
                if event_id in first:
                    times.append(first[event_id])
                else:
                    first[event_id] = received.at_s
        return times


async def http_status(port: int, path: str, timeout_s: float = 2.0) -> int | None:
    """The status of GET path on the relay's HTTP port, or None when it does not answer."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s,
            s.get(f"http://127.0.0.1:{port}{path}") as resp,
        ):
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def http_json(port: int, path: str, timeout_s: float = 5.0) -> Any:
    """GET path on the relay's HTTP port and decode the JSON body."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s,
        s.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return orjson.loads(await resp.read())


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The relay's /metrics as {(sample name, sorted labels): value}."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
        s.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and wanted <= set(lab))


async def publish_paced(
    bootstrap: str,
    topic: str,
    lines: list[bytes],
    rate_per_s: float,
    key: Callable[[bytes], bytes | None] | None = None,
    chunk: int = 100,
) -> None:
    """Publish lines at about `rate_per_s`, in chunks, each chunk acknowledged before the next."""
    from service.devtools.publish import record_key

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        started = time.monotonic()
        for start in range(0, len(lines), chunk):
            futures = [
                await producer.send(topic, value=line, key=(key or record_key)(line))
                for line in lines[start : start + chunk]
            ]
            await asyncio.gather(*futures)
            due_s = started + (start + chunk) / rate_per_s - time.monotonic()
            if due_s > 0:
                await asyncio.sleep(due_s)
    finally:
        await producer.stop()


class MotoS3:
    """A local S3 (moto's server, PyPI `moto[server]`) on a free loopback port, with one bucket."""

    def __init__(self, workdir: Path, bucket: str = "tansu") -> None:
        self.port = free_port()
        self.bucket = bucket
        self._log_path = workdir / "moto.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server, wait for it and create the bucket."""
        if importlib.util.find_spec("moto") is None:
            pytest.fail("the broker-restart drill needs `moto[server]` (add it to the test extra)")
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
                with urllib.request.urlopen(request, timeout=1) as answer:
                    answer.read()
                return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto did not start: see {self._log_path}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server (its buckets go with it)."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
            self._process = None


class DurableBroker(EmbeddedBroker):
    """A Tansu broker whose storage is S3 (a local moto), so it can stop and start again on the
    same port and keep its topics, records and committed offsets, as a real Kafka broker does."""

    def __init__(self, s3: MotoS3, workdir: Path) -> None:
        super().__init__(
            log_path=workdir / "tansu-s3.log",
            storage_url=f"s3://{s3.bucket}/",
            env={
                "AWS_ACCESS_KEY_ID": "drill",
                "AWS_SECRET_ACCESS_KEY": "drill",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT": s3.endpoint,
                "AWS_ALLOW_HTTP": "true",
            },
        )
        self.s3 = s3

    def stop(self, kill: bool = True) -> None:
        """Kill the broker process (a crash: Tansu writes each batch to S3 before it answers, so
        what it acknowledged stays there)."""
        super().stop(kill=kill)


def report(record_property: Callable[[str, Any], None], **figures: Any) -> None:
    """Print measured figures and attach them to the test's report."""
    for name, value in figures.items():
        print(f"[drill] {name} = {value}")
        record_property(name, value)


async def poll_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.5
) -> float:
    """Like `wait_for`, for costly predicates: poll every interval; returns the seconds waited."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)
    return time.monotonic() - started


async def eventually(
    check: Callable[[], Awaitable[bool]],
    timeout_s: float,
    what: str,
    interval_s: float = 0.5,
    *,
    required: bool = True,
) -> bool:
    """Await `check` until it holds; on timeout fail naming `what` (or return False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return True
        if time.monotonic() > deadline:
            if required:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
            return False
        await asyncio.sleep(interval_s)
