"""conversion-relay: relay conversion events from Kafka to vendor APIs.

Commands: run (the relay), dev (everything on this machine, with demo traffic), fault (break a
dev vendor), publish (send events to a topic), dlq inspect / dlq replay (dead letters),
check-config (validate a config), map (what a sample record of a topic becomes), vendor
pause / resume / list / reset (steer a vendor fleet-wide), status (each vendor group's offsets).
Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 some replayed letters failed again,
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from service import __version__
from service.cli import check, common, dev, dlq, publish, run, status, vendor
from service.cli import map as map_record

__all__ = ["build_parser", "main"]

# One module per command family, each adding its own commands; a command imports what it uses
# only when it runs, so `--version` or `fault` loads none of the relay.
FAMILIES = (run, dev, publish, dlq, check, map_record, vendor, status)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback of an error",
    )
    parser = common.Parser(
        prog="conversion-relay",
        description=__doc__,
        formatter_class=common.Formatter,
        parents=[shared],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, into: Any = sub) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = into.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=common.Formatter,
            parents=[shared],
        )
        return made

    for family in FAMILIES:
        family.add_commands(command)
    return parser


def _silence_stdout() -> None:
    """After a closed pipe (`| head`), send what is left to /dev/null so exit is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _fill_closed_std_fds() -> None:
    """Point a closed stdin/stdout/stderr at /dev/null, so no socket gets fd 0-2 (uvloop
    aborts when closing one) and writes go nowhere instead of failing."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
    if sys.stdout is None:  # Python found fd 1 closed at startup
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `conversion-relay` console script."""
    _fill_closed_std_fds()
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return common.EXIT_BROKEN_PIPE
    except (KeyboardInterrupt, Exception) as exc:
        return common.exit_code(exc, debug)
    return result
