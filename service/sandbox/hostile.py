"""A hostile vendor: answers that try to move, stall, flood or leak the relay, for drills.

Each request gets the next behaviour of `modes` (cycled), then `after` once `hostile_requests`
requests have been answered (None = hostile forever):

    redirect_307 / redirect_302 / redirect_301 / redirect_308
                          a redirect to the same path and query on `trap` (another port)
    echo_400 / echo_200   the whole request (line, headers, body) echoed back as the body
    oversized             500 with a body of `oversized_bytes`, streamed
    slow                  200, then the body one byte every `slow_interval_s`, for `slow_s`
    retry_after_giant     429 with `Retry-After: 31536000` (a year), then `999999999999`, in turn
    retry_after_malformed 429 with a Retry-After that is no number or date, 8 KiB long
    ok_altcraft           200 `{"error": 0}` (a success for Altcraft; 2xx for the webhook)

`Trap` is the other port: it records whatever reaches it, answering 200 `{"error": 0}` so a
followed redirect looks like a success. Both listen on loopback only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

MODES: Final = (
    "redirect_307",
    "redirect_302",
    "redirect_301",
    "redirect_308",
    "echo_400",
    "echo_200",
    "oversized",
    "slow",
    "retry_after_giant",
    "retry_after_malformed",
    "ok_altcraft",
)
_OK_ALTCRAFT: Final = b'{"error": 0, "error_text": ""}'
_CHUNK: Final = b"x" * 65536


@dataclass
class Hit:
    """One request as a hostile server saw it."""

    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


class _Server:
    """A loopback aiohttp server on a free port that records every request."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """Where to send requests."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> str:
        """Listen on a free loopback port; return the base URL."""
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[-1][1]
        return self.base_url

    async def stop(self) -> None:
        """Close the server and every connection."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _record(self, request: web.Request) -> Hit:
        hit = Hit(request.method, request.path_qs, dict(request.headers), await request.read())
        self.hits.append(hit)
        return hit

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.Response(body=_OK_ALTCRAFT, content_type="application/json")


class Trap(_Server):
    """The other port a hostile vendor redirects to: nothing may ever arrive here."""


@dataclass
class HostileVendor(_Server):
    """A vendor whose every answer is an attack (see the module doc)."""

    trap: Trap
    modes: tuple[str, ...] = MODES
    hostile_requests: int | None = None
    after: str = "ok_altcraft"
    oversized_bytes: int = 16 * 1024 * 1024
    slow_s: float = 30.0
    slow_interval_s: float = 0.5
    answered: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__()
        unknown = set(self.modes) - set(MODES) | ({self.after} - set(MODES))
        if unknown:
            raise ValueError(f"unknown hostile modes: {sorted(unknown)}")

    def _mode(self) -> str:
        count = len(self.hits) - 1
        if self.hostile_requests is not None and count >= self.hostile_requests:
            return self.after
        return self.modes[count % len(self.modes)]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        hit = await self._record(request)
        mode = self._mode()
        self.answered[mode] = self.answered.get(mode, 0) + 1
        if mode.startswith("redirect_"):
            status = int(mode.rpartition("_")[2])
            location = self.trap.base_url + request.path_qs
            return web.Response(status=status, headers={"Location": location})
        if mode.startswith("echo_"):
            echoed = f"{hit.method} {request.url}\n".encode()
            echoed += "".join(f"{k}: {v}\n" for k, v in hit.headers.items()).encode()
            return web.Response(status=int(mode[-3:]), body=echoed + b"\n" + hit.body)
        if mode == "oversized":
            return await self._stream(request, 500, self.oversized_bytes // len(_CHUNK), 0.0)
        if mode == "slow":
            return await self._stream(
                request, 200, int(self.slow_s / self.slow_interval_s), self.slow_interval_s, b"x"
            )
        if mode == "retry_after_giant":
            # A year (parses as a number of seconds) and a value past any date, in turn.
            giant = "31536000" if self.answered[mode] % 2 else "999999999999"
            return web.Response(status=429, headers={"Retry-After": giant})
        if mode == "retry_after_malformed":
            junk = "soon, -5, 1e309, Thu, 99 Foo 99999 " + "9" * 8192
            return web.Response(status=429, headers={"Retry-After": junk})
        return web.Response(body=_OK_ALTCRAFT, content_type="application/json")

    async def _stream(
        self,
        request: web.Request,
        status: int,
        chunks: int,
        interval_s: float,
        chunk: bytes = _CHUNK,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=status)
        response.content_length = chunks * len(chunk)
        await response.prepare(request)
        try:
            for _ in range(chunks):
                await response.write(chunk)
                if interval_s:
                    await asyncio.sleep(interval_s)
        except ConnectionResetError:
            return response  # the relay gave up on the body, as it should
        await response.write_eof()
        return response
