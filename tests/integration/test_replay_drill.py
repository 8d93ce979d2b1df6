"""The replay drill (issue 21): `dlq replay` as an operator runs it, against the embedded broker
and a strict sandbox, at default settings: concurrent runs, Ctrl-C, crashes, failed letters."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from aiokafka import AIOKafkaProducer

from service.config import parse_config
from service.delivery.replay import LetterFilter, plan_replay
from service.devtools.embedded import create_topics
from tests.conftest import ROOT, goal_reach_vendor, read_topic, relay_config, wait_for
from tests.integration.test_dlq_replay import _customer, _events, _headers, _put

VENDOR = "sustain_impact"
# How long a replay may take to handle Ctrl-C (its signal handler runs on its event loop).
SIGNAL_HANDLED_S = 0.5


def _config_file(tmp_path: Path, broker: Any, topics: Any, sandbox: Any, **vendor: Any) -> Path:
    path = tmp_path / "relay.yaml"
    raw = relay_config(broker, topics, {VENDOR: goal_reach_vendor(sandbox, **vendor)})
    path.write_text(yaml.safe_dump(raw))
    return path


def _answered(sandbox: Any) -> int:
    """Requests the sandbox answered, accepted or refused."""
    return len(sandbox.accepted) + len(sandbox.refused)


async def _start(*args: str, python: list[str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *(python or [sys.executable, "-m", "service"]),
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "100"},
    )


async def _replay(path: Path, *extra: str, timeout_s: float = 90) -> tuple[int, str]:
    proc = await _start("dlq", "replay", "--config", str(path), "--vendor", VENDOR, *extra)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _letters(broker: Any, topics: Any, events: list[bytes], reason: str = "rejected") -> None:
    await _put(
        broker.bootstrap,
        topics.dlq,
        [(_headers(VENDOR, reason, n), e) for n, e in enumerate(events)],
    )


async def test_replaying_invalid_letters_reports_them_and_exits_3(
    broker, topics, sandbox_factory, tmp_path
):
    """Letters that are still invalid go back to the DLQ: the summary counts them, exit 3."""
    si = await sandbox_factory()
    path = _config_file(tmp_path, broker, topics, si)
    await _put(
        broker.bootstrap,
        topics.dlq,
        [(_headers(VENDOR, "invalid_event", n), b'{"event_id": "x') for n in range(3)],
    )
    code, out = await _replay(path)
    assert code == 3, out
    assert "invalid=3" in out, out
    assert not si.accepted


async def test_a_write_back_keeps_every_relay_header_of_its_letter(
    broker, topics, sandbox_factory, tmp_path
):
    """A letter cut to fit the DLQ comes back still saying so (relay-value-truncated-from)."""
    si = await sandbox_factory()
    path = _config_file(tmp_path, broker, topics, si)
    headers = [
        *_headers(VENDOR, "invalid_event", 0),
        ("relay-value-truncated-from", b"2000000"),
        ("relay-truncated", b"value,headers"),
    ]
    await _put(broker.bootstrap, topics.dlq, [(headers, b'{"event_id": "cut')])
    code, out = await _replay(path)
    assert code == 3, out
    records = await read_topic(broker.bootstrap, topics.dlq, expected=2)
    written_back = [dict(r.headers) for r in records if r.offset >= 1 and r.value]
    assert len(written_back) == 1, records
    assert written_back[0]["relay-value-truncated-from"] == b"2000000"
    assert written_back[0]["relay-truncated"] == b"value,headers"
    assert written_back[0]["relay-reason"] == b"invalid_event"


async def test_two_concurrent_replays_of_one_vendor_send_each_letter_once(
    broker, topics, sandbox_factory, tmp_path
):
    """Two `dlq replay` runs of one vendor at once share the letters instead of doubling them."""
    si = await sandbox_factory()
    si.faults.latency_s = 0.4
    path = _config_file(tmp_path, broker, topics, si, concurrency=2)
    events = _events(20)
    await _letters(broker, topics, events)
    runs = await asyncio.gather(_replay(path), _replay(path))
    for code, out in runs:
        assert code == 0, out
    delivered = Counter(p["CustomerId"] for p in si.payloads())
    assert sorted(delivered) == sorted(_customer(e) for e in events), runs
    assert set(delivered.values()) == {1}, delivered


async def test_ctrl_c_at_random_points_neither_loses_nor_repeats_a_letter(
    broker, topics, sandbox_factory, tmp_path
):
    """10 interrupted runs, then a run to the end: every letter delivered exactly once, and no
    new request after Ctrl-C beyond those already in flight."""
    si = await sandbox_factory()
    si.faults.latency_s = 0.05
    si.faults.latency_jitter_s = 0.3  # letters finish out of order
    path = _config_file(tmp_path, broker, topics, si, concurrency=4)
    # Each run takes at most 4 letters past its goal of 1 to 4: 80 leave some for the last run.
    events = _events(80)
    await _letters(broker, topics, events)
    rng = random.Random(21)
    for _ in range(10):
        before = _answered(si)
        proc = await _start("dlq", "replay", "--config", str(path), "--vendor", VENDOR)
        goal = before + rng.randint(1, 4)
        await wait_for(lambda g=goal: _answered(si) >= g, 60, "some deliveries")
        proc.send_signal(signal.SIGINT)
        signalled_s = time.time()  # the sandbox stamps each arrival with time.time()
        at_signal = _answered(si)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode in (0, 130), out.decode()
        # Until the replay has handled the signal (well within SIGNAL_HANDLED_S even on a busy
        # machine) it may still start a request; after that, none.
        arrivals = [t - signalled_s for t in si.request_times_s if t > signalled_s]
        late = [round(t, 3) for t in arrivals if t > SIGNAL_HANDLED_S]
        assert not late, f"requests started {late} s after Ctrl-C"
        handling = len(arrivals) - len(late)
        assert _answered(si) - at_signal <= 4 + handling, "more answered than were in flight"
    code, out = await _replay(path)
    assert code == 0, out
    delivered = Counter(p["CustomerId"] for p in si.payloads())
    assert sorted(delivered) == sorted(_customer(e) for e in events)
    assert set(delivered.values()) == {1}, delivered


async def test_a_letter_retrying_at_the_head_does_not_make_ctrl_c_repeat_the_rest(
    broker, topics, sandbox_factory, tmp_path
):
    """One letter keeps failing at the head while the 7 after it are delivered; Ctrl-C, fix the
    vendor, run again: only the head letter is sent again."""
    si = await sandbox_factory()
    path = _config_file(tmp_path, broker, topics, si)
    events = _events(8)
    await _letters(broker, topics, events)
    si.faults.fail_matching = _customer(events[0]).encode()
    proc = await _start("dlq", "replay", "--config", str(path), "--vendor", VENDOR)
    await wait_for(lambda: len(si.accepted) >= 7, 60, "the letters after the head")
    await asyncio.sleep(0.5)  # the head keeps retrying meanwhile
    proc.send_signal(signal.SIGINT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, out.decode()
    si.faults.fail_matching = None
    code, out = await _replay(path)
    assert code == 0, out
    delivered = Counter(p["CustomerId"] for p in si.payloads())
    assert sorted(delivered) == sorted(_customer(e) for e in events)
    assert set(delivered.values()) == {1}, delivered


# A `dlq replay` that dies (as by SIGKILL) right after its first write-back was acknowledged,
# before anything could record that the letter it replaced is retired.
_CRASH_AFTER_WRITE_BACK = """
import os, sys
from service.delivery import replay
original = replay.WriteBackWriter.write
async def write(self, letter, *args, **kwargs):
    await original(self, letter, *args, **kwargs)
    os._exit(137)
