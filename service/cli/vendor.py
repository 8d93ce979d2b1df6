"""`vendor pause / resume / list / reset`: steer a vendor fleet-wide through the control topic.

A pause is a record in the compacted control topic (keyed by vendor) that every replica reads
within a poll: the vendor's pipelines keep their group membership and fetch nothing. A reset
moves the vendor group's committed offsets, like `kafka-consumer-groups --reset-offsets`: a
dry run (the plan) unless `--execute`; refused while the group has members unless the vendor
is paused, and then the paused replicas commit the new offsets themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import socket
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from service.cli import common
from service.errors import RelayError, UsageError

if TYPE_CHECKING:
    from service.config import Config
    from service.core.control import ResetMove, VendorControl

# How long `reset --execute` waits for the paused replicas to commit the plan before it joins
# the group itself (the members listed may have left), and then for the plan to show.
APPLY_WAIT_S = 5.0
APPLY_TIMEOUT_S = 15.0


def operator() -> str:
    """Who is steering: `user@host`, the default of --by."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _vendor(config: Config, name: str) -> str:
    """NAME checked against the config's vendors (a usage error listing them)."""
    if name not in config.vendors:
        raise UsageError(
            f"{name}: not a vendor in this config; choose from {', '.join(sorted(config.vendors))}"
        )
    return name


def _when(at_s: float) -> str:
    return datetime.fromtimestamp(at_s, UTC).isoformat(timespec="seconds") if at_s else "-"


def describe_state(state: VendorControl | None) -> str:
    """One vendor's state in words: `running`, or `paused by W at T: WHY`."""
    if state is None or not state.paused:
        return "running"
    why = f": {state.reason}" if state.reason else ""
    return f"paused by {state.by or '?'} at {_when(state.at_s)}{why}"


async def _write(config: Config, state: VendorControl, carry: bool = False) -> None:
    """Write a vendor's state; with `carry`, keeping the stretches its last reset sends again."""
    import msgspec

    from service.delivery.control import ControlTopic

    await common.probe_config(config.kafka)
    control = ControlTopic(config.kafka)
    try:
        if carry:
            before = (await control.read_all()).get(state.vendor)
            if before is not None:
                state = msgspec.structs.replace(state, resend=before.resend)
        await control.write(state)
    finally:
        await control.close()


async def _states(config: Config) -> dict[str, VendorControl]:
    from service.delivery.control import ControlTopic

    await common.probe_config(config.kafka)
    control = ControlTopic(config.kafka)
    try:
        return await control.read_all()
    finally:
        await control.close()


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause a vendor on every replica."""
    from service.core.control import VendorControl

    common.quiet_kafka_logs()
    config = common.load(args)
    name = _vendor(config, args.name)
    state = VendorControl(name, True, args.by or operator(), args.reason or "", time.time())
    common.run_async_value(_write(config, state, carry=True))
    print(f"{name}: {describe_state(state)}")
    return common.EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a paused vendor on every replica (it delivers from its committed offsets)."""
    from service.core.control import VendorControl

    common.quiet_kafka_logs()
    config = common.load(args)
    name = _vendor(config, args.name)
    state = VendorControl(name, False, args.by or operator(), "", time.time())
    common.run_async_value(_write(config, state, carry=True))
    print(f"{name}: running (resumed by {state.by})")
    return common.EXIT_OK


def list_rows(config: Config, states: dict[str, VendorControl]) -> list[dict[str, Any]]:
    """Every vendor of the config with its state, as `vendor list --json` prints it."""
    rows = []
    for name, vendor in config.vendors.items():
        state = states.get(name)
        paused = bool(state and state.paused)
        rows.append(
            {
                "vendor": name,
                "enabled": vendor.enabled,
                "state": "paused" if paused else "running",
                "by": state.by if state else None,
                "reason": state.reason if state and paused else None,
                "at": _when(state.at_s) if state else None,
            }
        )
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    """Every vendor's state: running, or paused (who, why, when)."""
    common.quiet_kafka_logs()
    config = common.load(args)
    states = common.run_async_value(_states(config))
    if args.json:
        common.write_json({"vendors": list_rows(config, states)})
        return common.EXIT_OK
    width = max([len("VENDOR"), *(len(n) for n in config.vendors)])
    print(f"{'VENDOR'.ljust(width)}  STATE")
    for name, vendor in config.vendors.items():
        shown = describe_state(states.get(name)) + ("" if vendor.enabled else " (disabled)")
        print(f"{name.ljust(width)}  {shown}")
    return common.EXIT_OK


