"""The one redaction: every text that leaves the process (logs, /status, DLQ headers, CLI output,
exception texts, vendor answer excerpts) is made through `redact`, which masks secrets and
personal data wherever they appear in it.

What `redact` masks (each rule is a regular expression below, applied in this order):

- secrets the process knows (`remember_secrets`: every secret field of the loaded config), in
  plain, percent-encoded and JSON-escaped form, and a cut-off start of one at the end of a text;
- XML elements named like a secret: `<ApiKey>k</ApiKey>` → `<ApiKey>***</ApiKey>`, also without
  the closing tag (`<ApiKey>k` cut off by a length limit → `<ApiKey>***`);
- authorization headers: `Authorization: Bearer abc` → `Authorization: Bearer ***` (also
  `Proxy-Authorization`, `Cookie`, `Set-Cookie`), in `k: v`, `k=v`, JSON and repr forms;
- `Bearer <token>` anywhere in prose;
- secret keys with a value: a key ending in `apikey`/`api_key`/`api-key`, `access_key`,
  `token`, `secret`, `password`/`passwd`/`pwd`, `credential(s)` or `signature`, or whose last
  part is `key`, `auth`, `sig` or `hmac` (`X-Secret-Key`, `X-Auth`, `key=`, `sig=`), followed by
  `=` or `:` and a value, quoted or bare, escaped or not;
- passwords in URLs: `redis://user:p@host` → `redis://user:***@host`;
- emails: `anna@example.com` → `a***@example.com` (`mask_email`);
- phones: the value of a `phone`/`mobile`/`msisdn` key, and any `+`-prefixed number of 7 to 15
  digits, keep their last two digits: `+49301234567` → `+*********67` (`mask_phone`).

A text that is percent-encoded (`apikey%3Dk`), HTML-escaped (`&lt;ApiKey&gt;k`) or holds JSON
`\\u` escapes is decoded and redacted again when that masks more; the decoded, masked form is
returned then, so no encoding hides a secret.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, unquote_plus

__all__ = [
    "MASK",
    "forget_secrets",
    "is_secret_key",
    "mask_email",
    "mask_phone",
    "redact",
    "remember_secrets",
]

MASK: Final = "***"
# Shorter known secrets are not matched literally: they would mask ordinary words and numbers.
MIN_KNOWN_SECRET_CHARS: Final = 6

# A secret word anywhere at the end of a key (`sasl_password`, `mytoken`, `x-amz-signature`).
_SECRET_WORD = (
    r"(?:api[_-]?key|access[_-]?key|token|secret|passw(?:or)?d|pwd|credentials?|signature)"
)
# A word that is a secret only as the whole last part of a key (`x-secret-key`, not `monkey`).
# `*_id_key`, `message_guid_key`, `partition_key` name where an id is, not a credential.
_NOT_A_CREDENTIAL = "".join(
    rf"(?<!{word}[_.-])"
    for word in ("id", "guid", "value", "name", "partition", "dedup", "routing")
)
_SECRET_PART = rf"(?:{_NOT_A_CREDENTIAL}key|auth|sig|hmac)"
_SECRET_NAME = rf"(?:[\w.-]*?{_SECRET_WORD}\b|(?:[\w.-]*[_.-])?{_SECRET_PART}\b)"
_SECRET_KEY: Final = re.compile(
    rf"{_SECRET_WORD}$|(?:^|[_.-]){_SECRET_PART}$|^(?:proxy-)?authorization$|cookie$", re.I
)
_PHONE_KEY: Final = re.compile(r"(?:phone|mobile|msisdn)$", re.I)
_SCHEMES = r"(?:bearer|basic|digest|token|apikey|negotiate|sso-key)"
# A value after `key=` / `key: `: a quoted string (plain or backslash-escaped; a string cut off
# before its closing quote runs to the end of the text), or a bare word
# with an optional auth scheme in front (`X-Auth: Bearer abc` masks `Bearer abc` whole).
_VALUE = (
    r"""(?P<value>\\"(?:(?!\\").)*(?:\\"|$)|\\'(?:(?!\\').)*(?:\\'|$)"""
    r"""|"(?:\\.|[^"\\])*(?:"|$)|'(?:\\.|[^'\\])*(?:'|$)"""
    rf"""|(?:{_SCHEMES}\s+(?=[^\s&;,"'<>(){{}}\[\]]))?[^\s&;,"'<>(){{}}\[\]]+)"""
)
# A key, possibly quoted as in JSON or a repr, and its separator.
_KEY = r"""(?P<kq>\\?["']?)(?P<key>\b{name})(?P=kq)(?P<sep>\s*[=:]\s*)"""

