"""Dead-letter inspection and replay against a real broker and sandbox."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson
import yaml
from aiokafka import AIOKafkaProducer

from service.config import parse_config
from service.delivery.dlq import DeadLetter, SourceRecord, to_headers
from service.delivery.replay import LetterFilter, aggregate, plan_replay, read_letters
from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from service.replay_run import Replay
from tests.conftest import ROOT, goal_reach_vendor, read_topic, relay_config, wait_for

Headers = list[tuple[str, bytes | None]]


def _events(count: int) -> list[bytes]:
    """Sample events the goal-reach sandbox accepts (purchase and signup goals)."""
    lines = [line for line in sample_lines(count * 3) if orjson.loads(line)["goal"] != "lead"]
    return lines[:count]


def _headers(
    vendor: str, reason: str, offset: int, failed_at: datetime | None = None, attempts: int = 1
) -> Headers:
    letter = DeadLetter(
        vendor=vendor,
        reason=reason,
        error="HTTP 400: rejected",
        source=SourceRecord("conversions", 0, offset, None, b""),
        http_status=400,
        attempts=attempts,
    )
    return list(to_headers(letter, failed_at or datetime.now(UTC)))


async def _put(bootstrap: str, topic: str, letters: list[tuple[Headers, bytes]]) -> None:
    """Write DLQ records as the relay would (through the codec) or with broken headers."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for headers, value in letters:
            await producer.send_and_wait(topic, value=value, headers=headers)
    finally:
        await producer.stop()


def _customer(line: bytes) -> str:
    return str(orjson.loads(line)["customer"]["ids"]["sustain_impact"])


async def _dead_letter_three(broker, topics, sandbox, run_relay) -> dict:
    sandbox.faults.reject_next = 3
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(sandbox)})
    relay = await run_relay(config)
    lines = [
        line for line in sample_lines(12) if orjson.loads(line)["goal"] in ("purchase", "signup")
    ][:5]
    await publish(broker.bootstrap, topics.source, lines)
    await wait_for(lambda: len(sandbox.accepted) + len(sandbox.refused) >= 5, 30, "answers")
    await wait_for(lambda: relay.pipelines["sustain_impact"].in_flight == 0, 10, "terminal")
    return config


async def test_inspect_aggregates_letters_by_vendor_reason_and_status(
    broker, topics, sandbox_factory, run_relay
):
    """`dlq inspect` counts what is in the DLQ, grouped as asked."""
    si = await sandbox_factory()
    config = await _dead_letter_three(broker, topics, si, run_relay)
    parsed = parse_config(config)
    letters = await read_letters(parsed.kafka, parsed.dlq.topic)
    assert len(letters) == 3
    assert aggregate(letters, ["vendor", "reason", "status"]) == [
        {"vendor": "sustain_impact", "reason": "rejected", "status": 400, "count": 3}
    ]
    assert LetterFilter(reason="expired").matches(letters[0]) is False


async def test_replay_after_fixing_the_vendor_delivers_each_letter_once_and_resumes(
    broker, topics, sandbox_factory, run_relay
):
    """Replayed letters are delivered once; a second replay finds nothing new to send."""
    si = await sandbox_factory()
    config = await _dead_letter_three(broker, topics, si, run_relay)
    rejected = [r.payload["CustomerId"] for r in si.refused]
    si.reset()
    replay = Replay(
        parse_config(config),
        "sustain_impact",
        LetterFilter(vendor="sustain_impact", reason="rejected"),
    )
    counts = await replay.run()
    assert counts["delivered"] == 3
    assert sorted(p["CustomerId"] for p in si.payloads()) == sorted(rejected)
    again = await Replay(parse_config(config), "sustain_impact", LetterFilter()).run()
    assert again["delivered"] == 0
    assert len(si.accepted) == 3


async def test_a_letter_that_fails_again_returns_to_the_dlq_with_more_attempts(
    broker, topics, sandbox_factory, run_relay
):
    """A replayed letter rejected again is written back, its first source and attempts kept."""
    si = await sandbox_factory()
    config = await _dead_letter_three(broker, topics, si, run_relay)
    first = await read_topic(broker.bootstrap, topics.dlq, expected=3)
    si.reset()
    si.faults.reject_next = 3
    counts = await Replay(parse_config(config), "sustain_impact", LetterFilter()).run()
    assert counts["rejected"] == 3
    records = await read_topic(broker.bootstrap, topics.dlq, expected=6)
    letters = [r for r in records if "relay-reason" in dict(r.headers)]
    assert len(records) == len(letters) == 6  # the 3 originals and 3 write-backs, no marks
    originals = {dict(r.headers)["relay-source-offset"] for r in first}
    written_back = [dict(r.headers) for r in letters if r.offset >= 3]
    assert len(written_back) == 3
    for headers in written_back:
        assert headers["relay-attempts"] == b"2"
        assert headers["relay-source-topic"].decode() == topics.source
    assert {h["relay-source-offset"] for h in written_back} == originals