# ---- reset -----------------------------------------------------------------------------------


def _mode(args: argparse.Namespace) -> tuple[str, int | None]:
    """The reset mode and, for --to-datetime, its time in epoch milliseconds."""
    from service.delivery.replay import parse_time

    if args.to_datetime is not None:
        try:
            moment = parse_time(args.to_datetime)
        except ValueError as exc:
            raise UsageError(f"--to-datetime: {exc}") from None
        return "to-datetime", int(moment.timestamp() * 1000)
    if args.to_earliest:
        return "to-earliest", None
    if args.to_latest:
        return "to-latest", None
    if args.shift_by is not None:
        return "shift-by", None
    return "to-offset", None


async def _reset(config: Config, args: argparse.Namespace) -> int:
    import msgspec
    from aiokafka import TopicPartition
    from aiokafka.errors import KafkaError

    from service.core.control import (
        ResetRequest,
        VendorControl,
        parse_offset_spec,
        plan_reset,
        resend_marks,
    )
    from service.delivery.control import (
        commit_as_member,
        forget_progress,
        group_members,
        read_offsets,
    )

    kafka = config.kafka
    name = args.name
    group = f"{kafka.group_prefix}.{name}"
    topics = list(kafka.topics)
    if args.topic is not None:
        if args.topic not in topics:
            raise UsageError(f"--topic {args.topic}: not one of {', '.join(topics)}")
        topics = [args.topic]
    to_offsets: dict[tuple[str | None, int], int] = {}
    for spec in args.to_offset or ():
        try:
            topic, partition, offset = parse_offset_spec(spec, topics)
        except ValueError as exc:
            raise UsageError(f"--to-offset {exc}") from None
        to_offsets[(topic, partition)] = offset
    mode, at_ms = _mode(args)
    await common.probe_config(kafka)
    found = await read_offsets(kafka, group, topics, at_ms)
    moves = plan_reset(found, mode, args.shift_by or 0, to_offsets)  # type: ignore[arg-type]
    if not moves:
        raise UsageError("no partition to move (check --to-offset's partitions and --topic)")
    states = await _states(config)
    state = states.get(name)
    paused = bool(state and state.paused)
    members = await group_members(kafka, group)
    how = _how(members, paused)
    if args.json:
        common.write_json(
            {
                "vendor": name,
                "group": group,
                "mode": mode,
                "members": members,
                "paused": paused,
                "execute": args.execute,
                "moves": [_move_json(m) for m in moves],
            }
        )
    else:
        _print_plan(name, group, moves, how)
    if not args.execute:
        if not args.json:
            print("dry run: nothing changed; add --execute to apply this plan")
        return common.EXIT_OK
    offsets = {TopicPartition(m.topic, m.partition): m.target for m in moves}
    # Moved back, a stretch is sent again past dedup (what the vendor lost), unless --dedup.
    resend = () if args.dedup else resend_marks(moves)
    committed_here = False
    if members and not paused:
        # Members listed may have left (Tansu lists one until the next rebalance): joining is
        # the test. A live member keeps its partitions, and the reset is refused.
        try:
            await commit_as_member(kafka, group, topics, offsets)
        except KafkaError as exc:
            raise RelayError(
                f"{group} has live members ({exc}): pause the vendor first "
                f"(conversion-relay vendor pause {name}) or stop its relays"
            ) from None
        committed_here = True
    if not members:
        await commit_as_member(kafka, group, topics, offsets)
    elif not committed_here and state is not None:  # paused: its replicas commit
        request = ResetRequest(
            uuid.uuid4().hex, tuple((m.topic, m.partition, m.target) for m in moves)
        )
        paused_state = VendorControl(
            name, True, state.by, state.reason, state.at_s, request, resend
        )
        await _write(config, paused_state)
        if not await _applied(config, group, topics, offsets, APPLY_WAIT_S):
            # No replica applied it yet: the members listed may have left. Joining tells; a
            # live replica keeps its partitions and applies the plan itself meanwhile.
            with contextlib.suppress(KafkaError):
                await commit_as_member(kafka, group, topics, offsets)
    if committed_here or not members:
        kept = state or VendorControl(name, False, operator(), "", time.time())
        await _write(config, msgspec.structs.replace(kept, reset=None, resend=resend))
    await forget_progress(kafka, group, offsets)
    if not await _applied(config, group, topics, offsets, APPLY_TIMEOUT_S):
        raise RelayError(f"{group}: the new offsets were not committed")
    if not args.json:
        print(f"applied: {len(moves)} partition(s) of {group} moved")
    return common.EXIT_OK


