"""A new connection's cost: the relay's own transport posting one request per connection.

    python -m bench.ceilings.handshake --config RELAY.yaml --requests N [--warmup W]

The transport is built exactly as the relay builds it (`make_transport` over the generated
config's vendor and `http` section: `http.transport`, `http.ca_bundle`), and posts the goal-reach
bodies one at a time (concurrency 1) to a sink that closes every connection after its answer
(nginx with `keepalive_timeout 0`), so each request opens a new connection: over plain HTTP a TCP
connect, over HTTPS a connect and a TLS handshake, full or resumed as the sink and the client
allow. `--warmup` requests go first, unmeasured (imports, the first session ticket). It prints one
`RESULT {json}` line: wall µs and CPU µs (getrusage, every thread) per request, then exits.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from bench.workload import GOAL_REACH_HEADERS, VENDOR, goal_reach_builder
from service.config import load_config
from service.core.exchange import VendorRequest
from service.delivery.transport import make_transport
from service.devtools.demo import sample_lines


def cpu_s() -> float:
    """User + system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(config_path: str, requests: int, warmup: int) -> dict[str, float]:
    """Post warmup + requests bodies one after another; the measured part's figures."""
    config = load_config(config_path)
    vendor = config.vendors[VENDOR]
    transport = make_transport(VENDOR, vendor, config.http)
    url, build = goal_reach_builder(str(vendor.base_url))
    bodies = [b for b in map(build, sample_lines((requests + warmup) * 2)) if b is not None]
    bodies = bodies[: requests + warmup]
    failures = 0
    try:
        for body in bodies[:warmup]:
            await transport.send(VendorRequest("POST", url, GOAL_REACH_HEADERS, body))
        wall0, cpu0 = time.perf_counter(), cpu_s()
        for body in bodies[warmup:]:
            answer = await transport.send(VendorRequest("POST", url, GOAL_REACH_HEADERS, body))
            if answer.status != 200:
                failures += 1
        wall_s, used_s = time.perf_counter() - wall0, cpu_s() - cpu0
    finally:
        await transport.aclose()
    measured = len(bodies) - warmup
    return {
        "requests": measured,
        "warmup": warmup,
        "failures": failures,
        "wall_us": wall_s / measured * 1e6,
        "cpu_us": used_s / measured * 1e6,
    }


def main() -> None:
    """Parse the arguments, measure on uvloop (as the relay runs), print the result."""
    parser = argparse.ArgumentParser(prog="python -m bench.ceilings.handshake")
    parser.add_argument("--config", required=True, help="a relay config (bench/relay.py)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(measure(args.config, args.requests, args.warmup))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
