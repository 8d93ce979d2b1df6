"""Strict fake vendors for dev mode, tests and benchmarks: each implements one protocol's
documented contract (and rejects what the doc says is invalid), records what it accepted and
injects faults on demand."""
