"""conversion-relay: relay conversion events from Kafka to vendor APIs.

Commands: run (the relay), dev (everything on this machine, with demo traffic), fault (break a
dev vendor), publish (send events to a topic), dlq inspect / dlq replay (dead letters),
check-config (validate a config).
Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 some replayed letters failed again,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NoReturn

import msgspec

from service import __version__
from service.config import Config, KafkaConfig, load_config, plaintext_warning, summary
from service.errors import ConfigError, KafkaUnavailable, RelayError, UsageError

LOG_LEVELS = ("debug", "info", "warning", "error")
REASONS = ("invalid_event", "rejected", "retries_exhausted", "expired")
BY_FIELDS = ("vendor", "reason", "status", "hour", "day")
FAULT_MODES = ("down", "up", "errors", "throttle", "reject", "slow", "ok")
KAFKA_TIMEOUT_S = 10.0
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        """Print `PROG: error: MESSAGE (see PROG --help)` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (unless it has none, is a flag, or the help says
    it); descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default in (None, False, argparse.SUPPRESS)
            or "default" in text
            or not action.option_strings
        ):
            return text
        shown = ",".join(default) if isinstance(default, list) else default
        return f"{text} (default: {shown})"


def _config_path(args: argparse.Namespace) -> str:
    path = args.config or os.environ.get("RELAY_CONFIG")
    if not path:
        raise UsageError("--config: give a config file (or set RELAY_CONFIG)")
    return str(path)


def _load(args: argparse.Namespace) -> Config:
    return load_config(_config_path(args))


# The relay holds thousands of records in flight, each a few tracked containers that outlive a
# young collection; at CPython's default (700, 10, 10) the collector re-scanned them several
# times a second: 3.7 µs CPU per delivery with five vendors, 0.7 µs at these thresholds. The
# relay makes little cyclic garbage, so collecting less often costs no memory worth counting.
GC_THRESHOLDS: Final = (10_000, 10, 10)
GC_THRESHOLD_ENV: Final = "RELAY_GC_THRESHOLD"  # the first threshold; 700 is CPython's own


def _tune_gc() -> None:
    first = GC_THRESHOLDS[0]
    given = os.environ.get(GC_THRESHOLD_ENV, "").strip()
    if given:
        if not given.isdigit() or int(given) < 1:
            raise UsageError(f"{GC_THRESHOLD_ENV}={given[:20]!r}: give a whole number above 0")
        first = int(given)
    gc.set_threshold(first, *GC_THRESHOLDS[1:])


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


