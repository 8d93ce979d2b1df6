"""`check-config`: validate a config file and summarise it."""

from __future__ import annotations

import argparse
import re
import sys

from service.cli import common
from service.errors import ConfigError

# `kafka.sasl_password: environment variable X is not set`: the path names a field, the rest is
# the loader's words. Redacting the whole line read the path as a key and the first word as its
# secret value (`kafka.sasl_password: *** variable ...`); the message alone is redacted instead.
_PATH_PREFIX = re.compile(r"^(?P<path>[\w.\[\]-]+|\(top level\)): ")


def shown_problem(problem: str) -> str:
    """A config problem as printed: its path kept, its message redacted (values, never words)."""
    from service.core.redact import redact

    found = _PATH_PREFIX.match(problem)
    if found is None:
        return redact(problem)
    return found.group(0) + redact(problem[found.end() :])


def cmd_check_config(args: argparse.Namespace) -> int:
    """Print `ok` and a summary, or every problem with its path (exit 1); never a secret."""
    from service.config import load_config, summary

    try:
        config = load_config(args.file or common.config_path(args))
    except ConfigError as exc:
        # Problems are made without values already; redacting again costs nothing here.
        for problem in exc.problems:
            print(shown_problem(problem), file=sys.stderr)
        return common.EXIT_FAILURE
    print("ok")
    print(summary(config))
    return common.EXIT_OK


def add_commands(command: common.AddCommand) -> None:
    """Add `check-config`."""
    check = command("check-config", "validate a config file and summarise it")
    check.add_argument("file", nargs="?", help="the YAML config file (default: $RELAY_CONFIG)")
    check.set_defaults(func=cmd_check_config)