_XML_SECRET: Final = re.compile(
    rf"<(?P<tag>[\w:.-]*?{_SECRET_WORD}|(?:[\w:.-]*[_.:-])?{_SECRET_PART})(?P<attrs>\s[^>]*)?>"
    r"(?P<value>(?:<!\[CDATA\[.*?(?:\]\]>|$)|[^<])*)(?P<close></(?P=tag)\s*>)?",
    re.I | re.S,
)
_XML_PHONE: Final = re.compile(
    r"<(?P<tag>[\w:.-]*?(?:phone|mobile|msisdn))(?P<attrs>\s[^>]*)?>(?P<value>[^<]*)</(?P=tag)\s*>",
    re.I,
)
_HEADER: Final = re.compile(
    _KEY.format(name=r"(?:proxy-)?authorization|(?:set-)?cookie")
    + r"""(?P<value>\\?["'](?:(?!\\?["']).)*\\?["']|(?:"""
    + _SCHEMES
    + r"""\s+)?[^\s,;"'<>]+)""",
    re.I,
)
_BEARER: Final = re.compile(r"\b(?P<scheme>bearer\s+)[A-Za-z0-9\-._~+/]{8,}=*", re.I)
_KV_SECRET: Final = re.compile(_KEY.format(name=_SECRET_NAME) + _VALUE, re.I)
_KV_PHONE: Final = re.compile(_KEY.format(name=r"[\w.-]*?(?:phone|mobile|msisdn)\b") + _VALUE, re.I)
_URL_PASSWORD: Final = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^\s/:@]*:)[^\s/@]+(?=@)", re.I)
_EMAIL: Final = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE: Final = re.compile(r"(?<![\w+])\+\d(?:[ ().-]{0,2}\d){6,14}(?![\w])")
_AUTH_SCHEME: Final = re.compile(rf"^(?P<scheme>{_SCHEMES}\s+)", re.I)
_UNICODE_ESCAPE: Final = re.compile(r"\\u([0-9a-fA-F]{4})")
_PERCENT: Final = re.compile(r"%[0-9a-fA-F]{2}")
_ENTITY: Final = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[A-Za-z]+);")


class _Known:
    """The secrets this process holds (config values), matched literally in every text."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str]) -> None:
        forms = set(self.values)
        for value in values:
            if len(value) >= MIN_KNOWN_SECRET_CHARS:
                forms |= {value, quote(value, safe=""), quote(value), value.replace("/", "\\/")}
        if forms != self.values:
            self.values = forms
            ordered = sorted(forms, key=len, reverse=True)
            self.pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def clear(self) -> None:
        self.values = set()
        self.pattern = None

    def mask(self, text: str) -> str:
        if self.pattern is None:
            return text
        text = self.pattern.sub(MASK, text)
        # A length limit may have cut a secret: mask its start left at the end of the text.
        for value in self.values:
            start = text.rfind(value[:MIN_KNOWN_SECRET_CHARS], max(0, len(text) - len(value)))
            if start >= 0 and value.startswith(text[start:]):
                return text[:start] + MASK
        return text


_KNOWN = _Known()


def remember_secrets(values: Iterable[str]) -> None:
    """Mask these exact values (and their encoded forms) in every text `redact` sees from now on."""
    _KNOWN.add(values)


def forget_secrets() -> None:
    """Forget every remembered secret (a process that loads another config; tests)."""
    _KNOWN.clear()


def is_secret_key(name: str) -> bool:
    """Whether a field or header name holds a secret (`api_key`, `X-Secret-Key`, `Cookie`)."""
    return _SECRET_KEY.search(name) is not None


def is_phone_key(name: str) -> bool:
    """Whether a field name holds a phone number."""
    return _PHONE_KEY.search(name) is not None


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
    for quote_mark in ('\\"', "\\'", '"', "'"):
        if (
            len(value) >= 2 * len(quote_mark)
            and value.startswith(quote_mark)
            and value.endswith(quote_mark)
        ):
            return f"{quote_mark}{mask}{quote_mark}"
    return mask


def _secret_value(match: re.Match[str]) -> str:
    head = match.group(0)[: match.start("value") - match.start(0)]
    return head + _quoted(match.group("value"), MASK)


def _header_value(match: re.Match[str]) -> str:
    head = match.group(0)[: match.start("value") - match.start(0)]
    value = match.group("value")
    inner = value.strip("\\\"'")
    quote_mark = value[: len(value) - len(value.lstrip("\\\"'"))]
    scheme = _AUTH_SCHEME.match(inner)
    masked = (scheme.group("scheme") if scheme else "") + MASK
    return f"{head}{quote_mark}{masked}{quote_mark}"


def _phone_value(match: re.Match[str]) -> str:
    head = match.group(0)[: match.start("value") - match.start(0)]
    return head + mask_phone(match.group("value"))


def _xml_secret(match: re.Match[str]) -> str:
    tag, attrs = match.group("tag"), match.group("attrs") or ""
    return f"<{tag}{attrs}>{MASK}" + (f"</{tag}>" if match.group("close") else "")


def _xml_phone(match: re.Match[str]) -> str:
    tag, attrs = match.group("tag"), match.group("attrs") or ""
    return f"<{tag}{attrs}>{mask_phone(match.group('value'))}</{tag}>"


def _redact_plain(text: str) -> str:
    """Every rule once, on the text as it is."""
    text = _KNOWN.mask(text)
    text = _XML_SECRET.sub(_xml_secret, text)
    text = _HEADER.sub(_header_value, text)
    text = _KV_SECRET.sub(_secret_value, text)
    text = _BEARER.sub(lambda m: m.group("scheme") + MASK, text)
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    text = _EMAIL.sub(lambda m: mask_email(m.group(0)), text)
    text = _XML_PHONE.sub(_xml_phone, text)
    text = _KV_PHONE.sub(_phone_value, text)
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), text)


def _decoded(text: str) -> str:
    """One layer of percent, HTML and JSON `\\u` encoding undone (the text itself if none)."""
    if _PERCENT.search(text):
        text = unquote_plus(text)
    if _ENTITY.search(text):
        text = html.unescape(text)
    if _UNICODE_ESCAPE.search(text):
        text = _UNICODE_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return text


def redact(text: str) -> str:
    """`text` with secrets replaced by `***` and emails/phones masked (see the module doc)."""
    if not text:
        return text
    masked = _redact_plain(text)
    for _ in range(4):  # an encoding layer at a time, as long as decoding reveals more to mask
        decoded = _decoded(masked)
        if decoded == masked:
            break
        again = _redact_plain(decoded)
        if again == decoded:
            break
        masked = again
    return masked
