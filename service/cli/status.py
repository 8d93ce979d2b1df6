"""`status`: each vendor group like `kafka-consumer-groups --describe`, read from Kafka (no relay
needs to run): per partition the committed offset, log end, lag and owner; per vendor its
members, its paused state (the control topic) and, from any `--relay` whose /status answers,
its breaker. A partition's owner is the `--relay` replica whose /status lists it, else the
member the broker's DescribeGroups assigns it to (Tansu's lists none), else unknown.
"""

from __future__ import annotations

import argparse
import shutil
import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from service.cli import common

if TYPE_CHECKING:
    from service.config import Config, KafkaConfig
    from service.core.control import PartitionStatus, VendorControl

RELAY_TIMEOUT_S = 2.0
Part = tuple[str, int]  # (topic, partition)


class Owner(NamedTuple):
    """Who holds a partition: a replica's name or a group member, where that came from
    (`relay`: its /status, `broker`: DescribeGroups) and, from a replica, its breaker."""

    name: str
    source: str
    breaker: str | None = None


def replica_name(url: str) -> str:
    """A `--relay` URL as the owner column shows it: host:port, no scheme or slash."""
    return url.split("://", 1)[-1].rstrip("/")


async def _replicas(urls: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Each answering replica's name and /status body (optional: a replica that does not
    answer is left out, with a warning)."""
    import aiohttp

    found: list[tuple[str, dict[str, Any]]] = []
    timeout = aiohttp.ClientTimeout(total=RELAY_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in urls:
            try:
                async with session.get(url.rstrip("/") + "/status") as resp:
                    body = await resp.json()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                common.warn(
                    f"--relay {url}: /status did not answer; its breaker and partitions left out"
                )
                continue
            if isinstance(body, dict):
                found.append((replica_name(url), body))
    return found


def _vendor_entry(body: Mapping[str, Any], vendor: str) -> Mapping[str, Any]:
    vendors = body.get("vendors")
    entry = vendors.get(vendor) if isinstance(vendors, dict) else None
    return entry if isinstance(entry, dict) else {}


def breakers(replicas: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
    """Each vendor's breaker state from the first replica /status that names it."""
    found: dict[str, str] = {}
    for _name, body in replicas:
        for vendor in body.get("vendors") or {}:
            breaker = _vendor_entry(body, vendor).get("breaker")
            if isinstance(breaker, str):
                found.setdefault(vendor, breaker)
    return found


def owners(
    vendor: str,
    replicas: Sequence[tuple[str, Mapping[str, Any]]],
    assigned: Mapping[Part, str],
) -> dict[Part, Owner]:
    """Each of the vendor's partitions' owner: the replicas whose /status lists it among the
    vendor's `assigned_partitions` (comma-separated when two do, mid-rebalance), else the member
    the broker's assignment (`assigned`) names; a partition neither knows is left out."""
    claims: dict[Part, list[tuple[str, str | None]]] = {}
    for name, body in replicas:
        entry = _vendor_entry(body, vendor)
        breaker = entry.get("breaker")
        for item in entry.get("assigned_partitions") or []:
            topic, _, number = str(item).rpartition(":")
            if topic and number.isdigit():
                claims.setdefault((topic, int(number)), []).append(
                    (name, breaker if isinstance(breaker, str) else None)
                )
    found = {part: Owner(member, "broker") for part, member in assigned.items()}
    for part, held in claims.items():
        names = ",".join(sorted({name for name, _ in held}))
        states = {state for _, state in held}
        found[part] = Owner(names, "relay", states.pop() if len(states) == 1 else None)
    return found


