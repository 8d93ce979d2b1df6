"""Structured logs: one JSON object per line off a TTY, a compact readable line on one, and every
message and field passed through `redact` so that no secret or personal datum is ever written.

    configure_logging("info")                      # JSON to stdout unless stdout is a terminal
    log.info("delivered", extra={"vendor": "altcraft", "event_id": eid, "outcome": "delivered"})

    {"level":"info","time":"2026-11-20T14:03:11.123Z","logger":"conversion_relay.sender",
     "message":"delivered","vendor":"altcraft","event_id":"7d4c…","outcome":"delivered"}

`redact` is `service.core.redact.redact` (the one redaction; its module doc lists what it masks),
re-exported here.

Structured values (dicts, lists) passed in `extra=` are walked: a value under a secret-looking
key becomes `***`, every string inside goes through `redact`.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import sys
from collections.abc import Mapping
from typing import IO, Any, Final

import orjson

from service.core.redact import (
    MASK,
    is_phone_key,
    is_secret_key,
    mask_email,
    mask_phone,
    redact,
)

__all__ = [
    "FIELDS",
    "HumanFormatter",
    "JsonFormatter",
    "configure_logging",
    "mask_email",
    "mask_phone",
    "redact",
]

# The fields the relay passes with `extra=`, in the order they are written.
FIELDS: Final[tuple[str, ...]] = (
    "vendor",
    "event_id",
    "outcome",
    "status",
    "attempt",
    "reason",
    "topic",
    "partition",
    "offset",
)

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRS: Final = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


def _clean(value: Any, key: str = "") -> Any:
    """A JSON-ready copy of an `extra=` value with every secret and personal datum masked."""
    if value is None:
        return None
    if key and is_secret_key(key):
        return MASK
    if key and is_phone_key(key) and isinstance(value, str | int):
        return mask_phone(redact(str(value)))
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, enum.Enum):
        return _clean(value.value, key)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _clean(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", errors="replace")
    return redact(value if isinstance(value, str) else str(value))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra=` fields of a record, the known ones first, all cleaned."""
    names = [name for name in FIELDS if name in record.__dict__]
    names += sorted(
        name
        for name in record.__dict__
        if name not in _RECORD_ATTRS and name not in FIELDS and not name.startswith("_")
    )
    return {name: _clean(record.__dict__[name], name) for name in names}


def _rfc3339(created: float) -> str:
    """Epoch seconds → `2026-11-20T14:03:11.123Z`."""
    moment = dt.datetime.fromtimestamp(created, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: level, time, logger, message, the extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "level": record.levelname.lower(),
            "time": _rfc3339(record.created),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        doc.update(_extras(record))
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            doc["stack"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(doc).decode()


_COLOURS: Final = {
    logging.DEBUG: "\x1b[2m",
    logging.INFO: "\x1b[36m",
    logging.WARNING: "\x1b[33m",
    logging.ERROR: "\x1b[31m",
    logging.CRITICAL: "\x1b[1;31m",
}
_RESET: Final = "\x1b[0m"


class HumanFormatter(logging.Formatter):
    """`14:03:11.123 INFO  conversion_relay.sender  delivered  vendor=altcraft outcome=...`."""

    def __init__(self, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        moment = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        level = f"{record.levelname:<5}"
        if self.colour:
            level = f"{_COLOURS.get(record.levelno, '')}{level}{_RESET}"
        fields = " ".join(
            f"{name}={orjson.dumps(value).decode() if not isinstance(value, str) else value}"
            for name, value in _extras(record).items()
        )
        line = f"{moment:%H:%M:%S}.{moment.microsecond // 1000:03d} {level} {record.name}  "
        line += redact(record.getMessage()) + (f"  {fields}" if fields else "")
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        if record.stack_info:
            line += "\n" + redact(self.formatStack(record.stack_info))
        return line


class _RelayHandler(logging.StreamHandler[IO[str]]):
    """The handler `configure_logging` installs, so that calling it again replaces it."""


def _is_tty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


def configure_logging(
    level: str, stream: IO[str] = sys.stdout, json: bool | None = None
) -> logging.Handler:
    """Send every log record to `stream`: JSON lines, or readable lines when `json` is False.

    `json=None` decides by the stream: a terminal gets readable lines (in colour unless
    NO_COLOR is set), anything else (a pipe, a file, a container log) gets JSON. Calling it
    again replaces the handler it installed; other handlers on the root logger are kept.
    """
    numeric = logging.getLevelName(level.strip().upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error")
    tty = _is_tty(stream)
    as_json = not tty if json is None else json
    handler = _RelayHandler(stream)
    handler.setFormatter(
        JsonFormatter() if as_json else HumanFormatter(colour=tty and "NO_COLOR" not in os.environ)
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RelayHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler
