"""`publish` against a real broker, and the Kafka probe every operator command uses (issue 25,
finding 7): a topic no pipeline reads is named in a warning; an unreachable broker is described
as what happened, never "gave up after 0.0 s"."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.cli.common import probe_kafka
from service.errors import KafkaUnavailable
from service.net import free_port
from tests.conftest import ROOT, goal_reach_vendor, relay_config


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "RELAY_CONFIG": ""},
    )


async def test_publishing_to_a_topic_no_pipeline_reads_warns_and_names_the_configured_ones(
    broker, topics, sandbox_factory, tmp_path: Path
) -> None:
    """The records are still published (exit 0); stderr says no pipeline reads that topic and
    which topics the config's pipelines read."""
    si = await sandbox_factory()
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)})
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(config))
    stray = f"{topics.source}-typo"
    done = await _cli("publish", "--config", str(path), "--topic", stray, "--sample", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"published 2 records to {stray}"]
    assert done.stderr.strip().splitlines() == [
        f"conversion-relay: warning: no pipeline of {path} reads topic {stray}; "
        f"its pipelines read {topics.source}"
    ]
    same = await _cli("publish", "--config", str(path), "--sample", "1")
    assert same.returncode == 0 and same.stderr == "", same.stderr


async def test_a_refused_connection_is_reported_as_failing_at_once() -> None:
    """Nothing listens: the error says it failed at once, not that it waited 0.0 s."""
    nowhere = f"127.0.0.1:{free_port()}"
    with pytest.raises(KafkaUnavailable) as caught:
        await probe_kafka({"bootstrap_servers": nowhere}, nowhere, 5.0)
    text = str(caught.value)
    assert "gave up after 0.0 s" not in text
    assert text.startswith(
        f"cannot reach Kafka at {nowhere} (failed at once: KafkaConnectionError)"
    )


async def test_a_broker_that_never_answers_is_reported_with_the_wait() -> None:
    """A listener that accepts and says nothing: `no answer within T s`, after T s."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        where = f"127.0.0.1:{silent.getsockname()[1]}"
        started_s = asyncio.get_running_loop().time()
        with pytest.raises(KafkaUnavailable) as caught:
            await probe_kafka({"bootstrap_servers": where}, where, 0.5)
        waited_s = asyncio.get_running_loop().time() - started_s
    assert str(caught.value).startswith(f"cannot reach Kafka at {where} (no answer within 0.5 s)")
    assert 0.5 <= waited_s < 3
