"""The supervisor of a pipeline's long-lived tasks (workers, fetch, commit, lag).

A task that dies is logged with its traceback, counted (`task_failures_total`), makes the
pipeline unready while it is down, and is started again after a back-off: nothing dies silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("conversion_relay.pipeline")
RESTART_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)
# A task that ran this long before dying starts its back-off from the beginning again.
STABLE_S = 30.0
# A restarted task counts as up again once it has run this long without dying.
UP_AFTER_S = 1.0


class TaskSupervisor:
    """Keeps named tasks running until `stop()`."""

    def __init__(
        self,
        vendor: str,
        failures: Any,
        on_failure: Callable[[str, BaseException], None] | None = None,
        backoff_s: tuple[float, ...] = RESTART_BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._vendor = vendor
        self._failures = failures  # the task_failures_total counter (labels vendor, task)
        self._on_failure = on_failure
        self._backoff_s = backoff_s
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._down: dict[str, int] = {}  # task name -> its failure count when it died

    @property
    def down(self) -> frozenset[str]:
        """Tasks that died and are not yet back (restarted and alive for UP_AFTER_S)."""
        return frozenset(self._down)

    def start(
        self,
        name: str,
        kind: str,
        run: Callable[[], Awaitable[None]],
        escalate_after: int | None = None,
    ) -> None:
        """Run `run()` as task `name` (metric label `kind`), restarting it whenever it dies; after
        `escalate_after` failures in a row the error ends the task (its owner starts afresh)."""
        self._failures.labels(self._vendor, kind)
        self._tasks[name] = asyncio.create_task(
            self._keep(name, kind, run, escalate_after), name=name
        )

    async def _keep(
        self, name: str, kind: str, run: Callable[[], Awaitable[None]], escalate_after: int | None
    ) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            started = self._clock()
            try:
                await run()
                return  # finished on purpose (the fetch loop at shutdown)
            except Exception as exc:
                if self._clock() - started >= STABLE_S:
                    failures = 0
                delay_s = self._backoff_s[min(failures, len(self._backoff_s) - 1)]
                failures += 1
                self._down[name] = failures
                self._failures.labels(self._vendor, kind).inc()
                log.error(
                    "task %s died (%d in a row); restarting in %.1fs",
                    name,
                    failures,
                    delay_s,
                    exc_info=exc,
                    extra={"vendor": self._vendor},
                )
                if self._on_failure is not None:
                    self._on_failure(name, exc)
                if escalate_after is not None and failures >= escalate_after:
                    raise
                await asyncio.sleep(delay_s)
                loop.call_later(UP_AFTER_S, self._up, name, failures)

    def _up(self, name: str, failures: int) -> None:
        """Back up: the restarted task has not died again since."""
        if self._down.get(name) == failures:
            del self._down[name]

    async def wait(self, name: str) -> None:
        """Wait until task `name` ends: on purpose, or by an escalated error (raised here)."""
        await asyncio.shield(self._tasks[name])

    async def stop(self) -> None:
        """Cancel every task and wait for them."""
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._down.clear()
