"""Ceiling 2: a plain HTTP client posting the goal-reach bodies to the sink, no Kafka.

    python -m bench.ceilings.http_client --url BASE --events N --concurrency C
                                         [--client aiohttp|pyreqwest|h1|aiosonic|niquests|httpx]
                                         [--ca-bundle CA.pem]

The bodies are built first (from the same sample events, with the relay's adapter), then C
tasks share one client (connection pool of C) and post them as fast as the sink answers, on
uvloop. Every client gets the same treatment: redirects not followed, a 10 s total timeout where
the library has one, TLS verification left at its default, and the answer's body read in full.
Against an HTTPS sink (the `tls` scenario), `--ca-bundle` adds the run's CA to the system's roots,
as the relay's `http.ca_bundle` does: aiohttp with an `ssl.create_default_context()`, pyreqwest
with `add_root_certificate_pem`, h1 with its own `tls_context` (ALPN, session resumption). The
harness measures rate and CPU from outside, exactly as for every other contender.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta

from bench.workload import GOAL_REACH_HEADERS, goal_reach_builder
from service.devtools.demo import sample_lines

TIMEOUT_S = 10.0
# One request: (url, body) -> status; run by each of the C tasks in turn.
Post = Callable[[str, bytes], Awaitable[int]]
# The clients that take --ca-bundle: the relay's three transports.
TLS_CLIENTS = ("aiohttp", "pyreqwest", "h1")


async def _drive(post: Post, url: str, bodies: list[bytes], concurrency: int) -> None:
    """C tasks sharing one iterator of bodies, each posting the next one when its last is done."""
    pending: Iterator[bytes] = iter(bodies)

    async def worker() -> None:
        for body in pending:
            status = await post(url, body)
            if status != 200:
                print(f"unexpected status {status}", flush=True)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run_aiohttp(
    url: str, bodies: list[bytes], concurrency: int, ca_bundle: str | None = None
) -> None:
    """aiohttp: one ClientSession, TCPConnector(limit=C)."""
    import ssl

    import aiohttp

    context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=context)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(url: str, body: bytes) -> int:
            async with session.post(
                url, data=body, headers=GOAL_REACH_HEADERS, allow_redirects=False
            ) as resp:
                await resp.read()
                return resp.status

        await _drive(post, url, bodies, concurrency)


async def run_pyreqwest(
    url: str, bodies: list[bytes], concurrency: int, ca_bundle: str | None = None
) -> None:
    """pyreqwest (reqwest/hyper in Rust): max_connections=C, streamed answer read in full."""
    from pyreqwest.client import ClientBuilder

    builder = (
        ClientBuilder()
        .max_connections(concurrency)
        .follow_redirects(False)
        .timeout(timedelta(seconds=TIMEOUT_S))
    )
    if ca_bundle:
        with open(ca_bundle, "rb") as pem:  # noqa: ASYNC230 (once, before any request)
            builder = builder.add_root_certificate_pem(pem.read())
    client = builder.build()
    async with client:

        async def post(url: str, body: bytes) -> int:
            # Streamed, as a transport reading a bounded body would; bytes() reads it all.
            request = client.post(url).headers(GOAL_REACH_HEADERS).body_bytes(body)
            async with request.build_streamed() as resp:
                await resp.bytes()
                return resp.status

        await _drive(post, url, bodies, concurrency)


async def run_h1(
    url: str, bodies: list[bytes], concurrency: int, ca_bundle: str | None = None
) -> None:
    """The relay's own H1Transport (asyncio.Protocol + httptools): a pool of C connections."""
    from service.core.exchange import VendorRequest
    from service.delivery.h1 import H1Transport, tls_context

    transport = H1Transport(
        "sink",
        pool_size=concurrency,
        timeout_s=TIMEOUT_S,
        connect_timeout_s=5.0,
        ssl_context=tls_context(ca_bundle) if ca_bundle else None,
    )

    async def post(url: str, body: bytes) -> int:
        answer = await transport.send(VendorRequest("POST", url, GOAL_REACH_HEADERS, body))
        return answer.status

    try:
        await _drive(post, url, bodies, concurrency)
    finally:
        await transport.aclose()


