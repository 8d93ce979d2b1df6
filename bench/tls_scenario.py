"""The `tls` scenario: every transport over plain HTTP and over HTTPS, back to back, and what a
new connection costs (a TLS handshake, full or resumed, against none).

For each of the relay's transports (the default first, then the others) it runs the transport's
client ceiling and the 1-vendor relay on that transport against nginx twice, over plain HTTP and
over HTTPS (a fresh nginx each time, with TLS: the run's certificate from bench/tls.py, session
cache and tickets on), and reports them side by side: deliveries/s, wall and CPU µs per delivery,
nginx's CPU per delivery, and the TLS connections nginx saw (resumed or not). Then, per transport
as the relay builds it (bench/ceilings/handshake.py), one request per new connection, sequential,
against nginx over plain HTTP, over HTTPS with resumption refused (every handshake full) and over
HTTPS with resumption offered.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench import relay
from bench.procs import Proc, python_module, usage
from bench.report import Row, Section, num
from bench.sinks import NginxSink, Sink, nginx_has_tls
from bench.tls import CERTIFICATE_KIND, Handshakes, TlsFiles, make_certificates, target_verdict
from bench.tls import tls_cost as compare

if TYPE_CHECKING:
    from bench.run import Bench, Measured

TRANSPORTS = ("h1", "pyreqwest", "aiohttp")
# The --only names of each transport's client ceiling (bench/run.py CLIENTS).
CLIENT_KEYS = {"aiohttp": "client", "pyreqwest": "client_pyreqwest", "h1": "client_h1"}
SINK_CPU = "sink (nginx)"  # Bench.others_pids' name for nginx's process tree
HANDSHAKE_MODES = ("plain", "full", "resumed")


def relay_key(transport: str, default: str) -> str:
    """The --only name of the relay on `transport`: relay1 for the default, relay1_<name>."""
    return "relay1" if transport == default else f"relay1_{transport}"


@dataclass
class Side:
    """One contender against one sink (plain or HTTPS)."""

    row: Row
    measured: Measured | None = None
    handshakes: Handshakes = field(default_factory=Handshakes)

    @property
    def cpu_us(self) -> float | None:
        """The contender's CPU µs per delivery."""
        return self.row.cpu_s_per_1k * 1000 if self.row.cpu_s_per_1k is not None else None

    @property
    def sink_cpu_us(self) -> float | None:
        """nginx's CPU µs per delivery over the contender's CPU window."""
        if self.measured is None or not self.measured.stats.accepted:
            return None
        cpu_s = self.measured.others_cpu_s.get(SINK_CPU)
        return None if cpu_s is None else cpu_s / self.measured.stats.accepted * 1e6


@dataclass
class Pair:
    """A contender over plain HTTP and over HTTPS."""

    name: str
    transport: str
    plain: Side | None = None
    tls: Side | None = None
    missing: str = ""  # why it did not run


async def _side(
    bench: Bench,
    name: str,
    kind: str,
    start: Callable[[Sink], Proc],
    tls: TlsFiles | None,
    expected: int,
) -> Side:
    """Run one contender against a fresh nginx (HTTPS when `tls`)."""
    sink = NginxSink(bench.work, tls)
    sink.wait_ready()
    label = f"{name} over {'HTTPS' if tls else 'plain HTTP'}"
    row, measured = await bench.run_http(label, kind, start, sink, expected, others=True)
    return Side(row, measured, sink.handshakes)


async def _pair(
    bench: Bench,
    name: str,
    kind: str,
    transport: str,
    start_for: Callable[[str | None], Callable[[Sink], Proc]],
    files: TlsFiles,
    expected: int,
) -> Pair:
    """Plain, then HTTPS, back to back; `start_for(ca_bundle)` starts the contender."""
    plain = await _side(bench, name, kind, start_for(None), None, expected)
    tls = await _side(bench, name, kind, start_for(str(files.ca_pem)), files, expected)
    return Pair(name, transport, plain, tls)


def _arrow(plain: float | None, tls: float | None, digits: int = 0) -> str:
    """Two figures as `plain → HTTPS`."""
    return f"{num(plain, digits)} → {num(tls, digits)}"


