"""What operators steer a vendor with, as pure data: the control record (paused or running, by
whom, why, when, and an offset reset for the paused fleet to apply) and the plan of a reset.

The control topic is compacted and keyed by vendor name: its last record per vendor is the
vendor's state, read by every replica. A reset rides in the paused vendor's record so the
replicas, the group's members, commit the new offsets themselves (a broker refuses a commit
from outside a group that has members).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec

__all__ = [
    "MODES",
    "PartitionOffsets",
    "ResetMove",
    "ResetRequest",
    "VendorControl",
    "decode_control",
    "encode_control",
    "parse_offset_spec",
    "plan_reset",
    "resend_marks",
]

# How `vendor reset` picks the new offset of each partition.
MODES = ("to-datetime", "to-earliest", "to-latest", "shift-by", "to-offset")
Mode = Literal["to-datetime", "to-earliest", "to-latest", "shift-by", "to-offset"]
_MAX_RECORD_BYTES = 1 << 20  # a control record longer than this is not ours


class ResetRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Offsets the paused replicas commit for their assigned partitions, once per `id`."""

    id: str
    offsets: tuple[tuple[str, int, int], ...]  # (topic, partition, new offset)


class VendorControl(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A vendor's operator state: paused or not, who set it, why, when (epoch seconds)."""

    vendor: str
    paused: bool
    by: str = ""
    reason: str = ""
    at_s: float = 0.0
    reset: ResetRequest | None = None
    # Stretches a backward reset sends again, past dedup: (topic, partition, from, until).
    # Kept by every later record (pause, resume) until the next reset replaces them.
    resend: tuple[tuple[str, int, int, int], ...] = ()


_decoder = msgspec.json.Decoder(VendorControl)


def encode_control(state: VendorControl) -> bytes:
    """The control record's value (its key is the vendor name)."""
    return msgspec.json.encode(state)


def decode_control(key: bytes | None, value: bytes | None) -> VendorControl | None:
    """A control record read back; None for a tombstone, a foreign or malformed record, or one
    whose vendor is not its key (the key is what compaction keeps one of)."""
    if key is None or value is None or len(value) > _MAX_RECORD_BYTES:
        return None
    try:
        state = _decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if state.vendor.encode() != key:
        return None
    return state


class PartitionOffsets(msgspec.Struct, frozen=True):
    """What a reset plan needs of one partition: its group's committed offset (None: none),
    its earliest and log-end offsets, and the first offset at the requested time (None: no
    record at or after it)."""

    topic: str
    partition: int
    committed: int | None
    earliest: int
    latest: int
    at_time: int | None = None


class ResetMove(msgspec.Struct, frozen=True):
    """One partition's move: from its committed offset (None: none) to `target`."""

    topic: str
    partition: int
    current: int | None
    target: int
    earliest: int
    latest: int

    @property
    def delta(self) -> int | None:
        """Records the move skips (positive) or re-delivers (negative); None without a commit."""
        return None if self.current is None else self.target - self.current


def parse_offset_spec(text: str, topics: Sequence[str]) -> tuple[str | None, int, int]:
    """`P:O` (partition P of every topic) or `TOPIC:P:O`, as (topic or None, partition, offset);
    ValueError saying what is wrong."""
    parts = text.rsplit(":", 2)
    if len(parts) == 2:
        topic: str | None = None
        partition_text, offset_text = parts
    elif len(parts) == 3:
        topic, partition_text, offset_text = parts
        if topic not in topics:
            raise ValueError(f"{text!r}: topic {topic!r} is not one of {', '.join(topics)}")
    else:
        raise ValueError(f"{text!r}: give PARTITION:OFFSET or TOPIC:PARTITION:OFFSET")
    if not partition_text.isdigit() or not offset_text.isdigit():
        raise ValueError(f"{text!r}: partition and offset are whole numbers >= 0")
    return topic, int(partition_text), int(offset_text)


def plan_reset(
    partitions: Sequence[PartitionOffsets],
    mode: Mode,
    shift_by: int = 0,
    to_offsets: Mapping[tuple[str | None, int], int] | None = None,
) -> list[ResetMove]:
    """Each partition's new offset for the mode, clamped to [earliest, log end] as Kafka's
    `--reset-offsets` does. `to-offset` moves only the partitions it names (key (topic,
    partition), topic None = that partition of every topic); `shift-by` moves from the committed
    offset (from the earliest when there is none)."""
    moves = []
    for p in sorted(partitions, key=lambda p: (p.topic, p.partition)):
        if mode == "to-earliest":
            target = p.earliest
        elif mode == "to-latest":
            target = p.latest
        elif mode == "to-datetime":
            target = p.latest if p.at_time is None else p.at_time
        elif mode == "shift-by":
            base = p.earliest if p.committed is None else p.committed
            target = base + shift_by
        else:
            wanted = to_offsets or {}
            found = wanted.get((p.topic, p.partition), wanted.get((None, p.partition)))
            if found is None:
                continue
            target = found
        target = min(max(target, p.earliest), p.latest)
        moves.append(ResetMove(p.topic, p.partition, p.committed, target, p.earliest, p.latest))
    return moves


def resend_marks(moves: Sequence[ResetMove]) -> tuple[tuple[str, int, int, int], ...]:
    """The stretches a reset sends again: each partition moved back, from its new offset to
    its committed one (what was delivered there is sent again, dedup or not)."""
    return tuple(
        (m.topic, m.partition, m.target, m.current)
        for m in moves
        if m.current is not None and m.target < m.current
    )


def reset_lines(moves: Sequence[ResetMove]) -> list[str]:
    """The plan as columns (within 80 characters for topics up to 30)."""
    header = ("TOPIC", "PART", "CURRENT", "NEW", "MOVE", "EARLIEST", "END")
    rows = [header]
    for m in moves:
        delta = m.delta
        shown = "-" if delta is None else f"{delta:+d}"
        current = "-" if m.current is None else str(m.current)
        rows.append(
            (
                _cut(m.topic, 30),
                str(m.partition),
                current,
                str(m.target),
                shown,
                str(m.earliest),
                str(m.latest),
            )
        )
    return _columns(rows, left=1)


def _cut(text: str, width: int) -> str:
    """Text in at most `width` characters (an ellipsis marks a cut)."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _columns(rows: Sequence[Sequence[str]], left: int) -> list[str]:
    """Rows aligned in columns two spaces apart: the first `left` columns left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(widths[i]) if i < left else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


class PartitionStatus(msgspec.Struct, frozen=True):
    """One partition of a vendor's group as `status` shows it."""

    vendor: str
    topic: str
    partition: int
    committed: int | None
    end: int
    start: int = 0  # where the group starts without a commit (auto_offset_reset)

    @property
    def lag(self) -> int:
        """Records behind the log end (from where the group would start, without a commit)."""
        return max(0, self.end - (self.start if self.committed is None else self.committed))


def status_lines(
    rows: Sequence[PartitionStatus], states: Mapping[str, str], width: int = 80
) -> list[str]:
    """The `status` table: one line per partition, vendor and topic cut to keep every line
    within `width` characters; `states` is each vendor's state column (running, paused...)."""
    header = ("VENDOR", "TOPIC", "PART", "COMMITTED", "END", "LAG", "STATE")
    body = [
        (
            r.vendor,
            r.topic,
            str(r.partition),
            "-" if r.committed is None else str(r.committed),
            str(r.end),
            str(r.lag),
            states.get(r.vendor, "running"),
        )
        for r in rows
    ]
    vendor_w = max([len(h) for h in header[:1]] + [len(b[0]) for b in body])
    topic_w = max([len(header[1])] + [len(b[1]) for b in body])
    rest = [max([len(header[i])] + [len(b[i]) for b in body]) for i in range(2, 7)]
    # Numbers and the state are never cut; the vendor and topic share what is left.
    room = width - sum(rest) - 2 * 6
    while vendor_w + topic_w > room and max(vendor_w, topic_w) > 8:
        if topic_w >= vendor_w:
            topic_w -= 1
        else:
            vendor_w -= 1
    cut = [(_cut(r[0], vendor_w), _cut(r[1], topic_w), *r[2:]) for r in [header, *body]]
    return _columns(cut, left=2)
