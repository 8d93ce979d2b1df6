"""What every command family shares: the parser classes, config loading, the event loop, Kafka
probing, exit codes and the one error-to-exit-code helper. Imports here stay light: a command's
heavy modules are imported by that command only."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from service.errors import ConfigError, KafkaUnavailable, RelayError, UsageError

if TYPE_CHECKING:
    from service.config import Config, KafkaConfig

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_LETTERS_FAILED = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE
KAFKA_TIMEOUT_S = 10.0
CONFIG_HELP = "YAML config file (default: $RELAY_CONFIG)"

# A function that adds one command (its name and help) to a sub-parser list; see build_parser.
AddCommand = Callable[..., argparse.ArgumentParser]


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        """Print `PROG: error: MESSAGE (see PROG --help)` and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (unless it has none, is a flag, or the help says
    it); descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        # By identity: `0 in (None, False)` is true (0 == False), which hid a default of 0.
        if (
            any(default is hidden for hidden in (None, False, argparse.SUPPRESS))
            or "default" in text
            or not action.option_strings
        ):
            return text
        shown = ",".join(default) if isinstance(default, list) else default
        return f"{text} (default: {shown})"


def config_path(args: argparse.Namespace) -> str:
    """The --config file, else $RELAY_CONFIG (a usage error when neither is given)."""
    path = getattr(args, "config", None) or os.environ.get("RELAY_CONFIG")
    if not path:
        raise UsageError("--config: give a config file (or set RELAY_CONFIG)")
    return str(path)


def load(args: argparse.Namespace) -> Config:
    """The config named by --config or $RELAY_CONFIG."""
    from service.config import load_config

    return load_config(config_path(args))


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run on uvloop when it is installed (it is, except on Windows)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_async_value(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion on the default loop and return its value."""
    return asyncio.run(coro)


def setup_logging(level: str) -> None:
    """Structured logs at this level."""
    from service.logs import configure_logging

    configure_logging(level)


def quiet_kafka_logs() -> None:
    """Operator commands report Kafka trouble in their own one line; aiokafka's logs would
    repeat it as tracebacks."""
    for name in ("aiokafka", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def unreachable_text(bootstrap: str, error: str | None, waited_s: float, timeout_s: float) -> str:
    """What a failed connect did, in words: no answer within the bound, or the client's error
    at once or after a wait (a refused port fails in milliseconds: no "after 0.0 s")."""
    if error is None:
        what = f"no answer within {timeout_s:g} s"
    elif waited_s < 0.1:
        what = f"failed at once: {error}"
    else:
        what = f"{error} after {waited_s:.1f} s"
    return (
        f"cannot reach Kafka at {bootstrap} ({what}); "
        "check the bootstrap address and that the broker runs"
    )


async def probe_kafka(kwargs: dict[str, Any], bootstrap: str, timeout_s: float) -> None:
    """Connect once (bounded) so an unreachable broker is one clear error, not a traceback."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    started = time.monotonic()
    producer = AIOKafkaProducer(**kwargs)
    try:
        await asyncio.wait_for(producer.start(), timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        error = None if isinstance(exc, TimeoutError) else type(exc).__name__
        text = unreachable_text(bootstrap, error, time.monotonic() - started, timeout_s)
        raise KafkaUnavailable(text) from exc
    finally:
        await producer.stop()


def probe_config(kafka: KafkaConfig) -> Coroutine[Any, Any, None]:
    """probe_kafka with the config's client settings."""
    from service.kafka import client_kwargs

    bootstrap = ",".join(kafka.bootstrap_servers)
    return probe_kafka(client_kwargs(kafka), bootstrap, KAFKA_TIMEOUT_S)


def vendor_names(config: Config, names: Sequence[str] | None, enabled_only: bool) -> list[str]:
    """The given vendors, each checked against the config (UsageError listing valid ones)."""
    valid = config.enabled_vendors() if enabled_only else list(config.vendors)
    unknown = sorted(set(names or ()) - set(valid))
    if unknown:
        kind = "an enabled vendor" if enabled_only else "a vendor"
        raise UsageError(
            f"--vendor {', '.join(unknown)}: not {kind} in this config; "
            f"choose from {', '.join(sorted(valid)) or '(none)'}"
        )
    return list(names or ())


def write_json(value: Any) -> None:
    """Indented JSON on stdout."""
    import orjson

    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def positive_rate(text: str) -> float:
    """An argparse type: events per second above 0, at most 100,000."""
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < rate <= 100_000:
        raise argparse.ArgumentTypeError(f"{text}: give events per second above 0 (at most 100000)")
    return rate


def port(text: str) -> int:
    """An argparse type: a TCP port, 0 for a free one."""
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535; 0 = pick a free one)")
    return int(text)


def warn(message: str) -> None:
    """Print `conversion-relay: warning: MESSAGE` on stderr (the command goes on)."""
    print(f"conversion-relay: warning: {message}", file=sys.stderr)


def fail(message: str, code: int, debug: bool) -> int:
    """Print `conversion-relay: error: MESSAGE` (and the traceback with --debug); return code."""
    if debug:
        traceback.print_exc()
    print(f"conversion-relay: error: {message}", file=sys.stderr)
    return code


def exit_code(exc: BaseException, debug: bool) -> int:
    """The one place an error becomes a message on stderr and an exit code."""
    if isinstance(exc, KeyboardInterrupt):
        return fail("interrupted", EXIT_INTERRUPTED, debug)
    if isinstance(exc, UsageError):
        return fail(f"{exc} (see --help)", EXIT_USAGE, debug)
    if isinstance(exc, ConfigError):
        if debug:
            traceback.print_exc()
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_FAILURE
    if isinstance(exc, RelayError | OSError):
        return fail(str(exc), EXIT_FAILURE, debug)
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return fail(
        f"unexpected {type(exc).__name__}: {detail} (--debug shows the traceback)",
        EXIT_FAILURE,
        debug,
    )
