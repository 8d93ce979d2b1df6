"""`map`: show what a sample record of a topic becomes under the config's `inputs:` (or why it
is dead-lettered), without Kafka: the same decode stage the pipelines run (an Avro record's
schema is fetched from the config's schema registry, as the relay does)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from service.cli import common
from service.errors import RelayError, UsageError


class _Sample:
    """A record as the decode stage reads it: topic, value, headers, and the key, timestamp,
    partition and offset that `@` paths read (partition 0, offset the sample's index)."""

    def __init__(
        self,
        topic: str,
        value: bytes,
        headers: list[tuple[str, bytes]],
        key: str | None = None,
        timestamp_ms: int | None = None,
        offset: int = 0,
    ) -> None:
        self.topic = topic
        self.value = value
        self.headers = tuple(headers)
        self.key = None if key is None else key.encode("utf-8")
        self.timestamp = -1 if timestamp_ms is None else timestamp_ms  # -1: none, as Kafka says
        self.partition = 0
        self.offset = offset


def _header(text: str) -> tuple[str, bytes]:
    """An argparse type: `NAME=VALUE` (e.g. `ce_id=42`, `content-type=application/json`)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: give a header as NAME=VALUE")
    return name, value.encode("utf-8")


def _values(path: str, lines: bool) -> list[bytes]:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise RelayError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not lines:
        return [data]
    return [line for line in data.splitlines() if line.strip()]


def _with_schemas(decode: Any, sample: _Sample, registry: Any) -> Any:
    """Read the sample; an Avro record's schema is fetched from the registry first (the relay's
    client, bounded here: a CLI reports a registry that does not answer instead of waiting)."""
    import asyncio

    from service.core.registry import SchemaPending

    read = decode(sample)
    if not isinstance(read, SchemaPending):
        return read

    async def fetch() -> bool:
        ready = asyncio.Event()
        read.when_ready(ready.set)
        try:
            await asyncio.wait_for(ready.wait(), registry.config.timeout_s * 3)
            return True
        except TimeoutError:
            return False
        finally:
            await registry.close_session()  # this event loop ends here

    if not asyncio.run(fetch()):
        raise RelayError(
            f"schema {read.schema_id}: the schema registry did not answer "
            f"({registry.status()['last_error'] or 'no answer in time'})"
        )
    return decode(sample)


def cmd_map(args: argparse.Namespace) -> int:
    """Print each sample record's canonical event as JSON (exit 0), or why it is not one
    (stderr, exit 1), as the relay would read it from `--topic`."""
    import orjson

    from service.core.inputs import inputs_by_topic
    from service.delivery.stages import Terminal, TopicInputs
    from service.events import encode_event

    config = common.load(args)
    topics = config.kafka.topics
    if args.topic not in topics:
        raise UsageError(
            f"--topic {args.topic}: not in kafka.topics; choose from {', '.join(topics)}"
        )
    registry = None
    if config.schema_registry is not None:
        from service.delivery.registry import SchemaRegistryClient

        registry = SchemaRegistryClient(config.schema_registry)
    decode = TopicInputs(inputs_by_topic(config.inputs, registry), config.dlq.topic)
    failed = 0
    values = _values(args.file, args.lines)
    for index, value in enumerate(values, 1):
        sample = _Sample(
            args.topic, value, args.header or [], args.key, args.timestamp_ms, index - 1
        )
        read: Any = _with_schemas(decode, sample, registry)
        where = f"record {index}: " if len(values) > 1 else ""
        if isinstance(read, Terminal):
            failed += 1
            print(
                f"{where}dead-lettered as {read.dlq_reason} ({read.invalid_kind}): {read.error}",
                file=sys.stderr,
            )
            continue
        shown = orjson.dumps(orjson.loads(encode_event(read)), option=orjson.OPT_INDENT_2)
        sys.stdout.write(shown.decode() + "\n")
    return common.EXIT_FAILURE if failed else common.EXIT_OK


def add_commands(command: common.AddCommand) -> None:
    """Add `map`."""
    mapping = command(
        "map", "show what a sample record of a topic becomes under the config's inputs"
    )
    mapping.add_argument(
        "file",
        help="the record's value (JSON; for format avro its bytes as the topic holds them), "
        "or - for stdin",
    )
    mapping.add_argument("--config", help="the config file (default: $RELAY_CONFIG)")
    mapping.add_argument("--topic", required=True, help="the topic the record is read from")
    mapping.add_argument(
        "--header",
        action="append",
        type=_header,
        metavar="NAME=VALUE",
        help="a record header, e.g. ce_id=42 for a binary CloudEvent (repeatable)",
    )
    mapping.add_argument(
        "--key", help="the record's key, as text (what @key reads; default: no key)"
    )
    mapping.add_argument(
        "--timestamp-ms",
        type=int,
        metavar="MS",
        help="the record's timestamp in epoch milliseconds (what @timestamp reads; default: none)",
    )
    mapping.add_argument(
        "--lines", action="store_true", help="FILE holds one record per line (JSON Lines)"
    )
    mapping.set_defaults(func=cmd_map)
