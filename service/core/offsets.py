"""Per-partition offset tracking: dispatched in order, completed in any order, committed safely."""

from __future__ import annotations

from collections import deque


class OffsetTracker:
    """Tracks one partition; the commit point never passes a record that is not yet terminal."""

    __slots__ = ("_done", "_last_dispatched", "_pending")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()  # dispatched offsets, ascending
        self._done: set[int] = set()  # terminal offsets still behind an unfinished one
        self._last_dispatched: int | None = None

    def dispatch(self, offset: int) -> None:
        """Record that `offset` was fetched; offsets must arrive in increasing order."""
        if self._last_dispatched is not None and offset <= self._last_dispatched:
            raise ValueError(f"offset {offset} dispatched after {self._last_dispatched}")
        self._pending.append(offset)
        self._last_dispatched = offset

    def complete(self, offset: int) -> bool:
        """Record that `offset` is terminal (delivered, dead-lettered or skipped); True when the
        commit point moved on (it was the oldest unfinished offset)."""
        pending = self._pending
        if pending and pending[0] == offset:
            pending.popleft()
            done = self._done
            while pending and pending[0] in done:
                done.discard(pending.popleft())
            return True
        self._done.add(offset)
        return False

    def done_above(self) -> set[int]:
        """Terminal offsets above the commit point (behind an unfinished one)."""
        return self._done

    @property
    def last_dispatched(self) -> int | None:
        """The highest offset dispatched so far."""
        return self._last_dispatched

    @property
    def tracked(self) -> int:
        """Offsets held from the commit point on (terminal ones behind an unfinished one too)."""
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        """Records dispatched and not yet terminal."""
        return len(self._pending) - len(self._done)

    def commit_point(self) -> int | None:
        """The offset to commit (the next one to consume), or None if nothing was dispatched."""
        if self._pending:
            return self._pending[0]
        if self._last_dispatched is None:
            return None
        return self._last_dispatched + 1
