"""Structured logs: one JSON object per line off a TTY, a compact readable line on one, and every
message and field passed through `redact` so that no secret or personal datum is ever written.

    configure_logging("info")                      # JSON to stdout unless stdout is a terminal
    log.info("delivered", extra={"vendor": "altcraft", "event_id": eid, "outcome": "delivered"})

    {"level":"info","time":"2026-11-20T14:03:11.123Z","logger":"conversion_relay.sender",
     "message":"delivered","vendor":"altcraft","event_id":"7d4c…","outcome":"delivered"}

What `redact` masks (each rule is a regular expression below, applied in this order):

- XML elements named like a secret: `<ApiKey>k</ApiKey>` → `<ApiKey>***</ApiKey>` (also
  `<token>`, `<password>`, `<secret>`);
- authorization headers: `Authorization: Bearer abc` → `Authorization: Bearer ***` (also
  `Proxy-Authorization`, `Cookie`, `Set-Cookie`), in `k: v`, `k=v`, JSON and repr forms;
- secret keys with a value: a key ending in `apikey`/`api_key`/`api-key`, `token`, `secret`,
  `password`/`passwd`/`pwd` or `credential(s)` followed by `=` or `:` and a value, quoted or
  bare, escaped or not: `?apikey=k`, `"token": "t"`, `sasl_password='p'`, `X-Api-Key: k`;
- passwords in URLs: `redis://user:p@host` → `redis://user:***@host`;
- emails: `anna@example.com` → `a***@example.com` (`mask_email`);
- phones: the value of a `phone`/`mobile`/`msisdn` key, and any `+`-prefixed number of 7 to 15
  digits, keep their last two digits: `+49301234567` → `+*********67` (`mask_phone`). Bare
  digit runs are left alone: they are offsets, timestamps and ids far more often than phones.

Structured values (dicts, lists) passed in `extra=` are walked: a value under a secret-looking
key becomes `***`, every string inside goes through `redact`.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import IO, Any, Final

import orjson

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
MASK: Final = "***"

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRS: Final = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}

_SECRET_WORD = r"(?:api[_-]?key|token|secret|passw(?:or)?d|pwd|credentials?)"
_SECRET_KEY: Final = re.compile(rf"{_SECRET_WORD}$|^(?:proxy-)?authorization$|cookie$", re.I)
_PHONE_KEY: Final = re.compile(r"(?:phone|mobile|msisdn)$", re.I)
# A value after `key=` / `key: `: a quoted string (plain or backslash-escaped) or a bare word.
_VALUE = (
    r"""(?P<value>\\"(?:(?!\\").)*\\"|\\'(?:(?!\\').)*\\'"""
    r"""|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[^\s&;,"'<>(){}\[\]]+)"""
)
# A key, possibly quoted as in JSON or a repr, and its separator.
_KEY = r"""(?P<kq>\\?["']?)(?P<key>\b{name})(?P=kq)(?P<sep>\s*[=:]\s*)"""

_XML_SECRET: Final = re.compile(
    rf"<(?P<tag>[\w:.-]*?{_SECRET_WORD})(?P<attrs>\s[^>]*)?>(?P<value>.*?)</(?P=tag)\s*>",
    re.I | re.S,
)
_XML_PHONE: Final = re.compile(
    r"<(?P<tag>[\w:.-]*?(?:phone|mobile|msisdn))(?P<attrs>\s[^>]*)?>(?P<value>[^<]*)</(?P=tag)\s*>",
    re.I,
)
_HEADER: Final = re.compile(
    _KEY.format(name=r"(?:proxy-)?authorization|(?:set-)?cookie")
    + r"""(?P<value>\\?["'](?:(?!\\?["']).)*\\?["']|(?:(?:bearer|basic|digest|token|apikey"""
    r"""|negotiate|sso-key)\s+)?[^\s,;"'<>]+)""",
    re.I,
)
_KV_SECRET: Final = re.compile(_KEY.format(name=rf"[\w.-]*?{_SECRET_WORD}\b") + _VALUE, re.I)
_KV_PHONE: Final = re.compile(_KEY.format(name=r"[\w.-]*?(?:phone|mobile|msisdn)\b") + _VALUE, re.I)
_URL_PASSWORD: Final = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^\s/:@]*:)[^\s/@]+(?=@)", re.I)
_EMAIL: Final = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE: Final = re.compile(r"(?<![\w+])\+\d(?:[ ().-]{0,2}\d){6,14}(?![\w])")
_AUTH_SCHEME: Final = re.compile(
    r"^(?P<scheme>(?:bearer|basic|digest|token|apikey|negotiate|sso-key)\s+)", re.I
)


def mask_email(email: str) -> str:
    """`anna@example.com` → `a***@example.com`: the first letter and the domain stay."""
    local, at, domain = email.rpartition("@")
    if not at or not local:
        return MASK
    return f"{local[0]}{MASK}@{domain}"


def mask_phone(phone: str) -> str:
    """`+49301234567` → `+*********67`: every digit but the last two becomes `*`."""
    total = sum(ch.isdigit() for ch in phone)
    seen = 0
    out = []
    for ch in phone:
        if ch.isdigit():
            seen += 1
            out.append(ch if seen > total - 2 else "*")
        else:
            out.append(ch)
    return "".join(out)


def _quoted(value: str, mask: str) -> str:
    """Replace what is inside the quotes of `value` (if any) by `mask`, keeping the quotes."""
    for quote in ('\\"', "\\'", '"', "'"):
        if len(value) >= 2 * len(quote) and value.startswith(quote) and value.endswith(quote):
            return f"{quote}{mask}{quote}"
    return mask


def _secret_value(match: re.Match[str]) -> str:
    head = match.group(0)[: match.start("value") - match.start(0)]
    return head + _quoted(match.group("value"), MASK)


def _header_value(match: re.Match[str]) -> str:
    head = match.group(0)[: match.start("value") - match.start(0)]
    value = match.group("value")
    inner = value.strip("\\\"'")
    quote = value[: len(value) - len(value.lstrip("\\\"'"))]
    scheme = _AUTH_SCHEME.match(inner)
    masked = (scheme.group("scheme") if scheme else "") + MASK
    return f"{head}{quote}{masked}{quote}"


def _phone_value(match: re.Match[str]) -> str:
    head = match.group(0)[: match.start("value") - match.start(0)]
    return head + mask_phone(match.group("value"))


def _xml_secret(match: re.Match[str]) -> str:
    tag, attrs = match.group("tag"), match.group("attrs") or ""
    return f"<{tag}{attrs}>{MASK}</{tag}>"


def _xml_phone(match: re.Match[str]) -> str:
    tag, attrs = match.group("tag"), match.group("attrs") or ""
    return f"<{tag}{attrs}>{mask_phone(match.group('value'))}</{tag}>"


def redact(text: str) -> str:
    """`text` with secrets replaced by `***` and emails/phones masked (see the module doc)."""
    text = _XML_SECRET.sub(_xml_secret, text)
    text = _HEADER.sub(_header_value, text)
    text = _KV_SECRET.sub(_secret_value, text)
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    text = _EMAIL.sub(lambda m: mask_email(m.group(0)), text)
    text = _XML_PHONE.sub(_xml_phone, text)
    text = _KV_PHONE.sub(_phone_value, text)
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), text)


def _clean(value: Any, key: str = "") -> Any:
    """A JSON-ready copy of an `extra=` value with every secret and personal datum masked."""
    if value is None:
        return None
    if key and _SECRET_KEY.search(key):
        return MASK
    if key and _PHONE_KEY.search(key) and isinstance(value, str | int):
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
