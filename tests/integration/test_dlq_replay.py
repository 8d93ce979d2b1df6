"""Dead-letter inspection and replay against a real broker and sandbox."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
import yaml

from service.app import Replay
from service.config import parse_config
from service.delivery.replay import LetterFilter, aggregate, read_letters
from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from tests.conftest import goal_reach_vendor, read_topic, relay_config, wait_for


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
        {"vendor": "sustain_impact", "reason": "rejected", "status": "400", "count": 3}
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
    assert len(records) == 6
    originals = {dict(r.headers)["relay-source-offset"] for r in first}
    written_back = [dict(r.headers) for r in records if r.offset >= 3]
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
        {"vendor": "sustain_impact", "reason": "rejected", "status": "400", "count": 3}
    ]
    si.reset()
    dry = await asyncio.to_thread(run, "replay", "--vendor", "sustain_impact", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "3 dead letters match" in dry.stdout
    assert not si.accepted
    replayed = await asyncio.to_thread(run, "replay", "--vendor", "sustain_impact")
    assert replayed.returncode == 0, replayed.stderr + replayed.stdout
    assert "delivered=3" in replayed.stdout
    assert len(si.accepted) == 3