async def run_aiosonic(url: str, bodies: list[bytes], concurrency: int) -> None:
    """aiosonic: a TCPConnector whose default pool holds C connections, never recycled."""
    from aiosonic import HTTPClient
    from aiosonic.connectors import TCPConnector
    from aiosonic.pools import PoolConfig
    from aiosonic.timeout import Timeouts

    # max_conn_requests=None: its default recycles a connection every 1,000 requests, which
    # would measure reconnects; the other clients keep theirs for the whole run.
    pool = PoolConfig(size=concurrency, max_conn_requests=None)
    connector = TCPConnector(
        pool_configs={":default": pool}, timeouts=Timeouts(request_timeout=TIMEOUT_S)
    )
    async with HTTPClient(connector=connector, follow=False) as client:

        async def post(url: str, body: bytes) -> int:
            resp = await client.post(url, data=body, headers=GOAL_REACH_HEADERS)
            await resp.content()
            return int(resp.status_code)

        await _drive(post, url, bodies, concurrency)
        await client.aclose()


async def run_niquests(url: str, bodies: list[bytes], concurrency: int) -> None:
    """niquests: one AsyncSession, pool_maxsize=C (HTTP/1.1 to a plain-HTTP sink)."""
    import niquests

    async with niquests.AsyncSession(pool_connections=1, pool_maxsize=concurrency) as session:

        async def post(url: str, body: bytes) -> int:
            resp = await session.post(
                url,
                data=body,
                headers=GOAL_REACH_HEADERS,
                allow_redirects=False,
                timeout=TIMEOUT_S,
            )
            _ = resp.content  # not streamed: already read, as the others read theirs
            return int(resp.status_code or 0)

        await _drive(post, url, bodies, concurrency)


async def run_httpx(url: str, bodies: list[bytes], concurrency: int) -> None:
    """httpx: one AsyncClient, Limits(max_connections=C, max_keepalive_connections=C)."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # httpx has no total timeout: TIMEOUT_S applies to connect, read, write and pool each.
    async with httpx.AsyncClient(
        limits=limits, timeout=TIMEOUT_S, follow_redirects=False
    ) as client:

        async def post(url: str, body: bytes) -> int:
            resp = await client.post(url, content=body, headers=GOAL_REACH_HEADERS)
            return resp.status_code

        await _drive(post, url, bodies, concurrency)


CLIENTS: dict[str, Callable[..., Awaitable[None]]] = {
    "aiohttp": run_aiohttp,
    "pyreqwest": run_pyreqwest,
    "h1": run_h1,
    "aiosonic": run_aiosonic,
    "niquests": run_niquests,
    "httpx": run_httpx,
}


async def post_all(args: argparse.Namespace) -> None:
    """Post every body with `args.concurrency` concurrent requests through `args.client`."""
    url, build = goal_reach_builder(args.url)
    bodies = [b for b in map(build, sample_lines(args.events)) if b is not None]
    if args.ca_bundle:
        await CLIENTS[args.client](url, bodies, args.concurrency, args.ca_bundle)
    else:
        await CLIENTS[args.client](url, bodies, args.concurrency)
    print(f"{args.client}: posted {len(bodies)} requests; waiting to be stopped", flush=True)
    # Like every other contender, it runs until the harness stops it (CPU and RSS are read then).
    await asyncio.Event().wait()


def main() -> None:
    """Parse the arguments and post on uvloop."""
    parser = argparse.ArgumentParser(prog="python -m bench.ceilings.http_client")
    parser.add_argument("--url", required=True, help="the sink's base URL")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--client", choices=tuple(CLIENTS), default="aiohttp")
    parser.add_argument(
        "--ca-bundle", help="a PEM CA trusted on top of the system's roots (HTTPS sinks)"
    )
    args = parser.parse_args()
    if args.ca_bundle and args.client not in TLS_CLIENTS:
        parser.error(f"--ca-bundle is supported by {', '.join(TLS_CLIENTS)} only")
    import uvloop

    uvloop.run(post_all(args))


if __name__ == "__main__":
    main()
