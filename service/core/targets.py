"""Request targets as RFC 3986 allows them on the wire, for every transport. Pure.

A vendor URL is built from config and event fields; characters a target may not hold (space,
`"<>\\^`{|}`, non-ASCII) are percent-encoded, as yarl, browsers and curl do, and escapes already
made are kept. Without this, reqwest's url crate (WHATWG rules) sent `|` and `^` raw and read `\\`
as `/`, so a vendor saw another path than the config meant.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote

__all__ = ["TARGET_SAFE", "encoded_target", "encoded_url"]

# Kept as they are: RFC 3986's pchar, `/` and `?`, `%` (an escape already made) and `[]` (left as
# sent in queries, as curl does). Every other character is percent-encoded.
TARGET_SAFE: Final = "!$%&'()*+,-./:;=?@[]_~"
_TARGET_UNSAFE: Final = re.compile(r"[^!$%&'()*+,\-./0-9:;=?@A-Z\[\]_a-z~]")


def encoded_target(target: str) -> str:
    """The request target as sent: percent-encoded where RFC 3986 does not allow a character."""
    if _TARGET_UNSAFE.search(target):
        return quote(target, safe=TARGET_SAFE)
    return target


def encoded_url(url: str) -> str:
    """An absolute URL with its target (path and query) encoded as `encoded_target` does; the
    scheme and authority are left to the client (an IDN host becomes its A-label there)."""
    start = url.find("//")
    slash = url.find("/", start + 2 if start >= 0 else 0)
    if slash < 0:
        return url
    target = url[slash:]
    encoded = encoded_target(target)
    return url if encoded is target else url[:slash] + encoded
