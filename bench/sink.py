"""The benchmark sink: the relay's own strict sandbox (service/sandbox) in a process of its own.

    python -m bench.sink --port P [--latency-s 0.02] [--rate-limit-per-s 240]
                         [--config relay.yaml --vendor NAME] [--latency-samples]

Every request is checked against the vendor's documented contract (a contender sending a wrong
body gets the vendor's error, and the harness reports it). Besides the sandbox's own
`GET /_sandbox/stats`, it serves `GET /_bench/stats`: cumulative counts, the first and last
receipt times and the status codes sent, without keeping every request in memory (the sandbox's
`accepted` list is folded into counters every 100 ms), and `GET /_bench/samples`: receipt times
and, with --latency-samples, the delay from each goal-reach body's `CreatedOnUtc` (which the
latency producer sets to the Kafka record timestamp) to its receipt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from array import array
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from service.sandbox.base import CONTROL_PREFIX, Faults, Sandbox
from service.sandbox.registry import contract_for

_BENCH_PREFIX = "/_bench"
_KEEP_REQUEST_TIMES = 20_000  # the sandbox's rate window needs only the last second of them


class BenchSandbox(Sandbox):
    """A Sandbox whose recordings are folded into counters, with the harness's endpoints."""

    def __init__(self, *args: Any, latency_samples: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latency_samples = latency_samples
        self.accepted_total = 0
        self.refused_total = 0
        self.first_s = 0.0
        self.last_s = 0.0
        self.receipts_s = array("d")
        self.latencies_s = array("d")
        self.refusals: list[str] = []

    def make_app(self) -> web.Application:
        """The sandbox's routes, with the harness's endpoints before the catch-all."""
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_get(f"{_BENCH_PREFIX}/stats", self._bench_stats)
        app.router.add_get(f"{_BENCH_PREFIX}/samples", self._bench_samples)
        app.router.add_get(f"{CONTROL_PREFIX}/stats", self._stats)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def fold(self) -> None:
        """Move what the sandbox recorded into counters and compact samples."""
        for received in self.accepted:
            at_s = received.at_s
            if not self.first_s:
                self.first_s = at_s
            self.last_s = max(self.last_s, at_s)
            self.receipts_s.append(at_s)
            if self.latency_samples and isinstance(received.payload, dict):
                created = received.payload.get("CreatedOnUtc")
                if isinstance(created, str):
                    moment = datetime.strptime(created, "%Y-%m-%d %H:%M:%S.%f")
                    self.latencies_s.append(at_s - moment.replace(tzinfo=UTC).timestamp())
        self.accepted_total += len(self.accepted)
        self.accepted.clear()
        for received in self.refused[:5]:
            if len(self.refusals) < 5:
                self.refusals.append(f"{received.method} {received.path} {received.body[:300]!r}")
        self.refused_total += len(self.refused)
        self.refused.clear()
        if len(self.request_times_s) > 2 * _KEEP_REQUEST_TIMES:
            del self.request_times_s[:-_KEEP_REQUEST_TIMES]

    async def _bench_stats(self, request: web.Request) -> web.Response:
        self.fold()
        return web.json_response(
            {
                "accepted": self.accepted_total,
                "refused": self.refused_total,
                "first_s": self.first_s,
                "last_s": self.last_s,
                "statuses": {str(k): v for k, v in self.statuses.items()},
                "refusals": self.refusals,
            }
        )

    async def _bench_samples(self, request: web.Request) -> web.Response:
        self.fold()
        return web.json_response(
            {"receipts_s": self.receipts_s.tolist(), "latencies_s": self.latencies_s.tolist()}
        )


async def serve(args: argparse.Namespace) -> None:
    """Run the sink until SIGTERM/SIGINT."""
    vendor_config = None
    protocol = "goal_reach"
    if args.config:
        from service.config import load_config
        from service.vendors import protocol_tag

        vendor_config = load_config(args.config).vendors[args.vendor]
        protocol = protocol_tag(vendor_config)
    faults = Faults(latency_s=args.latency_s, rate_limit_per_s=args.rate_limit_per_s)
    sandbox = BenchSandbox(
        contract_for(protocol, vendor_config),
        faults=faults,
        port=args.port,
        latency_samples=args.latency_samples,
    )
    await sandbox.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"sink {protocol} listening on {sandbox.base_url}", flush=True)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
            sandbox.fold()
    finally:
        await sandbox.stop()


def main() -> None:
    """Parse the arguments and serve (on uvloop when it is installed)."""
    parser = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--rate-limit-per-s", type=float, default=None)
    parser.add_argument("--config", help="relay config: pin the contract to this vendor's")
    parser.add_argument("--vendor", help="the vendor of --config this sink fakes")
    parser.add_argument("--latency-samples", action="store_true")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
