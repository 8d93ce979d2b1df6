"""One partition's window: what was fetched from its commit point on, in records and bytes, and
the progress above the commit point that a commit keeps in Kafka (service.core.progress).

The window is what the process holds for the partition, so it is bounded from the commit point
(not by the records still unfinished): one record that never finishes pauses its partition once
the window is full, and later events wait in Kafka. What a restart repeats is not the window:
the offsets completed above the commit point and the retry clocks of unfinished records are
committed with it, and restored on the next assignment (`restore`), so records already terminal
are skipped (`skip_restored`) and a retried record keeps its first-attempt time (`clock`).
Each assignment of a partition is a new epoch; work of an older epoch is never sent or completed.
"""

from __future__ import annotations

import math

from service.core.offsets import OffsetTracker
from service.core.progress import Attempt, Progress, progress


class PartitionWindow:
    """The commit point, window, bytes and progress of one partition for one assignment."""

    __slots__ = (
        "_bytes",
        "_clocks",
        "_restored",
        "_tracker",
        "active",
        "bytes_in_flight",
        "changes",
        "closing",
        "committed",
        "epoch",
        "loading",
        "saved",
        "start",
    )

    def __init__(self, epoch: int, loading: bool = False) -> None:
        self.epoch = epoch
        self._tracker = OffsetTracker()
        self._bytes: dict[int, int] = {}  # offset -> bytes, for records not yet terminal
        self.bytes_in_flight = 0
        self.committed: int | None = None  # the last commit point the group acknowledged
        self.active = 0  # deliveries started and not finished (a revocation waits for them)
        self._restored: set[int] = set()  # terminal before this assignment, not fetched yet
        self._clocks: dict[int, Attempt] = {}  # retry clocks of unfinished records
        self.start: int | None = None  # the group's committed offset when it was assigned
        self.changes = 0  # progress changes so far (completions, retry clocks)
        self.saved = 0  # `changes` as of the last progress Kafka acknowledged
        self.loading = loading  # its progress is being read: fetched records wait
        self.closing = False  # stopping: nothing more starts, nothing unsent is sent

    # ---- progress kept in Kafka --------------------------------------------------------------

    def restore(self, committed: int | None, kept: Progress | None) -> None:
        """Take the progress the last owner committed (`kept`, already seen from `committed`)."""
        self.loading = False
        self.start = committed
        if committed is not None:
            self.committed = committed
        if kept is None:
            return
        self._restored = set(kept.done)
        self._clocks = {a.offset: a for a in kept.attempts}

    def skip_restored(self, offset: int) -> bool:
        """True (and the offset tracked as terminal) when it was terminal before the assignment."""
        restored = self._restored
        if not restored or offset not in restored:
            return False
        restored.discard(offset)
        last = self._tracker.last_dispatched
        if last is not None and offset <= last:
            return True  # a re-fetch of a record already tracked
        self._tracker.dispatch(offset)
        self._tracker.complete(offset)
        self.changes += 1
        return True

    def clock(self, offset: int) -> Attempt | None:
        """The retry clock an unfinished record carries over from earlier tries."""
        return self._clocks.get(offset)

    def note_attempt(self, offset: int, first_at_s: float, count: int, excused_s: float) -> None:
        """Remember a record's retry clock (it failed and waits to be tried again)."""
        if offset not in self._bytes:
            return  # terminal already, or not this window's
        self._clocks[offset] = Attempt(
            offset, math.floor(first_at_s), count, math.floor(max(0.0, excused_s))
        )
        self.changes += 1

    @property
    def unsaved(self) -> bool:
        """Whether progress changed since Kafka last acknowledged it."""
        return self.changes != self.saved

    def progress(self) -> Progress | None:
        """The commit point and what is kept above it, or None when there is no point yet."""
        point = self._tracker.commit_point()
        if point is None:
            point = self.start
        if point is None:
            return None
        done = set(self._tracker.done_above())
        last = self._tracker.last_dispatched
        done.update(o for o in self._restored if last is None or o > last)
        return progress(point, done, self._clocks.values())

    # ---- the window --------------------------------------------------------------------------

    def dispatch(self, offset: int, size_bytes: int) -> bool:
        """Track a fetched record; False (and nothing tracked) when it was tracked before."""
        last = self._tracker.last_dispatched
        if last is not None and offset <= last:
            return False  # a re-fetch of a record already tracked
        self._tracker.dispatch(offset)
        self._bytes[offset] = size_bytes
        self.bytes_in_flight += size_bytes
        return True

    def complete(self, offset: int) -> bool:
        """Mark a record terminal; True when the commit point moved on."""
        size = self._bytes.pop(offset, None)
        if size is None:
            return False  # completed before (a duplicate completion changes nothing)
        self.bytes_in_flight -= size
        self.changes += 1
        if self._clocks:
            self._clocks.pop(offset, None)
        return self._tracker.complete(offset)

    @property
    def in_flight(self) -> int:
        """Records fetched and not yet terminal."""
        return len(self._bytes)

    @property
    def size(self) -> int:
        """Records held from the commit point on (the partition pauses when it is full)."""
        return self._tracker.tracked

    @property
    def last_dispatched(self) -> int | None:
        """The highest offset tracked."""
        return self._tracker.last_dispatched

    def commit_point(self) -> int | None:
        """The offset to commit (the next one to consume), or None if nothing was fetched."""
        return self._tracker.commit_point()

    def uncommitted(self) -> int | None:
        """The commit point if it moved past the last acknowledged commit, else None."""
        point = self._tracker.commit_point()
        if point is None or (self.committed is not None and point <= self.committed):
            return None
        return point

    def full(self, max_records: int) -> bool:
        """Whether the window holds max_records from its commit point (its partition pauses)."""
        return self._tracker.tracked >= max_records
