"""WorkQueue: the pipeline's FIFO of records for its workers (put never waits)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any, cast

from service.delivery.pipeline import Work, WorkQueue


def _work(name: str) -> Work:
    return cast(Work, name)  # the queue never looks inside


async def test_records_come_out_in_the_order_they_were_put() -> None:
    queue = WorkQueue()
    for name in ("a", "b", "c"):
        queue.put(_work(name))
    assert len(queue) == 3
    assert [await queue.get() for _ in range(3)] == ["a", "b", "c"]


async def test_a_worker_waits_while_empty_and_the_next_put_wakes_it() -> None:
    queue = WorkQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put(_work("a"))
    assert await asyncio.wait_for(getter, 1) == "a"


async def test_a_woken_worker_that_is_cancelled_passes_its_record_to_another() -> None:
    queue = WorkQueue()
    first: asyncio.Task[Any] = asyncio.create_task(queue.get())
    second: asyncio.Task[Any] = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put(_work("a"))  # wakes the first waiter ...
    first.cancel()  # ... which is cancelled before it runs
    assert await asyncio.wait_for(second, 1) == "a"
    assert first.cancelled()


async def test_a_cancelled_waiter_is_forgotten() -> None:
    queue = WorkQueue()
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0)
    queue.put(_work("a"))
    assert await asyncio.wait_for(queue.get(), 1) == "a"


def test_a_record_in_flight_carries_its_attempts_and_is_left_out_of_the_collector() -> None:
    from aiokafka import TopicPartition

    from service.core.window import PartitionWindow

    tp = TopicPartition("events", 0)
    window = PartitionWindow(1)
    work = Work(record=None, tp=tp, epoch=1, window=window, windows={tp: window})
    assert (work.count, work.first_at_s, work.excused_s) == (0, 0.0, 0.0)
    assert work.is_current()
    assert not gc.is_tracked(work)  # thousands wait in a backlog: nothing for the GC to scan
