"""`check-config`: validate a config file and summarise it."""

from __future__ import annotations

import argparse
import sys

from service.cli import common
from service.errors import ConfigError


def cmd_check_config(args: argparse.Namespace) -> int:
    """Print `ok` and a summary, or every problem with its path (exit 1); never a secret."""
    from service.config import load_config, summary
    from service.core.redact import redact

    try:
        config = load_config(args.file or common.config_path(args))
    except ConfigError as exc:
        # Problems are made without values already; redacting again costs nothing here.
        for problem in exc.problems:
            print(redact(problem), file=sys.stderr)
        return common.EXIT_FAILURE
    print("ok")
    print(summary(config))
    return common.EXIT_OK


def add_commands(command: common.AddCommand) -> None:
    """Add `check-config`."""
    check = command("check-config", "validate a config file and summarise it")
    check.add_argument("file", nargs="?", help="the YAML config file (default: $RELAY_CONFIG)")
    check.set_defaults(func=cmd_check_config)
