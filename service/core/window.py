"""One partition's window: what was fetched from its commit point on, in records and bytes.

The window is what a crash would deliver again and what the process holds for the partition, so
it is bounded from the commit point (not by the records still unfinished): one record that never
finishes pauses its partition once the window is full, and later events wait in Kafka. Each
assignment of a partition is a new epoch; work of an older epoch is never sent or completed.
"""

from __future__ import annotations

from service.core.offsets import OffsetTracker


class PartitionWindow:
    """The commit point, window and bytes of one partition for one assignment (epoch)."""

    __slots__ = ("_bytes", "_tracker", "active", "bytes_in_flight", "committed", "epoch")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._tracker = OffsetTracker()
        self._bytes: dict[int, int] = {}  # offset -> bytes, for records not yet terminal
        self.bytes_in_flight = 0
        self.committed: int | None = None  # the last commit point the group acknowledged
        self.active = 0  # deliveries started and not finished (a revocation waits for them)

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
        return self._tracker.complete(offset)

    @property
    def in_flight(self) -> int:
        """Records fetched and not yet terminal."""
        return len(self._bytes)

    @property
    def size(self) -> int:
        """Records held from the commit point on: the window a crash would deliver again."""
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