replay.WriteBackWriter.write = write
from service.cli import main
sys.argv = ["conversion-relay", *sys.argv[1:]]
sys.exit(main())
"""


async def test_a_crash_between_a_write_back_and_its_progress_plans_no_letter_twice(
    broker, topics, sandbox_factory, tmp_path
):
    """The write-back survives the crash and its letter still looks open: the next plan counts
    the event once (the write-back supersedes its letter), and the next run sends it once."""
    si = await sandbox_factory()
    path = _config_file(tmp_path, broker, topics, si, concurrency=1)
    events = _events(3)
    await _letters(broker, topics, events)
    si.faults.reject_next = 1
    proc = await _start(
        "dlq",
        "replay",
        "--config",
        str(path),
        "--vendor",
        VENDOR,
        python=[sys.executable, "-c", _CRASH_AFTER_WRITE_BACK],
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 137, out.decode()
    assert len(si.refused) == 1
    code, out = await _replay(path, "--dry-run")
    assert code == 0, out
    assert out.startswith("3 dead letters to replay to sustain_impact"), out
    code, out = await _replay(path)
    assert code == 0, out
    delivered = Counter(p["CustomerId"] for p in si.payloads())
    assert sorted(delivered) == sorted(_customer(e) for e in events)
    assert set(delivered.values()) == {1}, delivered


async def test_planning_a_large_dlq_holds_no_letter_in_memory_and_prints_no_row_each(
    broker, topics, sandbox_factory, tmp_path
):
    """2,000 letters of 4 KiB and an old replay mark naming a million offsets: planning keeps
    under 4 MiB of Python memory, and the dry run prints a short summary, not 2,000 rows."""
    si = await sandbox_factory()
    path = _config_file(tmp_path, broker, topics, si)
    config = parse_config(yaml.safe_load(path.read_text()))
    padding = b" " * 4096
    events = [e[:-1] + b', "pad": "' + padding + b'"}' for e in _events(2000)]
    await _letters(broker, topics, events)
    mark = [
        ("relay-replay-vendor", b"sales_ninja"),
        ("relay-replay-letters", b"0:0-999999"),
        ("relay-replayed-at", b"2026-12-01T00:00:00+00:00"),
    ]
    await _put(broker.bootstrap, topics.dlq, [(mark, b"")])
    tracemalloc.start()
    try:
        plan = await plan_replay(config.kafka, topics.dlq, VENDOR, LetterFilter())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan.count == 2000
    assert peak < 4 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
    code, out = await _replay(path, "--dry-run")
    assert code == 0, out
    assert out.startswith("2000 dead letters to replay to sustain_impact"), out[:300]
    assert len(out.splitlines()) <= 20, out[:2000]


async def test_an_emptied_dlq_partition_ends_inspect_and_planning(monkeypatch, broker, topics):
    """A partition whose letters retention removed (log start = end = 5) reads as empty at once
    (the embedded broker has neither retention nor DeleteRecords, so its consumer reports the
    offsets a real broker would)."""
    from service.delivery import replay

    class Emptied:
        """aiokafka's consumer over one partition whose log starts at its end."""

        def __init__(self) -> None:
            from aiokafka import TopicPartition

            self.tp = TopicPartition(topics.dlq, 0)

        def assignment(self) -> set[Any]:
            return {self.tp}

        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0}

        async def end_offsets(self, partitions: Any) -> dict[Any, int]:
            return {self.tp: 5}

        async def beginning_offsets(self, partitions: Any) -> dict[Any, int]:
            return {self.tp: 5}

        def highwater(self, tp: Any) -> int:
            return 5

        async def position(self, tp: Any) -> int:
            return 5

        async def getmany(self, *partitions: Any, **kwargs: Any) -> dict[Any, list[Any]]:
            await asyncio.sleep(0.01)
            return {}

        def assign(self, partitions: Any) -> None:
            pass

        def seek(self, tp: Any, offset: int) -> None:
            pass

        async def seek_to_beginning(self, *partitions: Any) -> None:
            pass

        def pause(self, *partitions: Any) -> None:
            pass

        def resume(self, *partitions: Any) -> None:
            pass

        async def stop(self) -> None:
            pass

    async def emptied(*args: Any, **kwargs: Any) -> Emptied:
        return Emptied()

    monkeypatch.setattr(replay, "_assigned_consumer", emptied)
    nowhere = SimpleNamespace(base_url="http://127.0.0.1:9")
    config = parse_config(relay_config(broker, topics, {VENDOR: goal_reach_vendor(nowhere)}))
    letters = await asyncio.wait_for(replay.read_letters(config.kafka, topics.dlq), 10)
    assert list(letters) == []
    await asyncio.wait_for(plan_replay(config.kafka, topics.dlq, VENDOR, LetterFilter()), 10)


