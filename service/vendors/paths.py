"""URL parts built from event data or config: a value fills one path segment and nothing more.

`quote(value, safe="")` encodes `/`, `?`, `#`, CR and LF, but leaves `.` and `..`, which URL
libraries (yarl, browsers, proxies) collapse into a move up the path. So a segment that is, or
after filling a placeholder becomes, `.` or `..` (or is empty) is refused; the request keeps the
scheme, host, port and path prefix of the vendor's `base_url`.

    segment("ac-1", "account")          → "ac-1"
    segment("a/b?c", "event_id")        → "a%2Fb%3Fc"
    segment("..", "event_id")           → VendorInputError
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from service.errors import VendorInputError

__all__ = ["DOT_SEGMENTS", "check_segments", "segment", "shown_url"]

DOT_SEGMENTS = frozenset({".", ".."})
# Characters that must never survive encoding into a segment.
_FORBIDDEN = frozenset("/?#\r\n")


def segment(value: str, field: str) -> str:
    """`value` percent-encoded as one whole path segment; VendorInputError for `.`, `..`, empty."""
    encoded = quote(value, safe="")
    if encoded in DOT_SEGMENTS or not encoded:
        raise VendorInputError(f"{field} {value[:8]!r} cannot be a URL path segment")
    return encoded


def encoded_part(value: str, field: str) -> str:
    """`value` percent-encoded for a placeholder inside a segment (`/g/{goal_id}.json`)."""
    encoded = quote(value, safe="")
    if not encoded:
        raise VendorInputError(f"{field} is empty and cannot fill a URL path segment")
    return encoded


def check_segments(path: str, field: str) -> str:
    """`path` itself when none of its segments is `.`/`..` or holds `?`, `#`, CR, LF; else raise."""
    for part in path.split("/")[1:]:
        if part in DOT_SEGMENTS or _FORBIDDEN & set(part):
            raise VendorInputError(f"{field}: the filled path has a segment {part[:8]!r}")
    return path


def shown_url(url: str) -> str:
    """`url` without userinfo, query and fragment: what may be printed or served."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "(unparsable URL)"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))
