"""Per-record cost of reading a producer's JSON record with each candidate expression language,
the figures behind the choice in docs/guide/producers.md.

    python -m bench.mapping_languages [--records N]

Each contender decodes the same CRM record (635 bytes) and takes the same six values from it (four
paths, one nested, one whole object), each expression compiled once beforehand: JMESPath
(`jmespath`), JSONata (`jsonata-python`) and JSONPath (`python-jsonpath`) on the record decoded
to dicts by msgspec, and the relay's declared paths compiled to msgspec Structs
(service/core/mapping.py) with and without making the canonical event. Libraries that are not
installed are reported as such (only jmespath is in the relay's environment; the others were
measured once in a scratch environment: `uv pip install jsonata-python python-jsonpath`).
"""

from __future__ import annotations

import argparse
import importlib
import time
import timeit
from collections.abc import Callable
from functools import partial
from importlib import metadata
from typing import Any

import msgspec

from service.core.inputs import JsonInput

RECORD = {
    "type": "order.paid",
    "ts": 1765100000000,
    "order": {
        "uuid": "5f0c3c7e-8f5e-4a55-9a53-3c1f5f6f7a11",
        "total_cents": 12999,
        "currency": "EUR",
        "items": [
            {"sku": "A-1", "qty": 2, "price_cents": 4999},
            {"sku": "B-2", "qty": 1, "price_cents": 3001},
        ],
    },
    "customer": {"email": "ann@example.com", "crm_id": "c-1234", "phone": "+49301234567"},
    "properties": {"plan": "pro", "coupon": "WINTER", "channel": "web"},
    "meta": {"source": "crm", "version": 3, "trace": "x" * 200, "tags": ["a", "b", "c"]},
}
PATHS = ["order.uuid", "ts", "type", "order.total_cents", "customer.email", "properties"]
FIELDS = {
    "event_id": "$.order.uuid",
    "occurred_at": "$.ts | epoch_ms",
    "goal": "$.type",
    "value": "$.order.total_cents / 100",
    "customer.email": "$.customer.email",
    "params": "$.properties",
}


def contenders() -> dict[str, Callable[[bytes], Any] | str]:
    """Name → a function of the raw record, or why it cannot be measured here."""
    plain = msgspec.json.Decoder()
    found: dict[str, Callable[[bytes], Any] | str] = {"msgspec decode to dicts only": plain.decode}

    def library(name: str, dist: str, make: Callable[[Any], Callable[[bytes], Any]]) -> None:
        try:
            module = importlib.import_module(name)
        except ImportError:
            found[dist] = "not installed"
            return
        found[f"{dist} {metadata.version(dist)}"] = make(module)

    def jmespath_reader(module: Any) -> Callable[[bytes], Any]:
        compiled = [module.compile(p) for p in PATHS]
        return lambda raw: [e.search(d) for d in (plain.decode(raw),) for e in compiled]

    def jsonata_reader(module: Any) -> Callable[[bytes], Any]:
        compiled = [module.Jsonata(p) for p in PATHS]
        return lambda raw: [e.evaluate(d) for d in (plain.decode(raw),) for e in compiled]

    def jsonpath_reader(module: Any) -> Callable[[bytes], Any]:
        compiled = [module.compile("$." + p) for p in PATHS]
        return lambda raw: [e.match(d).obj for d in (plain.decode(raw),) for e in compiled]

    library("jmespath", "jmespath", jmespath_reader)
    library("jsonata", "jsonata-python", jsonata_reader)
    library("jsonpath", "python-jsonpath", jsonpath_reader)
    relay = JsonInput({**FIELDS, "goal": "$.type"})
    mapper = relay.mapper
    found["relay paths -> Structs (decode + fields)"] = lambda raw: mapper.fields(
        mapper.decode(raw)
    )
    found["relay paths -> Structs (+ ConversionEvent)"] = lambda raw: relay.decode(raw, ())
    return found


def main() -> None:
    """Print CPU µs per record for each contender (best of 5 runs)."""
    parser = argparse.ArgumentParser(prog="python -m bench.mapping_languages")
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    raw = msgspec.json.encode(RECORD)
    print(f"{len(raw)}-byte record, six values, CPU time, best of 5 x {args.records} records")
    for name, reader in contenders().items():
        if isinstance(reader, str):
            print(f"{name:48s} {reader}")
            continue
        reader(raw)
        # CPU time, not wall: neighbours on a shared machine preempt the process.
        timer = timeit.Timer(partial(reader, raw), timer=time.process_time)
        best_s = min(timer.repeat(number=args.records, repeat=5))
        print(f"{name:48s} {best_s / args.records * 1e6:8.2f} µs/record")


if __name__ == "__main__":
    main()
