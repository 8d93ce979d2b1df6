"""`run --workers N`: N relay processes in one container, so one pod uses all its cores.

Each worker is a plain `conversion-relay run` (a member of the same consumer groups, so Kafka
splits the partitions between them) with its HTTP server on a private loopback port. The
supervisor serves the configured port: /metrics merged from every worker by prometheus_client's
multiprocess mode, /livez and /readyz true only when every worker is, /status per worker. A
worker that dies is restarted with back-off, and one that keeps dying stops the supervisor
with exit code 1; SIGTERM is passed on and each worker drains on its own.

A collector's values do not travel through the multiprocess files, so the supervisor reads each
worker's process metrics (CPU, RSS, open fds) from /proc itself, labelled `worker` (its index,
or `supervisor` for itself): summed by instance they are the pod's; per worker they are what the
memory budget is about.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Metric,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from service.config import Config
from service.http import guard_status, status_token
from service.net import free_port

log = logging.getLogger("conversion_relay.workers")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKER_LABEL = "worker"
# A worker that dies is restarted after a growing delay; after CRASH_LIMIT deaths of one worker
# within CRASH_WINDOW_S the supervisor stops and exits 1, so Kubernetes' CrashLoopBackOff (and
# its alerts) take over instead of a silent restart loop.
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)
CRASH_LIMIT = 5
CRASH_WINDOW_S = 120.0
# A worker whose own /livez does not answer within this is not live (a stopped or wedged
# process: its pid alone says nothing); under Kubernetes' default 1 s probe timeout.
WORKER_LIVEZ_TIMEOUT_S = 0.8
# Metric types whose values outlive their process: a dead worker's are added into one file each.
_FOLDED_TYPES = ("counter", "histogram", "summary")


def fold_dead_process(directory: Path, pid: int) -> None:
    """Fold a dead process' metric files into the directory's merged ones and remove them.

    Counters and histograms keep counting across restarts (added into `<type>_merged.db`, the
    same mmap format, so the collector reads them as any other file); gauges of a dead process
    are dropped. Scrape cost stays one file per type and live worker, however many restarts.
    Not thread safe: the supervisor calls it from its event loop, between scrapes.
    """
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    for kind in _FOLDED_TYPES:
        source = directory / f"{kind}_{pid}.db"
        if not source.exists():
            continue
        # prometheus_client's mmap file format, untyped: read with its own reader, written back.
        merged: Any = MmapedDict(str(directory / f"{kind}_merged.db"))  # type: ignore[no-untyped-call]
        reader: Any = MmapedDict.read_all_values_from_file
        try:
            for key, value, timestamp, _ in reader(str(source)):
                total, _ = merged.read_value(key)
                merged.write_value(key, total + value, timestamp)
        finally:
            merged.close()
        source.unlink()
    for gauge in directory.glob(f"gauge_*_{pid}.db"):
        gauge.unlink(missing_ok=True)


class Worker:
    """One relay process and its private HTTP port."""

    def __init__(self, index: int, args: Sequence[str], env: dict[str, str]) -> None:
        self.index = index
        self.port = free_port()
        self._args = [*args, "--http-host", "127.0.0.1", "--http-port", str(self.port)]
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.crashes: list[float] = []  # monotonic times of recent deaths
        self.restart_at: float | None = None

    def start(self) -> None:
        """Launch the process; its output goes to the supervisor's stdout and stderr."""
        self.process = subprocess.Popen(self._args, env=self._env)

    @property
    def alive(self) -> bool:
        """Whether the process runs."""
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        """Ask the worker to drain and stop."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)


class WorkerProcessCollector(Collector):
    """`process_*` of the supervisor and of every live worker, one series each per `worker`."""

    def __init__(self, pids: Callable[[], list[tuple[str, int]]]) -> None:
        self._pids = pids

    def collect(self) -> Iterator[Metric]:
        """One family per process metric, with a sample for each process that could be read."""
        families: dict[str, Metric] = {}
        for worker, pid in self._pids():
            reader = ProcessCollector(pid=_constant(pid), registry=None)
            for family in reader.collect():
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    merged.add_sample(
                        sample.name, {**sample.labels, WORKER_LABEL: worker}, sample.value
                    )
        yield from families.values()


class Supervisor:
    """Starts, watches and stops the workers; serves their merged health and metrics."""

    def __init__(
        self,
        config: Config,
        config_path: str,
        workers: int,
        vendors: Sequence[str] | None = None,
        backoff_s: Sequence[float] = RESTART_BACKOFF_S,
    ) -> None:
        self.config = config
        self._dir = Path(tempfile.mkdtemp(prefix="conversion-relay-metrics-"))
        env = {**os.environ, MULTIPROC_ENV: str(self._dir)}
        args = [sys.executable, "-m", "service", "run", "--config", config_path, "--workers", "1"]
        for vendor in vendors or ():
            args += ["--vendor", vendor]
        self.workers = [Worker(i, args, env) for i in range(workers)]
        self._stop = asyncio.Event()
        self._backoff_s = tuple(backoff_s)
        self.crash_looping = False

    def request_stop(self) -> None:
        """Pass SIGTERM on to every worker."""
        self._stop.set()
        for worker in self.workers:
            worker.terminate()

    def process_ids(self) -> list[tuple[str, int]]:
        """(worker label, pid) of the supervisor and of each running worker."""
        pids = [("supervisor", os.getpid())]
        for worker in self.workers:
            if worker.alive and worker.process is not None:
                pids.append((str(worker.index), worker.process.pid))
        return pids

    async def _get(
        self, session: aiohttp.ClientSession, worker: Worker, path: str
    ) -> tuple[int, Any]:
        try:
            async with session.get(f"http://127.0.0.1:{worker.port}{path}") as resp:
                return resp.status, await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return 503, {"error": f"worker {worker.index} unreachable: {type(exc).__name__}"}

    def make_app(self) -> web.Application:
        """The supervisor's endpoints."""

        async def livez(request: web.Request) -> web.Response:
            dead = [w.index for w in self.workers if not w.alive]
            running = [w for w in self.workers if w.alive]
            timeout = aiohttp.ClientTimeout(total=WORKER_LIVEZ_TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                answers = await asyncio.gather(*(self._get(session, w, "/livez") for w in running))
            silent = [w.index for w, (code, _) in zip(running, answers, strict=True) if code != 200]
            live = not dead and not silent
            return web.json_response(
                {"live": live, "dead_workers": dead, "unresponsive_workers": silent},
                status=200 if live else 503,
                dumps=_dumps,
            )

        async def readyz(request: web.Request) -> web.Response:
            if self._stop.is_set():
                return web.json_response(
                    {"ready": False, "reasons": {"relay": "shutting down"}},
                    status=503,
                    dumps=_dumps,
                )
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
                answers = await asyncio.gather(
                    *(self._get(session, w, "/readyz") for w in self.workers)
                )
            reasons = {
                f"worker {w.index}": body
                for w, (status, body) in zip(self.workers, answers, strict=True)
                if status != 200
            }
            if reasons:
                return web.json_response(
                    {"ready": False, "reasons": reasons}, status=503, dumps=_dumps
                )
            return web.json_response({"ready": True}, dumps=_dumps)

        async def metrics(request: web.Request) -> web.Response:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(self._dir))  # type: ignore[no-untyped-call]
            registry.register(WorkerProcessCollector(self.process_ids))
            return web.Response(
                body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        http = self.config.http
        token = status_token(http)
        # The workers guard their /status the same way; the supervisor passes the token on.
        auth = {"Authorization": f"Bearer {token.decode()}"} if token else {}

        async def status(request: web.Request) -> web.Response:
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=2), headers=auth
            ) as session:
                answers = await asyncio.gather(
                    *(self._get(session, w, "/status") for w in self.workers)
                )
            return web.json_response(
                {
                    "workers": [
                        {
                            "index": w.index,
                            "pid": w.process.pid if w.process else None,
                            "restarts": w.restarts,
                            **body,
                        }
                        for w, (_, body) in zip(self.workers, answers, strict=True)
                    ]
                },
                dumps=_dumps,
            )

        app = web.Application()
        app.router.add_get("/livez", livez)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/status", guard_status(http, status, token))
        return app

    async def _watch(self) -> None:
        """Restart workers that die (with back-off); give up when one keeps dying."""
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            now = loop.time()
            for worker in self.workers:
                if self._stop.is_set():
                    break
                if worker.restart_at is not None:
                    if now >= worker.restart_at:
                        worker.restart_at = None
                        worker.restarts += 1
                        worker.start()
                elif worker.process is not None and not worker.alive:
                    self._died(worker, now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.2)

    def _died(self, worker: Worker, now: float) -> None:
        assert worker.process is not None
        pid = worker.process.pid
        fold_dead_process(self._dir, pid)
        worker.crashes = [t for t in worker.crashes if now - t < CRASH_WINDOW_S] + [now]
        if len(worker.crashes) >= CRASH_LIMIT:
            log.error(
                "worker %d (pid %d) exited with %s (%d exits within %.0fs); stopping",
                worker.index,
                pid,
                worker.process.returncode,
                len(worker.crashes),
                CRASH_WINDOW_S,
            )
            self.crash_looping = True
            self.request_stop()
            return
        delay_s = self._backoff_s[min(len(worker.crashes) - 1, len(self._backoff_s) - 1)]
        log.warning(
            "worker %d (pid %d) exited with %s; restarting in %.1fs",
            worker.index,
            pid,
            worker.process.returncode,
            delay_s,
        )
        worker.restart_at = now + delay_s

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; exit 0 when every worker drained cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(
            runner, self.config.http.host, self.config.http.port, reuse_address=True
        ).start()
        for worker in self.workers:
            worker.start()
        log.info("started %d workers", len(self.workers))
        try:
            await self._watch()
            code = await self._wait_workers()
            return 1 if self.crash_looping else code
        finally:
            await runner.cleanup()
            shutil.rmtree(self._dir, ignore_errors=True)

    async def _wait_workers(self) -> int:
        grace_s = self.config.pipeline.shutdown_grace_s + 10
        deadline = asyncio.get_running_loop().time() + grace_s
        while any(w.alive for w in self.workers):
            if asyncio.get_running_loop().time() > deadline:
                for worker in self.workers:
                    if worker.alive and worker.process is not None:
                        worker.process.kill()
                return 1
            await asyncio.sleep(0.1)
        codes = [w.process.returncode for w in self.workers if w.process is not None]
        return 0 if all(code == 0 for code in codes) else 1


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


def _dumps(data: Any) -> str:
    return orjson.dumps(data).decode()
