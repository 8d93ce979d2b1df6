"""Steering a vendor fleet-wide (issue 24, parts 1-3) on the real broker: `vendor pause/resume`
through the control topic reaches every relay process, a paused vendor keeps its partitions and
its lag grows, `status` reads the group from Kafka, and `vendor reset` moves its offsets."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.config import parse_config
from service.core.progress import Progress, decode, encode
from service.delivery.control import ControlTopic, commit_as_member, forget_progress
from service.delivery.progress import ProgressBook
from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from tests.conftest import (
    GOAL_PURCHASE,
    GOAL_SIGNUP,
    ROOT,
    committed_offsets,
    goal_reach_vendor,
    relay_config,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)
VENDOR = "sustain_impact"
# A vendor no relay sends to in the tests that run none.
IDLE_VENDOR = {
    "protocol": "goal_reach",
    "base_url": "http://127.0.0.1:9",
    "goals": {"purchase": GOAL_PURCHASE, "signup": GOAL_SIGNUP},
}


def due(count: int, seed: int = 7) -> list[bytes]:
    """`count` sample events the vendor is due (a goal it maps, its customer id)."""
    found = []
    for line in sample_lines(count * 4, seed):
        event = orjson.loads(line)
        if event["goal"] in ("purchase", "signup") and VENDOR in event["customer"]["ids"]:
            found.append(line)
        if len(found) == count:
            break
    assert len(found) == count
    return found


async def cli(config_path: Path, *args: str) -> tuple[int, str, str]:
    """Run `conversion-relay ARGS --config PATH` as a process; (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        "--config",
        str(config_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / f"cli-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json()


async def test_a_pause_through_the_cli_stops_two_relay_processes_within_2s_and_resume_restarts(
    broker, topics, sandbox_factory, relay_process, tmp_path
) -> None:
    """Two replicas share the vendor's group; `vendor pause` stops both within 2 s (nothing
    delivered after), both /status say who/why/when, /readyz stays 200, `status` names each
    partition's owning replica; `vendor resume` delivers the rest from the committed offsets,
    each event once."""
    sandbox = await sandbox_factory()
    config = relay_config(broker, topics, {VENDOR: goal_reach_vendor(sandbox)})
    path = write_config(tmp_path, config)
    relays = [relay_process(config), relay_process(config)]
    for relay in relays:
        relay.start()
    for relay in relays:
        await relay.wait_ready()
    lines = due(400)
    await publish(broker.bootstrap, topics.source, lines[:50])
    await wait_for(lambda: len(sandbox.accepted) == 50, 30, "the first 50 deliveries")

    code, out, err = await cli(path, "vendor", "pause", VENDOR, "--reason", "vendor outage")
    assert code == 0, err
    paused_at_s = time.time()
    assert out.startswith(f"{VENDOR}: paused by ") and out.rstrip().endswith(": vendor outage")
    publishing = asyncio.create_task(publish(broker.bootstrap, topics.source, lines[50:]))
    reached_s = await _reach_s(relays, paused_at_s)
    assert max(reached_s) < 2.0, reached_s
    print(f"pause seen in /status of both replicas after {reached_s} s")
    await publishing
    await asyncio.sleep(3.0)
    late = [r for r in sandbox.accepted if r.at_s > paused_at_s + 2.0]
    assert late == [], f"{len(late)} deliveries more than 2 s after the pause"
    held = len(sandbox.accepted)
    assert held < 400
    for relay in relays:
        status_code, _ = await get_json(f"http://127.0.0.1:{relay.http_port}/readyz")
        assert status_code == 200
        _, status = await get_json(f"http://127.0.0.1:{relay.http_port}/status")
        control = status["vendors"][VENDOR]["control"]
        assert control["paused"] is True and control["reason"] == "vendor outage"
        assert "@" in control["by"] and control["at"]
        assert status["vendors"][VENDOR]["assigned_partitions"]  # membership kept
    await _status_names_each_partition_owner(path, relays)
    assert len(sandbox.accepted) == held

    code, out, err = await cli(path, "vendor", "resume", VENDOR)
    assert code == 0, err
    await wait_for(lambda: len(sandbox.accepted) >= 400, 40, "every event after the resume")
    await asyncio.sleep(0.5)
    ids = [r.payload["CustomerId"] for r in sandbox.accepted]
    want = [orjson.loads(line)["customer"]["ids"][VENDOR] for line in lines]
    assert sorted(ids) == sorted(want)


async def _status_names_each_partition_owner(path: Path, relays: list[Any]) -> None:
    """`status --relay A --relay B` names, per partition, the replica whose /status holds it
    (Tansu's DescribeGroups lists no assignment), in `--json` and in the plain table."""
    urls = [f"http://127.0.0.1:{relay.http_port}" for relay in relays]
    asked = [arg for url in urls for arg in ("--relay", url)]
    code, out, err = await cli(path, "status", "--json", *asked)
    assert code == 0, err
    held: dict[int, str] = {}
    for url in urls:
        _, status = await get_json(f"{url}/status")
        for item in status["vendors"][VENDOR]["assigned_partitions"]:
            held[int(item.rpartition(":")[2])] = url.removeprefix("http://")
    assert len(set(held.values())) == len(relays)  # each replica owns some
    entry = orjson.loads(out)["vendors"][VENDOR]
    assert {p["partition"]: p["owner"] for p in entry["partitions"]} == held
    assert {(p["owner_from"], p["breaker"]) for p in entry["partitions"]} == {("relay", "closed")}
    code, table, err = await cli(path, "status", *asked)
    assert code == 0, err
    print(table)  # the page's example (docs/guide/operations.md, Status)
    assert all(len(line) <= 80 for line in table.splitlines())
    lines = table.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("VENDOR"))
    assert lines[at].split()[-1] == "OWNER"
    assert {int(row.split()[2]): row.split()[-1] for row in lines[at + 1 :]} == held


async def _reach_s(relays: list[Any], since_s: float) -> list[float]:
    """Seconds after `since_s` until each replica's /status says the vendor is paused."""
    reached: list[float] = []
    for relay in relays:
        while True:
            _, status = await get_json(f"http://127.0.0.1:{relay.http_port}/status")
            if status["vendors"][VENDOR]["control"]["paused"]:
                reached.append(round(time.time() - since_s, 3))
                break
            assert time.time() - since_s < 10, "the pause never reached a replica"
            await asyncio.sleep(0.02)
    return reached


async def test_a_paused_vendor_lags_visibly_dead_letters_nothing_and_status_shows_it(
    broker, topics, sandbox_factory, run_relay, tmp_path
) -> None:
    """While paused the vendor's lag grows by what is published, its DLQ stays empty,
    `vendor list` and `status` (read from Kafka) say paused with the lag per partition."""
    sandbox = await sandbox_factory()
    config = relay_config(
        broker, topics, {VENDOR: goal_reach_vendor(sandbox)}, pipeline={"lag_interval_s": 0.2}
    )
    path = write_config(tmp_path, config)
    relay = await run_relay(config)
    code, _, err = await cli(path, "vendor", "pause", VENDOR, "--reason", "audit", "--by", "ops")
    assert code == 0, err
    await wait_for(lambda: relay.vendor_paused(VENDOR), 2, "the pause to reach the relay")
    lines = due(30)
    await publish_unbatched(broker.bootstrap, topics.source, lines)
    pipeline = relay.pipelines[VENDOR]
    await wait_for(lambda: pipeline.lag() == 30, 15, "a lag of 30")
    assert sandbox.accepted == [] and relay.metrics.vendor_paused.labels(VENDOR)._value.get() == 1

    code, listed, err = await cli(path, "vendor", "list")
    assert code == 0, err
    assert listed.splitlines()[1].split()[:5] == [VENDOR, "paused", "by", "ops", "at"]
    replica = f"http://127.0.0.1:{relay.http_port}"
    code, out, err = await cli(path, "status", "--json", "--relay", replica)
    assert code == 0, err
    entry = orjson.loads(out)["vendors"][VENDOR]
    assert entry["breaker"] == "closed"  # from the replica's /status
    assert entry["state"] == "paused" and entry["paused"]["reason"] == "audit"
    assert entry["lag"] == 30 and entry["members"] >= 1
    assert len(entry["partitions"]) == topics.partitions
    code, table, err = await cli(path, "status")
    assert code == 0, err
    assert all(len(line) <= 80 for line in table.splitlines())
    assert table.splitlines()[0].startswith(f"{VENDOR}: group {config['kafka']['group_prefix']}")
    body = [line.split() for line in table.splitlines()[4:]]  # head, who/why, gap, header
    assert sum(int(row[5]) for row in body) == 30 and {row[6] for row in body} == {"paused"}

    code, _, err = await cli(path, "vendor", "resume", VENDOR)
    assert code == 0, err
    await wait_for(lambda: len(sandbox.accepted) == 30, 20, "the 30 after the resume")
    assert await dlq_records(broker.bootstrap, topics.dlq) == 0


async def publish_unbatched(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    """One record per batch: Tansu's ListOffsets counts a partition written in batches short,
    and a paused partition's lag has no fetch's high watermark to correct it."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for line in lines:
            await producer.send_and_wait(topic, line, key=orjson.loads(line)["event_id"].encode())
    finally:
        await producer.stop()


async def dlq_records(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


def _moves(out: str) -> dict[int, tuple[str, str]]:
    """The plan's rows: partition -> (current, new)."""
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) == 7 and cells[1].isdigit():
            rows[int(cells[1])] = (cells[2], cells[3])
    return rows


async def test_reset_plans_by_default_and_moves_the_offsets_with_execute_in_every_mode(
    broker, topics, tmp_path
) -> None:
    """With no relay running: every mode's dry run changes nothing and shows the plan;
    --execute commits it (joining the group for a moment)."""
    config = relay_config(broker, topics, {VENDOR: IDLE_VENDOR})
    path = write_config(tmp_path, config)
    group = f"{config['kafka']['group_prefix']}.{VENDOR}"
    await publish(broker.bootstrap, topics.source, due(40)[:20])
    await asyncio.sleep(1.2)
    middle_ms = int(time.time() * 1000)
    await asyncio.sleep(0.1)
    await publish(broker.bootstrap, topics.source, due(40)[20:])
    ends = await end_offsets(broker.bootstrap, topics.source, topics.partitions)
    assert sum(ends.values()) == 40
    from datetime import UTC, datetime

    middle = datetime.fromtimestamp(middle_ms / 1000, UTC).isoformat()

    async def reset(*args: str) -> dict[int, int]:
        code, out, err = await cli(path, "vendor", "reset", VENDOR, *args)
        assert code == 0, err
        assert "dry run: nothing changed" in out
        before = await committed_offsets(broker.bootstrap, group, topics.source, 4)
        code, out, err = await cli(path, "vendor", "reset", VENDOR, *args, "--execute")
        assert code == 0, err
        assert "applied: " in out, out
        after = await committed_offsets(broker.bootstrap, group, topics.source, 4)
        assert after != before or args == ("--to-latest",)
        return after

    assert await reset("--to-latest") == ends
    assert await reset("--to-earliest") == dict.fromkeys(range(4), 0)
    assert await reset("--to-offset", "1:3") == {0: 0, 1: min(3, ends[1]), 2: 0, 3: 0}
    shifted = await reset("--shift-by", "2")
    assert shifted == {p: min(ends[p], (3 if p == 1 else 0) + 2) for p in range(4)}
    at_time = await reset("--to-datetime", middle)
    assert sum(ends[p] - at_time[p] for p in range(4)) == 20  # the second 20 again
    _, out, _ = await cli(path, "vendor", "reset", VENDOR, "--to-earliest")
    assert set(_moves(out)) == {0, 1, 2, 3}


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Each partition's log end, counted by reading it (Tansu's ListOffsets undercounts)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = dict.fromkeys(range(partitions), 0)
        quiet = 0
        while quiet < 3:
            batch = await consumer.getmany(timeout_ms=200)
            quiet = 0 if batch else quiet + 1
            for tp, records in batch.items():
                ends[tp.partition] = max(ends[tp.partition], records[-1].offset + 1)
        return ends
    finally:
        await consumer.stop()


