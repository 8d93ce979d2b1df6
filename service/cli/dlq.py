"""`dlq inspect` and `dlq replay`: count, list and re-deliver dead letters."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from service.cli import common

REASONS = ("invalid_event", "rejected", "retries_exhausted", "expired")
BY_FIELDS = ("vendor", "reason", "status", "state", "hour", "day")


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


def cmd_dlq_inspect(args: argparse.Namespace) -> int:
    """List or aggregate dead letters as a table or JSON."""
    from service.core.render import printable, table
    from service.delivery.replay import aggregate, read_letters

    config = common.load(args)
    if args.vendor is not None:
        common.vendor_names(config, [args.vendor], enabled_only=False)
    letters = _letter_filter(args, args.vendor)
    common.quiet_kafka_logs()

    async def go() -> list[Any]:
        await common.probe_config(config.kafka)
        return await read_letters(config.kafka, config.dlq.topic)

    every = [i for i in common.run_async_value(go()) if letters.matches(i)]
    found = every if args.all else [i for i in every if not i.replayed]
    title = _inspect_title(every, config.dlq.topic, shown_all=args.all)
    if args.list:
        if args.json:
            now = datetime.now(UTC)
            common.write_json([_letter_row(i, now) for i in found])
            return 0
        print(title)
        if found:
            _print_letters(found, args.wide, with_state=args.all)
        return 0
    rows = aggregate(found, args.by)
    if args.json:
        common.write_json(rows)
        return 0
    print(printable(title))
    if rows:
        print(table(rows, [*args.by, "count"]))
    return 0


def _inspect_title(every: Sequence[Any], topic: str, shown_all: bool) -> str:
    """The headline: the letters waiting, and the replayed ones apart (never counted as waiting)."""
    replayed = sum(1 for i in every if i.replayed)
    waiting = len(every) - replayed
    if shown_all:
        return (
            f"{len(every)} dead letters in {topic}: {waiting} waiting, {replayed} already replayed"
        )
    title = f"{waiting} dead letters waiting in {topic}"
    if replayed:
        title += f" ({replayed} more already replayed: --all shows them)"
    return title


def _print_plan(plan: Any) -> None:
    print(f"{len(plan.letters)} dead letters to replay to {plan.vendor}")
    if plan.letters:
        _print_letters(plan.letters, wide=False, with_state=False)


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    """Re-deliver matching dead letters to one vendor, with progress and a summary."""
    from service.app import Replay
    from service.delivery.replay import plan_replay

    config = common.load(args)
    vendor = common.vendor_names(config, [args.vendor], enabled_only=True)[0]
    common.setup_logging("error")
    common.quiet_kafka_logs()
    letters = _letter_filter(args, vendor)

    async def plan_it() -> Any:
        await common.probe_config(config.kafka)
        return await plan_replay(config.kafka, config.dlq.topic, vendor, letters)

    plan = common.run_async_value(plan_it())
    _print_plan(plan)
    if args.dry_run or not plan.letters:
        return 0
    replay = Replay(config, vendor, letters, plan=plan)
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        if interrupted:  # a second Ctrl-C: stop waiting for letters in flight
            os._exit(common.EXIT_INTERRUPTED)
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

    counts = common.run_async_value(go())
    print("summary: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if interrupted:
        left = len(plan.letters) - replay.done
        print(
            f"interrupted: {replay.done} of {len(plan.letters)} letters done, {left} left; "
            "run the same command again to continue",
            file=sys.stderr,
        )
        return common.EXIT_INTERRUPTED
    failed = counts["rejected"] + counts["dead_lettered"] + counts["expired"]
    return common.EXIT_OK if failed == 0 else common.EXIT_LETTERS_FAILED


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


def add_commands(command: common.AddCommand) -> None:
    """Add `dlq inspect` and `dlq replay`."""
    dlq = command("dlq", "inspect or replay dead letters")
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
    inspect.set_defaults(func=cmd_dlq_inspect)

    replay = command("replay", "re-deliver dead letters to one vendor", dlq_sub)
    replay.add_argument("--config", help=common.CONFIG_HELP)
    replay.add_argument("--vendor", required=True, metavar="NAME", help="the vendor to replay to")
    _add_filters(replay)
    replay.add_argument(
        "--dry-run", action="store_true", help="list the letters a replay would send, send nothing"
    )
    replay.set_defaults(func=cmd_dlq_replay)
