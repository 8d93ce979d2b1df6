"""Side by side: the aiohttp client, pyreqwest and H1Transport posting goal-reach bodies to nginx.

    python -m bench.transports [--requests 30000] [--concurrency 64] [--runs 3] [--extra-ints 0 600]
                               [--tls]

One nginx (bench/nginx.conf, started as the harness's NginxSink) serves every run. Each run is a
fresh child process (`--child CLIENT`) that builds the bodies first, then posts them with C
concurrent tasks over one pool of C connections on uvloop, and reports the wall time and the CPU
time of the whole process (getrusage: every thread, so pyreqwest's tokio thread counts) from the
first request to the last. Runs are interleaved (client A, B, C, A, B, C, ...) so that noise on
a shared machine falls on every client alike; the table shows each client's median.

`--extra-ints K` adds, after every answer, a Python loop summing K ints in the worker, standing
for the relay's own work per delivery on the loop thread: it shows how each client's completion
path interacts with Python work (pyreqwest's answers need the GIL from its tokio thread).

`--tls` adds a second nginx listening with TLS (bench/tls.py: the run's certificate, session
cache and tickets on) and runs every client against both, plain then HTTPS, interleaved the same
way; the table puts each client's plain and HTTPS medians side by side. With --tls every run
first posts C requests at once, untimed, so the pool's C connections (and their handshakes) are
made before the timing starts: the figures are what TLS adds per request over kept-alive
connections, the record layer alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from bench.sinks import NginxSink
from bench.tls import make_certificates
from bench.workload import GOAL_REACH_HEADERS, goal_reach_builder
from service.devtools.demo import sample_lines

CLIENTS = ("aiohttp", "pyreqwest", "h1")


def busy(ints: int) -> int:
    """The stand-in for the relay's per-delivery Python work."""
    total = 0
    for i in range(ints):
        total += i
    return total


def cpu_s() -> float:
    """User + system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive(
    send: Callable[[bytes], Awaitable[int]],
    bodies: list[bytes],
    concurrency: int,
    ints: int,
    warm: bool = False,
) -> dict[str, float]:
    """Post every body with `concurrency` workers; wall and CPU seconds of the posting alone.

    `warm`: first post `concurrency` bodies at once, untimed, so that the pool's connections
    (and their TLS handshakes) are made before the timing starts.
    """
    failures = 0
    if warm:
        await asyncio.gather(*(send(body) for body in bodies[:concurrency]))
        bodies = bodies[concurrency:]
    pending = iter(bodies)

    async def worker() -> None:
        nonlocal failures
        for body in pending:
            if await send(body) != 200:
                failures += 1
            if ints:
                busy(ints)

    wall0, cpu0 = time.perf_counter(), cpu_s()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall0, cpu_s() - cpu0
    return {"wall_s": wall, "cpu_s": cpu, "failures": failures, "requests": len(bodies)}


async def run_client(
    client: str, url: str, bodies: list[bytes], args: argparse.Namespace
) -> dict[str, float]:
    """One client's run, measured (`args.ca_bundle`: the CA of an HTTPS sink)."""
    concurrency, ints = args.concurrency, args.extra_ints
    headers = GOAL_REACH_HEADERS
    ca_bundle: str | None = args.ca_bundle
    if client == "aiohttp":
        import ssl

        import aiohttp

        context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
        connector = aiohttp.TCPConnector(limit=concurrency, ssl=context)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def send_aiohttp(body: bytes) -> int:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    return resp.status

            return await drive(send_aiohttp, bodies, concurrency, ints, args.warm)
    if client == "pyreqwest":
        from pyreqwest.client import ClientBuilder

        builder = ClientBuilder().max_connections(concurrency).follow_redirects(False)
        if ca_bundle:
            with open(ca_bundle, "rb") as pem:  # noqa: ASYNC230 (once, before any request)
                builder = builder.add_root_certificate_pem(pem.read())
        async with builder.timeout(timedelta(seconds=10)).build() as reqwest:

            async def send_reqwest(body: bytes) -> int:
                request = reqwest.post(url).headers(headers).body_bytes(body).build_streamed()
                async with request as resp:
                    await resp.bytes()
                    return int(resp.status)

            return await drive(send_reqwest, bodies, concurrency, ints, args.warm)
    from service.core.exchange import VendorRequest
    from service.delivery.h1 import H1Transport, tls_context

    transport = H1Transport(
        "sink",
        pool_size=concurrency,
        timeout_s=10.0,
        connect_timeout_s=5.0,
        ssl_context=tls_context(ca_bundle) if ca_bundle else None,
    )
    try:

        async def send_h1(body: bytes) -> int:
            return (await transport.send(VendorRequest("POST", url, headers, body))).status

        return await drive(send_h1, bodies, concurrency, ints, args.warm)
    finally:
        await transport.aclose()


