"""Plain-text tables for the operator commands: no markup, control characters shown as escapes."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
ELLIPSIS = "…"


def printable(text: str) -> str:
    """The text with control and format characters (ESC, NUL, bidi overrides) as escapes, so a
    letter's error text cannot move the cursor, recolour the terminal or reorder a line."""
    out = []
    for char in text:
        if char in _NAMED:
            out.append(_NAMED[char])
        elif unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def age(seconds: float | None) -> str:
    """A short age like kubectl's: 45s, 12m, 5h, 3d; `?` when unknown."""
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    for unit_s, suffix in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= unit_s:
            return f"{int(seconds // unit_s)}{suffix}"
    return f"{int(seconds)}s"


def cell(value: Any) -> str:
    """A value as table text: None is `-`, everything else printable."""
    return "-" if value is None or value == "" else printable(str(value))


def table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    width: int | None = None,
    shrink: str | None = None,
) -> str:
    """Rows as aligned columns under upper-case headers (two spaces apart). With `width`, the
    `shrink` column is cut short (ending in …) so each line fits; without it nothing is cut."""
    texts = [[cell(row.get(c)) for c in columns] for row in rows]
    headers = [c.replace("_", " ").upper() for c in columns]
    widths = [max([len(h), *(len(t[i]) for t in texts)]) for i, h in enumerate(headers)]
    if width is not None and shrink is not None and shrink in columns:
        index = list(columns).index(shrink)
        others = sum(w for i, w in enumerate(widths) if i != index) + 2 * (len(columns) - 1)
        widths[index] = max(len(headers[index]), min(widths[index], width - others))
    lines = []
    for values in [headers, *texts]:
        parts = []
        for i, (text, w) in enumerate(zip(values, widths, strict=True)):
            if len(text) > w:
                text = text[: w - 1] + ELLIPSIS
            parts.append(text if i == len(values) - 1 else text.ljust(w))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)
