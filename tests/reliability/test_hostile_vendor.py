"""Hostile-vendor drill: two vendors whose every answer is an attack, one healthy vendor.

The hostile vendors (a webhook with an `X-Api-Key` header, Altcraft with its `token` in the
body) redirect to another port, stream oversized and slow bodies, send giant and malformed
Retry-After values and echo the request with its credentials. The relay runs at its defaults.
Checked: the healthy vendor keeps delivering; no secret reaches the logs, /status or the DLQ;
nothing reaches the other port; memory stays bounded; a giant Retry-After does not stall a vendor.
The transport drills (secrets, redirects, oversized bodies) run on each `http.transport`; the
Retry-After drills, about the sender's reading of a header both transports hand over alike, run
on the default transport only (each takes up to a minute).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from service.events import decode_event
from service.logs import JsonFormatter
from service.sandbox.base import Sandbox
from service.sandbox.hostile import HostileVendor, Trap
from tests.conftest import read_topic, relay_config, wait_for
from tests.reliability.conftest import all_goals_vendor, http_json
from tests.transports import TRANSPORTS

SECRET_HEADER = "hook-key-Qz81-never-leaves"
SECRET_TOKEN = "altcraft-tok-Wm47-never-leaves"
SECRETS = (SECRET_HEADER, SECRET_TOKEN, "Qz81", "Wm47")
HEALTHY = "sustain_impact"
EVENTS = 60


@pytest.fixture(params=TRANSPORTS)
def kind(request: pytest.FixtureRequest) -> str:
    """The relay's `http.transport` in this drill."""
    return str(request.param)


@dataclass
class Drill:
    """What a drill run left behind."""

    relay: Any
    trap: Trap
    hostile: dict[str, HostileVendor]
    healthy: Sandbox
    expected_healthy: int
    logs: io.StringIO
    source_topic: str
    dlq_topic: str
    bootstrap: str


def _healthy_count(lines: list[bytes]) -> int:
    """Events the healthy goal-reach vendor must receive (it routes every demo goal)."""
    events = [decode_event(line) for line in lines]
    return sum(
        HEALTHY in e.customer.ids and e.goal in ("purchase", "signup", "lead") for e in events
    )


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@asynccontextmanager
async def drill(
    broker: Any,
    topics: Any,
    sandbox_factory: Callable[[], Awaitable[Sandbox]],
    run_relay: Callable[[dict[str, Any]], Awaitable[Any]],
    kind: str,
    **hostile: Any,
) -> AsyncIterator[Drill]:
    """Start the trap, the hostile vendors, a healthy sandbox and the relay; publish events."""
    trap = Trap()
    await trap.start()
    vendors = {"hook": HostileVendor(trap, **hostile), "altcraft": HostileVendor(trap, **hostile)}
    for vendor in vendors.values():
        await vendor.start()
    healthy = await sandbox_factory()
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        config = relay_config(
            broker,
            topics,
            {
                HEALTHY: all_goals_vendor(healthy),
                "hook": {
                    "protocol": "webhook",
                    "base_url": vendors["hook"].base_url,
                    "path": "/conversions/{goal_id}",
                    "headers": {"X-Api-Key": SECRET_HEADER},
                    "body": {"id": "$.event_id", "goal": "$.goal_id"},
                    "goals": {"purchase": "purchase", "signup": "signup", "lead": "lead"},
                },
                "altcraft": {
                    "protocol": "altcraft",
                    "base_url": vendors["altcraft"].base_url,
                    "token": SECRET_TOKEN,
                    "db_id": 1,
                    "pixel_id": 1,
                    "goals": {"purchase": "purchase", "signup": "signup", "lead": "lead"},
                },
            },
            http={"host": "127.0.0.1", "port": 0, "status_access": "loopback", "transport": kind},
        )
        relay = await run_relay(config)
        lines = list(sample_lines(EVENTS, seed=12))
        await publish(broker.bootstrap, topics.source, lines)
        yield Drill(
            relay,
            trap,
            vendors,
            healthy,
            _healthy_count(lines),
            logs,
            topics.source,
            topics.dlq,
            broker.bootstrap,
        )
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for vendor in vendors.values():
            await vendor.stop()
        await trap.stop()


