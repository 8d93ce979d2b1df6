"""OffsetTracker: dispatched in order, completed in any order, never committed past a gap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.offsets import OffsetTracker


def test_commit_point_is_none_before_anything_is_dispatched():
    """A partition with no records has nothing to commit."""
    assert OffsetTracker().commit_point() is None


def test_commit_point_waits_for_the_lowest_unfinished_offset():
    """Completing later offsets does not move the commit point past an earlier unfinished one."""
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.dispatch(offset)
    tracker.complete(12)
    tracker.complete(11)
    assert tracker.commit_point() == 10
    tracker.complete(10)
    assert tracker.commit_point() == 13
    assert tracker.in_flight == 0


def test_gaps_in_offsets_are_skipped_over():
    """Compacted or transactional gaps between dispatched offsets do not block the commit."""
    tracker = OffsetTracker()
    tracker.dispatch(5)
    tracker.dispatch(9)
    tracker.complete(5)
    assert tracker.commit_point() == 9
    tracker.complete(9)
    assert tracker.commit_point() == 10


def test_offsets_must_be_dispatched_in_increasing_order():
    """A dispatch that goes backwards is a bug and is refused."""
    tracker = OffsetTracker()
    tracker.dispatch(3)
    with pytest.raises(ValueError, match="dispatched after"):
        tracker.dispatch(3)


@given(
    st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=60),
    st.randoms(use_true_random=False),
)
def test_no_commit_point_ever_passes_an_unfinished_record(steps, rnd):
    """Whatever the completion order, the commit point is the lowest unfinished offset."""
    tracker = OffsetTracker()
    offsets, offset = [], 0
    for step in steps:
        offset += step
        tracker.dispatch(offset)
        offsets.append(offset)
    unfinished = set(offsets)
    order = offsets[:]
    rnd.shuffle(order)
    for done in order:
        before = tracker.commit_point()
        moved = tracker.complete(done)
        unfinished.discard(done)
        point = tracker.commit_point()
        assert moved == (point != before)  # the pipeline commits on this answer
        assert point is not None
        assert all(point <= u for u in unfinished)
        if unfinished:
            assert point == min(unfinished)
        else:
            assert point == offsets[-1] + 1
        assert tracker.in_flight == len(unfinished)