async def test_replay_marks_of_earlier_versions_are_honoured_and_none_are_written(
    broker, topics, sandbox_factory, tmp_path
):
    """After an upgrade, letters an old replay marked are not sent again; the new replay writes
    no mark (no empty records for other DLQ consumers), and its group's progress then covers
    the marked letters too."""
    si = await sandbox_factory()
    path = _config_file(tmp_path, broker, topics, si)
    config = parse_config(yaml.safe_load(path.read_text()))
    events = _events(4)
    await _letters(broker, topics, events)
    old_mark = [
        ("relay-replay-vendor", VENDOR.encode()),
        ("relay-replay-letters", b"0:0-1"),
        ("relay-replayed-at", b"2026-12-01T00:00:00+00:00"),
    ]
    await _put(broker.bootstrap, topics.dlq, [(old_mark, b"")])
    code, out = await _replay(path)
    assert code == 0, out
    assert sorted(p["CustomerId"] for p in si.payloads()) == sorted(
        _customer(e) for e in events[2:]
    )
    records = await read_topic(broker.bootstrap, topics.dlq, expected=5)
    assert len(records) == 5  # 4 letters and the old mark: nothing appended
    plan = await plan_replay(config.kafka, topics.dlq, VENDOR, LetterFilter())
    assert plan.count == 0
    assert plan.retired.start(VENDOR, 0) == 5  # the group's commit point is past the mark


