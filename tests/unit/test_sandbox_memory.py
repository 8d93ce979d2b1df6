"""A sandbox with `keep` (dev mode's) remembers a bounded number of requests however many it
receives, while its counts stay whole; without it (tests) it keeps every one."""

from __future__ import annotations

import aiohttp

from service.sandbox.base import Sandbox
from service.sandbox.goal_reach import GoalReachContract

VALID = {
    "GoalId": "299837db-9b51-45a4-996b-844d3fd05bbd",
    "CustomerId": "2eccd743-4164-4892-a416-dc5c16f44971",
}
PATH = "/outer/v1.0/goal/reach"


async def _send(sandbox: Sandbox, valid: int, invalid: int) -> None:
    async with aiohttp.ClientSession() as session:
        for i in range(valid + invalid):
            body = VALID if i < valid else {"GoalId": "not a uuid"}
            async with session.post(sandbox.base_url + PATH, json=body) as response:
                await response.read()


async def test_a_sandbox_with_keep_remembers_a_bounded_window_and_counts_everything() -> None:
    sandbox = Sandbox(GoalReachContract(), keep=10)
    await sandbox.start()
    try:
        await _send(sandbox, valid=150, invalid=60)
        assert sandbox.accepted_total == 150
        assert sandbox.refused_total == 60
        for kept in (sandbox.accepted, sandbox.refused, sandbox.request_times_s, sandbox.answers):
            assert 10 <= len(kept) <= 20
        assert sandbox.accepted[-1].payload["CustomerId"] == VALID["CustomerId"]  # the newest
        async with (
            aiohttp.ClientSession() as session,
            session.get(sandbox.base_url + "/_sandbox/stats") as response,
        ):
            stats = await response.json()
        assert (stats["accepted"], stats["refused"]) == (150, 60)
    finally:
        await sandbox.stop()


async def test_a_sandbox_without_keep_remembers_every_request() -> None:
    sandbox = Sandbox(GoalReachContract())
    await sandbox.start()
    try:
        await _send(sandbox, valid=50, invalid=5)
        assert (len(sandbox.accepted), len(sandbox.refused)) == (50, 5)
    finally:
        await sandbox.stop()