@pytest.mark.parametrize("dedup", [False, True], ids=["resend", "dedup"])
async def test_reset_is_refused_while_the_group_runs_and_re_delivers_once_paused(
    broker, topics, sandbox_factory, run_relay, tmp_path, dedup: bool
) -> None:
    """A running vendor's reset is refused (exit 1, nothing moved); paused, `--to-earliest
    --execute` is committed by the relay itself, and the resume re-sends every event past
    dedup (the 'vendor lost a day' case); with `--dedup` what was delivered is skipped."""
    sandbox = await sandbox_factory()
    config = relay_config(broker, topics, {VENDOR: goal_reach_vendor(sandbox)})
    path = write_config(tmp_path, config)
    group = f"{config['kafka']['group_prefix']}.{VENDOR}"
    await run_relay(config)
    lines = due(25)
    await publish(broker.bootstrap, topics.source, lines)
    await wait_for(lambda: len(sandbox.accepted) == 25, 30, "25 deliveries")
    ends = await end_offsets(broker.bootstrap, topics.source, topics.partitions)
    await wait_for_commits(broker.bootstrap, group, topics.source, ends)

    code, _, err = await cli(path, "vendor", "reset", VENDOR, "--to-earliest", "--execute")
    assert code == 1 and "live member" in err and "pause the vendor first" in err
    assert await committed_offsets(broker.bootstrap, group, topics.source, 4) == ends

    code, _, err = await cli(path, "vendor", "pause", VENDOR)
    assert code == 0, err
    more = ["--dedup"] if dedup else []
    code, out, err = await cli(path, "vendor", "reset", VENDOR, "--to-earliest", "--execute", *more)
    assert code == 0, err
    assert "vendor paused: its replicas commit the plan" in out
    assert await committed_offsets(broker.bootstrap, group, topics.source, 4) == dict.fromkeys(
        range(4), 0
    )
    assert len(sandbox.accepted) == 25  # still paused
    code, _, err = await cli(path, "vendor", "resume", VENDOR)
    assert code == 0, err
    if dedup:
        await wait_for_commits(broker.bootstrap, group, topics.source, ends)
        await asyncio.sleep(0.5)
        assert len(sandbox.accepted) == 25  # every one deduplicated
        return
    await wait_for(lambda: len(sandbox.accepted) == 50, 30, "every event sent again")
    ids = sorted(r.payload["CustomerId"] for r in sandbox.accepted)
    want = [orjson.loads(line)["customer"]["ids"][VENDOR] for line in lines]
    assert ids == sorted(want * 2)


