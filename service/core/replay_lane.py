"""One DLQ partition as a replay group member sees it: which offsets are retired, held or in
flight from the group's commit point on, as a Progress (service.core.progress) to commit. Pure.

A replay reads its partition in offset order and classifies every offset once: `DONE` (not this
vendor's, a legacy replay mark, retired before, or nothing there), `SEND` (fed to the pipeline,
done once it finishes) or `HOLD` (this vendor's open letter the filter leaves: never done by this
run, so the commit point stays on it and a later replay still finds it). The commit point is the
first offset not done; what is done above it goes with the commit, so a restart, a crash or the
partition's next owner skips exactly the letters finished. The span from the commit point to the
read position is capped (`max_span`) so the progress always fits the broker's metadata limit and
memory stays bounded: a partition whose span is full reads no further until its head is done.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from enum import Enum

from service.core.progress import Progress

__all__ = ["Lane", "Verdict", "span_for"]


class Verdict(Enum):
    """What a replay does with one offset of its partition."""

    DONE = "done"
    SEND = "send"
    HOLD = "hold"


def span_for(max_chars: int) -> int:
    """The widest span whose progress always fits `max_chars`: the codec's bitset takes one bit
    per offset (6 per base64 character), plus a head of at most ~700 characters."""
    return max(64, (max_chars - 700) * 6)


class Lane:
    """A partition's replay state for one assignment, from the group's committed offset."""

    __slots__ = (
        "_ahead",
        "_finished",
        "_held",
        "_open",
        "_pending",
        "changes",
        "end",
        "max_span",
        "saved",
        "scanned",
        "sent",
    )

    def __init__(self, base: int, retired_above: Iterable[int], end: int, max_span: int) -> None:
        self.end = end  # the replay reads nothing at or past this offset
        self.scanned = base  # every offset below it is classified
        self.max_span = max_span
        self._ahead = {o for o in retired_above if o >= base}  # retired before, not read yet
        self._open: deque[int] = deque()  # offsets not done (held or pending), ascending
        self._pending: set[int] = set()  # fed to the pipeline, not finished
        self._finished: set[int] = set()  # finished but still behind an open offset
        self._held: set[int] = set()
        self.sent = 0  # letters this lane finished (delivered, skipped or written back)
        self.changes = 0
        self.saved = 0

    def retired(self, offset: int) -> bool:
        """Whether the progress read at assignment says this offset is already done."""
        return offset in self._ahead

    def advance(self, offset: int, verdict: Verdict) -> None:
        """Classify the next offset read (anything skipped between is done: nothing is there)."""
        if offset < self.scanned:
            raise ValueError(f"offset {offset} read after {self.scanned}")
        self._ahead.discard(offset)
        if verdict is Verdict.SEND:
            self._open.append(offset)
            self._pending.add(offset)
        elif verdict is Verdict.HOLD:
            self._open.append(offset)
            self._held.add(offset)
        self.scanned = offset + 1
        self.changes += 1

    def reach(self, offset: int) -> None:
        """Nothing is left below `offset` to read (the partition's end, or a gap)."""
        if offset > self.scanned:
            self.scanned = offset
            self.changes += 1

    def finish(self, offset: int) -> bool:
        """A fed letter is terminal; False when it was not pending here."""
        if offset not in self._pending:
            return False
        self._pending.discard(offset)
        self._finished.add(offset)
        self.sent += 1
        self.changes += 1
        opened = self._open
        while opened and opened[0] in self._finished:
            self._finished.discard(opened.popleft())
        return True

    @property
    def pending(self) -> frozenset[int]:
        """Letters fed and not finished."""
        return frozenset(self._pending)

    @property
    def held(self) -> int:
        """Open letters of the vendor this run leaves (the filter does not take them)."""
        return len(self._held)

    def commit_point(self) -> int:
        """The first offset not done."""
        return self._open[0] if self._open else self.scanned

    @property
    def full(self) -> bool:
        """Whether the span from the commit point is at its cap (read no further for now)."""
        return self.scanned - self.commit_point() >= self.max_span

    @property
    def read_to_end(self) -> bool:
        """Whether every offset below the end was read."""
        return self.scanned >= self.end

    @property
    def complete(self) -> bool:
        """Nothing more this run can do here: read to the end (or full) and nothing in flight."""
        return (self.read_to_end or self.full) and not self._pending

    @property
    def unsaved(self) -> bool:
        """Whether the progress changed since the group last acknowledged it."""
        return self.changes != self.saved

    def progress(self) -> Progress:
        """The commit point and the offsets done above it (read ones and ones retired before)."""
        point = self.commit_point()
        if not self._open:  # retired offsets right at the read position need no reading again
            while point in self._ahead:
                point += 1
        not_done = self._pending | self._held
        done = [o for o in range(point + 1, self.scanned) if o not in not_done]
        done.extend(sorted(o for o in self._ahead if o > point and o >= self.scanned))
        return Progress(point, tuple(done))
