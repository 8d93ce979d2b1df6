"""Flow control: which partitions are paused, by window, records and bytes; fetching never stops.

A partition pauses when its window (records from its commit point) is full, so a stuck record
holds back only its own partition. Every partition pauses while the pipeline is at its in-flight
caps (records or bytes) or the vendor's breaker is open, and resumes under the low-water marks.
The fetch loop keeps calling `getmany` while paused (paused partitions return nothing): a
consumer that stops polling for `max_poll_interval_ms` leaves its group. A paused partition is
left out of those calls, so what aiokafka fetched for it waits instead of being fetched again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from aiokafka import TopicPartition

from service.config import PipelineConfig
from service.core.window import PartitionWindow


class Pausable(Protocol):
    """The part of a Kafka consumer flow control uses."""

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop fetching these partitions (getmany returns nothing for them)."""

    def resume(self, *partitions: TopicPartition) -> None:
        """Fetch these partitions again."""


# Never assigned to anyone (Kafka partitions are numbered from 0): see FlowControl.fetchable.
KEEPALIVE: Final = TopicPartition("conversion-relay.keepalive", -1)


class FlowControl:
    """Decides and applies the paused set of one pipeline's consumer."""

    def __init__(self, consumer: Pausable, settings: PipelineConfig, gauge: Any) -> None:
        self._consumer = consumer
        self._cap = settings.max_in_flight
        self._low_water = settings.low_water
        self._bytes_cap = settings.max_in_flight_bytes
        self._gauge = gauge
        self.all_paused = False
        self._paused: set[TopicPartition] = set()

    @property
    def paused(self) -> frozenset[TopicPartition]:
        """The partitions paused now."""
        return frozenset(self._paused)

    def fetchable(
        self, windows: Mapping[TopicPartition, PartitionWindow]
    ) -> tuple[TopicPartition, ...]:
        """The partitions a fetch may return records of: `getmany(*fetchable(...))`.

        aiokafka drops the records it has fetched but not yet returned for a partition when a
        getmany covering it finds it paused, and fetches them again after the resume: at the
        caps that re-read most of every fetch. So a paused partition is left out of the call
        (its fetched records wait in aiokafka, bounded by max_partition_fetch_bytes). Empty
        means every partition (nothing paused); all paused gives `KEEPALIVE` alone, a partition
        nobody is assigned: the call still counts as a poll for the group, and returns nothing.
        """
        paused = self._paused
        if not paused:
            return ()
        return tuple(tp for tp in windows if tp not in paused) or (KEEPALIVE,)

    def room(self, windows: Mapping[TopicPartition, PartitionWindow]) -> int:
        """How many more records one fetch may bring (at least 1: getmany is always called)."""
        return max(1, self._cap - sum(w.in_flight for w in windows.values()))

    def update(self, windows: Mapping[TopicPartition, PartitionWindow], blocked: bool) -> None:
        """Pause and resume partitions for the current windows and vendor state."""
        in_flight = sum(w.in_flight for w in windows.values())
        held_bytes = sum(w.bytes_in_flight for w in windows.values())
        if blocked or in_flight >= self._cap or held_bytes >= self._bytes_cap:
            self.all_paused = True
        elif self.below_low_water(in_flight, held_bytes):
            self.all_paused = False
        if self.all_paused:
            wanted = set(windows)
        else:
            wanted = {tp for tp, window in windows.items() if window.full(self._cap)}
        self._gauge.set(1 if wanted else 0)
        to_pause = wanted - self._paused
        to_resume = (self._paused - wanted) & set(windows)
        if to_pause:
            self._consumer.pause(*to_pause)
        if to_resume:
            self._consumer.resume(*to_resume)
        self._paused = wanted

    def below_low_water(self, in_flight: int, held_bytes: int) -> bool:
        """Whether a pipeline paused at its caps may resume (records and bytes both low)."""
        return in_flight <= self._low_water and held_bytes <= self._bytes_cap // 2

    def may_resume(self, windows: Mapping[TopicPartition, PartitionWindow]) -> bool:
        """`below_low_water` for these windows (bytes are summed only once records are low)."""
        in_flight = 0
        for window in windows.values():
            in_flight += window.in_flight
        if in_flight > self._low_water:
            return False
        return sum(w.bytes_in_flight for w in windows.values()) <= self._bytes_cap // 2

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Revoked partitions are no longer ours to pause or resume."""
        self._paused -= partitions
