"""A generic webhook receiver: accepts any JSON body on its configured path and records it.

It is strict only about what every JSON webhook shares: the path (with `{goal_id}` /
`{event_id}` matching one URL segment), the method when pinned, a JSON media type
(`application/json` or `application/*+json`) and a body that parses as JSON. Success is 200
`{"ok": true}`; `rejection()` is 422.
"""

from __future__ import annotations

import re

import orjson
from aiohttp import web

from service.sandbox.base import Accepted, Refused
from service.vendors.webhook import PLACEHOLDERS


def path_pattern(path: str | None) -> re.Pattern[str] | None:
    """The request paths a configured webhook path matches (None = any path)."""
    if path is None:
        return None
    route = path.partition("?")[0] or "/"
    parts = re.split("(" + "|".join(re.escape(p) for p in PLACEHOLDERS) + ")", route)
    regex = "".join("[^/]+" if part in PLACEHOLDERS else re.escape(part) for part in parts)
    return re.compile(f"^{regex}$")


def _is_json(content_type: str) -> bool:
    main, _, sub = content_type.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


class WebhookContract:
    """Any JSON body on the configured path and method."""

    name = "webhook"

    def __init__(self, path: str | None = None, method: str | None = None) -> None:
        self.pattern = path_pattern(path)
        self.method = method

    def check(self, request: web.Request, body: bytes) -> Accepted | Refused:
        """Accept and record any JSON body; refuse other paths, methods and non-JSON."""
        # Matched still encoded: an encoded `/` inside a goal id is not a segment boundary.
        if self.pattern is not None and not self.pattern.match(request.rel_url.raw_path):
            return Refused(web.json_response({"error": "not found"}, status=404), reason="path")
        if self.method is not None and request.method != self.method:
            refused = web.json_response({"error": "method not allowed"}, status=405)
            return Refused(refused, reason="method not allowed")
        if not _is_json(request.content_type):
            refused = web.json_response({"error": "expected a JSON body"}, status=415)
            return Refused(refused, reason="not JSON")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            refused = web.json_response({"error": "body is not valid JSON"}, status=400)
            return Refused(refused, reason="not JSON")
        return Accepted(web.json_response({"ok": True}), payload=data)

    def rejection(self) -> web.StreamResponse:
        """A permanent refusal, as a typical webhook receiver gives one."""
        return web.json_response({"error": "rejected"}, status=422)
