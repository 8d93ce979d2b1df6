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

    config = load_config(_config_path(args))
    _setup_logging(args.log_level)
    try:
        relay = Relay(config, vendors=args.vendor or None)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    return _run_async(relay.run())


def cmd_dev(args: argparse.Namespace) -> int:
    """Embedded broker, sandboxes, relay and demo traffic with a live view."""
    from service.dev import run_dev

    _setup_logging("error")  # the live view is the output; logs would tear it
    return _run_async(run_dev(events_per_s=args.rate, http_port=args.port))


def _lines(path: str) -> Iterator[bytes]:
    with Path(path).open("rb") as handle:
        yield from handle


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish a JSON Lines file or generated sample events to a topic."""
    from service.demo import sample_lines
    from service.publish import publish

    if (args.file is None) == (args.sample is None):
        print("give either FILE.jsonl or --sample N", file=sys.stderr)
        return 2
    lines = sample_lines(args.sample) if args.sample is not None else _lines(args.file)
    sent = _run_async(publish(args.bootstrap, args.topic, lines))
    print(f"published {sent} records to {args.topic}")
    return 0


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
    run.add_argument("--vendor", action="append",
                     help="run only this vendor's pipeline (repeatable)")
    run.add_argument("--log-level", default=os.environ.get("RELAY_LOG_LEVEL", "info"))
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
