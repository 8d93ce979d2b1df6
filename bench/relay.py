"""conversion-relay as a contender: its config, feature detection, and the subprocess.

The relay runs exactly as in production, `python -m service run --config FILE` (uvloop, info
logging to a file), so its CPU and memory are measured alone from /proc.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.procs import ROOT, Proc, python_module
from bench.workload import GOALS, HEARTBEAT_INTERVAL_MS, SESSION_TIMEOUT_MS, VENDOR
from service.net import free_port

FIVE_VENDORS = ("sustain_impact", "sales_ninja", "expertsender", "altcraft", "conductrics")


def vendor_section(name: str, base_url: str, concurrency: int) -> dict[str, Any]:
    """One vendor of the five, pointed at its sink; all three sample goals mapped."""
    common: dict[str, Any] = {"base_url": base_url, "concurrency": concurrency}
    if name == "sustain_impact":
        return {"protocol": "goal_reach", **common, "goals": dict(GOALS)}
    if name == "sales_ninja":
        return {
            "protocol": "goal_reach",
            **common,
            "goals": {
                "purchase": "4f1c2a4e-8d4b-4c47-9a56-0d3c9e1b7a21",
                "signup": "0b9d8c7e-6f5a-4b3c-8d2e-1f0a9b8c7d6e",
                "lead": "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d",
            },
        }
    if name == "expertsender":
        return {
            "protocol": "expertsender",
            **common,
            "api_key": "bench-api-key",
            "goals": {"purchase": 12, "signup": 13, "lead": 14},
        }
    if name == "altcraft":
        return {
            "protocol": "altcraft",
            **common,
            "token": "bench-token",
            "db_id": 1,
            "pixel_id": 7,
            "matching": "email",
            "goals": {"purchase": "purchase", "signup": "signup", "lead": "lead"},
        }
    if name == "conductrics":
        return {
            "protocol": "conductrics",
            **common,
            "account": "ac-bench",
            "api_key": "bench-api-key",
            "goals": {"purchase": "goal-1", "signup": "goal-2", "lead": "goal-3"},
        }
    raise ValueError(name)


def relay_config(
    bootstrap: str,
    topic: str,
    vendors: dict[str, dict[str, Any]],
    http_port: int,
    group_prefix: str,
    transport: str | None = None,
    ca_bundle: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The relay's config: production defaults except the Tansu-friendly session timeouts.

    `transport` sets `http.transport` (aiohttp, pyreqwest); None leaves the relay's default.
    `ca_bundle` sets `http.ca_bundle` (the `tls` scenario's CA, for an HTTPS sink).
    """
    http: dict[str, Any] = {"host": "127.0.0.1", "port": http_port}
    if transport is not None:
        http["transport"] = transport
    if ca_bundle is not None:
        http["ca_bundle"] = ca_bundle
    return {
        "kafka": {
            "bootstrap_servers": [bootstrap],
            "topics": [topic],
            "group_prefix": group_prefix,
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
        },
        "http": http,
        "dlq": {"topic": f"{topic}.dlq"},
        "vendors": vendors,
        **extra,
    }


def single_vendor(base_url: str, concurrency: int, **extra: Any) -> dict[str, dict[str, Any]]:
    """The one-vendor setup: sustain_impact with every sample goal mapped."""
    return {VENDOR: {**vendor_section(VENDOR, base_url, concurrency), **extra}}


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write a config as YAML."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def check_config(path: Path) -> tuple[bool, str]:
    """`conversion-relay check-config FILE`: (accepted, what it printed)."""
    done = subprocess.run(
        [sys.executable, "-m", "service", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def default_transport() -> str:
    """The relay's default transport: `http.transport`'s default, aiohttp before the key exists."""
    from service.config import HttpConfig

    # Read from the config class, not assumed: the default is decided by the figures.
    return str(getattr(HttpConfig(), "transport", "aiohttp"))


def transport_support(work_dir: Path, bootstrap: str, transport: str) -> tuple[bool, str]:
    """Whether the relay's config accepts `http.transport: <transport>` (check-config's answer)."""
    probe = relay_config(
        bootstrap,
        "probe",
        single_vendor("http://127.0.0.1:9", 8),
        new_http_port(),
        "probe",
        transport=transport,
    )
    ok, message = check_config(write_config(work_dir / f"probe-transport-{transport}.yaml", probe))
    first = message.splitlines()[0] if message else ""
    return ok, first


def run_help() -> str:
    """`conversion-relay run --help`."""
    done = subprocess.run(
        [sys.executable, "-m", "service", "run", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    return done.stdout + done.stderr


class RelayProcess:
    """`python -m service run --config FILE` with the HTTP port the config names."""

    def __init__(
        self, name: str, config: dict[str, Any], work_dir: Path, extra_args: list[str] | None = None
    ) -> None:
        self.http_port = config["http"]["port"]
        self.config_path = write_config(work_dir / f"{name}.yaml", config)
        self.proc: Proc = python_module(
            name,
            "service",
            ["run", "--config", str(self.config_path), *(extra_args or [])],
            work_dir / f"{name}.log",
            env={"RELAY_LOG_LEVEL": "info"},
        )

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait for /readyz to answer 200."""
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if not self.proc.alive():
                    raise RuntimeError(f"relay exited:\n{self.proc.tail()}")
                try:
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"relay not ready within {timeout_s}s:\n{self.proc.tail()}")


def new_http_port() -> int:
    """A free port for the relay's /metrics and health endpoints."""
    return free_port()
