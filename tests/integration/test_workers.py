"""`run --workers N`: several relay processes in one container behind one HTTP port."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from tests.conftest import goal_reach_vendor, relay_config, wait_for


async def test_two_workers_share_partitions_and_report_merged_metrics(
    broker, topics, sandbox_factory, relay_process
):
    """Two workers split the partitions, deliver everything once, and /metrics sums them."""
    si = await sandbox_factory()
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)})
    relay = relay_process(config, extra_args=["--workers", "2"])
    relay.start()
    await relay.wait_ready(timeout_s=60)
    lines = list(sample_lines(1000))
    await publish(broker.bootstrap, topics.source, lines)
    events = [orjson.loads(line) for line in lines]
    want = Counter(
        e["customer"]["ids"]["sustain_impact"]
        for e in events
        if e["goal"] in ("purchase", "signup")
    )
    await wait_for(lambda: len(si.accepted) >= sum(want.values()), 60, "every delivery")
    assert Counter(p["CustomerId"] for p in si.payloads()) == want
    url = f"http://127.0.0.1:{relay.http_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/status") as resp:
            workers = (await resp.json())["workers"]

        async def delivered() -> float:
            async with session.get(f"{url}/metrics") as resp:
                text = await resp.text()
            return sum(
                s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "conversion_relay_deliveries_total"
                and s.labels["outcome"] == "delivered"
            )

        # Each worker hands its batched counts to the shared files once per fetch (~0.2 s).
        for _ in range(20):
            if await delivered() == len(si.accepted):
                break
            await asyncio.sleep(0.1)
        assert await delivered() == len(si.accepted)
    owned = [set(w["vendors"]["sustain_impact"]["assigned_partitions"]) for w in workers]
    assert len(owned) == 2
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    relay.signal(signal.SIGTERM)
    assert await relay.wait_exit(60) == 0, relay.logs()


async def test_a_worker_that_keeps_crashing_makes_the_supervisor_exit_non_zero(
    tmp_path, broker, topics, sandbox_factory
):
    """A worker process that dies at once, again and again, is restarted with back-off a few
    times; then the supervisor exits 1 so Kubernetes' CrashLoopBackOff takes over."""
    import asyncio
    import time

    from service.config import parse_config
    from service.net import free_port
    from service.workers import CRASH_LIMIT, Supervisor

    si = await sandbox_factory()
    data = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)})
    data["http"] = {"host": "127.0.0.1", "port": free_port()}
    missing = str(tmp_path / "gone.yaml")  # every worker fails to load it and exits 2
    supervisor = Supervisor(parse_config(data), missing, 1, backoff_s=(0.1, 0.2))
    started = time.monotonic()
    code = await asyncio.wait_for(supervisor.run(), 60)
    assert code == 1
    assert supervisor.crash_looping
    assert supervisor.workers[0].restarts == CRASH_LIMIT - 1
    assert time.monotonic() - started < 60


async def test_killing_a_relay_process_takes_its_workers_with_it(
    broker, topics, sandbox_factory, relay_process
):
    """The test fixture's kill() ends the supervisor and every worker it started (a test that
    failed before stopping its relay left `--workers` children running before)."""
    si = await sandbox_factory()
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)})
    relay = relay_process(config, extra_args=["--workers", "2"])
    relay.start()
    await relay.wait_ready(timeout_s=60)
    marker = str(relay.config_path)

    def running() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in cmdline and state != "Z":
                found.append(int(entry.name))
        return found

    assert len(running()) == 3  # the supervisor and its two workers
    relay.kill()
    await wait_for(lambda: not running(), 10, "every relay process gone")


async def test_a_stopped_worker_fails_the_supervisors_livez_until_it_answers_again(
    broker, topics, sandbox_factory, relay_process
):
    """A SIGSTOPped worker still has a pid but answers nothing: the supervisor's /livez is 503
    naming it (it was 200: only dead pids counted), and 200 again once it continues."""
    import os

    si = await sandbox_factory()
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)})
    relay = relay_process(config, extra_args=["--workers", "2"])
    relay.start()
    await relay.wait_ready(timeout_s=60)
    url = f"http://127.0.0.1:{relay.http_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/status") as resp:
            workers = (await resp.json())["workers"]
        stopped = workers[1]
        os.kill(stopped["pid"], signal.SIGSTOP)
        try:
            async with session.get(f"{url}/livez") as resp:
                assert resp.status == 503
                body = await resp.json()
            assert body["unresponsive_workers"] == [stopped["index"]]
            assert body["live"] is False
        finally:
            os.kill(stopped["pid"], signal.SIGCONT)
        async with session.get(f"{url}/livez") as resp:
            assert resp.status == 200, await resp.text()
    relay.signal(signal.SIGTERM)
    assert await relay.wait_exit(60) == 0, relay.logs()
