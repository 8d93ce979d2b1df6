"""`status`: each vendor group like `kafka-consumer-groups --describe`, read from Kafka (no relay
needs to run): per partition the committed offset, log end and lag; per vendor its members,
its paused state (the control topic) and, from any `--relay` whose /status answers, its breaker.
"""

from __future__ import annotations

import argparse
import shutil
from typing import TYPE_CHECKING, Any

from service.cli import common

if TYPE_CHECKING:
    from service.config import Config
    from service.core.control import PartitionStatus, VendorControl

RELAY_TIMEOUT_S = 2.0


async def _breakers(urls: list[str]) -> dict[str, str]:
    """Each vendor's breaker state from the first replica /status that names it (optional:
    a replica that does not answer is left out)."""
    import aiohttp

    found: dict[str, str] = {}
    timeout = aiohttp.ClientTimeout(total=RELAY_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in urls:
            try:
                async with session.get(url.rstrip("/") + "/status") as resp:
                    body = await resp.json()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                common.warn(f"--relay {url}: /status did not answer; breaker state left out")
                continue
            for name, entry in (body.get("vendors") or {}).items():
                breaker = entry.get("breaker") if isinstance(entry, dict) else None
                if isinstance(breaker, str):
                    found.setdefault(name, breaker)
    return found


async def gather(config: Config, vendors: list[str], relays: list[str]) -> dict[str, Any]:
    """Every chosen vendor's group, partitions, members, state and breaker, as JSON data."""
    from service.core.control import PartitionStatus
    from service.delivery.control import ControlTopic, group_members, read_offsets

    kafka = config.kafka
    await common.probe_config(kafka)
    control = ControlTopic(kafka)
    try:
        states = await control.read_all()
    finally:
        await control.close()
    breakers = await _breakers(relays) if relays else {}
    result: dict[str, Any] = {}
    for name in vendors:
        group = f"{kafka.group_prefix}.{name}"
        found = await read_offsets(kafka, group, list(kafka.topics))
        earliest = kafka.auto_offset_reset == "earliest"
        rows = [
            PartitionStatus(
                name,
                p.topic,
                p.partition,
                p.committed,
                p.latest,
                p.earliest if earliest else p.latest,
            )
            for p in found
        ]
        state = states.get(name)
        result[name] = {
            "group": group,
            "members": await group_members(kafka, group),
            "state": "paused" if state and state.paused else "running",
            "paused": _paused_json(state),
            "breaker": breakers.get(name),
            "lag": sum(r.lag for r in rows),
            "partitions": [_row_json(r) for r in rows],
        }
    return result


def _paused_json(state: VendorControl | None) -> dict[str, Any] | None:
    from service.cli.vendor import _when

    if state is None or not state.paused:
        return None
    return {"by": state.by, "reason": state.reason, "at": _when(state.at_s)}


def _row_json(row: PartitionStatus) -> dict[str, Any]:
    return {
        "topic": row.topic,
        "partition": row.partition,
        "committed": row.committed,
        "end": row.end,
        "start": row.start,
        "lag": row.lag,
    }


def render(data: dict[str, Any], width: int = 80) -> list[str]:
    """The plain table: a line per vendor (group, members, state, breaker), then the
    partitions' columns; every line within `width` characters."""
    from service.core.control import PartitionStatus, status_lines

    lines: list[str] = []
    for name, entry in data.items():
        paused = entry["paused"]
        breaker = f", breaker {entry['breaker']}" if entry["breaker"] else ""
        head = (
            f"{name}: group {entry['group']}, {entry['members']} member(s), "
            f"{entry['state']}{breaker}"
        )
        shown = [head]
        if paused is not None:  # who, when and why on a line of its own
            why = f": {paused['reason']}" if paused["reason"] else ""
            shown.append(f"  paused by {paused['by']} at {paused['at']}{why}")
        lines.extend(line if len(line) <= width else line[: width - 1] + "…" for line in shown)
    rows = [
        PartitionStatus(name, p["topic"], p["partition"], p["committed"], p["end"], p["start"])
        for name, entry in data.items()
        for p in entry["partitions"]
    ]
    states = {name: entry["state"] for name, entry in data.items()}
    return [*lines, "", *status_lines(rows, states, width)]


def cmd_status(args: argparse.Namespace) -> int:
    """Print each vendor group's offsets, lag, members and state."""
    common.quiet_kafka_logs()
    config = common.load(args)
    chosen = common.vendor_names(config, args.vendor, enabled_only=False) or list(
        config.enabled_vendors()
    )
    data = common.run_async_value(gather(config, chosen, args.relay or []))
    if args.json:
        common.write_json({"vendors": data})
        return common.EXIT_OK
    width = min(80, shutil.get_terminal_size((80, 24)).columns)
    for line in render(data, width):
        print(line)
    return common.EXIT_OK


def add_commands(command: common.AddCommand) -> None:
    """Add `status`."""
    status = command("status", "each vendor group's offsets, lag, members and paused state")
    status.add_argument("--config", help=common.CONFIG_HELP)
    status.add_argument(
        "--vendor", action="append", metavar="NAME", help="only this vendor (repeat for more)"
    )
    status.add_argument(
        "--relay",
        action="append",
        metavar="URL",
        help="a replica's HTTP address (http://host:8080), for breaker states (repeatable)",
    )
    status.add_argument("--json", action="store_true", help="JSON instead of columns")
    status.set_defaults(func=cmd_status)
