"""The command line: run | dev | publish | check-config."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from service.config import load_config, summary
from service.errors import ConfigError


def _config_path(args: argparse.Namespace) -> str:
    path = args.config or os.environ.get("RELAY_CONFIG")
    if not path:
        raise ConfigError(["--config: give a config file (or set RELAY_CONFIG)"])
    return str(path)


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (it is, except on Windows)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def _run_async_value(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion and return its value."""
    return asyncio.run(coro)


def _setup_logging(level: str) -> None:
    try:
        from service.logs import configure_logging
    except ImportError:  # pragma: no cover - until structured logs exist
        logging.basicConfig(level=level.upper())
        return
    configure_logging(level)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the relay until SIGTERM/SIGINT, then drain and exit 0."""
    from service.app import Relay

    path = _config_path(args)
    config = load_config(path)
    if args.http_port is not None or args.http_host is not None:
        http = msgspec.structs.replace(
            config.http,
            port=config.http.port if args.http_port is None else args.http_port,
            host=config.http.host if args.http_host is None else args.http_host,
        )
        config = msgspec.structs.replace(config, http=http)
    _setup_logging(args.log_level)
    unknown = sorted(set(args.vendor or ()) - set(config.enabled_vendors()))
    if unknown:
        print(f"--vendor {', '.join(unknown)}: not an enabled vendor", file=sys.stderr)
        return 2
    workers = config.workers if args.workers is None else args.workers
    if workers > 1:
        from service.workers import Supervisor

        return _run_async(Supervisor(config, path, workers, args.vendor).run())
    return _run_async(Relay(config, vendors=args.vendor or None).run())


def cmd_dev(args: argparse.Namespace) -> int:
    """Embedded broker, sandboxes, relay and demo traffic with a live view."""
    from service.devtools.dev import run_dev

    _setup_logging("error")  # the live view is the output; logs would tear it
    return _run_async(run_dev(events_per_s=args.rate, http_port=args.port))


def _lines(path: str) -> Iterator[bytes]:
    with Path(path).open("rb") as handle:
        yield from handle


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish a JSON Lines file or generated sample events to a topic."""
    from service.devtools.demo import sample_lines
    from service.devtools.publish import publish

    if (args.file is None) == (args.sample is None):
        print("give either FILE.jsonl or --sample N", file=sys.stderr)
        return 2
    lines = sample_lines(args.sample) if args.sample is not None else _lines(args.file)
    sent = _run_async(publish(args.bootstrap, args.topic, lines))
    print(f"published {sent} records to {args.topic}")
    return 0


def _letter_filter(args: argparse.Namespace) -> Any:
    from service.delivery.replay import LetterFilter, parse_time

    return LetterFilter(
        vendor=args.vendor,
        reason=args.reason,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
    )


