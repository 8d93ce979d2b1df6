"""A replay group member's view of one DLQ partition (service.core.replay_lane), and the
intervals legacy marks are kept as: what is done, held and in flight, and the progress
committed for it."""

from __future__ import annotations

import pytest

from service.core.progress import decode, encode
from service.core.replay_lane import Lane, Verdict, span_for
from service.delivery.replay import Intervals, Retired


def test_letters_finished_out_of_order_are_all_in_the_progress() -> None:
    """A letter still retrying at the head holds the commit point; every later letter that
    finished is done above it, so a restart sends only the head again."""
    lane = Lane(0, (), end=10, max_span=1000)
    for offset in range(10):
        lane.advance(offset, Verdict.SEND)
    for offset in range(1, 10):
        assert lane.finish(offset)
    kept = lane.progress()
    assert kept.base == 0
    assert kept.done == tuple(range(1, 10))
    assert not lane.complete  # the head is still in flight
    assert lane.finish(0)
    assert lane.complete
    assert lane.progress().base == 10 and lane.progress().done == ()


def test_restored_progress_skips_what_an_earlier_run_finished() -> None:
    """The next owner of the partition retires exactly what the last one finished."""
    first = Lane(0, (), end=6, max_span=1000)
    for offset in range(6):
        first.advance(offset, Verdict.SEND)
    for offset in (1, 3, 4):
        first.finish(offset)
    text = encode(first.progress(), 4000)
    restored = decode(text)
    assert restored is not None
    second = Lane(restored.base, restored.done, end=6, max_span=1000)
    assert [o for o in range(6) if not second.retired(o)] == [0, 2, 5]


def test_held_letters_keep_the_commit_point_for_a_later_replay() -> None:
    """A letter the filter leaves is not done: the commit point stays on it."""
    lane = Lane(0, (), end=4, max_span=1000)
    lane.advance(0, Verdict.HOLD)
    lane.advance(1, Verdict.SEND)
    lane.advance(2, Verdict.DONE)
    lane.advance(3, Verdict.SEND)
    lane.finish(1)
    lane.finish(3)
    assert lane.complete and lane.held == 1
    assert lane.progress().base == 0
    assert lane.progress().done == (1, 2, 3)


def test_offsets_retention_removed_are_done_and_an_emptied_partition_is_complete() -> None:
    """Gaps (deleted letters) are done; a partition whose log starts at its end is complete as
    soon as the reader's position is there, and nothing is counted twice."""
    lane = Lane(0, (), end=10, max_span=1000)
    lane.advance(7, Verdict.SEND)  # 0-6 deleted by retention
    assert lane.progress().base == 7
    lane.finish(7)
    assert not lane.complete
    lane.reach(10)
    assert lane.complete and lane.sent == 1
    emptied = Lane(3, (), end=5, max_span=1000)
    emptied.reach(5)
    assert emptied.complete and emptied.sent == 0 and emptied.progress().base == 5


def test_restored_offsets_at_the_read_position_move_the_commit_point() -> None:
    """Offsets an earlier run finished right where this one reads need no reading again."""
    lane = Lane(4, (5, 6, 9), end=20, max_span=1000)
    lane.advance(4, Verdict.DONE)
    kept = lane.progress()
    assert kept.base == 7 and kept.done == (9,)


def test_the_span_is_capped_so_the_progress_always_fits() -> None:
    """A held head with letters done after it: reading stops at the cap, and the progress of
    the worst pattern within the cap still fits the metadata limit."""
    span = span_for(4000)
    lane = Lane(0, (), end=10 * span, max_span=span)
    offset = 0
    while not lane.full:
        lane.advance(offset, Verdict.HOLD if offset % 2 == 0 else Verdict.DONE)
        offset += 1
    assert lane.scanned == span
    kept = lane.progress()
    text = encode(kept, 4000)
    assert text and decode(text) == kept


def test_a_letter_cannot_be_read_twice_or_finished_unless_fed() -> None:
    """Offsets only go forward; finishing an offset never fed changes nothing."""
    lane = Lane(0, (), end=5, max_span=100)
    lane.advance(2, Verdict.SEND)
    with pytest.raises(ValueError, match="read after"):
        lane.advance(1, Verdict.SEND)
    assert not lane.finish(3)


def test_a_mark_naming_a_million_offsets_is_one_interval() -> None:
    """Legacy replay marks are kept as merged intervals, never expanded."""
    marks = Intervals()
    marks.add(0, 999_999)
    marks.add(5, 7)
    marks.add(1_000_000, 1_000_002)
    marks.seal()
    assert len(marks._pairs) == 1
    assert 0 in marks and 1_000_002 in marks and 1_000_003 not in marks
    retired = Retired()
    retired.marks[("a", 0)] = marks
    retired.points[("b", 0)] = 10
    assert retired("a", 0, 500) and not retired("a", 1, 500)
    assert retired("b", 0, 9) and not retired("b", 0, 10)
