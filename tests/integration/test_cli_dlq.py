"""The operator commands against a real broker: errors, tables, JSON."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

from service.net import free_port
from tests.conftest import ROOT, goal_reach_vendor, relay_config
from tests.integration.test_dlq_replay import _events, _headers, _put


def _write(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


async def _cli(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": str(columns)},
    )


async def test_an_unreachable_broker_is_one_line_naming_it_and_the_wait(
    broker, topics, sandbox_factory, tmp_path
):
    """No traceback and no "Unclosed AIOKafkaProducer": the bootstrap and how long, exit 1."""
    si = await sandbox_factory()
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)})
    nowhere = f"127.0.0.1:{free_port()}"
    config["kafka"]["bootstrap_servers"] = [nowhere]
    path = _write(tmp_path, config)
    (tmp_path / "one.jsonl").write_bytes(_events(1)[0] + b"\n")
    for args in (
        ["dlq", "inspect", "--config", path],
        ["dlq", "replay", "--config", path, "--vendor", "sustain_impact", "--dry-run"],
        ["publish", "--bootstrap", nowhere, "--topic", "t", str(tmp_path / "one.jsonl")],
    ):
        done = await _cli(*args)
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert f"cannot reach Kafka at {nowhere} (failed at once: " in lines[0]
        assert "Unclosed" not in done.stderr


async def test_unknown_vendors_are_errors_listing_the_valid_ones(
    broker, topics, sandbox_factory, tmp_path
):
    """`--vendor nosuch` is a usage error (2) naming the vendors the config has."""
    si = await sandbox_factory()
    path = _write(tmp_path, relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)}))
    for command, extra, kind in (
        ("inspect", "--list", "a vendor"),
        ("replay", "--dry-run", "an enabled vendor"),
    ):
        done = await _cli("dlq", command, "--config", path, "--vendor", "nosuch", extra)
        assert done.returncode == 2, done
        assert done.stderr.strip().splitlines() == [
            f"conversion-relay: error: --vendor nosuch: not {kind} in this config; "
            "choose from sustain_impact (see --help)"
        ]


async def test_inspect_list_fits_80_columns_and_shows_hostile_text_as_text(
    broker, topics, sandbox_factory, tmp_path
):
    """Event id, vendor, reason, status, attempts, age in 80 columns; `--wide` the rest, with
    markup-like and control characters printed literally / escaped."""
    si = await sandbox_factory()
    path = _write(tmp_path, relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)}))
    hostile = _headers("sustain_impact", "retries_exhausted", 0)
    hostile = [(k, v) for k, v in hostile if k != "relay-error"]
    hostile.append(("relay-error", b"[/v3/agent-api] [link=http://evil.example]x[/link] \x1b[2J"))
    await _put(broker.bootstrap, topics.dlq, [(hostile, _events(1)[0])])
    done = await _cli("dlq", "inspect", "--config", path, "--list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"1 dead letters waiting in {topics.dlq}"
    assert lines[1].split() == [
        "EVENT",
        "ID",
        "VENDOR",
        "REASON",
        "STATUS",
        "ATTEMPTS",
        "AGE",
        "ERROR",
    ]
    assert all(len(line) <= 80 for line in lines), lines
    assert "sustain_impact  retries_exhausted  400" in lines[2]
    wide = await _cli("dlq", "inspect", "--config", path, "--list", "--wide")
    assert wide.returncode == 0, wide.stderr
    assert "[/v3/agent-api] [link=http://evil.example]x[/link] \\x1b[2J" in wide.stdout
    assert "\x1b" not in wide.stdout


async def test_inspect_json_uses_null_for_every_missing_value(
    broker, topics, sandbox_factory, tmp_path
):
    """A letter without status, time or source: null, never "-" or ""."""
    si = await sandbox_factory()
    path = _write(tmp_path, relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)}))
    await _put(
        broker.bootstrap,
        topics.dlq,
        [([("relay-vendor", b"sustain_impact"), ("relay-http-status", None)], b"not json")],
    )
    listed = await _cli("dlq", "inspect", "--config", path, "--list", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = orjson.loads(listed.stdout)
    assert row["status"] is None and row["failed_at"] is None and row["reason"] is None
    assert row["event_id"] is None and row["error"] is None and row["age_s"] is None
    counted = await _cli("dlq", "inspect", "--config", path, "--json")
    assert orjson.loads(counted.stdout) == [
        {"vendor": "sustain_impact", "reason": None, "status": None, "count": 1}
    ]


async def _letters(tmp_path: Path, broker: Any, topics: Any, sandbox_factory: Any) -> tuple:
    si = await sandbox_factory()
    path = _write(tmp_path, relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)}))
    events = _events(3)
    await _put(
        broker.bootstrap,
        topics.dlq,
        [(_headers("sustain_impact", "rejected", n), e) for n, e in enumerate(events)],
    )
    return si, path, [orjson.loads(e)["event_id"] for e in events]


async def test_show_prints_one_letter_in_full_with_its_text_redacted(
    broker, topics, sandbox_factory, tmp_path
):
    """`dlq show 0:1`: the story, every header and the value; an email in the vendor's answer
    or the value is masked; `--event-id` finds the same letter."""
    si = await sandbox_factory()
    path = _write(tmp_path, relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)}))
    headers = [(k, v) for k, v in _headers("sustain_impact", "rejected", 0) if k != "relay-error"]
    headers.append(("relay-error", b"vendor_7: customer jane.doe@example.com is unknown"))
    value = _events(1)[0][:-1] + b', "note": "call jane.doe@example.com"}'
    await _put(broker.bootstrap, topics.dlq, [(_headers("sustain_impact", "rejected", 0), b"{}")])
    await _put(broker.bootstrap, topics.dlq, [(headers, value)])
    done = await _cli("dlq", "show", "--config", path, "0:1")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(f"letter 0:1 in {topics.dlq} (open)\n"), out
    assert "vendor answer" in out and "vendor_7: customer" in out
    assert "relay-reason: rejected" in out and "relay-source-offset: 0" in out
    assert f"value ({len(value)} bytes):" in out
    assert "jane.doe@example.com" not in out
    event_id = orjson.loads(value)["event_id"]
    by_event = await _cli("dlq", "show", "--config", path, "--event-id", event_id)
    assert by_event.returncode == 0, by_event.stderr
    assert by_event.stdout == out
    missing = await _cli("dlq", "show", "--config", path, "0:9")
    assert missing.returncode == 1 and f"no dead letter 0:9 in {topics.dlq}" in missing.stderr


async def test_event_id_narrows_inspect_and_replay_to_one_event(
    broker, topics, sandbox_factory, tmp_path
):
    """`--event-id` is a filter like `--reason`: one event's letters only."""
    si, path, ids = await _letters(tmp_path, broker, topics, sandbox_factory)
    listed = await _cli(
        "dlq", "inspect", "--config", path, "--list", "--json", "--event-id", ids[1]
    )
    assert listed.returncode == 0, listed.stderr
    assert [row["event_id"] for row in orjson.loads(listed.stdout)] == [ids[1]]
    replayed = await _cli(
        "dlq", "replay", "--config", path, "--vendor", "sustain_impact", "--event-id", ids[1]
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "delivered=1" in replayed.stdout
    assert len(si.accepted) == 1


async def test_discard_retires_letters_without_sending_and_its_dry_run_retires_none(
    broker, topics, sandbox_factory, tmp_path
):
    """`dlq discard --dry-run` lists, `dlq discard` retires: inspect shows them replayed, and
    a replay sends nothing."""
    si, path, ids = await _letters(tmp_path, broker, topics, sandbox_factory)
    base = ["dlq", "discard", "--config", path, "--vendor", "sustain_impact"]
    dry = await _cli(*base, "--event-id", ids[0], "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("1 dead letters to discard of sustain_impact\n"), dry.stdout
    done = await _cli(*base, "--event-id", ids[0])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "discarded 1 dead letters of sustain_impact" in done.stdout
    counted = await _cli("dlq", "inspect", "--config", path, "--all", "--json", "--by", "state")
    assert sorted((r["state"], r["count"]) for r in orjson.loads(counted.stdout)) == [
        ("open", 2),
        ("replayed", 1),
    ]
    rest = await _cli(*base)
    assert rest.returncode == 0, rest.stdout + rest.stderr
    replay = await _cli("dlq", "replay", "--config", path, "--vendor", "sustain_impact")
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.startswith("0 dead letters to replay to sustain_impact")
    assert not si.accepted


async def test_the_default_list_shows_the_vendors_reason_when_http_said_200(
    broker, topics, sandbox_factory, tmp_path
):
    """An Altcraft rejection (HTTP 200, error in the body) says why in the 80-column view."""
    si = await sandbox_factory()
    path = _write(tmp_path, relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)}))
    headers = [
        (k, v)
        for k, v in _headers("altcraft", "rejected", 0)
        if k not in ("relay-error", "relay-http-status")
    ]
    headers += [("relay-error", b"vendor_4: unknown goal"), ("relay-http-status", b"200")]
    await _put(broker.bootstrap, topics.dlq, [(headers, _events(1)[0])])
    done = await _cli("dlq", "inspect", "--config", path, "--list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert "ERROR" in lines[1] and "vendor_4" in lines[2], lines


async def test_inspect_follow_prints_letters_as_they_arrive_until_ctrl_c(
    broker, topics, sandbox_factory, tmp_path
):
    """`--follow` keeps reading: a letter written after the start shows up; Ctrl-C ends it,
    also when it was started with SIGINT ignored, as a shell starts a background job (`cmd &`
    in a script, nohup): Python then installs no KeyboardInterrupt, and it followed for ever."""
    _, path, _ = await _letters(tmp_path, broker, topics, sandbox_factory)

    def as_a_background_job() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "dlq",
        "inspect",
        "--config",
        path,
        "--follow",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=as_a_background_job,
    )
    assert proc.stdout is not None
    seen = b""
    while b"following new letters" not in seen:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, (seen, await proc.stderr.read() if proc.stderr else b"")
        seen += line
    late = _events(1)[0]
    await _put(broker.bootstrap, topics.dlq, [(_headers("sustain_impact", "expired", 9), late)])
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert orjson.loads(late)["event_id"].encode() in line and b"expired" in line, line
    proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()  # never left following after the test
            await proc.wait()
    assert proc.returncode == 0
