"""Shared fixtures: a real Tansu broker (session), unique topics, strict sandboxes, relays."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.core.redact import forget_secrets
from service.devtools.embedded import EmbeddedBroker, create_topics
from service.net import free_port
from service.sandbox.base import Sandbox
from service.sandbox.goal_reach import GoalReachContract

pytest_plugins = ["tests.plugins.redis_server"]

ROOT = Path(__file__).resolve().parent.parent
GOAL_PURCHASE = "299837db-9b51-45a4-996b-844d3fd05bbd"
GOAL_SIGNUP = "ea565c1b-70b1-4165-bd39-4df0d4e4f9bc"


@pytest.fixture(autouse=True)
def _forget_config_secrets() -> Iterator[None]:
    """Each test starts with no remembered config secrets: a config loaded by an earlier test
    (whose `token` may be a word like `altcraft`) must not mask another test's text."""
    forget_secrets()
    yield
    forget_secrets()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One real Tansu broker (memory storage) on a free loopback port for the whole session."""
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    instance = EmbeddedBroker(log_path=log_path)
    instance.start()
    yield instance
    instance.stop()


@dataclass
class Topics:
    """A fresh source topic and DLQ topic for one test."""

    source: str
    dlq: str
    partitions: int


@pytest.fixture
async def topics(broker: EmbeddedBroker) -> Topics:
    """Unique topics per test, created explicitly (Tansu would auto-create 4 partitions)."""
    name = f"conversions-{uuid.uuid4().hex[:8]}"
    made = Topics(source=name, dlq=f"{name}.dlq", partitions=4)
    await create_topics(broker.bootstrap, {made.source: made.partitions, made.dlq: 1})
    return made


@pytest.fixture
async def sandbox_factory() -> AsyncIterator[Callable[[Any], Awaitable[Sandbox]]]:
    """Start strict sandboxes on free ports; every one is stopped at the end of the test."""
    started: list[Sandbox] = []

    async def make(contract: Any = None) -> Sandbox:
        sandbox = Sandbox(contract or GoalReachContract())
        await sandbox.start()
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        await sandbox.stop()


def relay_config(
    broker: EmbeddedBroker,
    topics: Topics,
    vendors: dict[str, dict[str, Any]],
    group_prefix: str | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A relay config (as YAML data) for the test broker, topics and vendors."""
    pipeline = {"commit_interval_s": 0.2, "shutdown_grace_s": 10, "revoke_timeout_s": 5}
    pipeline.update(sections.pop("pipeline", {}))
    return {
        "kafka": {
            "bootstrap_servers": [broker.bootstrap],
            "topics": [topics.source],
            "group_prefix": group_prefix or f"relay-{uuid.uuid4().hex[:8]}",
            "session_timeout_ms": 2000,
            "heartbeat_interval_ms": 300,
        },
        "http": {"host": "127.0.0.1", "port": 0},
        "dlq": {"topic": topics.dlq},
        "pipeline": pipeline,
        "vendors": vendors,
        **sections,
    }


def goal_reach_vendor(sandbox: Sandbox, **extra: Any) -> dict[str, Any]:
    """A goal-reach vendor section pointing at a sandbox."""
    return {
        "protocol": "goal_reach",
        "base_url": sandbox.base_url,
        "goals": {"purchase": GOAL_PURCHASE, "signup": GOAL_SIGNUP},
        "retry": {"initial_backoff_s": 0.05, "max_backoff_s": 0.5},
        **extra,
    }


async def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll until the predicate holds, or fail naming what did not happen."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def read_topic(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 20.0
) -> list[Any]:
    """Read at least `expected` records from the start of a topic (no group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + timeout_s
        while not partitions and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        records: list[Any] = []
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
        return records
    finally:
        await consumer.stop()


async def committed_offsets(
    bootstrap: str, group: str, topic: str, partitions: int
) -> dict[int, int]:
    """The committed offset of each partition for a consumer group (-1 when none)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        result = {}
        for p in range(partitions):
            offset = await consumer.committed(TopicPartition(topic, p))
            result[p] = -1 if offset is None else offset
        return result
    finally:
        await consumer.stop()


@dataclass
class RelayProcess:
    """The relay run as a real subprocess (`python -m service run`)."""

    config_path: Path
    http_port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment

    def start(self) -> None:
        """Launch the process (logs to a file)."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "run",
                "--config",
                str(self.config_path),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "RELAY_LOG_LEVEL": "info", **self.env},
            # Its own process group: kill() takes `--workers` children too, even when a test
            # failed before the relay was told to stop (they outlived the test before).
            start_new_session=True,
        )

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait for /readyz to answer 200."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process is not None and self.process.poll() is None, self.logs()
                try:
                    async with session.get(f"http://127.0.0.1:{self.http_port}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"relay not ready within {timeout_s}s:\n{self.logs()}")

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the process."""
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait_exit(self, timeout_s: float = 30.0) -> int:
        """Wait for the process to end; returns its exit code."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"relay did not exit within {timeout_s}s:\n{self.logs()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def kill(self) -> None:
        """Stop the process whatever state it is in."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the relay and any worker it started
        if self.process.poll() is None:
            self.process.wait(10)

    def logs(self) -> str:
        """The tail of the process output."""
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@pytest.fixture
def relay_process(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """Write a config and make relay subprocesses from it; all are killed at the end."""
    made: list[RelayProcess] = []

    def make(
        config: dict[str, Any],
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> RelayProcess:
        port = free_port()
        # The port is the fixture's; the rest of the http section (e.g. transport) is the test's.
        http = {**config.get("http", {}), "host": "127.0.0.1", "port": port}
        config = {**config, "http": http}
        index = len(made)
        path = tmp_path / f"relay-{index}.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = RelayProcess(
            path, port, tmp_path / f"relay-{index}.log", extra_args=extra_args or [], env=env or {}
        )
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.kill()


@pytest.fixture
async def run_relay() -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[Any]]]:
    """Run relays in this process (faster than a subprocess); each is drained at the end."""
    from service.app import Relay
    from service.config import parse_config

    running: list[tuple[Any, asyncio.Task[int]]] = []

    async def start(config: dict[str, Any]) -> Relay:
        relay = Relay(parse_config(config))
        task = asyncio.create_task(relay.run(install_signals=False))
        running.append((relay, task))
        await wait_for(lambda: not relay.not_ready_reasons() or task.done(), 30, "relay ready")
        if task.done():
            task.result()
        return relay

    yield start
    for relay, task in running:
        relay.request_stop()
        await asyncio.wait_for(task, 30)
