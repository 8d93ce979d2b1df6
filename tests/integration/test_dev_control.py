"""Breaking dev-mode vendors: the control endpoint and the --chaos tour over real sandboxes."""

from __future__ import annotations

import aiohttp
import pytest

from service.devtools.chaos import run_tour, tour
from service.devtools.control import SandboxControl, start_control
from service.sandbox.webhook import WebhookContract


async def test_the_control_endpoint_breaks_and_heals_one_vendor(sandbox_factory) -> None:
    """errors / throttle / down / ok change exactly that sandbox; a wrong vendor is a 404."""
    a, b = await sandbox_factory(), await sandbox_factory()
    control = SandboxControl({"a": a, "b": b})
    runner, port = await start_control(control, 0)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/vendors/a/errors?rate=0.3") as resp:
                assert (await resp.json())["state"] == "30% 503"
            assert a.faults.error_rate == 0.3 and b.faults.error_rate == 0
            async with http.post(f"{base}/vendors/a/throttle?retry_after_s=2"):
                assert a.faults.retry_after_s == 2
            async with http.post(f"{base}/vendors/b/down") as resp:
                assert (await resp.json())["state"] == "down"
            with pytest.raises(aiohttp.ClientConnectionError):
                async with http.get(b.base_url + "/anything"):
                    pass
            async with http.post(f"{base}/vendors/b/ok") as resp:
                assert (await resp.json())["state"] == "ok"
            async with http.get(b.base_url + "/_sandbox/stats") as resp:
                assert resp.status == 200
            async with http.post(f"{base}/vendors/nosuch/down") as resp:
                assert resp.status == 404
                assert "one of a, b" in (await resp.json())["error"]
            async with http.get(f"{base}/vendors") as resp:
                assert set(await resp.json()) == {"a", "b"}
    finally:
        await runner.cleanup()


async def test_the_chaos_tour_breaks_three_vendors_and_sends_malformed_events(
    sandbox_factory,
) -> None:
    """Down, 30 % 5xx, 429 with Retry-After, a malformed burst, then everyone healthy."""
    boxes = {name: await sandbox_factory() for name in ("x", "y", "z")}
    control = SandboxControl(boxes)
    now = [0.0]
    seen: list[tuple[float, str]] = []
    bursts: list[int] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async def malformed(count: int) -> None:
        bursts.append(count)

    def say(text: str) -> None:
        seen.append((now[0], text))
        if "Retry-After" in text:
            return
        if "burst" in text:  # at that moment all three faults are in place
            states = [control.describe(n) for n in ("x", "y", "z")]
            assert states == ["down", "30% 503", "429 Retry-After 3s"]

    await run_tour(tour(["x", "y", "z"]), control, malformed, say, lambda: now[0], sleep)
    assert bursts == [50]
    assert [t for t, _ in seen] == [5, 10, 15, 20, 35, 35, 70]
    assert [control.describe(n) for n in ("x", "y", "z")] == ["ok", "ok", "ok"]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("slow?latency_s=-1", "0 to 60"),
        ("errors?rate=1.5", "0 to 1"),
        ("throttle?retry_after_s=0.5", "whole number"),
        ("reject?count=-3", "0 to 1000000"),
        ("down?value=5", "takes no VALUE"),
    ],
)
async def test_the_control_endpoint_answers_400_for_a_value_out_of_its_modes_range(
    sandbox_factory, query: str, named: str
) -> None:
    """The same check as `fault`: never clamped or ignored, and the sandbox is left as it was."""
    a = await sandbox_factory()
    control = SandboxControl({"a": a})
    runner, port = await start_control(control, 0)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{port}/vendors/a/{query}") as resp,
        ):
            assert resp.status == 400
            assert named in (await resp.json())["error"]
        assert control.describe("a") == "ok"
    finally:
        await runner.cleanup()


async def test_the_control_endpoint_shows_the_last_requests_a_sandbox_accepted(
    sandbox_factory,
) -> None:
    """GET /vendors/{name}/received: the last N accepted requests, parsed, oldest first."""
    a = await sandbox_factory(WebhookContract())  # any JSON body is accepted
    control = SandboxControl({"a": a})
    runner, port = await start_control(control, 0)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for n in range(3):
                async with http.post(f"{a.base_url}/hook", json={"n": n}) as resp:
                    assert resp.status == 200
            async with http.get(f"{base}/vendors/a/received?last=2") as resp:
                answer = await resp.json()
            assert answer["accepted"] == 3
            assert [r["payload"] for r in answer["last"]] == [{"n": 1}, {"n": 2}]
            assert answer["last"][0]["path"] == "/hook"
            async with http.get(f"{base}/vendors/a/received?last=0") as resp:
                assert (await resp.json())["last"] == []
            async with http.get(f"{base}/vendors/a/received?last=-1") as resp:
                assert resp.status == 400
            async with http.get(f"{base}/vendors/nosuch/received") as resp:
                assert resp.status == 404
    finally:
        await runner.cleanup()
