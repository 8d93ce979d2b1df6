"""What each command loads before it does anything: the startup budget, held by module, not by
the clock (`-X importtime` lists every module a command imports)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# The libraries and relay modules that cost tenths of a second to import (measured with
# -X importtime: the relay's app ~0.57 s, redis ~0.4 s, aiokafka, aiohttp, rich, prometheus).
HEAVY = (
    "aiokafka",
    "aiohttp",
    "redis",
    "rich",
    "prometheus_client",
    "pyreqwest",
    "yaml",
    "service.app",
    "service.config",
    "service.devtools.dev",
)


def _imported(argv: list[str]) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "service", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "RELAY_CONFIG": ""},
    )
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize(
    "argv",
    [["--version"], ["--help"], ["fault", "altcraft", "ok", "--control", "http://127.0.0.1:1"]],
    ids=["version", "help", "fault"],
)
def test_light_commands_import_none_of_the_heavy_modules(argv: list[str]) -> None:
    """`--version`, `--help` and `fault` start without loading Kafka, HTTP, Redis or the relay."""
    loaded = _imported(argv)
    assert "service.cli" in loaded  # the measurement saw the command's imports at all
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY)
    assert heavy == []
