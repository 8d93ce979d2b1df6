"""Break a dev-mode vendor by hand: a small HTTP control endpoint over the sandboxes' faults.

    GET  /vendors                          every vendor's state and faults
    GET  /vendors/{name}/received?last=100 the last N requests its sandbox accepted, parsed
    POST /vendors/{name}/down              close the vendor's port (connection refused)
    POST /vendors/{name}/up                listen again
    POST /vendors/{name}/errors?rate=0.3   answer that share of requests with 503 (&status=500)
    POST /vendors/{name}/throttle?retry_after_s=5   answer 429 with Retry-After
    POST /vendors/{name}/reject?count=10   reject the next N valid requests (→ DLQ rejected)
    POST /vendors/{name}/slow?latency_s=2  add latency before every answer
    POST /vendors/{name}/ok                clear every fault and listen again

`conversion-relay fault VENDOR MODE [VALUE]` calls it for you.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from aiohttp import web

from service.core.faults import MODES, checked_value
from service.sandbox.base import Faults, Sandbox

__all__ = ["MODES", "SandboxControl", "control_app", "start_control"]


class SandboxControl:
    """Applies named faults to dev mode's sandboxes; remembers what it set, for the live view."""

    def __init__(self, sandboxes: dict[str, Sandbox]) -> None:
        self.sandboxes = sandboxes
        self.down: set[str] = set()

    def describe(self, name: str) -> str:
        """The vendor's current fault in a few words (`ok` when none)."""
        faults = self.sandboxes[name].faults
        parts = []
        if name in self.down:
            parts.append("down")
        if faults.error_rate:
            parts.append(f"{faults.error_rate:.0%} {faults.error_status}")
        if faults.retry_after_s is not None:
            parts.append(f"429 Retry-After {faults.retry_after_s}s")
        if faults.reject_next:
            parts.append(f"reject {faults.reject_next}")
        if faults.latency_s:
            parts.append(f"+{faults.latency_s:g}s")
        return ", ".join(parts) or "ok"

    async def apply(self, name: str, mode: str, value: float | None = None) -> str:
        """Set one fault on one vendor's sandbox; returns the new state. KeyError: no vendor;
        ValueError (FaultValueError): a bad mode or a value outside the mode's range."""
        sandbox = self.sandboxes[name]
        faults = sandbox.faults
        value = checked_value(mode, None if value is None else repr(value))
        if mode == "down":
            await sandbox.go_down()
            self.down.add(name)
        elif mode == "up":
            await sandbox.go_up()
            self.down.discard(name)
        elif mode == "ok":
            sandbox.faults = Faults()
            await sandbox.go_up()
            self.down.discard(name)
        else:  # a mode with a VALUE: checked_value gave it, in range (the default if none)
            assert value is not None
            if mode == "errors":
                faults.error_rate = value
            elif mode == "throttle":
                faults.retry_after_s = int(value)
            elif mode == "reject":
                faults.reject_next = int(value)
            else:  # slow
                faults.latency_s = value
        return self.describe(name)

    def state(self) -> dict[str, Any]:
        """Every vendor's state, for GET /vendors."""
        return {
            name: {
                "state": self.describe(name),
                "url": sandbox.base_url,
                "faults": dataclasses.asdict(sandbox.faults),
            }
            for name, sandbox in self.sandboxes.items()
        }


_VALUE_PARAMS = ("rate", "retry_after_s", "count", "latency_s", "value")


def control_app(control: SandboxControl) -> web.Application:
    """The control endpoint's aiohttp app."""

    async def vendors(request: web.Request) -> web.Response:
        return web.json_response(control.state())

    async def fault(request: web.Request) -> web.Response:
        name, mode = request.match_info["name"], request.match_info["mode"]
        if name not in control.sandboxes:
            valid = ", ".join(sorted(control.sandboxes))
            return web.json_response(
                {"error": f"{name}: no such vendor; one of {valid}"}, status=404
            )
        raw = next((request.query[k] for k in _VALUE_PARAMS if k in request.query), None)
        try:
            # The same check as the `fault` command: a value outside its mode's range is a 400
            # naming it, never clamped or ignored.
            value = checked_value(mode, raw)
            if mode == "errors" and "status" in request.query:
                control.sandboxes[name].faults.error_status = int(request.query["status"])
            state = await control.apply(name, mode, value)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"vendor": name, "state": state})

    async def received(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in control.sandboxes:
            valid = ", ".join(sorted(control.sandboxes))
            return web.json_response(
                {"error": f"{name}: no such vendor; one of {valid}"}, status=404
            )
        raw = request.query.get("last", "100")
        if not raw.isdigit():
            return web.json_response(
                {"error": f"last={raw}: expected a whole number of requests"}, status=400
            )
        accepted = control.sandboxes[name].accepted
        shown = accepted[len(accepted) - min(int(raw), len(accepted)) :]
        body = {
            "vendor": name,
            "accepted": control.sandboxes[name].accepted_total,
            "last": [{"at_s": r.at_s, "path": r.path, "payload": r.payload} for r in shown],
        }
        # default=str: a parsed XML or form body may hold values JSON has no type for.
        return web.Response(body=orjson.dumps(body, default=str), content_type="application/json")

    app = web.Application()
    app.router.add_get("/vendors", vendors)
    app.router.add_get("/vendors/{name}/received", received)
    app.router.add_post("/vendors/{name}/{mode}", fault)
    return app


async def start_control(
    control: SandboxControl, port: int, host: str = "127.0.0.1"
) -> tuple[web.AppRunner, int]:
    """Serve the control endpoint; returns the runner and the port it listens on."""
    runner = web.AppRunner(control_app(control), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, runner.addresses[0][1]
