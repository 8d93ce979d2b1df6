"""A reproducible profile of the relay: `python -m bench.profile [--events N] [--vendors 1|5]
[--input canonical|json|avro]`.

Starts its own Tansu broker and the nginx sink on loopback, preloads N sample events, starts the
relay exactly as the benchmark does (`python -m service run`, one vendor or the five, concurrency
C) and,
from its first delivery to its last, samples it with py-spy (`record --format raw`, idle
stacks left out). Then it prints a flame summary in Markdown: the share of samples per module
group, and the top functions by self and by inclusive samples. `--output FILE` also writes it,
`--raw FILE` keeps py-spy's folded stacks (for flamegraph.pl or speedscope). `--input json` or
`avro` profiles the `inputs` scenario's mapped CRM JSON or Avro (the stand-in registry on
loopback) instead of canonical events (one vendor). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench import kafka, relay
from bench.procs import Proc, install_signal_handlers, stop_all
from bench.report import Noise, machine
from bench.sinks import NginxSink, nginx_binary
from bench.workload import expected_deliveries
from service.config import parse_config
from service.devtools.demo import sample_lines
from service.devtools.embedded import EmbeddedBroker

# Module groups, first match wins, matched against py-spy's short file names ("pkg/mod.py").
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("aiohttp", ("aiohttp/", "multidict/", "yarl/", "aiohappyeyeballs/")),
    ("pyreqwest", ("pyreqwest/",)),
    ("aiokafka", ("aiokafka/",)),
    ("service.delivery", ("service/delivery/",)),
    ("service.core", ("service/core/",)),
    ("service.vendors", ("service/vendors/",)),
    ("service (other)", ("service/",)),
    ("prometheus_client", ("prometheus_client/",)),
    ("asyncio/uvloop", ("asyncio/", "uvloop/")),
    ("logging", ("logging/",)),
    ("msgspec", ("msgspec/",)),
)
OTHER = "other"
# The event loop's entry frame (asyncio.run / uvloop.run both run the loop from here).
LOOP_RUN = ("Runner.run (asyncio/runners.py", "BaseEventLoop.run_forever (asyncio/")
POLL_S = 0.05


@dataclass
class Flame:
    """Folded stacks, counted: self and inclusive samples per function and per module group.

    The frames from the process's entry down to the event loop's run (runpy, the CLI, uvloop.run,
    `Runner.run`) hold every sample of the loop's thread; they are left out of the inclusive
    counts (except as a sample's innermost frame: the loop's own C work shows as `Runner.run`),
    or every group holding one would read 100 %.
    """

    stacks: list[tuple[list[str], int]] = field(default_factory=list)
    total: int = 0
    entry: set[str] = field(default_factory=set)
    self_fn: Counter[str] = field(default_factory=Counter)
    incl_fn: Counter[str] = field(default_factory=Counter)
    self_group: Counter[str] = field(default_factory=Counter)
    incl_group: Counter[str] = field(default_factory=Counter)

    def count(self) -> None:
        """Fill the counters from the stacks."""
        for frames, count in self.stacks:
            self.total += count
            self.self_fn[frames[-1]] += count
            self.self_group[group_of(frames[-1])] += count
            loop_at = next((i for i, f in enumerate(frames) if f.startswith(LOOP_RUN)), -1)
            self.entry.update(frames[: loop_at + 1])
            # A set: recursion must not count a function (or group) twice in one stack.
            inner = {*frames[loop_at + 1 :], frames[-1]}
            for function in inner:
                self.incl_fn[function] += count
            for group in {group_of(frame) for frame in inner}:
                self.incl_group[group] += count


def group_of(frame: str) -> str:
    """The module group of a frame `function (pkg/file.py:line)`."""
    _, _, where = frame.rpartition(" (")
    for name, prefixes in GROUPS:
        if where.startswith(prefixes):
            return name
    return OTHER


def parse_raw(text: str) -> Flame:
    """py-spy's raw format: one `frame;frame;...;frame COUNT` line per distinct stack."""
    flame = Flame()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            flame.stacks.append((stack.split(";"), int(count)))
    flame.count()
    return flame


def _pct(part: int, total: int) -> str:
    return f"{100 * part / total:.1f} %" if total else "–"