def handshake_share_us(
    tls: Side, costs: tuple[float | None, float | None] | None
) -> tuple[float, str] | None:
    """What the HTTPS run's own handshakes cost per delivery: its full and resumed connections
    (nginx's log) times what a full and a resumed handshake add to a new connection's CPU
    (`costs`, from the handshake table), over its deliveries; with how it was reckoned."""
    deliveries = tls.row.deliveries
    if costs is None or not deliveries:
        return None
    full_us, resumed_us = costs
    parts, total_us = [], 0.0
    for count, cost_us, kind in (
        (tls.handshakes.full, full_us, "full"),
        (tls.handshakes.resumed, resumed_us, "resumed"),
    ):
        if not count:
            continue
        if cost_us is None:
            return None
        total_us += count * cost_us
        parts.append(f"{count:,} {kind} × {cost_us:,.0f} µs")
    if not parts:
        return None
    return total_us / deliveries, f"{' + '.join(parts)} ÷ {deliveries:,} deliveries"


def pairs_section(
    title: str,
    pairs: list[Pair],
    default: str,
    notes: list[str],
    handshake_costs: dict[str, tuple[float | None, float | None]] | None = None,
) -> Section:
    """The side-by-side table of every contender over plain HTTP and HTTPS.

    `handshake_costs`: per transport, the CPU µs a full and a resumed handshake add to a new
    connection (the handshake table), to say how much of a pair's difference its own
    connections' handshakes are.
    """
    columns = [
        "contender",
        "plain deliveries/s",
        "HTTPS deliveries/s",
        "HTTPS / plain",
        "µs / delivery, plain → HTTPS",
        "TLS adds µs / delivery",
        "CPU µs / delivery, plain → HTTPS",
        "TLS adds CPU µs / delivery",
        "nginx CPU µs / delivery, plain → HTTPS",
        "HTTPS connections (resumed)",
        "notes",
    ]
    section = Section(title, columns, notes=list(notes))
    for pair in pairs:
        if pair.missing or pair.plain is None or pair.tls is None:
            section.rows.append([pair.name, *["–"] * (len(columns) - 2), pair.missing])
            continue
        plain, tls = pair.plain, pair.tls
        cost = compare(
            plain.row.deliveries_per_s, tls.row.deliveries_per_s, plain.cpu_us, tls.cpu_us
        )
        row_notes = [f"plain: {plain.row.note}" if plain.row.note else ""]
        row_notes.append(f"HTTPS: {tls.row.note}" if tls.row.note else "")
        section.rows.append(
            [
                pair.name,
                num(plain.row.deliveries_per_s),
                num(tls.row.deliveries_per_s),
                f"{cost.ratio:.2f}×" if cost else "–",
                _arrow(cost.plain_us, cost.tls_us, 1) if cost else "–",
                f"{cost.added_us:+.1f}" if cost else "–",
                _arrow(plain.cpu_us, tls.cpu_us),
                f"{cost.added_cpu_us:+.0f}" if cost and cost.added_cpu_us is not None else "–",
                _arrow(plain.sink_cpu_us, tls.sink_cpu_us),
                tls.handshakes.describe(),
                "; ".join(filter(None, row_notes)),
            ]
        )
        if pair.name.startswith("conversion-relay") and pair.transport == default:
            section.notes.insert(
                0,
                f"**target (issue 22), the relay on its default transport {default}**: "
                + target_verdict(cost)
                + f"; its CPU per delivery {_arrow(plain.cpu_us, tls.cpu_us)} µs",
            )
        summary = [tls.handshakes.tls_summary()] if tls.handshakes.alpn else []
        share = handshake_share_us(tls, (handshake_costs or {}).get(pair.transport))
        if share is not None:
            summary.append(
                f"its connections' handshakes ≈ {share[0]:.1f} CPU µs per delivery of the HTTPS "
                f"run ({share[1]}; the costs from the handshake table)"
            )
        if summary:
            section.notes.append(f"{pair.name}: " + "; ".join(summary))
    return section


@dataclass
class Handshake:
    """One transport's run of one request per new connection against one kind of sink."""

    wall_us: float | None = None
    cpu_us: float | None = None
    sink_cpu_us: float | None = None
    handshakes: Handshakes = field(default_factory=Handshakes)
    error: str = ""


