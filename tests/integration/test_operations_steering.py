"""The "Steering a vendor" session of docs/guide/operations.md, run as written on a real broker:
every `$ conversion-relay …` line exits 0 and prints what the page shows (its times, the test's
group prefix and topic aside), so the page holds real output."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
import uuid

import yaml

from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from tests.conftest import GOAL_PURCHASE, GOAL_SIGNUP, ROOT, relay_config

OPERATIONS = ROOT / "docs" / "guide" / "operations.md"
SECTION = "## Steering a vendor: pause, resume, status, reset"
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?\+00:00")


def session() -> list[tuple[str, list[str]]]:
    """Each documented command with the output lines shown under it."""
    text = OPERATIONS.read_text()
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + len(SECTION) + 2)
    steps: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```sh\n(.*?)```", text[start : end if end > 0 else None], re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
    return steps


def normal(lines: list[str], prefix: str, topic: str) -> list[list[str]]:
    """Lines as words, times and the test's names replaced by the page's."""
    out = []
    for line in lines:
        line = _ISO.sub("T", line.replace(f"{prefix}.", "conversion-relay.")).replace(
            topic, "conversions"
        )
        if line.strip():
            out.append(line.split())
    return out


async def test_the_steering_session_prints_what_the_page_shows(broker, topics, tmp_path):
    prefix = f"doc-{uuid.uuid4().hex[:8]}"
    vendor = {
        "protocol": "goal_reach",
        "base_url": "http://127.0.0.1:9",
        "goals": {"purchase": GOAL_PURCHASE, "signup": GOAL_SIGNUP},
    }
    config = relay_config(broker, topics, {"altcraft": vendor}, group_prefix=prefix)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    await publish(broker.bootstrap, topics.source, sample_lines(40))
    steps = session()
    assert len(steps) >= 8
    cli = f"{shlex.quote(sys.executable)} -m service"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command, shown in steps:
        done = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", command.replace("conversion-relay", cli, 1)],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=tmp_path,
            env=env,
        )
        assert done.returncode == 0, f"{command}: {done.stderr}"
        got = normal(done.stdout.splitlines(), prefix, topics.source)
        want = normal(shown, "conversion-relay", "conversions")
        assert got == want, f"{command}\n--- printed:\n{done.stdout}"