async def test_the_dlq_commands_inspect_and_replay_from_the_command_line(
    broker, topics, sandbox_factory, run_relay, tmp_path
):
    """`dlq inspect --json` aggregates, `dlq replay --dry-run` sends nothing, `dlq replay` does."""
    si = await sandbox_factory()
    config = await _dead_letter_three(broker, topics, si, run_relay)
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(config))
    base = [sys.executable, "-m", "service", "dlq"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args, "--config", str(path)], capture_output=True, text=True, timeout=60
        )

    inspected = await asyncio.to_thread(run, "inspect", "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert orjson.loads(inspected.stdout) == [
        {"vendor": "sustain_impact", "reason": "rejected", "status": 400, "count": 3}
    ]
    si.reset()
    dry = await asyncio.to_thread(run, "replay", "--vendor", "sustain_impact", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("3 dead letters to replay to sustain_impact\n")
    assert not si.accepted
    replayed = await asyncio.to_thread(run, "replay", "--vendor", "sustain_impact")
    assert replayed.returncode == 0, replayed.stderr + replayed.stdout
    assert "delivered=3" in replayed.stdout
    assert len(si.accepted) == 3


async def test_replay_stops_at_the_end_offsets_taken_at_its_start(broker, topics, sandbox_factory):
    """One matching letter rejected again: one write-back, attempts up, never replayed again
    within the same run (it lies past the end offsets the replay took)."""
    si = await sandbox_factory()
    config = parse_config(relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)}))
    await _put(
        broker.bootstrap, topics.dlq, [(_headers("sustain_impact", "rejected", 0), _events(1)[0])]
    )
    si.faults.reject_next = 100
    counts = await Replay(config, "sustain_impact", LetterFilter(reason="rejected")).run()
    assert counts["rejected"] == 1
    assert len(si.refused) == 1
    letters = await read_letters(config.kafka, topics.dlq)
    assert [(i.dlq_offset, i.replayed, i.attempts) for i in letters] == [
        (0, True, 1),
        (1, False, 2),
    ]
    again = await Replay(config, "sustain_impact", LetterFilter(reason="rejected")).run()
    assert again["rejected"] == 1
    letters = await read_letters(config.kafka, topics.dlq)
    assert [(i.replayed, i.attempts) for i in letters] == [(True, 1), (True, 2), (False, 3)]


async def test_a_filtered_replay_leaves_the_letters_it_does_not_match_for_later_replays(
    broker, topics, sandbox_factory
):
    """`--reason rejected` replays only those; a later unfiltered replay still finds the rest."""
    si, sn = await sandbox_factory(), await sandbox_factory()
    config = parse_config(
        relay_config(
            broker,
            topics,
            {"sustain_impact": goal_reach_vendor(si), "sales_ninja": goal_reach_vendor(sn)},
        )
    )
    events = _events(4)
    reasons = ["rejected", "retries_exhausted", "rejected", "retries_exhausted"]
    await _put(
        broker.bootstrap,
        topics.dlq,
        [
            (_headers("sustain_impact", r, n), e)
            for n, (r, e) in enumerate(zip(reasons, events, strict=True))
        ],
    )
    first = await Replay(config, "sustain_impact", LetterFilter(reason="rejected")).run()
    assert first["delivered"] == 2
    rest = await plan_replay(config.kafka, topics.dlq, "sustain_impact", LetterFilter())
    assert [i.reason for i in rest.sample] == ["retries_exhausted", "retries_exhausted"]
    assert rest.count == 2
    second = await Replay(config, "sustain_impact", LetterFilter()).run()
    assert second["delivered"] == 2
    assert sorted(p["CustomerId"] for p in si.payloads()) == sorted(_customer(e) for e in events)
    third = await Replay(config, "sustain_impact", LetterFilter()).run()
    assert third["delivered"] == 0
    assert len(si.accepted) == 4


async def test_the_vendor_is_part_of_the_replay_filter(broker, topics, sandbox_factory):
    """A replay for one vendor never sends another vendor's letters, even without --vendor in
    its filter."""
    si, sn = await sandbox_factory(), await sandbox_factory()
    config = parse_config(
        relay_config(
            broker,
            topics,
            {"sustain_impact": goal_reach_vendor(si), "sales_ninja": goal_reach_vendor(sn)},
        )
    )
    await _put(
        broker.bootstrap, topics.dlq, [(_headers("sales_ninja", "rejected", 0), _events(1)[0])]
    )
    counts = await Replay(config, "sustain_impact", LetterFilter()).run()
    assert counts["delivered"] == 0
    assert not si.accepted
    counts = await Replay(config, "sales_ninja", LetterFilter()).run()
    assert counts["delivered"] == 1
    assert len(sn.accepted) == 1