async def _handshake_run(
    bench: Bench, transport: str, mode: str, files: TlsFiles, requests: int
) -> Handshake:
    """One request per connection, `requests` of them (after 5 warm-up ones), one at a time."""
    tls = None if mode == "plain" else files
    sink = NginxSink(bench.work, tls, resumption=mode == "resumed", keepalive=False)
    warmup = 5
    try:
        sink.wait_ready()
        config = relay.relay_config(
            bench.broker.bootstrap,
            "unused",
            relay.single_vendor(sink.base_url, bench.s.concurrency),
            relay.new_http_port(),
            "handshake",
            transport,
            str(files.ca_pem) if tls else None,
        )
        name = bench.name(f"handshake-{transport}-{mode}")
        path = relay.write_config(bench.work / f"{name}.yaml", config)
        before = usage(sink.proc.pid, tree=True)
        proc = python_module(
            name,
            "bench.ceilings.handshake",
            ["--config", str(path), "--requests", str(requests), "--warmup", str(warmup)],
            bench.work / f"{name}.log",
        )
        try:
            proc.popen.wait(max(120.0, requests * 0.05))
        finally:
            proc.stop()
        after = usage(sink.proc.pid, tree=True)
        await sink.stats()  # reads the access log: the connections and their handshakes
    finally:
        sink.stop()
    result = Handshake(handshakes=sink.handshakes)
    for line in proc.tail(100_000).splitlines():
        if line.startswith("RESULT "):
            data = json.loads(line[7:])
            result.wall_us, result.cpu_us = data["wall_us"], data["cpu_us"]
            if data["failures"]:
                result.error = f"{data['failures']} answers not 200"
            if before is not None and after is not None and sink.handshakes.connections:
                result.sink_cpu_us = (after.cpu_s - before.cpu_s) / sink.handshakes.connections
                result.sink_cpu_us *= 1e6
            return result
    result.error = f"failed (log: {proc.log_path}): {proc.tail(300)!r}"
    return result


def _minus(value: float | None, base: float | None) -> float | None:
    """value − base, or None when either is missing."""
    return None if value is None or base is None else value - base


def _added(value: float | None, base: float | None) -> str:
    """value − base, signed, or an en dash."""
    return "–" if value is None or base is None else f"{value - base:+,.0f}"


def handshake_section(
    title: str, runs: dict[str, dict[str, Handshake]], requests: int, notes: list[str]
) -> Section:
    """Per transport: a new connection's cost over plain HTTP, a full and a resumed handshake."""
    columns = [
        "transport (built as the relay builds it)",
        "new connection + request, plain HTTP µs",
        "HTTPS, full handshake µs",
        "HTTPS, resumption offered µs",
        "full handshake adds µs",
        "resumed adds µs",
        "client CPU µs / connection: plain, full, resumed",
        "nginx CPU µs / connection: plain, full, resumed",
        "resumed / connections (nginx log), resumption offered",
        "notes",
    ]
    section = Section(title, columns, notes=list(notes))
    for transport, modes in runs.items():
        plain, full, resumed = (modes.get(m, Handshake()) for m in HANDSHAKE_MODES)
        errors = [f"{m}: {run.error}" for m, run in modes.items() if run.error]
        if resumed.handshakes.connections and not resumed.handshakes.resumed:
            errors.append("no session resumed: the client offered none")
        section.rows.append(
            [
                transport,
                num(plain.wall_us),
                num(full.wall_us),
                num(resumed.wall_us),
                _added(full.wall_us, plain.wall_us),
                _added(resumed.wall_us, plain.wall_us),
                ", ".join(num(m.cpu_us) for m in (plain, full, resumed)),
                ", ".join(num(m.sink_cpu_us) for m in (plain, full, resumed)),
                f"{resumed.handshakes.resumed:,} / {resumed.handshakes.connections:,}",
                "; ".join(errors),
            ]
        )
    section.notes.insert(
        0,
        f"{requests:,} requests one after another (after 5 warm-up ones), each on a new "
        "connection (nginx `keepalive_timeout 0` closes it after its answer); wall µs per "
        "request including the connect, the handshake and the exchange; client CPU from "
        "getrusage (every thread); nginx CPU over the run per connection it logged",
    )
    return section


