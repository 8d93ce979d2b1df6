"""Progress above a partition's commit point, as text Kafka keeps with the commit: the offsets
above it already terminal, and the first-attempt time of records still being retried. Pure.

The commit point alone says "everything below is done"; one record retrying at the head holds it
while the records after it are delivered. This text says which of those are done too (so a
restart or the partition's next owner skips them) and when the head was first tried (so its
retry budget survives the move): the Confluent Parallel Consumer's technique, in OffsetCommit
metadata or, where a broker drops that, in a progress record (`service.kafka`).

Text form (version 1), safe in any metadata field or record value::

    "cr1" + kind + base64url(body), no padding      kind: "R" run-length, "B" bitset

    body    = varint base
              varint attempt_count, then per attempt (ascending offsets):
                  varint (offset - base), varint first_at_s, varint count, varint excused_s
              R: varint run_count, then run lengths alternating not-done / done, the first
                 run starting at base (never done: base is the first unfinished offset)
              B: varint bit_count, then bytes: bit i (LSB first) set = offset base + 1 + i done

The encoder picks the shorter of R and B for each commit; past `max_chars` it keeps only the
attempts, then nothing (the plain offset): a text never claims an offset it was not told of.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

import msgspec

__all__ = ["MAGIC", "MAX_SPAN", "Attempt", "Progress", "decode", "encode"]

MAGIC = "cr1"
# Offsets above the base one text may cover: a decoded text never expands to more than this.
MAX_SPAN = 1 << 20
# Longest text read back: anything longer is not ours (metadata limits are a few KiB).
_MAX_TEXT_CHARS = 1 << 20
_RUNS, _BITS = "R", "B"


class Attempt(msgspec.Struct, frozen=True, gc=False):
    """One unfinished record's retry clock: its offset, first attempt (epoch seconds, whole),
    tries so far, and seconds of vendor-wide waiting not charged to it."""

    offset: int
    first_at_s: int
    count: int
    excused_s: int = 0


class Progress(msgspec.Struct, frozen=True):
    """Every offset below `base` is terminal; so is each of `done` (ascending, all above base);
    `attempts` (ascending offsets, none done) are the retry clocks of records not finished."""

    base: int
    done: tuple[int, ...] = ()
    attempts: tuple[Attempt, ...] = ()

    def since(self, committed: int) -> Progress | None:
        """This progress seen from the group's committed offset: what is above it, or None when
        the committed offset is below the base (an operator moved the group back: start over)."""
        if committed < self.base:
            return None
        if committed == self.base:
            return self
        return Progress(
            committed,
            tuple(o for o in self.done if o > committed),
            tuple(a for a in self.attempts if a.offset >= committed),
        )

    @property
    def empty(self) -> bool:
        """Whether it says nothing the plain offset does not."""
        return not self.done and not self.attempts


def progress(base: int, done: Iterable[int], attempts: Iterable[Attempt] = ()) -> Progress:
    """A Progress from unordered parts, keeping only what lies above (or, attempts, at) base."""
    kept = tuple(sorted({o for o in done if o > base}))
    done_set = set(kept)
    clocks = {a.offset: a for a in attempts if a.offset >= base and a.offset not in done_set}
    return Progress(base, kept, tuple(clocks[o] for o in sorted(clocks)))


# ---- encoding ----------------------------------------------------------------------------------


def _varint(value: int, out: bytearray) -> None:
    """Unsigned LEB128."""
    if value < 0:
        raise ValueError(f"negative value {value}")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _head(p: Progress, attempts: tuple[Attempt, ...]) -> bytearray:
    out = bytearray()
    _varint(p.base, out)
    _varint(len(attempts), out)
    for a in attempts:
        _varint(a.offset - p.base, out)
        _varint(max(0, a.first_at_s), out)
        _varint(max(0, a.count), out)
        _varint(max(0, a.excused_s), out)
    return out


def _runs(p: Progress) -> bytes:
    """Run lengths from base: not-done, done, not-done, ... (the last run is a done one)."""
    out = bytearray()
    runs: list[int] = []
    cursor = p.base  # the next offset not yet in a run
    for offset in p.done:
        if runs and offset == cursor:
            runs[-1] += 1  # extends the current done run
        else:
            runs.append(offset - cursor)  # the not-done gap before it
            runs.append(1)
        cursor = offset + 1
    _varint(len(runs), out)
    for length in runs:
        _varint(length, out)
    return bytes(out)


def _bits(p: Progress) -> bytes:
    out = bytearray()
    count = p.done[-1] - p.base if p.done else 0
    _varint(count, out)
    bits = bytearray((count + 7) // 8)
    for offset in p.done:
        i = offset - p.base - 1
        bits[i >> 3] |= 1 << (i & 7)
    return bytes(out + bits)


def _text(kind: str, body: bytes) -> str:
    return MAGIC + kind + base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")


def encode(p: Progress, max_chars: int, max_attempts: int = 32) -> str:
    """The shortest text for `p` within `max_chars`: its done offsets and up to `max_attempts`
    retry clocks (lowest offsets first: the head matters most); past the size, the clocks
    alone; past that "" (the plain offset says everything that is kept)."""
    p = progress(p.base, p.done, p.attempts)  # ordered, above base, no clock on a done offset
    attempts = p.attempts[:max_attempts]
    head = _head(p, attempts)
    span = p.done[-1] - p.base if p.done else 0
    if span <= MAX_SPAN:
        runs, bits = _runs(p), _bits(p)
        kind, tail = (_RUNS, runs) if len(runs) <= len(bits) else (_BITS, bits)
        text = _text(kind, bytes(head) + tail)
        if len(text) <= max_chars:
            return text
    if attempts:
        text = _text(_RUNS, bytes(head) + b"\x00")  # no runs: nothing above is done
        if len(text) <= max_chars:
            return text
    return ""


# ---- decoding ----------------------------------------------------------------------------------


class _Malformed(Exception):
    """Not a text this codec wrote."""


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varint(self) -> int:
        value = shift = 0
        data = self.data
        while True:
            if self.pos >= len(data) or shift > 63:
                raise _Malformed
            byte = data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def rest(self) -> bytes:
        return self.data[self.pos :]


def _decode_runs(r: _Reader, base: int) -> list[int]:
    count = r.varint()
    if count % 2:
        raise _Malformed  # runs come in (not-done, done) pairs
    done: list[int] = []
    cursor = base
    for index in range(count):
        length = r.varint()
        if cursor + length - base > MAX_SPAN + 1:
            raise _Malformed
        if index % 2:
            if length == 0:
                raise _Malformed
            done.extend(range(cursor, cursor + length))
        elif length == 0:
            raise _Malformed  # base is never done, and two done runs would have been one
        cursor += length
    if r.rest():
        raise _Malformed
    return done


def _decode_bits(r: _Reader, base: int) -> list[int]:
    count = r.varint()
    bits = r.rest()
    if count > MAX_SPAN or len(bits) != (count + 7) // 8:
        raise _Malformed
    return [base + 1 + i for i in range(count) if bits[i >> 3] >> (i & 7) & 1]


def decode(text: str | None) -> Progress | None:
    """The progress a text carries, or None for anything else (empty, foreign, corrupt): it
    never raises, and never yields an offset the text does not set."""
    if not text or len(text) > _MAX_TEXT_CHARS or not text.startswith(MAGIC):
        return None
    kind, payload = text[len(MAGIC) : len(MAGIC) + 1], text[len(MAGIC) + 1 :]
    if kind not in (_RUNS, _BITS) or not payload.isascii():
        return None
    try:
        body = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        r = _Reader(body)
        base = r.varint()
        attempts = []
        for _ in range(r.varint()):
            offset = base + r.varint()
            attempts.append(Attempt(offset, r.varint(), r.varint(), r.varint()))
        done = _decode_runs(r, base) if kind == _RUNS else _decode_bits(r, base)
    except (_Malformed, binascii.Error, ValueError):
        return None
    done_set = set(done)
    if any(a.offset in done_set for a in attempts):
        return None
    offsets = [a.offset for a in attempts]
    if offsets != sorted(set(offsets)):
        return None
    return Progress(base, tuple(done), tuple(attempts))
