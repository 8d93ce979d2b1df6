"""`dlq inspect`, `show`, `replay` and `discard`: count, open, re-deliver or retire dead letters."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from service.cli import common
from service.errors import UsageError

# service.delivery.dlq.REASONS (not imported here, to keep the CLI's start light).
REASONS = (
    "invalid_event",
    "rejected",
    "retries_exhausted",
    "expired",
    "unreadable_record",
    "unknown_schema",
    "undecodable",
)
BY_FIELDS = ("vendor", "reason", "status", "state", "hour", "day")
# How long `inspect --follow` waits for its consumer to close after Ctrl-C.
_FOLLOW_CLOSE_S = 3.0


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

    return LetterFilter(
        vendor=vendor,
        reason=args.reason,
        since=args.since,
        until=args.until,
        event_id=args.event_id,
    )


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
    # The vendor's reason is in the default view (an Altcraft rejection answers HTTP 200 with
    # the error in its body): the error takes what the fixed columns leave, at most 40, with
    # the event id cut to 12 first.
    width = shutil.get_terminal_size((80, 24)).columns
    fixed = table(rows, [c for c in columns if c != "event_id"]).splitlines()[0]
    room = width - len(fixed) - 2 * 2 - 12
    if room >= 8:
        for row in rows:
            text = row["error"] or ""
            row["error"] = text if len(text) <= room else text[: room - 1] + "…"
        columns.append("error")
    print(table(rows, columns, width=width, shrink="event_id"))


def cmd_dlq_inspect(args: argparse.Namespace) -> int:
    """Count or list dead letters as a table or JSON, streaming the DLQ (counts are kept per
    group, letters only for --list)."""
    from service.core.render import printable, table
    from service.delivery.replay import count_rows, end_offsets, group_key, iter_letters

    config = common.load(args)
    if args.vendor is not None:
        common.vendor_names(config, [args.vendor], enabled_only=False)
    letters = _letter_filter(args, args.vendor)
    common.quiet_kafka_logs()
    by = ["state", *args.by]  # the state first, so the headline can count both
    counts: Counter[tuple[Any, ...]] = Counter()
    listed: list[Any] = []

    ends: dict[Any, int] = {}

    async def go() -> None:
        await common.probe_config(config.kafka)
        ends.update(await end_offsets(config.kafka, config.dlq.topic))
        letters_now = iter_letters(config.kafka, config.dlq.topic, list(config.vendors), ends)
        async for info in letters_now:
            if not letters.matches(info):
                continue
            counts[group_key(info, by)] += 1
            if args.list and (args.all or not info.replayed):
                listed.append(info)

    common.run_async_value(go())
    replayed = sum(n for key, n in counts.items() if key[0] == "replayed")
    title = _headline(sum(counts.values()), replayed, config.dlq.topic, args.all)
    if args.list:
        if args.json:
            now = datetime.now(UTC)
            common.write_json([_letter_row(i, now) for i in listed])
            return 0
        print(title)
        if listed:
            _print_letters(listed, args.wide, with_state=args.all)
        return _follow(config, letters, ends) if args.follow else 0
    shown: Counter[tuple[Any, ...]] = Counter()
    for key, n in counts.items():
        if args.all or key[0] != "replayed":
            shown[key[1:]] += n
    rows = count_rows(shown, args.by)
    if args.json:
        common.write_json(rows)
        return 0
    print(printable(title))
    if rows:
        print(table(rows, [*args.by, "count"]))
    if args.follow:
        return _follow(config, letters, ends)
    return 0


def _follow(config: Any, letters: Any, ends: dict[Any, int]) -> int:
    """Print each new letter matching the filter as it arrives, until Ctrl-C (exit 0)."""
    from service.core.render import printable
    from service.delivery.replay import follow_letters

    print("following new letters (Ctrl-C to stop)", flush=True)

    async def show() -> None:
        async for info in follow_letters(config.kafka, config.dlq.topic, ends):
            if letters.matches(info):
                row = _letter_row(info, datetime.now(UTC))
                fields = ("failed_at", "event_id", "vendor", "reason", "status", "error")
                print(printable("  ".join(str(row[f] or "-") for f in fields)), flush=True)

    async def go() -> None:
        # Ctrl-C (or SIGTERM) sets an event the loop owns, instead of a KeyboardInterrupt
        # landing wherever the loop happens to be; the consumer's close is then bounded, so
        # the command ends within a few seconds whatever the broker does.
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        following = asyncio.create_task(show())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if following.done():
            following.result()  # a Kafka error ends the command with its message
            return
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(following, _FOLLOW_CLOSE_S)

    with contextlib.suppress(KeyboardInterrupt):
        common.run_async_value(go())
    return common.EXIT_OK


def _inspect_title(every: Sequence[Any], topic: str, shown_all: bool) -> str:
    """The headline of these letters (see `_headline`)."""
    return _headline(len(every), sum(1 for i in every if i.replayed), topic, shown_all)


def _headline(total: int, replayed: int, topic: str, shown_all: bool) -> str:
    """The letters waiting, and the replayed ones apart (never counted as waiting)."""
    waiting = total - replayed
    if shown_all:
        return f"{total} dead letters in {topic}: {waiting} waiting, {replayed} already replayed"
    title = f"{waiting} dead letters waiting in {topic}"
    if replayed:
        title += f" ({replayed} more already replayed: --all shows them)"
    return title


def _print_plan(plan: Any, verb: str = "replay") -> None:
    """The plan in a few lines whatever its size: counts by reason and status, the first
    letters, and how many more."""
    from service.core.render import table

    to = "to" if verb == "replay" else "of"
    print(f"{plan.count} dead letters to {verb} {to} {plan.vendor}")
    if not plan.count:
        return
    print(table(plan.by, ["reason", "status", "count"]))
    print("first letters:" if plan.count > len(plan.sample) else "letters:")
    _print_letters(plan.sample, wide=False, with_state=False)
    if plan.count > len(plan.sample):
        print(f"… and {plan.count - len(plan.sample)} more")


def _planned(config: Any, vendor: str, letters: Any) -> Any:
    """The streamed plan of a vendor's open letters that `letters` takes (Kafka probed first)."""
    from service.delivery.replay import plan_replay

    async def plan_it() -> Any:
        await common.probe_config(config.kafka)
        return await plan_replay(config.kafka, config.dlq.topic, vendor, letters)

    return common.run_async_value(plan_it())


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    """Re-deliver matching dead letters to one vendor, with progress and a summary."""
    from service.replay_run import Replay

    config = common.load(args)
    vendor = common.vendor_names(config, [args.vendor], enabled_only=True)[0]
    common.setup_logging("error")
    common.quiet_kafka_logs()
    letters = _letter_filter(args, vendor)
    plan = _planned(config, vendor, letters)
    _print_plan(plan)
    if args.dry_run or not plan.count:
        return 0
    replay = Replay(config, vendor, letters, plan=plan)
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        if interrupted:  # a second Ctrl-C: stop waiting for letters in flight
            os._exit(common.EXIT_INTERRUPTED)
        interrupted = True
        print(
            "stopping: nothing new is sent; letters in flight finish (Ctrl-C again to quit now)",
            file=sys.stderr,
        )
        replay.stop()

    async def go() -> dict[str, int]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        task = asyncio.create_task(replay.run())
        await _show_progress(task, lambda: replay.done, plan.count, lambda: replay.waiting)
        return task.result()

    counts = common.run_async_value(go())
    print("summary: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    source = replay.source
    if source is not None and source.held:
        print(f"{source.held} letters of {vendor} the filter does not take stay open")
    if source is not None and source.blocked:
        print(
            f"partitions {','.join(map(str, source.blocked))}: read no further than "
            "a filtered replay can keep progress for past its first open letter; replay or "
            "discard that letter, or run without the filter",
            file=sys.stderr,
        )
    failed = replay.failed(counts)
    if failed:
        print(f"{failed} letters failed again and are back in the DLQ as open letters")
    if interrupted:
        print(
            f"interrupted: {replay.done} letters done, {counts['left']} fed but not finished; "
            "run the same command again to continue",
            file=sys.stderr,
        )
        return common.EXIT_INTERRUPTED
    return common.EXIT_OK if failed == 0 else common.EXIT_LETTERS_FAILED


def cmd_dlq_show(args: argparse.Namespace) -> int:
    """One letter (or an event's letters) in full: its story, headers and value, redacted."""
    from service.core.redact import redact
    from service.delivery.replay import iter_records

    config = common.load(args)
    common.quiet_kafka_logs()
    where = _position(args.letter) if args.letter else None
    if where is None and args.event_id is None:
        raise UsageError("give a letter's PARTITION:OFFSET or --event-id")
    found: list[tuple[Any, Any]] = []

    async def go() -> None:
        await common.probe_config(config.kafka)
        async for record, info in iter_records(
            config.kafka, config.dlq.topic, list(config.vendors)
        ):
            hit = (info.dlq_partition, info.dlq_offset) == where or (
                args.event_id is not None and info.event_id == args.event_id
            )
            if hit:
                found.append((record, info))
                if where is not None or len(found) >= _SHOW_MAX:
                    return

    common.run_async_value(go())
    if not found:
        what = args.letter or f"event {args.event_id}"
        print(f"no dead letter {what} in {config.dlq.topic}", file=sys.stderr)
        return common.EXIT_FAILURE
    for index, (record, info) in enumerate(found):
        if index:
            print()
        print(_show_text(record, info, config.dlq.topic, redact))
    return common.EXIT_OK


_SHOW_MAX = 20
_VALUE_SHOWN_BYTES = 4096


def _position(text: str) -> tuple[int, int]:
    partition, _, offset = text.partition(":")
    if not (partition.isdigit() and offset.isdigit()):
        raise UsageError(f"{text!r} is not a letter position: give PARTITION:OFFSET (0:41)")
    return int(partition), int(offset)


def _show_text(record: Any, info: Any, topic: str, redact: Callable[[str], str]) -> str:
    """A letter as `dlq show` prints it: every text through the redactor."""
    from service.core.render import printable

    state = "replayed" if info.replayed else "open"
    lines = [f"letter {info.dlq_partition}:{info.dlq_offset} in {topic} ({state})"]
    story = [
        ("event id", info.event_id),
        ("vendor", info.vendor),
        ("reason", info.reason),
        ("HTTP status", info.http_status),
        ("attempts", info.attempts),
        ("failed at", info.failed_at.isoformat() if info.failed_at else None),
        ("source", info.source),
        ("vendor answer", info.error),
    ]
    lines += [
        f"  {name:<14}{'-' if value in (None, '') else redact(str(value))}" for name, value in story
    ]
    lines.append("headers:")
    for key, value in record.headers or ():
        name = key.decode("utf-8", "backslashreplace") if isinstance(key, bytes) else key
        text = "null" if value is None else value.decode("utf-8", "backslashreplace")
        lines.append(f"  {name}: {redact(text)}")
    value = record.value
    if value is None:
        lines.append("value: null")
    else:
        shown = value[:_VALUE_SHOWN_BYTES].decode("utf-8", "backslashreplace")
        cut = f", first {_VALUE_SHOWN_BYTES} shown" if len(value) > _VALUE_SHOWN_BYTES else ""
        lines.append(f"value ({len(value)} bytes{cut}):")
        lines.append(f"  {redact(shown)}")
    return "\n".join(printable(line) for line in lines)  # a letter's text cannot break lines


def cmd_dlq_discard(args: argparse.Namespace) -> int:
    """Retire a vendor's matching open letters without sending them."""
    config = common.load(args)
    vendor = common.vendor_names(config, [args.vendor], enabled_only=False)[0]
    common.setup_logging("error")
    common.quiet_kafka_logs()
    letters = _letter_filter(args, vendor)
    plan = _planned(config, vendor, letters)
    _print_plan(plan, verb="discard")
    if args.dry_run or not plan.count:
        return common.EXIT_OK
    stop = asyncio.Event()

    async def go() -> Any:
        from aiokafka import AIOKafkaProducer

        from service.delivery.replay import discard_letters
        from service.kafka import producer_kwargs

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        producer = AIOKafkaProducer(**producer_kwargs(config.kafka))
        await producer.start()
        try:
            return await discard_letters(
                config.kafka, config.dlq.topic, vendor, letters, plan, producer, stop
            )
        finally:
            await producer.stop()

    source = common.run_async_value(go())
    print(f"discarded {source.sent} dead letters of {vendor} (retired, not sent)")
    if stop.is_set():
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return common.EXIT_INTERRUPTED
    return common.EXIT_OK


async def _show_progress(
    task: asyncio.Task[Any],
    done: Callable[[], int],
    total: int,
    waiting: Callable[[], bool] = lambda: False,
) -> None:
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
            if waiting():
                print("waiting: another replay of this vendor holds the partitions", flush=True)
            else:
                print(f"replayed {done()} of {total}", flush=True)


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
    cmd.add_argument("--event-id", metavar="ID", help="only the letters of this event")


def add_commands(command: common.AddCommand) -> None:
    """Add `dlq inspect`, `dlq show`, `dlq replay` and `dlq discard`."""
    dlq = command("dlq", "inspect, show, replay or discard dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    inspect = command("inspect", "count or list the dead letters still waiting", dlq_sub)
    inspect.add_argument("--config", help=common.CONFIG_HELP)
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
    inspect.add_argument(
        "--follow",
        action="store_true",
        help="then print each new letter matching the filter as it arrives, until Ctrl-C",
    )
    inspect.set_defaults(func=cmd_dlq_inspect)

    show = command("show", "one dead letter in full: story, headers, value (redacted)", dlq_sub)
    show.add_argument("--config", help=common.CONFIG_HELP)
    show.add_argument(
        "letter", nargs="?", metavar="PARTITION:OFFSET", help="the letter's DLQ position (0:41)"
    )
    show.add_argument(
        "--event-id", metavar="ID", help=f"the letters of this event (first {_SHOW_MAX})"
    )
    show.set_defaults(func=cmd_dlq_show)

    discard = command("discard", "retire a vendor's dead letters without sending them", dlq_sub)
    discard.add_argument("--config", help=common.CONFIG_HELP)
    discard.add_argument("--vendor", required=True, metavar="NAME", help="whose letters")
    _add_filters(discard)
    discard.add_argument(
        "--dry-run", action="store_true", help="list the letters it would retire, retire nothing"
    )
    discard.set_defaults(func=cmd_dlq_discard)

    replay = command("replay", "re-deliver dead letters to one vendor", dlq_sub)
    replay.add_argument("--config", help=common.CONFIG_HELP)
    replay.add_argument("--vendor", required=True, metavar="NAME", help="the vendor to replay to")
    _add_filters(replay)
    replay.add_argument(
        "--dry-run", action="store_true", help="list the letters a replay would send, send nothing"
    )
    replay.set_defaults(func=cmd_dlq_replay)
