"""Broker restart: the broker goes away for 10 s and comes back; the relay recovers on its own.

The drill runs once per module and the tests below judge what it observed. It has a broker of its
own: Tansu with S3 storage over a local moto server, restarted on the same port, so topics,
records and committed offsets survive as on a real Kafka broker. (With memory storage the broker
would come back empty and reuse offsets a consumer had already passed: events published after
the restart would be skipped by whichever consumer kept its position, an artefact of the test
broker rather than the relay's behaviour.)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import yaml

from service.devtools.demo import sample_lines
from service.devtools.embedded import create_topics
from service.devtools.publish import publish
from service.net import free_port
from service.sandbox.altcraft import AltcraftContract
from service.sandbox.base import Sandbox
from service.sandbox.goal_reach import GoalReachContract
from tests.conftest import RelayProcess, Topics, relay_config
from tests.reliability.conftest import (
    ALTCRAFT_TOKEN,
    GOAL_REACH_VENDORS,
    THREE_VENDORS,
    DurableBroker,
    Ledger,
    MotoS3,
    http_status,
    poll_until,
    report,
    three_vendor_sections,
)

OUTAGE_S = 10.0
EVENTS = 300  # before the outage, and again after it


@dataclass
class Outage:
    """What the drill saw."""

    readyz_during: list[tuple[float, int | None]] = field(default_factory=list)
    livez_during: list[tuple[float, int | None]] = field(default_factory=list)
    readyz_after: list[tuple[float, int | None]] = field(default_factory=list)
    ready_again_s: float | None = None
    delivered_after_s: float | None = None
    missing_after: dict[str, int] = field(default_factory=dict)
    alive: bool = True
    logs: str = ""
    phases_s: dict[str, float] = field(default_factory=dict)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def outage(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Outage]:
    """Run the drill: deliveries, broker down 10 s, broker back (topics re-created), deliveries."""
    workdir = tmp_path_factory.mktemp("broker-restart")
    clock = time.monotonic()
    seen = Outage()

    def phase(name: str) -> None:
        nonlocal clock
        seen.phases_s[name] = round(time.monotonic() - clock, 2)
        clock = time.monotonic()

    s3 = MotoS3(workdir)
    s3.start()
    broker = DurableBroker(s3, workdir)
    broker.start()
    sandboxes: dict[str, Sandbox] = {v: Sandbox(contract=_contract(v)) for v in THREE_VENDORS}
    for sandbox in sandboxes.values():
        await sandbox.start()
    relay: RelayProcess | None = None
    phase("start s3, broker, sandboxes")
    try:
        name = f"conversions-{uuid.uuid4().hex[:8]}"
        topics = Topics(source=name, dlq=f"{name}.dlq", partitions=4)
        await create_topics(broker.bootstrap, {topics.source: topics.partitions, topics.dlq: 1})
        config = relay_config(broker, topics, three_vendor_sections(sandboxes))
        port = free_port()
        config["http"] = {"host": "127.0.0.1", "port": port}
        (workdir / "relay.yaml").write_text(yaml.safe_dump(config))
        relay = RelayProcess(workdir / "relay.yaml", port, workdir / "relay.log")
        relay.start()
        await relay.wait_ready(60)
        phase("start relay")
        before = list(sample_lines(EVENTS, seed=1))
        await publish(broker.bootstrap, topics.source, before)
        await poll_until(
            lambda: Ledger.of(before, THREE_VENDORS).complete(sandboxes), 60, "deliveries before"
        )
        phase("deliver before")

        broker.stop()
        stopped_at = time.monotonic()
        while (elapsed_s := time.monotonic() - stopped_at) < OUTAGE_S:
            ready, live = await asyncio.gather(
                http_status(port, "/readyz"), http_status(port, "/livez")
            )
            seen.readyz_during.append((round(elapsed_s, 2), ready))
            seen.livez_during.append((round(elapsed_s, 2), live))
            await asyncio.sleep(0.25)
        phase("outage")
        broker.start()  # same port, same S3 storage
        back_at = time.monotonic()
        while (elapsed_s := time.monotonic() - back_at) < 60 and relay.process.poll() is None:
            ready = await http_status(port, "/readyz")
            seen.readyz_after.append((round(elapsed_s, 2), ready))
            if ready == 200:
                seen.ready_again_s = round(elapsed_s, 2)
                break
            await asyncio.sleep(0.25)

        after = list(sample_lines(EVENTS, seed=2))
        phase("ready again")
        await publish(broker.bootstrap, topics.source, after)
        phase("publish after")
        published_at = time.monotonic()
        everything = Ledger.of(before + after, THREE_VENDORS)
        try:
            await poll_until(lambda: everything.complete(sandboxes), 90, "deliveries after")
            seen.delivered_after_s = round(time.monotonic() - published_at, 2)
        except AssertionError:
            pass
        phase("deliver after")
        seen.missing_after = everything.missing(sandboxes)
        seen.alive = relay.process.poll() is None
        yield seen
    finally:
        if relay is not None:
            seen.logs = relay.logs()
            relay.kill()
        for sandbox in sandboxes.values():
            await sandbox.stop()
        broker.stop()
        s3.stop()


def _contract(vendor: str) -> Any:
    if vendor in GOAL_REACH_VENDORS:
        return GoalReachContract()
    return AltcraftContract(tokens={ALTCRAFT_TOKEN})


def test_relay_recovers_on_its_own_after_a_10s_broker_outage(
    outage: Outage, record_property: Any
) -> None:
    """The relay stays alive, becomes ready again, and delivers events published after."""
    report(
        record_property,
        broker_outage_s=OUTAGE_S,
        broker_readyz_during_outage=[status for _, status in outage.readyz_during],
        broker_ready_again_s_after_restart=outage.ready_again_s,
        broker_delivered_s_after_publish=outage.delivered_after_s,
        broker_phases_s=outage.phases_s,
    )
    assert outage.alive, outage.logs[-3000:]
    assert all(status == 200 for _, status in outage.livez_during), outage.livez_during
    assert outage.ready_again_s is not None, outage.readyz_after
    assert not any(outage.missing_after.values()), outage.missing_after


def test_readyz_turns_503_while_the_broker_is_unreachable(outage: Outage) -> None:
    """During the broker outage /readyz answers 503, and 200 again once the broker is back."""
    # The first seconds may still answer 200: the coordinator is found dead on a heartbeat.
    assert any(status == 503 for _, status in outage.readyz_during), outage.readyz_during
    assert outage.readyz_during[-1][1] == 503, outage.readyz_during
    assert outage.readyz_after[-1][1] == 200, outage.readyz_after
