"""The harness's side of the sinks: start one (the strict sandbox, or nginx), read what it received.

Both count at the sink, so every contender is measured the same way: deliveries are requests the
sink accepted, and the rate is accepted requests over the time from the first to the last.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from bench.procs import Proc, python_module, wait_port
from bench.tls import (
    PLAIN_LOG_FORMAT,
    TLS_LOG_FORMAT,
    Handshakes,
    TlsFiles,
    nginx_tls_settings,
    parse_access_line,
)
from service.net import free_port

NGINX_CONF = Path(__file__).with_name("nginx.conf")
VENDOR_PREFIX = "/v/"  # nginx.conf's per-vendor path prefix of the five-vendor run


@dataclass
class SinkStats:
    """What a sink received so far."""

    accepted: int = 0
    refused: int = 0
    first_s: float = 0.0  # epoch seconds of the first accepted request
    last_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)


class Sink(Protocol):
    """A started sink."""

    name: str
    base_url: str
    proc: Proc

    async def stats(self) -> SinkStats:
        """Counts so far."""
        ...

    async def samples(self) -> dict[str, list[float]]:
        """Receipt times (and latencies, where recorded)."""
        ...

    def stop(self) -> None:
        """Stop it."""
        ...


class StatsClient:
    """Reads `GET /_bench/stats` and `/_bench/samples` from a process that serves them."""

    name: str
    base_url: str
    proc: Proc
    _session: aiohttp.ClientSession

    async def _get(self, path: str) -> Any:
        async with self._session.get(self.base_url + path) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def stats(self) -> SinkStats:
        """Counts so far."""
        data = await self._get("/_bench/stats")
        return SinkStats(
            data["accepted"],
            data["refused"],
            data["first_s"],
            data["last_s"],
            data["statuses"],
            data["refusals"],
        )

    async def samples(self) -> dict[str, list[float]]:
        """Receipt times and latencies."""
        result: dict[str, list[float]] = await self._get("/_bench/samples")
        return result

    def stop(self) -> None:
        """Stop the process."""
        self.proc.stop(timeout_s=5)


class SandboxSink(StatsClient):
    """`python -m bench.sink`: the relay's strict sandbox for one vendor, in its own process."""

    def __init__(
        self,
        name: str,
        log_dir: Path,
        session: aiohttp.ClientSession,
        *,
        latency_s: float = 0.0,
        rate_limit_per_s: float | None = None,
        config_path: Path | None = None,
        vendor: str | None = None,
        port: int | None = None,
        latency_samples: bool = False,
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._session = session
        args = ["--port", str(self.port), "--latency-s", str(latency_s)]
        if rate_limit_per_s is not None:
            args += ["--rate-limit-per-s", str(rate_limit_per_s)]
        if config_path is not None and vendor is not None:
            args += ["--config", str(config_path), "--vendor", vendor]
        if latency_samples:
            args.append("--latency-samples")
        self.proc = python_module(f"sink {name}", "bench.sink", args, log_dir / f"sink-{name}.log")

    def wait_ready(self) -> None:
        """Wait until it listens."""
        wait_port(self.port, 30, self.proc)


class ConsumeCeiling(StatsClient):
    """`python -m bench.ceilings.consume_latency`: the latency scenario's produce → consume
    ceiling. It has no sink: it counts the records it consumes and serves the same
    `/_bench/stats` and `/_bench/samples` as the sandbox sink, so the harness reads it alike."""

    def __init__(
        self, name: str, log_dir: Path, session: aiohttp.ClientSession, config: Path, group: str
    ) -> None:
        self.name = name
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._session = session
        args = ["--config", str(config), "--group", group, "--port", str(self.port)]
        self.proc = python_module(
            name, "bench.ceilings.consume_latency", args, log_dir / f"{name}.log"
        )

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until its consumer has joined the group and holds partitions."""
        wait_port(self.port, timeout_s, self.proc)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            if (await self._get("/_bench/stats")).get("ready"):
                return
            if not self.proc.alive():
                break
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout_s}s:\n{self.proc.tail()}")


def nginx_binary() -> str | None:
    """nginx's path, or None when it is not installed (bench/setup.sh installs nginx-light)."""
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def nginx_has_tls() -> bool:
    """Whether the installed nginx was built with its TLS module (Debian's nginx-light is)."""
    binary = nginx_binary()
    if binary is None:
        return False
    done = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False)
    return "--with-http_ssl_module" in done.stderr + done.stdout


