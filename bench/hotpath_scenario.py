"""The `hotpath` scenario: `bench.hotpath` with its input and tracing rows, in `make bench`.

Runs `python -m bench.hotpath --mapped --avro --tracing` in its own process (no Kafka, no HTTP:
the relay's own CPU per delivery) and reports each figure it prints as a row: the hot path, a
mapped JSON input and an Avro input against the canonical one (issue 23: each adds <= 3 µs per
record), and tracing off against no tracing code and on, sampled 100 % (issue 24: off <= 0.5 µs).
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from bench.report import Section

if TYPE_CHECKING:
    from bench.run import Bench

FLAGS = ("--mapped", "--avro", "--tracing")
TIMEOUT_S = 1_800.0


def rows_of(output: str) -> list[list[str]]:
    """Each figure line of bench.hotpath's output as [what, figure] (split at the first ': ')."""
    rows = []
    for raw in output.splitlines():
        line = raw.strip()
        if not line or raw.startswith(("Traceback", " ")):
            continue
        what, sep, figure = line.partition(": ")
        rows.append([what, figure] if sep else ["hot path", line])
    return rows


async def hotpath_scenario(bench: Bench, events: int) -> None:
    """Run bench.hotpath with every row and add its figures as one section."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.hotpath",
        "--events",
        str(events),
        *FLAGS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        out, err = b"", f"timed out after {TIMEOUT_S:.0f} s".encode()
    section = Section(
        f"Hot path: the relay's own CPU per delivery, no Kafka I/O, no HTTP ({events:,} events)",
        ["row", "figure"],
        rows_of(out.decode(errors="replace")),
    )
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        section.notes.append(f"bench.hotpath exited {proc.returncode}: {tail[0]}")
    section.notes.append(
        "CPU time of one process on a loop-local transport that answers 200 after one loop "
        "turn; input and tracing rows alternate with the canonical run, best of 3 "
        "(bench/hotpath.py)"
    )
    bench.report.add(section)