def child(args: argparse.Namespace) -> None:
    """Measure one client once and print one JSON line."""
    import uvloop

    url, build = goal_reach_builder(args.url)
    lines = list(sample_lines(args.requests * 2))
    bodies = [b for b in map(build, lines) if b is not None][: args.requests]
    started = time.perf_counter()
    for _ in range(10_000):
        busy(args.extra_ints)
    busy_us = (time.perf_counter() - started) / 10_000 * 1e6
    result = uvloop.run(run_client(args.child, url, bodies, args))
    result.update(client=args.child, busy_us=busy_us)
    print(json.dumps(result), flush=True)


def _medians(runs: list[dict[str, float]]) -> tuple[float, float, str]:
    """(median requests/s, median CPU µs per request, every run's requests/s)."""
    rates = [d["requests"] / d["wall_s"] for d in runs]
    cpus = [d["cpu_s"] / d["requests"] * 1e6 for d in runs]
    return statistics.median(rates), statistics.median(cpus), ", ".join(f"{r:,.0f}" for r in rates)


def parent(args: argparse.Namespace) -> None:
    """Interleave every client's runs against one nginx (and its HTTPS twin with --tls);
    print the medians as a table."""
    work = Path(tempfile.mkdtemp(prefix="bench-transports-"))
    files = make_certificates(work / "tls") if args.tls else None
    if args.tls and files is None:
        sys.exit("--tls needs trustme (the project's dev extra: `make env`)")
    sinks = {"plain": NginxSink(work)}
    if files is not None:
        sinks["HTTPS"] = NginxSink(work, files)
    try:
        for sink in sinks.values():
            sink.wait_ready()
        for ints in args.extra_ints_list:
            results: dict[tuple[str, str], list[dict[str, float]]] = {
                (c, kind): [] for c in args.clients for kind in sinks
            }
            for run in range(args.runs):
                for client in args.clients:
                    for kind, sink in sinks.items():
                        argv = [sys.executable, "-m", "bench.transports", "--child", client]
                        argv += ["--url", sink.base_url, "--requests", str(args.requests)]
                        argv += ["--concurrency", str(args.concurrency)]
                        argv += ["--extra-ints", str(ints)]
                        if files is not None:  # both kinds: the pool is made before timing
                            argv.append("--warm")
                        if kind == "HTTPS" and files is not None:
                            argv += ["--ca-bundle", str(files.ca_pem)]
                        out = subprocess.run(argv, capture_output=True, text=True, check=True)
                        data = json.loads(out.stdout.strip().splitlines()[-1])
                        results[client, kind].append(data)
                        rate = data["requests"] / data["wall_s"]
                        cpu_us = data["cpu_s"] / data["requests"] * 1e6
                        print(
                            f"# extra={ints} run={run + 1} {client:9} {kind:5} {rate:8.0f}/s"
                            f" {cpu_us:6.1f} µs failures={data['failures']:.0f}",
                            flush=True,
                        )
            busy_us = statistics.median(d["busy_us"] for r in results.values() for d in r)
            print(
                f"\n{args.requests:,} requests, C={args.concurrency}, {args.runs} runs each,"
                f" interleaved; extra work per answer: {ints} ints ≈ {busy_us:.1f} µs\n"
            )
            if files is None:
                print("| client | requests/s (median) | CPU µs / request (median) | runs (req/s) |")
                print("|---|---:|---:|---|")
                for client in args.clients:
                    rate, cpu, spread = _medians(results[client, "plain"])
                    print(f"| {client} | {rate:,.0f} | {cpu:.1f} | {spread} |")
            else:
                print(
                    "| client | plain requests/s | HTTPS requests/s | HTTPS / plain |"
                    " CPU µs / request, plain | HTTPS | TLS adds CPU µs | runs (req/s) plain;"
                    " HTTPS |"
                )
                print("|---|---:|---:|---:|---:|---:|---:|---|")
                for client in args.clients:
                    rate, cpu, spread = _medians(results[client, "plain"])
                    t_rate, t_cpu, t_spread = _medians(results[client, "HTTPS"])
                    print(
                        f"| {client} | {rate:,.0f} | {t_rate:,.0f} | {t_rate / rate:.2f}× |"
                        f" {cpu:.1f} | {t_cpu:.1f} | {t_cpu - cpu:+.1f} | {spread}; {t_spread} |"
                    )
            print(flush=True)
    finally:
        for sink in sinks.values():
            sink.stop()


def main() -> None:
    """Parent (the comparison) or child (one measured run)."""
    parser = argparse.ArgumentParser(prog="python -m bench.transports")
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS))
    parser.add_argument(
        "--extra-ints",
        dest="extra_ints_list",
        type=int,
        nargs="+",
        default=[0, 600],
        help="ints summed after each answer (one table per value)",
    )
    parser.add_argument(
        "--tls", action="store_true", help="also against nginx over HTTPS, side by side"
    )
    parser.add_argument("--ca-bundle", help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.extra_ints = args.extra_ints_list[0]
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