def nginx_conf(template: str, values: dict[str, str]) -> str:
    """bench/nginx.conf with its placeholders filled in; comment lines are left as they are
    (they name the placeholders, and a multi-line value would break out of them)."""
    lines = []
    for line in template.splitlines(keepends=True):
        if not line.lstrip().startswith("#"):
            for key, value in values.items():
                line = line.replace(key, value)
        lines.append(line)
    return "".join(lines)


class NginxSink:
    """nginx answering every vendor protocol's path as that vendor would (bench/nginx.conf),
    counted by its access log: one line per answered request (time, status, connection, TLS).

    `tls`: listen with TLS (HTTPS base URL), resuming sessions when `resumption`.
    `keepalive=False`: close every connection after its answer (the handshake runs).
    """

    def __init__(
        self,
        log_dir: Path,
        tls: TlsFiles | None = None,
        *,
        resumption: bool = True,
        keepalive: bool = True,
    ) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (run bench/setup.sh)")
        self.name = "nginx"
        self.port = free_port()
        self.base_url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._prefix = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        conf = nginx_conf(
            NGINX_CONF.read_text(),
            {
                "__PREFIX__": str(self._prefix),
                "__PORT__": str(self.port),
                "__LOG_FORMAT__": TLS_LOG_FORMAT if tls else PLAIN_LOG_FORMAT,
                "__KEEPALIVE_TIMEOUT__": "120s" if keepalive else "0",
                "__SSL__": "ssl " if tls else "",
                "__TLS__": nginx_tls_settings(tls, resumption) if tls else "",
            },
        )
        conf_path = self._prefix / "nginx.conf"
        conf_path.write_text(conf)
        self._access = self._prefix / "access.log"
        self._offset = 0
        self._partial = b""
        self._stats = SinkStats()
        self._receipts: list[float] = []
        self.per_vendor: dict[str, int] = {}  # accepted requests by /v/<vendor> prefix
        self.handshakes = Handshakes()  # the connections that carried requests
        self.proc = Proc(
            "nginx", [binary, "-p", str(self._prefix), "-c", str(conf_path)], log_dir / "nginx.log"
        )

    def vendor_url(self, vendor: str) -> str:
        """A base URL whose requests nginx counts for `vendor` (the five-vendor run)."""
        return f"{self.base_url}{VENDOR_PREFIX}{vendor}"

    def _read_log(self) -> None:
        try:
            with self._access.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        stats = self._stats
        for raw in lines:
            line = parse_access_line(raw.decode("ascii", "replace"))
            self.handshakes.add(line)
            status, uri = line.status, line.uri
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            if not status.startswith("2"):
                if len(stats.refusals) < 5:
                    stats.refusals.append(f"{status} {uri[:200]}")
                continue
            at_s = line.at_s
            self._receipts.append(at_s)
            if not stats.first_s:
                stats.first_s = at_s
            stats.last_s = max(stats.last_s, at_s)
            stats.accepted += 1
            if uri.startswith(VENDOR_PREFIX):
                vendor = uri[len(VENDOR_PREFIX) :].partition("/")[0]
                self.per_vendor[vendor] = self.per_vendor.get(vendor, 0) + 1

    def wait_ready(self) -> None:
        """Wait until it listens."""
        wait_port(self.port, 15, self.proc)

    async def stats(self) -> SinkStats:
        """Counts so far (accepted: answered 2xx; the rest only in `statuses`)."""
        self._read_log()
        return self._stats

    async def samples(self) -> dict[str, list[float]]:
        """Receipt times (millisecond resolution)."""
        self._read_log()
        return {"receipts_s": list(self._receipts), "latencies_s": []}

    def stop(self) -> None:
        """Stop nginx and remove its prefix directory."""
        self.proc.stop(timeout_s=5)
        shutil.rmtree(self._prefix, ignore_errors=True)


async def total_stats(sinks: list[Sink]) -> SinkStats:
    """The sum over several sinks (first = earliest first, last = latest last)."""
    parts = await asyncio.gather(*(s.stats() for s in sinks))
    total = SinkStats()
    for part in parts:
        total.accepted += part.accepted
        total.refused += part.refused
        if part.first_s and (not total.first_s or part.first_s < total.first_s):
            total.first_s = part.first_s
        total.last_s = max(total.last_s, part.last_s)
        for code, count in part.statuses.items():
            total.statuses[code] = total.statuses.get(code, 0) + count
        total.refusals.extend(part.refusals)
    return total
