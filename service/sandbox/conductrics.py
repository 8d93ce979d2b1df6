"""Strict Conductrics REST goal contract: `POST /{account}/v3/agent-api?vid=&session=&apikey=`.

The body is JSON `{"commands": [{"g": "<goal code>", "v": <number>}]}` ("v" optional). The doc
shows no answer format, so the sandbox answers like a JSON API: 200 with a small `data` object on
success; 404 for another path or account, 400 `{"err": ...}` for a missing vid, session or apikey
or a malformed body, 401 for an apikey outside `api_key` when pinned, 415 for a non-JSON type.
Only goal commands (`g`, `v`) are accepted: the relay sends nothing else.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from service.sandbox.base import Accepted, Refused
from service.vendors.conductrics import AGENT_API_PATH

_PATH = re.compile(rf"^/([^/]+){re.escape(AGENT_API_PATH)}$")
_QUERY = ("vid", "session", "apikey")


def error(message: str, status: int = 400) -> web.Response:
    """A JSON error answer."""
    return web.json_response({"err": message}, status=status)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def commands_problem(data: Any) -> str | None:
    """What is wrong with a commands body, or None."""
    if not isinstance(data, dict) or set(data) != {"commands"}:
        return "body must be an object with exactly one key: commands"
    commands = data["commands"]
    if not isinstance(commands, list) or not commands:
        return "commands must be a non-empty array"
    for index, command in enumerate(commands):
        if not isinstance(command, dict) or set(command) - {"g", "v"}:
            return f"commands[{index}] must be a goal command with g and optional v"
        code = command.get("g")
        if not isinstance(code, str) or not code:
            return f"commands[{index}].g must be a goal code"
        if "v" in command and not _is_number(command["v"]):
            return f"commands[{index}].v must be a number"
    return None


class ConductricsContract:
    """The agent-api goal call as documented; account and API key optionally pinned."""

    name = "conductrics"

    def __init__(self, account: str | None = None, api_key: str | None = None) -> None:
        self.account = account
        self.api_key = api_key

    def check(self, request: web.Request, body: bytes) -> Accepted | Refused:
        """Validate the path, method, query parameters, media type and commands."""
        match = _PATH.match(request.path)
        if match is None or (self.account is not None and match.group(1) != self.account):
            return Refused(error("not found", 404), reason="unknown path or account")
        if request.method != "POST":
            return Refused(error("method not allowed", 405), reason="method not allowed")
        for name in _QUERY:
            if not request.query.get(name):
                return Refused(error(f"missing {name}"), reason=f"missing {name}")
        if self.api_key is not None and request.query["apikey"] != self.api_key:
            return Refused(error("invalid apikey", 401), reason="invalid apikey")
        if request.content_type != "application/json":
            return Refused(error("expected application/json", 415), reason="not JSON")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return Refused(error("body is not valid JSON"), reason="not JSON")
        found = commands_problem(data)
        if found is not None:
            return Refused(error(found), payload=data, reason=found)
        payload = {"query": {name: request.query[name] for name in _QUERY}, "body": data}
        goals = [command["g"] for command in data["commands"]]
        answer = {"data": {"vid": request.query["vid"], "goals": goals}, "status": 200}
        return Accepted(web.json_response(answer), payload=payload)

    def rejection(self) -> web.StreamResponse:
        """A permanent refusal: the goal code is not an API goal of this account."""
        return error("goal not found or not enabled for REST API goals")
