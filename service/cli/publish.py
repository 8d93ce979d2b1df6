"""`publish`: send events (a JSON Lines file or generated samples) to a topic."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.cli import common
from service.errors import RelayError, UsageError


def _lines(path: str) -> Iterator[bytes]:
    with Path(path).open("rb") as handle:
        yield from handle


def summary(sent: int, topic: str) -> str:
    """The one-line result: `published N record(s) to TOPIC`."""
    return f"published {sent} record{'' if sent == 1 else 's'} to {topic}"


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish a JSON Lines file or generated sample events to a topic."""
    from service.devtools.demo import sample_lines
    from service.devtools.publish import publish

    if (args.file is None) == (args.sample is None):
        raise UsageError("give either FILE.jsonl or --sample N")
    if args.sample is not None and args.sample < 1:
        raise UsageError(f"--sample: N must be a whole number >= 1, got {args.sample}")
    kwargs: dict[str, Any] = {}
    bootstrap, topic = args.bootstrap, args.topic
    if args.config or os.environ.get("RELAY_CONFIG"):
        from service.kafka import client_kwargs

        config = common.load(args)
        kwargs = client_kwargs(config.kafka)
        bootstrap = bootstrap or kwargs["bootstrap_servers"]
        topic = topic or config.kafka.topics[0]
    if not bootstrap or not topic:
        raise UsageError("give --bootstrap and --topic, or --config to take both from a config")
    kwargs["bootstrap_servers"] = bootstrap
    if args.file is not None:
        try:
            Path(args.file).open("rb").close()
        except OSError as exc:
            raise RelayError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    lines = sample_lines(args.sample) if args.sample is not None else _lines(args.file)
    common.quiet_kafka_logs()

    async def go() -> int:
        await common.probe_kafka(kwargs, bootstrap, common.KAFKA_TIMEOUT_S)
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
    pub.set_defaults(func=cmd_publish)