async def test_dry_run_and_real_run_select_exactly_the_same_letters(
    broker, topics, sandbox_factory
):
    """The plan a dry run shows is what the run replays: the same DLQ positions, no others."""
    si = await sandbox_factory()
    config = parse_config(relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)}))
    now = datetime.now(UTC)
    ages_h = [3, 0.1, 5, 0.2, 0.3, 2]
    await _put(
        broker.bootstrap,
        topics.dlq,
        [
            (_headers("sustain_impact", "rejected", n, now - timedelta(hours=age)), e)
            for n, (age, e) in enumerate(zip(ages_h, _events(len(ages_h)), strict=True))
        ],
    )
    wanted = LetterFilter(since=now - timedelta(hours=1))
    plan = await plan_replay(config.kafka, topics.dlq, "sustain_impact", wanted)
    assert [i.dlq_offset for i in plan.sample] == [1, 3, 4]
    assert plan.count == 3
    counts = await Replay(config, "sustain_impact", wanted).run()
    assert counts["delivered"] == 3
    replayed = [i.dlq_offset for i in await read_letters(config.kafka, topics.dlq) if i.replayed]
    assert replayed == [1, 3, 4]


async def test_letters_with_null_or_unreadable_headers_replay_and_write_back_clean_headers(
    broker, topics, sandbox_factory
):
    """A null, non-UTF-8 or missing header neither breaks inspect nor replay, and a write-back
    carries the codec's headers, not the broken ones."""
    si = await sandbox_factory()
    config = parse_config(relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)}))
    events = _events(3)
    broken: list[Headers] = [
        [
            ("relay-vendor", b"sustain_impact"),
            ("relay-reason", b"rejected"),
            ("relay-attempts", None),
            ("relay-source-topic", None),
            ("relay-source-partition", b"0"),
            ("relay-error", b"\xff\xfe bad"),
            ("relay-http-status", None),
            ("relay-failed-at", b"yesterday"),
            ("x-trace", None),
        ],
        [("relay-vendor", b"sustain_impact"), ("relay-reason", b"rejected")],
        [("relay-vendor", b"sustain_impact"), ("relay-attempts", b"\xff"), ("relay-reason", None)],
    ]
    await _put(broker.bootstrap, topics.dlq, list(zip(broken, events, strict=True)))
    letters = await read_letters(config.kafka, topics.dlq)
    assert [(i.reason, i.attempts, i.source) for i in letters] == [
        ("rejected", 0, "?:0:?"),
        ("rejected", 0, "?:?:?"),
        ("", 0, "?:?:?"),
    ]
    si.faults.reject_next = 1
    counts = await Replay(config, "sustain_impact", LetterFilter()).run()
    assert counts["delivered"] + counts["rejected"] == 3
    assert counts["rejected"] == 1
    records = await read_topic(broker.bootstrap, topics.dlq, expected=4)
    write_backs = [r for r in records if r.offset >= 3 and "relay-reason" in dict(r.headers)]
    assert len(write_backs) == 1
    headers = write_backs[0].headers
    assert all(isinstance(v, bytes) for _, v in headers), headers
    named = dict(headers)
    assert named["relay-attempts"] == b"1"
    assert named["relay-source-topic"] == topics.dlq.encode()  # the original is unknown
    assert "x-trace" not in named
    assert sum(1 for k, _ in headers if k == "relay-reason") == 1


async def test_an_interrupted_replay_started_again_neither_loses_nor_repeats_a_letter(
    broker, topics, sandbox_factory, tmp_path
):
    """Ctrl-C in the middle of `dlq replay`, then the same command again: every letter
    delivered exactly once."""
    si = await sandbox_factory()
    si.faults.latency_s = 0.15
    raw = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si, concurrency=1)})
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(raw))
    events = _events(12)
    await _put(
        broker.bootstrap,
        topics.dlq,
        [(_headers("sustain_impact", "rejected", n), e) for n, e in enumerate(events)],
    )
    command = [sys.executable, "-m", "service", "dlq", "replay", "--config", str(path)]
    command += ["--vendor", "sustain_impact"]
    first = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    await wait_for(lambda: len(si.accepted) >= 3, 60, "the first deliveries")
    first.send_signal(signal.SIGINT)
    out, _ = await asyncio.wait_for(first.communicate(), 30)
    assert first.returncode == 130, out.decode()
    assert len(si.accepted) < 12, "the interrupt came too late to test anything"
    second = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(second.communicate(), 60)
    assert second.returncode == 0, out.decode()
    delivered = [p["CustomerId"] for p in si.payloads()]
    assert sorted(delivered) == sorted(_customer(e) for e in events)