def broker_assignment(members: Sequence[Sequence[Any]]) -> dict[Part, str]:
    """Which member id each partition is assigned to, from DescribeGroups' members (member_id,
    client_id, host, metadata, assignment); an empty or foreign assignment (Tansu's) adds none."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    assigned: dict[Part, str] = {}
    for member in members:
        member_id, assignment = str(member[0]), member[4]
        if not assignment:
            continue
        try:
            decoded = ConsumerProtocolMemberAssignment.decode(bytes(assignment))
        except (ValueError, TypeError, IndexError, EOFError, struct.error):  # not a consumer's
            continue
        for tp in decoded.partitions():
            assigned[(tp.topic, tp.partition)] = member_id
    return assigned


async def _describe(kafka: KafkaConfig, group: str) -> tuple[int, dict[Part, str]]:
    """How many members the broker lists in the group, and the member each partition is
    assigned to where the broker says."""
    from aiokafka.admin import AIOKafkaAdminClient

    from service.kafka import client_kwargs

    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    try:
        await admin.start()
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    for response in described:
        for entry in response.groups:
            error_code, name, _state, _protocol_type, _protocol, members = entry[:6]
            if name == group and error_code == 0:
                return len(members), broker_assignment(members)
    return 0, {}


async def gather(config: Config, vendors: list[str], relays: list[str]) -> dict[str, Any]:
    """Every chosen vendor's group, partitions (with their owners), members, state and
    breaker, as JSON data."""
    from service.core.control import PartitionStatus
    from service.delivery.control import ControlTopic, read_offsets

    kafka = config.kafka
    await common.probe_config(kafka)
    control = ControlTopic(kafka)
    try:
        states = await control.read_all()
    finally:
        await control.close()
    replicas = await _replicas(relays) if relays else []
    breaker = breakers(replicas)
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
        members, assigned = await _describe(kafka, group)
        held = owners(name, replicas, assigned)
        result[name] = {
            "group": group,
            "members": members,
            "state": "paused" if state and state.paused else "running",
            "paused": _paused_json(state),
            "breaker": breaker.get(name),
            "lag": sum(r.lag for r in rows),
            "partitions": [_row_json(r, held.get((r.topic, r.partition))) for r in rows],
        }
    return result


def _paused_json(state: VendorControl | None) -> dict[str, Any] | None:
    from service.cli.vendor import _when

    if state is None or not state.paused:
        return None
    return {"by": state.by, "reason": state.reason, "at": _when(state.at_s)}


def _row_json(row: PartitionStatus, owner: Owner | None) -> dict[str, Any]:
    return {
        "topic": row.topic,
        "partition": row.partition,
        "committed": row.committed,
        "end": row.end,
        "start": row.start,
        "lag": row.lag,
        "owner": owner.name if owner else None,
        "owner_from": owner.source if owner else None,  # relay (its /status) or broker
        "breaker": owner.breaker if owner else None,  # the owning replica's
    }


def render(data: dict[str, Any], width: int = 80) -> list[str]:
    """The plain table: a line per vendor (group, members, state, breaker), then a line per
    partition with its owner; every line within `width` characters."""
    from service.core.control import PartitionStatus

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
        (
            PartitionStatus(name, p["topic"], p["partition"], p["committed"], p["end"], p["start"]),
            entry["state"],
            p.get("owner") or "-",
        )
        for name, entry in data.items()
        for p in entry["partitions"]
    ]
    return [*lines, "", *partition_lines(rows, width)]


def partition_lines(rows: Sequence[tuple[PartitionStatus, str, str]], width: int = 80) -> list[str]:
    """One line per (partition, vendor state, owner): numbers and the state never cut; the
    vendor, topic and owner share what is left (an owner last, keeping its end: the port or
    the member id's tail tells replicas apart)."""
    from service.core.control import _cut

    header = ("VENDOR", "TOPIC", "PART", "COMMITTED", "END", "LAG", "STATE", "OWNER")
    body = [
        (
            r.vendor,
            r.topic,
            str(r.partition),
            "-" if r.committed is None else str(r.committed),
            str(r.end),
            str(r.lag),
            state,
            owner,
        )
        for r, state, owner in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    room = width - sum(widths[2:7]) - 2 * (len(header) - 1)
    vendor_w, topic_w, owner_w = widths[0], widths[1], widths[7]
    while vendor_w + topic_w + owner_w > room and max(vendor_w, topic_w) > 8:
        if topic_w >= vendor_w:
            topic_w -= 1
        else:
            vendor_w -= 1
    while vendor_w + topic_w + owner_w > room and owner_w > 8:
        owner_w -= 1
    lines = []
    for row in [header, *body]:
        cells = [
            _cut(row[0], vendor_w).ljust(vendor_w),
            _cut(row[1], topic_w).ljust(topic_w),
            *(cell.rjust(widths[i]) for i, cell in enumerate(row[2:7], start=2)),
            _cut_start(row[7], owner_w),
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _cut_start(text: str, width: int) -> str:
    """Text in at most `width` characters, keeping its end (an ellipsis marks a cut)."""
    return text if len(text) <= width else "…" + text[len(text) - width + 1 :]


def cmd_status(args: argparse.Namespace) -> int:
    """Print each vendor group's offsets, lag, owners, members and state."""
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
    status = command("status", "each vendor group's offsets, lag, owners, members and paused state")
    status.add_argument("--config", help=common.CONFIG_HELP)
    status.add_argument(
        "--vendor", action="append", metavar="NAME", help="only this vendor (repeat for more)"
    )
    status.add_argument(
        "--relay",
        action="append",
        metavar="URL",
        help="a replica's HTTP address (http://host:8080), for breaker states and the partitions "
        "it owns (repeatable)",
    )
    status.add_argument("--json", action="store_true", help="JSON instead of columns")
    status.set_defaults(func=cmd_status)
