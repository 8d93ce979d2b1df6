"""`dev --chaos`: a scripted fault tour, so every column, panel and alert has something to show.

The tour (times from the start of dev mode), then every vendor healthy again:
  one vendor down for 30 s (breaker opens, fetching pauses, it recovers),
  one vendor answering 30 % of requests with 503 for 60 s (retries),
  one vendor answering 429 with Retry-After for 20 s (rate-limit waits),
  a burst of malformed events (the DLQ grows with invalid_event letters).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from service.devtools.control import SandboxControl


class Step(msgspec.Struct, frozen=True, kw_only=True):
    """One thing the tour does at `at_s` seconds."""

    at_s: float
    vendor: str | None  # None for a step that is not about one vendor (the malformed burst)
    mode: str  # a control mode, or "malformed"
    value: float | None = None
    says: str


def tour(vendors: Sequence[str], start_s: float = 5.0) -> list[Step]:
    """The tour over the dev vendors (the first three are broken, in that order)."""
    down, errors, throttled = (list(vendors) * 3)[:3]
    t = start_s
    return [
        Step(at_s=t, vendor=down, mode="down", says=f"{down} goes down for 30 s"),
        Step(at_s=t + 5, vendor=errors, mode="errors", value=0.3,
             says=f"{errors} answers 30 % of requests with 503 for 60 s"),
        Step(at_s=t + 10, vendor=throttled, mode="throttle", value=3,
             says=f"{throttled} answers 429 with Retry-After: 3 for 20 s"),
        Step(at_s=t + 15, vendor=None, mode="malformed", value=50,
             says="a burst of 50 malformed events"),
        Step(at_s=t + 30, vendor=throttled, mode="ok", says=f"{throttled} is healthy again"),
        Step(at_s=t + 30, vendor=down, mode="ok", says=f"{down} is back up"),
        Step(at_s=t + 65, vendor=errors, mode="ok",
             says=f"{errors} is healthy again; the tour is over"),
    ]  # fmt: skip


async def run_tour(
    steps: Sequence[Step],
    control: SandboxControl,
    malformed: Callable[[int], Awaitable[None]],
    say: Callable[[str], None],
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run the steps at their times (relative to the clock when called)."""
    started_s = clock()
    for step in sorted(steps, key=lambda s: s.at_s):
        wait_s = step.at_s - (clock() - started_s)
        if wait_s > 0:
            await sleep(wait_s)
        say(f"chaos: {step.says}")
        if step.mode == "malformed":
            await malformed(int(step.value or 1))
        elif step.vendor is not None:
            await control.apply(step.vendor, step.mode, step.value)
