"""The documented command lines, run as written: the README's "Try it" walkthrough against a
running `dev`, and the dead-letter example session of docs/guide/operations.md against a real
broker."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import ROOT, goal_reach_vendor, relay_config
from tests.integration.test_dlq_replay import _events, _headers, _put

README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "guide" / "operations.md").read_text()


def _section(title: str, text: str = README) -> str:
    start = text.index(f"\n{title}\n")
    end = text.find("\n## ", start + len(title) + 2)  # the next top-level section
    return text[start : end if end > 0 else None]


def _blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.S)


def _sh(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=90, cwd=cwd, env=env
    )


def _event_ids(lines: list[str]) -> list[str]:
    """The first column of the letter table (the lines after its `EVENT ID` header)."""
    start = next(i for i, line in enumerate(lines) if line.startswith("EVENT ID"))
    ids = []
    for line in lines[start + 1 :]:
        if not line.strip() or line.startswith(("summary:", "replayed", "progress")):
            break
        ids.append(line.split()[0])
    return ids


def _commented_steps() -> list[tuple[str, str]]:
    """Each step of "Try it" with the comment above it."""
    steps, comment = [], ""
    for line in _blocks(_section("## Try it"))[0].splitlines():
        if line.startswith("#"):
            comment = line
        elif line.strip():
            steps.append((comment, line))
    return steps


def test_a_try_it_step_that_speaks_of_a_dry_run_runs_one() -> None:
    """Text and tool agree: a step whose comment promises a dry run gives `--dry-run`, and a
    later step runs the same command without it (so it sends what the dry run showed)."""
    steps = _commented_steps()
    commands = [part.strip() for _, line in steps for part in line.split(" && ")]
    promised = [line for comment, line in steps if "dry run" in comment.lower()]
    assert promised
    for line in promised:
        dry = [part.strip() for part in line.split(" && ") if "--dry-run" in part]
        assert dry, f"the comment promises a dry run; the command gives none: {line}"
        real = dry[0].replace(" --dry-run", "")
        assert commands.index(real) > commands.index(dry[0]), real


def test_the_try_it_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """Six steps against `make run`'s stack (here `dev --port 0`, temp dir moved under the
    test's, so `/tmp/` in the commands becomes that dir)."""
    steps = [line for _, line in _commented_steps()]
    assert len(steps) == 6
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    dev = subprocess.Popen(
        [str(ROOT / ".venv/bin/conversion-relay"), "dev", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    try:
        state = tmp_path / "conversion-relay-dev.json"
        deadline = time.monotonic() + 60
        while not state.exists():
            assert dev.poll() is None, dev.stderr.read() if dev.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(4)
        run = [s.replace("/tmp/", f"{tmp_path}/") for s in steps]
        first = [_sh(step, env, ROOT) for step in run[:3]]
        for done in first:
            assert done.returncode == 0, done.stderr
        assert first[0].stdout.startswith("# The demo configuration")
        assert first[1].stdout.splitlines() == ["published 20 records to conversions"]
        assert first[2].stdout.splitlines() == ["expertsender: down", "altcraft: reject 5"]
        deadline = time.monotonic() + 30
        while True:  # the demo traffic reaches altcraft within a second or two
            inspected = _sh(run[3], env, ROOT)
            assert inspected.returncode == 0, inspected.stderr
            if inspected.stdout.startswith("5 dead letters waiting in conversions.dlq"):
                break
            assert time.monotonic() < deadline, inspected.stdout
            time.sleep(0.5)
        assert "altcraft" in inspected.stdout.splitlines()[2]
        planned = _sh(run[4], env, ROOT)
        assert planned.returncode == 0, planned.stdout + planned.stderr
        shown = planned.stdout.splitlines()
        assert shown[:2] == ["expertsender: ok", "5 dead letters to replay to altcraft"]
        planned_ids = _event_ids(shown)
        assert len(planned_ids) == 5, planned.stdout
        replayed = _sh(run[5], env, ROOT)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        lines = replayed.stdout.splitlines()
        # Exactly the letters the dry run showed are the ones the replay sends.
        assert lines[0] == shown[1]
        assert _event_ids(lines) == planned_ids
        summary = [x for x in lines if x.startswith("summary: delivered=5,")]
        assert summary and "rejected=0" in summary[0], "\n".join(lines)
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(10)
        except subprocess.TimeoutExpired:
            dev.kill()
            dev.wait(10)


async def test_the_dead_letter_session_in_the_readme_prints_what_it_shows(
    broker, topics, sandbox_factory, tmp_path
):
    """Each `$ conversion-relay …` line of "Dead letters and replay": exit code 0 and the first
    line of output the docs show."""
    si = await sandbox_factory()
    config = relay_config(broker, topics, {"sustain_impact": goal_reach_vendor(si)})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    await _put(
        broker.bootstrap,
        topics.dlq,
        [(_headers("sustain_impact", "rejected", n), e) for n, e in enumerate(_events(3))],
    )
    session: list[tuple[str, str]] = []
    for block in _blocks(_section("## Dead letters and replay", OPERATIONS)):
        lines = block.splitlines()
        for index, line in enumerate(lines):
            if line.startswith("$ "):
                session.append((line[2:], lines[index + 1]))
    assert len(session) == 5
    cli = f"{shlex.quote(sys.executable)} -m service"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command, shown in session:
        done = await asyncio.to_thread(
            _sh, command.replace("conversion-relay", cli, 1), env, tmp_path
        )
        assert done.returncode == 0, f"{command}: {done.stderr}"
        expected = shown.replace("conversions.dlq", topics.dlq)
        assert done.stdout.splitlines()[0] == expected, command
    assert len(si.accepted) == 3
