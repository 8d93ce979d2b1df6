"""PartitionWindow and FlowControl: pure state, no loop, no network."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from service.config import PipelineConfig
from service.core.window import PartitionWindow
from service.delivery.flow import KEEPALIVE, FlowControl

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


class Pauses:
    def __init__(self) -> None:
        self.paused: set[TopicPartition] = set()

    def pause(self, *tps: TopicPartition) -> None:
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused -= set(tps)


def _gauge() -> SimpleNamespace:
    return SimpleNamespace(set=lambda value: None)


def test_the_window_counts_from_the_commit_point_not_the_unfinished_records():
    """Behind one unfinished record the window keeps every later offset, finished or not."""
    window = PartitionWindow(epoch=1)
    for offset in range(10):
        window.dispatch(offset, 100)
    for offset in range(1, 10):
        window.complete(offset)
    assert (window.in_flight, window.size, window.bytes_in_flight) == (1, 10, 100)
    assert window.full(10) and not window.full(11)
    assert window.complete(0) is True
    assert (window.size, window.commit_point(), window.bytes_in_flight) == (0, 10, 0)


def test_a_refetched_or_twice_completed_record_changes_nothing():
    """Dispatching an offset again, or completing it twice, leaves counts and bytes alone."""
    window = PartitionWindow(epoch=1)
    assert window.dispatch(5, 10) and not window.dispatch(5, 10)
    assert window.complete(5) and not window.complete(5)
    assert window.bytes_in_flight == 0 and window.uncommitted() == 6
    window.committed = 6
    assert window.uncommitted() is None


@given(st.permutations(list(range(30))))
def test_the_commit_point_never_passes_an_unfinished_record(order):
    """Whatever order records finish in, the commit point is the lowest unfinished offset."""
    window = PartitionWindow(epoch=1)
    for offset in range(30):
        window.dispatch(offset, 1)
    done: set[int] = set()
    for offset in order:
        window.complete(offset)
        done.add(offset)
        lowest = min(set(range(30)) - done, default=30)
        assert window.commit_point() == lowest


def test_a_full_window_pauses_only_its_partition():
    """A stuck record pauses its own partition when the window is full; the other fetches on."""
    consumer = Pauses()
    flow = FlowControl(consumer, PipelineConfig(max_in_flight=5), _gauge())
    stuck, free = PartitionWindow(1), PartitionWindow(2)
    for offset in range(5):
        stuck.dispatch(offset, 1)
    for offset in range(1, 5):
        stuck.complete(offset)
    flow.update({TP0: stuck, TP1: free}, blocked=False)
    assert consumer.paused == {TP0}
    stuck.complete(0)
    flow.update({TP0: stuck, TP1: free}, blocked=False)
    assert consumer.paused == set()


def test_bytes_over_the_cap_pause_everything_until_half_of_it():
    """At max_in_flight_bytes every partition pauses; they resume under half of it."""
    consumer = Pauses()
    flow = FlowControl(consumer, PipelineConfig(max_in_flight_bytes=1000), _gauge())
    window = PartitionWindow(1)
    window.dispatch(0, 600)
    window.dispatch(1, 600)
    windows = {TP0: window, TP1: PartitionWindow(2)}
    flow.update(windows, blocked=False)
    assert consumer.paused == {TP0, TP1} and flow.room(windows) >= 1
    window.complete(0)
    flow.update(windows, blocked=False)
    assert consumer.paused == {TP0, TP1}  # 600 bytes: above half the cap
    window.complete(1)
    flow.update(windows, blocked=False)
    assert consumer.paused == set()


def test_a_fetch_covers_only_partitions_that_are_not_paused():
    """Paused partitions are left out of getmany (aiokafka would drop what it fetched for them);
    with every partition paused the fetch names KEEPALIVE alone, which nobody is assigned."""
    consumer = Pauses()
    flow = FlowControl(consumer, PipelineConfig(max_in_flight=5), _gauge())
    full, free = PartitionWindow(1), PartitionWindow(2)
    windows = {TP0: full, TP1: free}
    flow.update(windows, blocked=False)
    assert flow.fetchable(windows) == ()  # nothing paused: every partition
    for offset in range(5):
        full.dispatch(offset, 1)
    for offset in range(1, 5):
        full.complete(offset)  # offset 0 unfinished: the window is full, the pipeline is not
    flow.update(windows, blocked=False)
    assert flow.fetchable(windows) == (TP1,)
    flow.update(windows, blocked=True)
    assert flow.fetchable(windows) == (KEEPALIVE,)
    assert KEEPALIVE.partition < 0


def test_a_paused_pipeline_may_resume_only_once_records_and_bytes_are_both_low():
    """`may_resume` (asked at each finished record while paused) is below_low_water's answer."""
    flow = FlowControl(
        Pauses(), PipelineConfig(max_in_flight=10, max_in_flight_bytes=1000), _gauge()
    )
    windows = {TP0: PartitionWindow(epoch=1), TP1: PartitionWindow(epoch=1)}
    for offset in range(4):
        windows[TP0].dispatch(offset, 10)
        windows[TP1].dispatch(offset, 100 if offset == 0 else 10)
    for finished in range(8):
        in_flight = sum(w.in_flight for w in windows.values())
        held = sum(w.bytes_in_flight for w in windows.values())
        assert flow.may_resume(windows) == flow.below_low_water(in_flight, held)
        windows[TP0 if finished % 2 else TP1].complete(finished // 2)
    assert flow.may_resume(windows)
    big = {TP0: PartitionWindow(epoch=2)}
    big[TP0].dispatch(0, 600)  # one record, but over half the byte cap
    assert not flow.may_resume(big)


def test_progress_above_the_commit_point_holds_what_finished_behind_an_unfinished_record():
    """The window's progress is its commit point, the offsets finished above it and the retry
    clock of each unfinished record that was tried; a finished record's clock goes."""
    window = PartitionWindow(epoch=1)
    for offset in range(5):
        window.dispatch(offset, 10)
    window.note_attempt(0, 1_796_000_000.7, 2, 0.4)
    window.note_attempt(3, 1_796_000_001.0, 1, 0.0)
    for offset in (1, 2, 3):
        window.complete(offset)
    kept = window.progress()
    assert kept is not None
    assert (kept.base, kept.done) == (0, (1, 2, 3))
    assert [(a.offset, a.first_at_s, a.count, a.excused_s) for a in kept.attempts] == [
        (0, 1_796_000_000, 2, 0)
    ]
    assert window.unsaved
    window.saved = window.changes
    assert not window.unsaved


def test_a_restored_window_skips_what_was_finished_and_keeps_it_until_fetched():
    """Restored progress: finished offsets are skipped when fetched (tracked as terminal), are
    still in the progress until then, and a retried record's clock is handed back."""
    from service.core.progress import Attempt, progress

    window = PartitionWindow(epoch=2, loading=True)
    window.restore(10, progress(10, [11, 12, 14], [Attempt(10, 5, 3, 1)]))
    assert not window.loading and window.committed == 10
    assert window.progress() == progress(10, [11, 12, 14], [Attempt(10, 5, 3, 1)])
    assert window.dispatch(10, 1)
    assert window.clock(10) == Attempt(10, 5, 3, 1)
    assert window.skip_restored(11) and window.skip_restored(12)
    assert not window.skip_restored(13) and window.dispatch(13, 1)
    kept = window.progress()
    assert kept is not None and (kept.base, kept.done) == (10, (11, 12, 14))
    window.complete(10)
    assert window.commit_point() == 13
    assert window.skip_restored(14)
    window.complete(13)
    assert window.commit_point() == 15 and window.clock(10) is None