def _how(members: int, paused: bool) -> str:
    """How --execute would apply the plan, in words."""
    if not members:
        return "no live members: --execute commits the new offsets for the group"
    if paused:
        return f"{members} member(s) listed, vendor paused: its replicas commit the plan"
    return f"{members} member(s) listed, vendor not paused: refused while one is live"


def _move_json(move: ResetMove) -> dict[str, Any]:
    return {
        "topic": move.topic,
        "partition": move.partition,
        "current": move.current,
        "new": move.target,
        "move": move.delta,
        "earliest": move.earliest,
        "end": move.latest,
    }


def _print_plan(name: str, group: str, moves: list[ResetMove], how: str) -> None:
    from service.core.control import reset_lines

    print(f"{name}: group {group}")
    for line in reset_lines(moves):
        print(line)
    print(how)


async def _applied(
    config: Config, group: str, topics: list[str], offsets: dict[Any, int], timeout_s: float
) -> bool:
    """Whether the group's committed offsets reach the plan within timeout_s."""
    from service.delivery.control import read_offsets

    deadline = time.monotonic() + timeout_s
    while True:
        found = await read_offsets(config.kafka, group, topics)
        committed = {(p.topic, p.partition): p.committed for p in found}
        if all(committed.get((tp.topic, tp.partition)) == o for tp, o in offsets.items()):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.3)


def cmd_reset(args: argparse.Namespace) -> int:
    """Plan (and with --execute apply) a move of the vendor group's committed offsets."""
    common.quiet_kafka_logs()
    config = common.load(args)
    args.name = _vendor(config, args.name)
    result: int = common.run_async_value(_reset(config, args))
    sys.stdout.flush()
    return result


def add_commands(command: common.AddCommand) -> None:
    """Add `vendor pause`, `vendor resume`, `vendor list` and `vendor reset`."""
    vendor = command("vendor", "pause, resume, list or move the offsets of vendors, fleet-wide")
    sub = vendor.add_subparsers(dest="vendor_command", required=True, metavar="COMMAND")

    pause = command("pause", "pause a vendor on every replica (it keeps its partitions)", sub)
    pause.add_argument("name", metavar="NAME", help="the vendor")
    pause.add_argument("--config", help=common.CONFIG_HELP)
    pause.add_argument("--reason", metavar="TEXT", help="why, shown in /status and `vendor list`")
    pause.add_argument("--by", metavar="WHO", help="who pauses (default: user@host)")
    pause.set_defaults(func=cmd_pause)

    resume = command("resume", "resume a paused vendor on every replica", sub)
    resume.add_argument("name", metavar="NAME", help="the vendor")
    resume.add_argument("--config", help=common.CONFIG_HELP)
    resume.add_argument("--by", metavar="WHO", help="who resumes (default: user@host)")
    resume.set_defaults(func=cmd_resume)

    listing = command("list", "every vendor's state: running or paused (who, why, when)", sub)
    listing.add_argument("--config", help=common.CONFIG_HELP)
    listing.add_argument("--json", action="store_true", help="JSON instead of columns")
    listing.set_defaults(func=cmd_list)

    reset = command("reset", "move a vendor group's committed offsets (dry run by default)", sub)
    reset.add_argument("name", metavar="NAME", help="the vendor")
    reset.add_argument("--config", help=common.CONFIG_HELP)
    to = reset.add_mutually_exclusive_group(required=True)
    to.add_argument(
        "--to-datetime",
        metavar="T",
        help="the first record at or after T (ISO time, or a duration ago: 30m, 2h, 1d)",
    )
    to.add_argument("--to-earliest", action="store_true", help="the earliest record kept")
    to.add_argument("--to-latest", action="store_true", help="the log end (skip everything)")
    to.add_argument("--shift-by", type=int, metavar="N", help="N records on (negative: back)")
    to.add_argument(
        "--to-offset",
        action="append",
        metavar="P:O",
        help="partition P to offset O (TOPIC:P:O for one topic; repeat for more)",
    )
    reset.add_argument("--topic", metavar="TOPIC", help="only this topic of the vendor's")
    reset.add_argument("--execute", action="store_true", help="apply the plan (default: show it)")
    reset.add_argument(
        "--dedup",
        action="store_true",
        help="moved back, skip events delivered before (default: send the stretch again)",
    )
    reset.add_argument("--json", action="store_true", help="the plan as JSON")
    reset.set_defaults(func=cmd_reset)
