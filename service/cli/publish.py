"""`publish`: send events (a JSON Lines file or generated samples) to a topic, as JSON or as Avro
in the Schema Registry wire format (`--format avro --schema FILE`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from service.cli import common
from service.errors import RelayError, UsageError


def _lines(path: str) -> Iterator[bytes]:
    with Path(path).open("rb") as handle:
        yield from handle


def summary(sent: int, topic: str) -> str:
    """The one-line result: `published N record(s) to TOPIC`."""
    return f"published {sent} record{'' if sent == 1 else 's'} to {topic}"


def _avro_lines(
    lines: Iterator[bytes], schema_path: str, registry: Any, subject: str
) -> Callable[[], Awaitable[list[bytes]]]:
    """A coroutine function making the framed Avro values of the JSON lines (registering the
    schema under `subject` first, as a producer's serializer does)."""
    import orjson

    from service.core.registry import avro_value, parse_for_writing

    try:
        text = Path(schema_path).read_text(encoding="utf-8")
        parsed = parse_for_writing(orjson.loads(text))
    except OSError as exc:
        raise RelayError(f"cannot read {schema_path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # not JSON, or no Avro schema fastavro accepts
        raise UsageError(f"--schema {schema_path}: not an Avro schema: {exc}") from None

    async def values() -> list[bytes]:
        from service.delivery.registry import RegistryDown

        try:
            schema_id = await registry.register(subject, text)
        except RegistryDown as exc:
            raise RelayError(f"schema registry: {exc}") from None
        finally:
            await registry.aclose()
        out = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(avro_value(schema_id, parsed, orjson.loads(line)))
            except (orjson.JSONDecodeError, ValueError) as exc:
                raise UsageError(f"line {number}: {exc}") from None
        return out

    return values


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish a JSON Lines file or generated sample events to a topic; with `--format avro`,
    each line as an Avro record in the Schema Registry wire format."""
    from service.devtools.demo import sample_lines
    from service.devtools.publish import publish

    if (args.file is None) == (args.sample is None):
        raise UsageError("give either FILE.jsonl or --sample N")
    avro = args.format == "avro"
    if avro and (args.schema is None or args.file is None):
        raise UsageError("--format avro needs FILE.jsonl and --schema FILE.avsc")
    if not avro and (args.schema or args.registry):
        raise UsageError("--schema and --registry are for --format avro")
    if args.sample is not None and args.sample < 1:
        raise UsageError(f"--sample: N must be a whole number >= 1, got {args.sample}")
    kwargs: dict[str, Any] = {}
    bootstrap, topic = args.bootstrap, args.topic
    registry_config = None
    if args.config or os.environ.get("RELAY_CONFIG"):
        from service.kafka import client_kwargs

        config = common.load(args)
        registry_config = config.schema_registry
        kwargs = client_kwargs(config.kafka)
        bootstrap = bootstrap or kwargs["bootstrap_servers"]
        topic = topic or config.kafka.topics[0]
        if topic not in config.kafka.topics:  # published all the same: it may be on purpose
            common.warn(
                f"no pipeline of {common.config_path(args)} reads topic {topic}; "
                f"its pipelines read {', '.join(config.kafka.topics)}"
            )
    if not bootstrap or not topic:
        raise UsageError("give --bootstrap and --topic, or --config to take both from a config")
    kwargs["bootstrap_servers"] = bootstrap
    if args.file is not None:
        try:
            Path(args.file).open("rb").close()
        except OSError as exc:
            raise RelayError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    lines = sample_lines(args.sample) if args.sample is not None else _lines(args.file)
    avro_values = None
    if avro:
        from service.config import SchemaRegistryConfig
        from service.delivery.registry import SchemaRegistryClient

        if args.registry:  # the URL given wins; the config's auth and TLS go with it
            registry_config = (
                SchemaRegistryConfig(url=args.registry)
                if registry_config is None
                else msgspec.structs.replace(registry_config, url=args.registry)
            )
        if registry_config is None:
            raise UsageError(
                "--format avro: give --registry URL, or --config with a schema_registry"
            )
        client = SchemaRegistryClient(registry_config)
        avro_values = _avro_lines(lines, args.schema, client, args.subject or f"{topic}-value")
    common.quiet_kafka_logs()

    async def go() -> int:
        await common.probe_kafka(kwargs, bootstrap, common.KAFKA_TIMEOUT_S)
        if avro_values is not None:  # the values' keys stay null: the event id is not read
            return await publish(bootstrap, topic, await avro_values(), client=kwargs, raw=True)
        return await publish(bootstrap, topic, lines, client=kwargs)

    sent = common.run_async(go())
    print(summary(sent, topic))
    return 0


def add_commands(command: common.AddCommand) -> None:
    """Add `publish`."""
    pub = command("publish", "publish events to a topic")
    pub.add_argument("file", nargs="?", help="JSON Lines file, one event per line")
    pub.add_argument(
        "--sample", type=int, metavar="N", help="publish N (>= 1) generated sample events"
    )
    pub.add_argument("--config", help="take the broker and topic from this config file")
    pub.add_argument("--bootstrap", metavar="HOST:PORT", help="broker (default: from --config)")
    pub.add_argument("--topic", help="topic to publish to (default: the config's first topic)")
    pub.add_argument(
        "--format",
        choices=("json", "avro"),
        default="json",
        help="json: each line as it is; avro: each line written in --schema, framed with its "
        "Schema Registry id (as confluent-kafka's AvroSerializer writes)",
    )
    pub.add_argument("--schema", metavar="FILE.avsc", help="the Avro schema (--format avro)")
    pub.add_argument(
        "--registry",
        metavar="URL",
        help="the Schema Registry to register --schema with (default: the config's)",
    )
    pub.add_argument(
        "--subject",
        help="the subject to register it under (default: TOPIC-value, as the serializers do)",
    )
    pub.set_defaults(func=cmd_publish)