def summary(flame: Flame, top: int) -> list[str]:
    """The flame summary as Markdown lines."""
    total = flame.total
    lines = [
        "### Samples per module group",
        "",
        "| module group | self | inclusive |",
        "|---|---:|---:|",
    ]
    names = [name for name, _ in GROUPS] + [OTHER]
    for name in sorted(names, key=lambda n: -flame.self_group[n]):
        lines.append(
            f"| {name} | {_pct(flame.self_group[name], total)} | "
            f"{_pct(flame.incl_group[name], total)} |"
        )
    lines += [
        "",
        "- self: samples whose innermost frame is in the group; inclusive: samples with any "
        "frame in it (groups nest, so inclusive shares add up to more than 100 %); the frames "
        "from the process entry to the event loop's run are not counted as inclusive: "
        + (", ".join(f"`{f}`" for f in sorted(flame.entry)) or "none")
        + "; `Runner.run`'s self samples are the loop's own work in C (uvloop)",
        "",
    ]
    for title, counter in (("self", flame.self_fn), ("inclusive", flame.incl_fn)):
        lines += [
            f"### Top {top} functions by {title} samples",
            "",
            "| function | module group | self | inclusive |",
            "|---|---|---:|---:|",
        ]
        for function, _ in counter.most_common(top):
            cell = function.replace("|", "\\|")
            lines.append(
                f"| `{cell}` | {group_of(function)} | {_pct(flame.self_fn[function], total)} | "
                f"{_pct(flame.incl_fn[function], total)} |"
            )
        lines.append("")
    return lines


