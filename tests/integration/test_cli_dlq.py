"""The operator commands against a real broker: errors, tables, JSON."""

from __future__ import annotations

import asyncio
import os
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
        assert f"cannot reach Kafka at {nowhere} (gave up after" in lines[0]
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
    assert lines[1].split() == ["EVENT", "ID", "VENDOR", "REASON", "STATUS", "ATTEMPTS", "AGE"]
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