async def test_the_healthy_vendor_keeps_delivering_and_no_secret_leaks(
    broker, topics, sandbox_factory, run_relay, kind
):
    """Every attack at once: the healthy vendor gets every event; logs, /status, DLQ are clean."""
    async with drill(
        broker,
        topics,
        sandbox_factory,
        run_relay,
        kind,
        oversized_bytes=2 * 1024 * 1024,
        slow_s=12.0,
    ) as run:
        await wait_for(
            lambda: len(run.healthy.accepted) >= run.expected_healthy, 60, "healthy deliveries"
        )
        assert run.expected_healthy > 0
        await wait_for(
            lambda: sum(len(v.hits) for v in run.hostile.values()) >= 12, 30, "hostile answers"
        )
        await asyncio.sleep(2.0)  # let the answers be classified, logged and dead-lettered
        status = await http_json(run.relay.http_port, "/status")
        dlq = await read_topic(run.bootstrap, run.dlq_topic, 1, timeout_s=3.0)
        served = orjson.dumps(status).decode()
        letters = "".join(f"{record.headers!r}{record.value!r}{record.key!r}" for record in dlq)
        logged = run.logs.getvalue()
        for secret in SECRETS:
            assert secret not in logged, f"{secret} in the logs"
            assert secret not in served, f"{secret} in /status: {served}"
            assert secret not in letters, f"{secret} in a dead letter"
        assert status["vendors"][HEALTHY]["running_here"] is True
    assert len({r.payload["CustomerId"] for r in run.healthy.accepted}) >= 1


async def test_nothing_reaches_the_other_port(broker, topics, sandbox_factory, run_relay, kind):
    """Redirects (301/302/307/308) are never followed: the other port receives nothing."""
    modes = ("redirect_307", "redirect_302", "redirect_301", "redirect_308")
    async with drill(broker, topics, sandbox_factory, run_relay, kind, modes=modes) as run:
        await wait_for(
            lambda: len(run.healthy.accepted) >= run.expected_healthy, 60, "healthy deliveries"
        )
        await wait_for(
            lambda: sum(len(v.hits) for v in run.hostile.values()) >= 8, 30, "redirect answers"
        )
        await asyncio.sleep(1.0)
        assert run.trap.hits == [], f"{len(run.trap.hits)} requests reached the other port"


async def test_oversized_bodies_keep_memory_bounded(
    broker, topics, sandbox_factory, run_relay, kind
):
    """8 MiB answers are read up to the limit only: resident memory grows by under 48 MiB."""
    peak = [0]
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            await asyncio.sleep(0.02)

    async with drill(
        broker,
        topics,
        sandbox_factory,
        run_relay,
        kind,
        modes=("oversized",),
        oversized_bytes=8 * 1024 * 1024,
    ) as run:
        baseline = _rss_bytes()  # the relay is up: only the answers can grow it from here
        sampler = asyncio.create_task(sample())
        try:
            await wait_for(
                lambda: sum(len(v.hits) for v in run.hostile.values()) >= 16, 60, "answers"
            )
            await asyncio.sleep(2.0)
        finally:
            stop.set()
            await sampler
    grown_mib = (peak[0] - baseline) / 2**20
    assert grown_mib < 48, f"resident memory grew by {grown_mib:.0f} MiB"


@pytest.mark.parametrize("kind", ["h1"])
async def test_a_giant_retry_after_does_not_stall_a_vendor(
    broker, topics, sandbox_factory, run_relay, kind
):
    """Retry-After of a year is capped: the vendor gets requests again within 90 s."""
    async with drill(
        broker,
        topics,
        sandbox_factory,
        run_relay,
        kind,
        modes=("retry_after_giant",),
        hostile_requests=2,
        after="ok_altcraft",
    ) as run:
        altcraft = run.hostile["altcraft"]
        await wait_for(lambda: len(altcraft.hits) >= 2, 30, "the giant Retry-After answers")
        # Requests already past the pause may still arrive; the rest must follow soon, too.
        await wait_for(
            lambda: altcraft.answered.get("ok_altcraft", 0) >= 30, 90, "deliveries after it"
        )


@pytest.mark.parametrize("kind", ["h1"])
async def test_a_malformed_retry_after_is_ignored_and_delivery_goes_on(
    broker, topics, sandbox_factory, run_relay, kind
):
    """An 8 KiB Retry-After that is no number or date is ignored: the retry follows backoff."""
    async with drill(
        broker,
        topics,
        sandbox_factory,
        run_relay,
        kind,
        modes=("retry_after_malformed",),
        hostile_requests=4,
        after="ok_altcraft",
    ) as run:
        altcraft = run.hostile["altcraft"]
        await wait_for(lambda: len(altcraft.hits) >= 8, 60, "deliveries after malformed pauses")
        assert altcraft.answered["ok_altcraft"] >= 4
