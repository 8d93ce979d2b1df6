"""The command line: run | dev | publish | sandbox | check-config."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from service.config import load_config, summary
from service.errors import ConfigError


def _config_path(args: argparse.Namespace) -> str:
    path = args.config or os.environ.get("RELAY_CONFIG")
    if not path:
        raise ConfigError(["--config: give a config file (or set RELAY_CONFIG)"])
    return str(path)


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