async def tls_scenario(bench: Bench, topic: str, lines: list[bytes]) -> None:
    """The scenario: the plain vs HTTPS pairs, then the handshake costs."""
    s = bench.s
    n = len(lines)
    title = (
        f"TLS: plain HTTP vs HTTPS, {n:,}-event backlog, nginx sink 0 ms, "
        f"concurrency {s.concurrency}"
    )
    hs_title = "TLS: a new connection's cost, one request per connection"
    print(f"\n== {title}", flush=True)
    files = make_certificates(bench.work / "tls")
    missing = ""
    if files is None:
        missing = "not available: trustme is not installed (the dev extra; `make env`)"
    elif not nginx_has_tls():
        missing = "not available: this nginx has no TLS module (`nginx -V`: no http_ssl_module)"
    if files is None or missing:
        bench.report.add(Section(title, ["result"], [[missing]]))
        return
    default = relay.default_transport()
    order = [default, *(t for t in TRANSPORTS if t != default)]

    def selected(key: str) -> bool:
        return key in s.only if s.only_given else True

    pairs: list[Pair] = []
    for transport in order:

        def client(ca: str | None, library: str = transport) -> Callable[[Sink], Proc]:
            return bench.client(n, library, ca)

        if selected(CLIENT_KEYS[transport]):
            pairs.append(
                await _pair(
                    bench,
                    f"ceiling: {transport} client (concurrency {s.concurrency}, no Kafka)",
                    "ceiling",
                    transport,
                    client,
                    files,
                    n,
                )
            )
        if not selected(relay_key(transport, default)):
            continue
        name = f"conversion-relay, 1 vendor, {transport} transport"
        if transport == default:
            name += " (default)"
        else:
            ok, message = bench.transport(transport)
            if not ok:
                pairs.append(Pair(name, transport, missing=f"not available ({message})"))
                continue

        # The default runs as `relay1` does (no `http.transport` in its config).
        def relay1(
            ca: str | None, chosen: str | None = None if transport == default else transport
        ) -> Callable[[Sink], Proc]:
            return bench.relay1(topic, transport=chosen, ca_bundle=ca)

        pairs.append(await _pair(bench, name, "relay", transport, relay1, files, n))
    notes = [
        "each contender over plain HTTP, then over HTTPS, back to back, each against a fresh "
        f"nginx; stops at {s.max_s:.0f}s after its first delivery (rates are over the part "
        "it did)",
        f"HTTPS: TLS 1.2 and 1.3 offered, session cache and tickets on; {CERTIFICATE_KIND}, "
        "trusted through `http.ca_bundle` (the relay) or `--ca-bundle` (the client ceilings)",
        "µs / delivery is wall time per delivery (1 / deliveries/s, at the run's concurrency); "
        "CPU µs / delivery is the contender's (all threads), nginx's beside it",
    ]
    transports = [t for t in order if any(p.transport == t and not p.missing for p in pairs)]
    print(f"\n== {hs_title}", flush=True)
    runs: dict[str, dict[str, Handshake]] = {}
    for transport in transports:
        runs[transport] = {}
        for mode in HANDSHAKE_MODES:
            print(f"  {transport}, {mode} ...", flush=True)
            runs[transport][mode] = await _handshake_run(
                bench, transport, mode, files, s.tls_handshakes
            )
            done = runs[transport][mode]
            print(
                f"    {num(done.wall_us)} µs, {num(done.cpu_us)} CPU µs per connection, "
                f"{done.handshakes.describe()} connections {done.error}",
                flush=True,
            )
    costs: dict[str, tuple[float | None, float | None]] = {
        transport: (
            _minus(modes["full"].cpu_us, modes["plain"].cpu_us),
            _minus(modes["resumed"].cpu_us, modes["plain"].cpu_us),
        )
        for transport, modes in runs.items()
    }
    bench.report.add(pairs_section(title, pairs, default, notes, costs))
    if runs:
        bench.report.add(
            handshake_section(
                hs_title,
                runs,
                s.tls_handshakes,
                [
                    "full: nginx with `ssl_session_cache off` and `ssl_session_tickets off` "
                    "(every handshake full); resumption offered: session cache and tickets on",
                    f"{CERTIFICATE_KIND}; the transport is `make_transport` over a generated "
                    "relay config (`http.transport`, `http.ca_bundle`)",
                ],
            )
        )