def cmd_dlq_inspect(args: argparse.Namespace) -> int:
    """List or aggregate dead letters as a table or JSON."""
    import orjson
    from rich.console import Console
    from rich.table import Table

    from service.delivery.replay import aggregate, read_letters

    config = load_config(_config_path(args))
    letters = _letter_filter(args)
    found = [
        i
        for i in _run_async_value(read_letters(config.kafka, config.dlq.topic))
        if letters.matches(i)
    ]
    if args.list:
        rows = [
            {
                "vendor": i.vendor,
                "reason": i.reason,
                "status": i.http_status,
                "attempts": i.attempts,
                "failed_at": i.failed_at.isoformat() if i.failed_at else None,
                "source": i.source,
                "error": i.error,
                "dlq": f"{i.dlq_partition}:{i.dlq_offset}",
            }
            for i in found
        ]
    else:
        rows = aggregate(found, args.by.split(","))
    if args.json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    table = Table(title=f"{len(found)} dead letters in {config.dlq.topic}")
    for column in rows[0] if rows else ["count"]:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    Console().print(table)
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    """Re-deliver matching dead letters to one vendor, with progress and a summary."""
    from rich.console import Console
    from rich.progress import Progress

    from service.app import Replay
    from service.delivery.replay import read_letters

    config = load_config(_config_path(args))
    _setup_logging("error")
    letters = _letter_filter(args)
    console = Console()
    matching = [
        i
        for i in _run_async_value(read_letters(config.kafka, config.dlq.topic))
        if letters.matches(i)
    ]
    console.print(f"{len(matching)} dead letters match for vendor {args.vendor}")
    if args.dry_run:
        for info in matching[:50]:
            console.print(
                f"  {info.source} {info.reason} {info.http_status or '-'} "
                f"attempts={info.attempts} {info.error[:80]}"
            )
        return 0
    replay = Replay(config, args.vendor, letters)

    async def go() -> dict[str, int]:
        with Progress(console=console) as progress:
            bar = progress.add_task("replaying", total=len(matching) or None)
            task = asyncio.create_task(replay.run())
            while not task.done():
                counts = replay.counts()
                progress.update(bar, completed=sum(v for k, v in counts.items() if k != "filtered"))
                await asyncio.sleep(0.2)
            return task.result()

    counts = _run_async_value(go())
    console.print("summary: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0 if counts["rejected"] + counts["dead_lettered"] == 0 else 3


def cmd_check_config(args: argparse.Namespace) -> int:
    """Print `ok` and a summary, or every problem with its path (exit 1)."""
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print("ok")
    print(summary(config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = argparse.ArgumentParser(prog="conversion-relay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the relay")
    run.add_argument("--config", help="YAML config file (default: $RELAY_CONFIG)")
    run.add_argument(
        "--vendor", action="append", help="run only this vendor's pipeline (repeatable)"
    )
    run.add_argument("--log-level", default=os.environ.get("RELAY_LOG_LEVEL", "info"))
    run.add_argument(
        "--workers",
        type=int,
        help="relay processes in this container (default: the config's `workers`, 1)",
    )
    run.add_argument("--http-port", type=int, help="override http.port")
    run.add_argument("--http-host", help="override http.host")
    run.set_defaults(func=cmd_run)

    dev = sub.add_parser("dev", help="embedded broker, sandboxes, relay and demo traffic")
    dev.add_argument("--rate", type=float, default=20.0, help="demo events per second")
    dev.add_argument("--port", type=int, default=8080, help="metrics/health port (0 = any)")
    dev.set_defaults(func=cmd_dev)

    pub = sub.add_parser("publish", help="publish events to a topic")
    pub.add_argument("file", nargs="?", help="JSON Lines file, one event per line")
    pub.add_argument("--sample", type=int, help="publish N generated sample events instead")
    pub.add_argument("--bootstrap", required=True, help="HOST:PORT of a broker")
    pub.add_argument("--topic", required=True)
    pub.set_defaults(func=cmd_publish)

    dlq = sub.add_parser("dlq", help="inspect or replay dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, func in (("inspect", cmd_dlq_inspect), ("replay", cmd_dlq_replay)):
        cmd = dlq_sub.add_parser(name)
        cmd.add_argument("--config", help="YAML config file (default: $RELAY_CONFIG)")
        cmd.add_argument("--vendor", required=name == "replay")
        cmd.add_argument("--reason", help="invalid_event | rejected | retries_exhausted | expired")
        cmd.add_argument("--since", help="ISO time or a duration ago (30m, 2h, 7d)")
        cmd.add_argument("--until", help="ISO time or a duration ago")
        cmd.set_defaults(func=func)
    dlq_sub.choices["inspect"].add_argument(
        "--by",
        default="vendor,reason,status",
        help="aggregate by these comma-separated fields: vendor, reason, status, hour, day",
    )
    dlq_sub.choices["inspect"].add_argument(
        "--list", action="store_true", help="one row per letter instead of counts"
    )
    dlq_sub.choices["inspect"].add_argument("--json", action="store_true")
    dlq_sub.choices["replay"].add_argument(
        "--dry-run", action="store_true", help="show what would be replayed, send nothing"
    )

    check = sub.add_parser("check-config", help="validate a config file and summarise it")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `conversion-relay` console script."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    return result
