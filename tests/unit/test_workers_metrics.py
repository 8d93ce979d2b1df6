"""`run --workers N` metrics under prometheus_client's multiprocess mode: what the supervisor
merges from the workers' files says what is true now (issue 24, part 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from service.workers import MULTIPROC_ENV, fold_dead_process

LAG = "conversion_relay_consumer_lag"
DELIVERIES = "conversion_relay_deliveries_total"


def _in_worker(directory: Path, code: str) -> int:
    """Run `code` in a new process writing its metrics to `directory`; its pid."""
    script = "import os\nfrom service.metrics import Metrics\nm = Metrics()\n" + code
    script += "\nprint(os.getpid())\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, MULTIPROC_ENV: str(directory)},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.split()[-1])


def _merged(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def _counted(samples: dict[Any, float]) -> dict[Any, float]:
    """The samples of counters and histograms (a dead process' gauges are dropped)."""
    kept = ("_total", "_bucket", "_count", "_sum")
    return {k: v for k, v in samples.items() if k[0].endswith(kept)}


def test_a_revoked_partitions_lag_is_not_left_in_the_merged_metrics(tmp_path: Path) -> None:
    """The old owner reported lag 500 and lost the partition; the new owner reports 10: the
    merged lag is 10 (it was 510: the old owner's file kept its last value)."""
    _in_worker(
        tmp_path,
        "m.consumer_lag.labels('v', 'events', '0').set(500)\nm.drop_lag('v', 'events', '0')",
    )
    _in_worker(tmp_path, "m.consumer_lag.labels('v', 'events', '0').set(10)")
    labels = (("partition", "0"), ("topic", "events"), ("vendor", "v"))
    assert _merged(tmp_path)[(LAG, labels)] == 10


def test_a_dead_workers_counters_are_folded_in_and_its_files_removed(tmp_path: Path) -> None:
    """Three workers that each delivered 5 and died: the merged total stays 15 and one merged
    file per type remains instead of one per dead process (scrape cost does not grow)."""
    code = "\n".join(
        [
            "for _ in range(5): m.deliveries.labels('v', 'delivered').inc()",
            "m.request_duration.labels('v').observe(0.02)",
            "m.consumer_lag.labels('v', 'events', '0').set(3)",
        ]
    )
    for _ in range(3):
        pid = _in_worker(tmp_path, code)
        before = _merged(tmp_path)
        fold_dead_process(tmp_path, pid)
        after = _merged(tmp_path)
        assert not list(tmp_path.glob(f"*_{pid}.db"))
        assert _counted(after) == _counted(before)
        assert not [k for k in after if k[0] == LAG]  # a dead process has no live gauge
    total = _merged(tmp_path)[(DELIVERIES, (("outcome", "delivered"), ("vendor", "v")))]
    assert total == 15
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [
        "counter_merged.db",
        "histogram_merged.db",
    ]