def py_spy_binary() -> str | None:
    """py-spy beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Run:
    """What the profiled run did, besides the samples."""

    deliveries: int
    window_s: float  # first to last delivery, nginx timestamps
    cpu_s: float | None  # the relay process's CPU (all threads) while py-spy sampled
    sampled_s: float  # wall time py-spy sampled


async def profile(args: argparse.Namespace, work: Path) -> tuple[Run, Flame] | str:
    """Broker, nginx, backlog, relay under py-spy; the run and its samples (or why not)."""
    spy = py_spy_binary()
    if spy is None:
        return "not available: py-spy is not installed (`make env` installs it)"
    if nginx_binary() is None:
        return "not available: nginx is not installed (bench/setup.sh installs it)"
    broker = EmbeddedBroker(log_path=work / "broker.log")
    broker.start()
    try:
        if args.transport is not None:
            ok, message = relay.transport_support(work, broker.bootstrap, args.transport)
            if not ok:
                return (
                    "not available: the relay's config does not accept "
                    f"`http.transport: {args.transport}` yet ({message})"
                )
        topic = "profile"
        await kafka.make_topic(broker.bootstrap, topic)
        print(f"preloading {args.events:,} events ...", file=sys.stderr, flush=True)
        extra: dict[str, object] = {}
        registry = None
        if args.input == "canonical":
            await kafka.preload(broker.bootstrap, topic, sample_lines(args.events))
        else:
            from bench import inputs
            from service.devtools.registry import RegistryServer

            lines = list(sample_lines(args.events))
            if args.input == "avro":
                registry = RegistryServer()
                await registry.start()
                schema_id = registry.register(inputs.subject(topic), inputs.CRM_SCHEMA)
                pairs = inputs.avro_values(lines, schema_id)
            else:
                pairs = inputs.json_values(lines)
            await inputs.preload_pairs(broker.bootstrap, topic, pairs)
            extra = inputs.input_extra(
                args.input, topic, registry.url if registry is not None else None
            )
        sink = NginxSink(work)
        sink.wait_ready()
        vendors = (
            relay.single_vendor(sink.base_url, args.concurrency)
            if args.vendors == 1
            else {
                name: relay.vendor_section(name, sink.vendor_url(name), args.concurrency)
                for name in relay.FIVE_VENDORS
            }
        )
        config = relay.relay_config(
            broker.bootstrap,
            topic,
            vendors,
            relay.new_http_port(),
            "profile",
            args.transport,
            **extra,
        )
        parsed = parse_config(config)
        routed = expected_deliveries(sample_lines(args.events), dict(parsed.vendors))
        args.expected = sum(routed.values())
        run = relay.RelayProcess("relay", config, work)
        try:
            return await _sample(args, spy, run.proc, sink, work)
        finally:
            run.proc.stop(timeout_s=30)
            sink.stop()
            if registry is not None:
                await registry.stop()
    finally:
        stop_all()
        broker.stop()


async def _sample(
    args: argparse.Namespace, spy: str, relay_proc: Proc, sink: NginxSink, work: Path
) -> tuple[Run, Flame] | str:
    """Attach py-spy at the first delivery, detach at the last; read its folded stacks."""
    started = time.monotonic()
    while (await sink.stats()).accepted == 0:
        if not relay_proc.alive():
            return f"the relay exited (log: {relay_proc.log_path})"
        if time.monotonic() - started > 60:
            return f"no delivery within 60 s (log: {relay_proc.log_path})"
        await asyncio.sleep(POLL_S)
    raw = args.raw or work / "profile.raw"
    command = [spy, "record", "--pid", str(relay_proc.pid), "--format", "raw"]
    command += ["--rate", str(args.rate), "--function", "--output", str(raw)]
    if args.nonblocking:
        command.append("--nonblocking")
    if args.native:
        command.append("--native")
    before = relay_proc.usage()
    sampling_from = time.monotonic()
    spy_proc = Proc("py-spy", command, work / "py-spy.log")
    deadline = sampling_from + args.max_seconds
    expected = args.expected
    while (await sink.stats()).accepted < expected and time.monotonic() < deadline:
        if not relay_proc.alive() or not spy_proc.alive():
            break
        await asyncio.sleep(POLL_S)
    after = relay_proc.usage()
    sampled_s = time.monotonic() - sampling_from
    spy_proc.stop(timeout_s=30, sig=signal.SIGINT)  # SIGINT: py-spy writes its file and exits
    if not raw.exists():
        return f"py-spy wrote nothing: {spy_proc.tail(1000)!r}"
    stats = await sink.stats()
    cpu_s = after.cpu_s - before.cpu_s if before is not None and after is not None else None
    flame = parse_raw(raw.read_text(errors="replace"))
    return Run(stats.accepted, stats.last_s - stats.first_s, cpu_s, sampled_s), flame


def report(args: argparse.Namespace, noise: Noise, result: tuple[Run, Flame] | str) -> str:
    """The whole Markdown output."""
    transport = args.transport or f"{relay.default_transport()} (the relay's default)"
    lines = [
        f"## Profile: conversion-relay, {args.vendors} vendor{'s' if args.vendors > 1 else ''}, "
        f"{transport} transport, nginx sink",
        "",
        *machine(noise),
        f"- command: `python -m bench.profile {' '.join(sys.argv[1:])}`",
        "",
    ]
    if isinstance(result, str):
        return "\n".join([*lines, result, ""])
    run, flame = result
    rate = (run.deliveries - 1) / run.window_s if run.window_s > 0 else None
    sampled_cpu_s = flame.total / args.rate
    lines += [
        f"- {run.deliveries:,} deliveries of {args.events:,} events, concurrency "
        f"{args.concurrency}"
        + (f", {rate:,.0f} deliveries/s while sampled (py-spy slows it)" if rate else ""),
        f"- py-spy {args.rate}/s for {run.sampled_s:.1f} s, "
        f"{'non-blocking' if args.nonblocking else 'blocking'}, idle stacks left out: "
        f"{flame.total:,} samples ≈ {sampled_cpu_s:.1f} s of busy Python threads",
    ]
    if run.cpu_s is not None:
        lines.append(
            f"- the relay process's CPU over the same time: {run.cpu_s:.1f} s (all threads; "
            "what the samples miss is time in threads with no Python frames, e.g. a Rust "
            "transport's own runtime, and sampling error)"
        )
    lines += ["", *summary(flame, args.top)]
    return "\n".join(lines)


def main() -> None:
    """Parse the arguments, profile, print (and write) the Markdown summary."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=50_000, help="backlog (default 50,000)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--vendors",
        type=int,
        choices=(1, 5),
        default=1,
        help="1 (sustain_impact) or the five vendors of bench/relay.py, one nginx location each",
    )
    parser.add_argument(
        "--transport",
        choices=("h1", "pyreqwest", "aiohttp"),
        help="the relay's http.transport (default: the relay's own default)",
    )
    parser.add_argument(
        "--input",
        choices=("canonical", "json", "avro"),
        default="canonical",
        help="what the topic holds: canonical events (default), the inputs scenario's mapped "
        "CRM JSON, or its Avro through the stand-in registry (1 vendor only)",
    )
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--nonblocking", action="store_true", help="py-spy does not pause the relay to sample"
    )
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--top", type=int, default=25, help="functions per table (default 25)")
    parser.add_argument(
        "--max-seconds", type=float, default=300.0, help="stop sampling after this long"
    )
    parser.add_argument("--raw", type=Path, help="keep py-spy's folded stacks in this file")
    parser.add_argument("--output", type=Path, help="also write the Markdown here")
    args = parser.parse_args()
    install_signal_handlers()
    noise = Noise.start()
    work = Path(tempfile.mkdtemp(prefix="conversion-relay-profile-"))
    print(f"logs and configs: {work}", file=sys.stderr, flush=True)
    try:
        result = asyncio.run(profile(args, work))
    except KeyboardInterrupt:
        print("\ninterrupted: stopped every process it started", file=sys.stderr)
        sys.exit(130)
    finally:
        stop_all()
    text = report(args, noise, result)
    print(text, flush=True)
    if args.output is not None:
        args.output.write_text(text)
        print(f"written to {args.output}", file=sys.stderr, flush=True)
    if isinstance(result, str):
        sys.exit(2)


if __name__ == "__main__":
    main()
