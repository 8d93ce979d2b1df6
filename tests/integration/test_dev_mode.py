"""`conversion-relay dev` as a user runs it: stops fast whatever stdout is, says what it does."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

DEV = [sys.executable, "-m", "service", "dev", "--port", "0", "--rate", "50"]


def _start(tmp_path: Path, stdout: str, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    config = tmp_path / "dev.yaml"
    out_path = tmp_path / "out.txt"
    kwargs: dict[str, object] = {}
    if stdout == "pipe":
        kwargs["stdout"] = subprocess.PIPE
    elif stdout == "file":
        kwargs["stdout"] = out_path.open("wb")
    else:  # closed: fd 1 does not exist in the child
        kwargs["preexec_fn"] = lambda: os.close(1)
    process = subprocess.Popen(
        [*DEV, "--write-config", str(config), *extra],
        stderr=subprocess.PIPE,
        cwd=ROOT,
        **kwargs,  # type: ignore[arg-type]
    )
    return process, config


def _wait_ready(
    process: subprocess.Popen[bytes], config: Path, timeout_s: float = 60, settle_s: float = 4
) -> None:
    deadline = time.monotonic() + timeout_s
    while not config.with_suffix(".json").exists():
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "dev mode did not start"
        time.sleep(0.1)
    time.sleep(settle_s)  # the relay joins its groups and traffic flows


@pytest.mark.parametrize(
    ("stdout", "sig"),
    [("pipe", signal.SIGINT), ("file", signal.SIGTERM), ("closed", signal.SIGTERM)],
)
def test_dev_mode_exits_cleanly_within_two_seconds_whatever_stdout_is(
    tmp_path: Path, stdout: str, sig: signal.Signals
) -> None:
    """Ctrl-C or SIGTERM: exit 0 within 2 s, with stdout a pipe, a file or closed."""
    process, config = _start(tmp_path, stdout)
    try:
        _wait_ready(process, config)
        sent_s = time.monotonic()
        process.send_signal(sig)
        process.wait(10)
        took_s = time.monotonic() - sent_s
        err = process.stderr.read().decode() if process.stderr else ""
        assert process.returncode == 0, err
        assert took_s < 2.0, f"took {took_s:.2f}s"
        assert "Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_dev_mode_exits_within_two_seconds_with_vendors_down_slow_and_throttled(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """The README's bound where the drain has most to wait for: one vendor down (its records
    retrying), one answering after 5 s (requests in flight), one answering 429."""
    process, config = _start(tmp_path, "pipe")
    try:
        _wait_ready(process, config, settle_s=0)
        state = str(config.with_suffix(".json"))
        for fault in (["expertsender", "down"], ["sustain_impact", "slow", "5"],
                      ["altcraft", "throttle", "3"]):  # fmt: skip
            subprocess.run(
                [sys.executable, "-m", "service", "fault", *fault, "--state", state],
                check=True, capture_output=True, cwd=ROOT, timeout=30,
            )  # fmt: skip
        time.sleep(4)  # requests pile up behind the faults
        sent_s = time.monotonic()
        process.send_signal(sig)
        out, err = process.communicate(timeout=10)
        took_s = time.monotonic() - sent_s
        assert process.returncode == 0, err.decode()
        assert took_s < 2.0, f"took {took_s:.2f}s"
        assert out.decode().rstrip().endswith("stopped everything dev mode started")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_without_a_terminal_dev_mode_prints_commands_and_plain_progress(tmp_path: Path) -> None:
    """Ready-to-paste commands for the running stack, its config on disk, and progress lines
    (with breaker state, rate-limit waits and DLQ writes) every few seconds."""
    process, config = _start(tmp_path, "pipe")
    try:
        _wait_ready(process, config)
        time.sleep(3)
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    text = out.decode()
    assert f"publish --config {config} --sample 10" in text
    assert f"dlq inspect --config {config}" in text
    assert f"dlq replay --config {config} --vendor altcraft --dry-run" in text
    assert "kafka:" in config.read_text()
    state = json.loads(config.with_suffix(".json").read_text())
    assert state["control_url"].startswith("http://127.0.0.1:")
    progress = [line for line in text.splitlines() if line.startswith("  altcraft: in=")]
    assert progress, text
    assert "breaker=closed" in progress[-1] and "rl_wait=" in progress[-1]
    assert "dlq=" in progress[-1]
    assert text.rstrip().endswith("stopped everything dev mode started")


def test_a_busy_port_is_a_one_line_error_at_start(tmp_path: Path) -> None:
    """Port taken: one line naming it and what to do, exit 1, before anything starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started_s = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "service", "dev", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"conversion-relay: error: port {port} is already in use by another process; "
        "pick another with --port P, or --port 0 for a free one"
    ]
    assert time.monotonic() - started_s < 10