async def test_a_replay_killed_during_a_concurrent_pass_loses_and_repeats_no_letter(
    broker, sandbox_factory, tmp_path
):
    """Two replays of one vendor share a 2-partition DLQ; one is SIGKILLed mid-pass (once what
    it had accepted was committed, its requests in flight answered 503, so the kill itself
    cannot repeat a letter the vendor has); the other takes its partition over (or a rerun
    does): every letter delivered exactly once, none lost."""
    from tests.conftest import Topics

    name = f"conversions-{os.urandom(4).hex()}"
    topics = Topics(source=name, dlq=f"{name}.dlq", partitions=4)
    await create_topics(broker.bootstrap, {topics.source: 4, topics.dlq: 2})
    si = await sandbox_factory()
    si.faults.latency_s = 0.15
    path = _config_file(tmp_path, broker, topics, si, concurrency=2)
    events = _events(60)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        for n, event in enumerate(events):
            headers = _headers(VENDOR, "rejected", n)
            await producer.send_and_wait(topics.dlq, value=event, headers=headers, partition=n % 2)
    finally:
        await producer.stop()
    victim = await _start("dlq", "replay", "--config", str(path), "--vendor", VENDOR)
    survivor = asyncio.create_task(_replay(path))
    await wait_for(lambda: len(si.accepted) >= 12, 60, "both replays under way")
    si.faults.fail_matching = b""  # every request from now on answers 503 and is retried
    await asyncio.sleep(1.5)  # what was accepted is committed; requests in flight answered 503
    victim.kill()
    await asyncio.wait_for(victim.communicate(), 10)
    assert victim.returncode == -signal.SIGKILL
    accepted_at_kill = len(si.accepted)
    await asyncio.sleep(0.3)  # the killed replay's last requests answered (503) too
    si.faults.fail_matching = None
    code, out = await asyncio.wait_for(survivor, 90)
    assert code == 0, out
    if len(si.accepted) < len(events):  # the survivor finished before the group moved
        code, out = await _replay(path)
        assert code == 0, out
    delivered = Counter(p["CustomerId"] for p in si.payloads())
    assert sorted(delivered) == sorted(_customer(e) for e in events), accepted_at_kill
    assert set(delivered.values()) == {1}, delivered
