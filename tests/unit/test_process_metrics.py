"""Process metrics: CPU, RSS, open fds and garbage collections, in one process and per worker."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import Metrics
from service.workers import WORKER_LABEL, WorkerProcessCollector


def samples(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(registry).decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_a_relay_registry_exports_its_process_cpu_memory_and_fds() -> None:
    """The relay's own registry carries process_* for the process it runs in."""
    scraped = samples(Metrics(registry=CollectorRegistry()).registry)
    [(_, rss)] = scraped["process_resident_memory_bytes"]
    assert 1024 * 1024 < rss < 4 * 1024**3
    [(_, fds)] = scraped["process_open_fds"]
    assert fds >= 3
    assert "process_cpu_seconds_total" in scraped
    assert "process_max_fds" in scraped


def test_garbage_collections_are_counted_while_watched() -> None:
    """watch_gc counts each collection per generation, and stops counting when undone."""
    metrics = Metrics(registry=CollectorRegistry())
    value = metrics.registry.get_sample_value
    stop = metrics.watch_gc()
    try:
        gc.collect(2)
        gc.collect(2)
    finally:
        stop()
    assert value("python_gc_collections_total", {"generation": "2"}) == 2
    assert value("python_gc_objects_collected_total", {"generation": "2"}) is not None
    gc.collect(2)
    assert value("python_gc_collections_total", {"generation": "2"}) == 2
    assert value("python_gc_collections_total", {"generation": "0"}) is not None


def test_the_supervisor_reports_each_worker_process_separately() -> None:
    """One process_* series per worker (and the supervisor), read from each pid's /proc."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; x = bytearray(64 * 1024 * 1024); time.sleep(30)"]
    )
    try:
        registry = CollectorRegistry()
        registry.register(
            WorkerProcessCollector(lambda: [("supervisor", os.getpid()), ("0", child.pid)])
        )
        for _ in range(50):  # until the child has touched its 64 MiB
            rss = {
                labels[WORKER_LABEL]: v
                for labels, v in samples(registry)["process_resident_memory_bytes"]
            }
            if rss.get("0", 0) > 64 * 1024 * 1024:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert set(rss) == {"supervisor", "0"}
        assert rss["0"] > 64 * 1024 * 1024
        cpu = samples(registry)["process_cpu_seconds_total"]
        assert {labels[WORKER_LABEL] for labels, _ in cpu} == {"supervisor", "0"}
    finally:
        child.kill()
        child.wait()


def test_a_collection_inside_prometheus_multiprocess_lock_does_not_deadlock(tmp_path) -> None:
    """Under `--workers` prometheus_client holds one non-reentrant lock while it creates a
    labelled child (and allocates, so a collection can start there); the gc callback must not
    take that lock again. It did: a worker hung creating its pipeline's metrics."""
    script = (
        "import gc\n"
        "from prometheus_client import CollectorRegistry\n"
        "from service.metrics import Metrics\n"
        "metrics = Metrics(registry=CollectorRegistry())\n"
        "metrics.watch_gc()\n"
        "gc.set_threshold(1)  # a collection at (nearly) every allocation, inside the lock too\n"
        "metrics.deliveries.labels('v', 'delivered').inc()\n"
        "gc.set_threshold(700)\n"
        "metrics.flush()\n"
        "print('done')\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=20
    )
    assert done.stdout.strip() == "done", done.stderr