def _quiet_kafka_logs() -> None:
    """Operator commands report Kafka trouble in their own one line; aiokafka's logs would
    repeat it as tracebacks."""
    for name in ("aiokafka", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


async def _probe_kafka(kwargs: dict[str, Any], bootstrap: str, timeout_s: float) -> None:
    """Connect once (bounded) so an unreachable broker is one clear error, not a traceback."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    started = time.monotonic()
    producer = AIOKafkaProducer(**kwargs)
    try:
        await asyncio.wait_for(producer.start(), timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        waited_s = time.monotonic() - started
        why = "no answer" if isinstance(exc, TimeoutError) else type(exc).__name__
        raise KafkaUnavailable(
            f"cannot reach Kafka at {bootstrap} (gave up after {waited_s:.1f} s: {why}); "
            "check the bootstrap address and that the broker runs"
        ) from exc
    finally:
        await producer.stop()


def _probe_config(kafka: KafkaConfig) -> Coroutine[Any, Any, None]:
    from service.kafka import client_kwargs

    bootstrap = ",".join(kafka.bootstrap_servers)
    return _probe_kafka(client_kwargs(kafka), bootstrap, KAFKA_TIMEOUT_S)


def _vendor_names(config: Config, names: Sequence[str] | None, enabled_only: bool) -> list[str]:
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
    warning = plaintext_warning(config)
    if warning:
        logging.getLogger("conversion_relay.config").warning(warning)
    _vendor_names(config, args.vendor, enabled_only=True)
    workers = config.workers if args.workers is None else args.workers
    _tune_gc()  # the supervisor and each worker (they start through this command too)
    if workers > 1:
        from service.workers import Supervisor

        return _run_async(Supervisor(config, path, workers, args.vendor).run())
    return _run_async(Relay(config, vendors=args.vendor or None).run())


def cmd_dev(args: argparse.Namespace) -> int:
    """Embedded broker, sandboxes, relay and demo traffic with a live view."""
    from service.devtools.dev import DevOptions, run_dev

    _setup_logging("error")  # the live view is the output; logs would tear it
    _quiet_kafka_logs()
    options = DevOptions(
        events_per_s=args.rate,
        http_port=args.port,
        chaos=args.chaos,
        control_port=args.control_port,
        config_out=args.write_config,
    )
    return _run_async(run_dev(options))


def cmd_fault(args: argparse.Namespace) -> int:
    """Break (or heal) one vendor of a running `dev` through its control endpoint."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    from service.devtools.dev import default_config_path, state_path

    url = args.control
    if url is None:
        path = Path(args.state) if args.state else state_path(default_config_path())
        try:
            url = json.loads(path.read_text())["control_url"]
        except (OSError, ValueError, KeyError) as exc:
            raise RelayError(
                f"no running dev mode found ({path}: {exc.__class__.__name__}); "
                "start `conversion-relay dev` or give --control URL"
            ) from exc
    query = f"?value={args.value}" if args.value is not None else ""
    name = urllib.parse.quote(args.vendor)
    request = urllib.request.Request(f"{url}/vendors/{name}/{args.mode}{query}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        raise UsageError(str(detail)) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise RelayError(f"cannot reach the dev control endpoint at {url}: {exc}") from exc
    print(f"{answer['vendor']}: {answer['state']}")
    return 0


def _lines(path: str) -> Iterator[bytes]:
    with Path(path).open("rb") as handle:
        yield from handle


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish a JSON Lines file or generated sample events to a topic."""
    from service.devtools.demo import sample_lines
    from service.devtools.publish import publish

    if (args.file is None) == (args.sample is None):
        raise UsageError("give either FILE.jsonl or --sample N")
    kwargs: dict[str, Any] = {}
    bootstrap, topic = args.bootstrap, args.topic
    if args.config or os.environ.get("RELAY_CONFIG"):
        from service.kafka import client_kwargs

        config = _load(args)
        kwargs = client_kwargs(config.kafka)
        bootstrap = bootstrap or kwargs["bootstrap_servers"]
        topic = topic or config.kafka.topics[0]
    if not bootstrap or not topic:
        raise UsageError("give --bootstrap and --topic, or --config to take both from a config")
    kwargs["bootstrap_servers"] = bootstrap
    if args.file is not None:
        try:
            Path(args.file).open("rb").close()
        except OSError as exc:
            raise RelayError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    lines = sample_lines(args.sample) if args.sample is not None else _lines(args.file)
    _quiet_kafka_logs()

    async def go() -> int:
        await _probe_kafka(kwargs, bootstrap, KAFKA_TIMEOUT_S)
        return await publish(bootstrap, topic, lines, client=kwargs)

    sent = _run_async(go())
    print(f"published {sent} records to {topic}")
    return 0


def _since(text: str) -> datetime:
    from service.delivery.replay import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _by(text: str) -> list[str]:
    fields = [f.strip() for f in text.split(",") if f.strip()]
    wrong = [f for f in fields if f not in BY_FIELDS]
    if wrong or not fields:
        raise argparse.ArgumentTypeError(
            f"{', '.join(wrong) or repr(text)}: not a field; choose from {','.join(BY_FIELDS)}"
        )
    return fields


def _letter_filter(args: argparse.Namespace, vendor: str | None) -> Any:
    from service.delivery.replay import LetterFilter

    return LetterFilter(vendor=vendor, reason=args.reason, since=args.since, until=args.until)


def _age_s(moment: datetime | None, now: datetime) -> float | None:
    return (now - moment).total_seconds() if moment is not None else None


def _letter_row(info: Any, now: datetime) -> dict[str, Any]:
    """One letter with every field, missing values as None (null in JSON)."""
    return {
        "event_id": info.event_id,
        "vendor": info.vendor or None,
        "reason": info.reason or None,
        "status": info.http_status,
        "attempts": info.attempts,
        "failed_at": info.failed_at.isoformat() if info.failed_at else None,
        "age_s": _age_s(info.failed_at, now),
        "state": "replayed" if info.replayed else "open",
        "source": info.source,
        "dlq": f"{info.dlq_partition}:{info.dlq_offset}",
        "error": info.error or None,
    }


def _print_letters(letters: Sequence[Any], wide: bool, with_state: bool) -> None:
    from service.core.render import age, table

    now = datetime.now(UTC)
    rows = [_letter_row(i, now) for i in letters]
    for row in rows:
        row["age"] = age(row["age_s"])
    columns = ["event_id", "vendor", "reason", "status", "attempts", "age"]
    if with_state:
        columns.append("state")
    if wide:
        columns += ["failed_at", "source", "dlq", "error"]
        print(table(rows, columns))
        return
    width = shutil.get_terminal_size((80, 24)).columns
    print(table(rows, columns, width=width, shrink="event_id"))


def _write_json(value: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def cmd_dlq_inspect(args: argparse.Namespace) -> int:
    """List or aggregate dead letters as a table or JSON."""
    from service.core.render import printable, table
    from service.delivery.replay import aggregate, read_letters

    config = _load(args)
    if args.vendor is not None:
        _vendor_names(config, [args.vendor], enabled_only=False)
    letters = _letter_filter(args, args.vendor)
    _quiet_kafka_logs()

    async def go() -> list[Any]:
        await _probe_config(config.kafka)
        return await read_letters(config.kafka, config.dlq.topic)

    every = [i for i in _run_async_value(go()) if letters.matches(i)]
    found = every if args.all else [i for i in every if not i.replayed]
    hidden = len(every) - len(found)
    if args.list:
        if args.json:
            now = datetime.now(UTC)
            _write_json([_letter_row(i, now) for i in found])
            return 0
        print(_inspect_title(len(found), config.dlq.topic, hidden))
        if found:
            _print_letters(found, args.wide, with_state=args.all)
        return 0
    rows = aggregate(found, args.by)
    if args.json:
        _write_json(rows)
        return 0
    print(printable(_inspect_title(len(found), config.dlq.topic, hidden)))
    if rows:
        print(table(rows, [*args.by, "count"]))
    return 0


def _inspect_title(count: int, topic: str, hidden: int) -> str:
    title = f"{count} dead letters waiting in {topic}"
    if hidden:
        title += f" ({hidden} more already replayed: --all shows them)"
    return title


def _print_plan(plan: Any) -> None:
    print(f"{len(plan.letters)} dead letters to replay to {plan.vendor}")
    if plan.letters:
        _print_letters(plan.letters, wide=False, with_state=False)


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    """Re-deliver matching dead letters to one vendor, with progress and a summary."""
    from service.app import Replay
    from service.delivery.replay import plan_replay

    config = _load(args)
    vendor = _vendor_names(config, [args.vendor], enabled_only=True)[0]
    _setup_logging("error")
    _quiet_kafka_logs()
    letters = _letter_filter(args, vendor)

    async def plan_it() -> Any:
        await _probe_config(config.kafka)
        return await plan_replay(config.kafka, config.dlq.topic, vendor, letters)

    plan = _run_async_value(plan_it())
    _print_plan(plan)
    if args.dry_run or not plan.letters:
        return 0
    replay = Replay(config, vendor, letters, plan=plan)
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        if interrupted:  # a second Ctrl-C: stop waiting for letters in flight
            os._exit(EXIT_INTERRUPTED)
        interrupted = True
        print("stopping: letters in flight finish (Ctrl-C again to quit now)", file=sys.stderr)
        replay.stop()

    async def go() -> dict[str, int]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        task = asyncio.create_task(replay.run())
        await _show_progress(task, lambda: replay.done, len(plan.letters))
        return task.result()

    counts = _run_async_value(go())
    print("summary: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if interrupted:
        left = len(plan.letters) - replay.done
        print(
            f"interrupted: {replay.done} of {len(plan.letters)} letters done, {left} left; "
            "run the same command again to continue",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    failed = counts["rejected"] + counts["dead_lettered"] + counts["expired"]
    return 0 if failed == 0 else 3


async def _show_progress(task: asyncio.Task[Any], done: Callable[[], int], total: int) -> None:
    """A progress bar on a terminal, else a plain line every few seconds."""
    if sys.stdout.isatty():
        from rich.progress import Progress

        with Progress() as progress:
            bar = progress.add_task("replaying", total=total)
            while not task.done():
                progress.update(bar, completed=done())
                await asyncio.wait({task}, timeout=0.2)
            progress.update(bar, completed=done())
        return
    last_s = time.monotonic()
    while not task.done():
        await asyncio.wait({task}, timeout=0.2)
        if time.monotonic() - last_s >= 5:
            last_s = time.monotonic()
            print(f"replayed {done()} of {total}", flush=True)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Print `ok` and a summary, or every problem with its path (exit 1); never a secret."""
    from service.core.redact import redact

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        # Problems are made without values already; redacting again costs nothing here.
        for problem in exc.problems:
            print(redact(problem), file=sys.stderr)
        return 1
    print("ok")
    print(summary(config))
    return 0


def _add_filters(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--reason", choices=REASONS, help="only letters dead-lettered for this reason")
    cmd.add_argument(
        "--since",
        type=_since,
        metavar="TIME",
        help="only letters that failed at or after TIME: ISO time or a duration ago (30m, 2h, 7d)",
    )
    cmd.add_argument(
        "--until", type=_since, metavar="TIME", help="only letters that failed before TIME"
    )


def _positive_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < rate <= 100_000:
        raise argparse.ArgumentTypeError(f"{text}: give events per second above 0 (at most 100000)")
    return rate


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535; 0 = pick a free one)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback of an error",
    )
    parser = _Parser(
        prog="conversion-relay", description=__doc__, formatter_class=_Formatter, parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, into: Any = sub) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = into.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=_Formatter,
            parents=[common],
        )
        return made

    config_help = "YAML config file (default: $RELAY_CONFIG)"
    run = command("run", "run the relay")
    run.add_argument("--config", help=config_help)
    run.add_argument(
        "--vendor",
        action="append",
        metavar="NAME",
        help="run only this vendor's pipeline (repeatable; default: every enabled vendor)",
    )
    run.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=os.environ.get("RELAY_LOG_LEVEL", "info").lower(),
        help="log level (also $RELAY_LOG_LEVEL)",
    )
    run.add_argument(
        "--workers",
        type=int,
        help="relay processes in this container (default: the config's `workers`, 1)",
    )
    run.add_argument("--http-port", type=_port, help="override http.port (0..65535)")
    run.add_argument("--http-host", help="override http.host")
    run.set_defaults(func=cmd_run)

    dev = command("dev", "embedded broker, sandboxes, relay and demo traffic, with a live view")
    dev.add_argument("--rate", type=_positive_rate, default=20.0, help="demo events per second")
    dev.add_argument(
        "--port", type=_port, default=8080, help="metrics/status port (0 = pick a free one)"
    )
    dev.add_argument(
        "--chaos",
        action="store_true",
        help="run the fault tour: a vendor down 30 s, one at 30%% 5xx, one answering 429 with "
        "Retry-After, a burst of malformed events",
    )
    dev.add_argument(
        "--control-port",
        type=_port,
        default=0,
        help="port of the fault-injection control endpoint (0 = pick a free one)",
    )
    dev.add_argument(
        "--write-config",
        metavar="FILE",
        help="where to write the running stack's config (default: a file in the temp dir)",
    )
    dev.set_defaults(func=cmd_dev)

    pub = command("publish", "publish events to a topic")
    pub.add_argument("file", nargs="?", help="JSON Lines file, one event per line")
    pub.add_argument("--sample", type=int, metavar="N", help="publish N generated sample events")
    pub.add_argument("--config", help="take the broker and topic from this config file")
    pub.add_argument("--bootstrap", metavar="HOST:PORT", help="broker (default: from --config)")
    pub.add_argument("--topic", help="topic to publish to (default: the config's first topic)")
    pub.set_defaults(func=cmd_publish)

    dlq = command("dlq", "inspect or replay dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    inspect = command("inspect", "count or list the dead letters still waiting", dlq_sub)
    inspect.add_argument("--config", help=config_help)
    inspect.add_argument("--vendor", metavar="NAME", help="only this vendor's letters")
    _add_filters(inspect)
    inspect.add_argument(
        "--by",
        type=_by,
        default="vendor,reason,status",
        metavar="FIELDS",
        help=f"count by these comma-separated fields, any of {','.join(BY_FIELDS)}",
    )
    inspect.add_argument("--list", action="store_true", help="one row per letter instead of counts")
    inspect.add_argument(
        "--wide", action="store_true", help="with --list: every column, nothing cut short"
    )
    inspect.add_argument(
        "--all", action="store_true", help="include letters a replay already handled"
    )
    inspect.add_argument("--json", action="store_true", help="JSON instead of a table")
    inspect.set_defaults(func=cmd_dlq_inspect)

    replay = command("replay", "re-deliver dead letters to one vendor", dlq_sub)
    replay.add_argument("--config", help=config_help)
    replay.add_argument("--vendor", required=True, metavar="NAME", help="the vendor to replay to")
    _add_filters(replay)
    replay.add_argument(
        "--dry-run", action="store_true", help="list the letters a replay would send, send nothing"
    )
    replay.set_defaults(func=cmd_dlq_replay)

    fault = command("fault", "break or heal a vendor of a running `dev` (its sandbox)")
    fault.add_argument("vendor", help="the dev vendor, e.g. altcraft")
    fault.add_argument(
        "mode",
        choices=FAULT_MODES,
        help="down: connection refused; up; errors: VALUE share answered 503; throttle: 429 "
        "with Retry-After VALUE s; reject: the next VALUE requests rejected; slow: VALUE s "
        "latency; ok: clear everything",
    )
    fault.add_argument("value", nargs="?", type=float, help="the mode's number (see mode)")
    fault.add_argument("--state", metavar="FILE", help="dev mode's state file (default: its own)")
    fault.add_argument("--control", metavar="URL", help="the control endpoint instead of --state")
    fault.set_defaults(func=cmd_fault)

    check = command("check-config", "validate a config file and summarise it")
    check.add_argument("file", help="the YAML config file")
    check.set_defaults(func=cmd_check_config)
    return parser


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"conversion-relay: error: {message}", file=sys.stderr)
    return code


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
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED, debug)
    except UsageError as exc:
        return _fail(f"{exc} (see --help)", 2, debug)
    except ConfigError as exc:
        if debug:
            traceback.print_exc()
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except (RelayError, OSError) as exc:
        return _fail(str(exc), 1, debug)
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        return _fail(
            f"unexpected {type(exc).__name__}: {detail} (--debug shows the traceback)", 1, debug
        )
    return result