async def wait_for_commits(bootstrap: str, group: str, topic: str, ends: dict[int, int]) -> None:
    deadline = time.monotonic() + 20
    while await committed_offsets(bootstrap, group, topic, len(ends)) != ends:
        assert time.monotonic() < deadline, "the relay did not commit every offset"
        await asyncio.sleep(0.2)


async def test_a_reset_backwards_leaves_no_older_progress_to_skip_records_of_the_stretch(
    broker, topics
) -> None:
    """Progress kept above an older commit point (offset 15 done, base 10) must not apply
    once the reset stretch is re-delivered past 10: the reset rewrites the progress record,
    so seen from a later commit at 12 nothing above is done."""
    config = parse_config(relay_config(broker, topics, {VENDOR: IDLE_VENDOR}))
    kafka = config.kafka
    group = f"{kafka.group_prefix}.{VENDOR}"
    await publish(broker.bootstrap, topics.source, due(80), None)
    tp = TopicPartition(topics.source, 0)
    stale = encode(Progress(10, (15,)), 4000)

    async def producer() -> Any:
        from aiokafka import AIOKafkaProducer

        made = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await made.start()
        return made

    book = ProgressBook(kafka, None, make_producer=producer)
    try:
        await book.write(group, {tp: (10, stale)})
        await commit_as_member(kafka, group, list(kafka.topics), {tp: 5})
        await forget_progress(kafka, group, {tp: 5})
    finally:
        await book.close()
    reader = ProgressBook(kafka, None)
    try:
        text = (await reader.read(group, [tp]))[tp]
    finally:
        await reader.close()
    kept = decode(text)
    assert kept is not None and kept.base == 5
    later = kept.since(12)
    assert later is not None and later.done == ()


async def test_the_control_topic_is_created_compacted_and_read_to_its_end(broker) -> None:
    """A fresh control topic is created on first use; states written are read back by a new
    reader (a new replica) as the last record per vendor."""
    from service.core.control import VendorControl

    config = parse_config(
        {
            "kafka": {
                "bootstrap_servers": [broker.bootstrap],
                "topics": ["x"],
                "group_prefix": f"ctl-{uuid.uuid4().hex[:6]}",
            },
            "dlq": {"topic": "x.dlq"},
            "vendors": {VENDOR: IDLE_VENDOR},
        }
    )
    writer = ControlTopic(config.kafka)
    try:
        assert writer.topic == f"{config.kafka.group_prefix}.control"
        await writer.write(VendorControl(VENDOR, True, "a", "first"))
        await writer.write(VendorControl(VENDOR, False, "b"))
        await writer.write(VendorControl("crm", True, "c", "other"))
    finally:
        await writer.close()
    reader = ControlTopic(config.kafka)
    try:
        states = await reader.read_all()
    finally:
        await reader.close()
    assert states == {
        VENDOR: VendorControl(VENDOR, False, "b"),
        "crm": VendorControl("crm", True, "c", "other"),
    }
