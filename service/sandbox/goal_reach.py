"""Strict goal-reach contract (SustainImpact / Sales Ninja): the doc's rules, nothing looser."""

from __future__ import annotations

import ipaddress
import re
import uuid
from typing import Any

import orjson
from aiohttp import web

from service.sandbox.base import Accepted, Refused
from service.vendors.goal_reach import PATH

_FIELDS = {
    "Ip",
    "GoalId",
    "CustomerId",
    "CreatedOnUtc",
    "CustomUserScopeParams",
    "CustomPageScopeParams",
}
# The doc's example: "2022-10-27 12:23:25.367999" (UTC, space separator, optional fraction).
_CREATED_ON = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,7})?$")


def _problem(data: dict[str, Any]) -> str | None:
    unknown = set(data) - _FIELDS
    if unknown:
        return f"unknown field(s): {', '.join(sorted(unknown))}"
    for required in ("GoalId", "CustomerId"):
        value = data.get(required)
        if not isinstance(value, str):
            return f"{required} is required and must be a string"
        try:
            uuid.UUID(value)
        except ValueError:
            return f"{required} must be a GUID/UUID"
    ip = data.get("Ip")
    if ip is not None:
        try:
            ipaddress.ip_address(ip)
        except (ValueError, TypeError):
            return "Ip must be an IP address"
    created = data.get("CreatedOnUtc")
    if created is not None and not (isinstance(created, str) and _CREATED_ON.match(created)):
        return "CreatedOnUtc must look like 2022-10-27 12:23:25.367999"
    for scope in ("CustomUserScopeParams", "CustomPageScopeParams"):
        params = data.get(scope)
        if params is None:
            continue
        if not isinstance(params, dict):
            return f"{scope} must be an object"
        for key, value in params.items():
            if not isinstance(value, str):
                return f"{scope}.{key} must be a string (not {value!r})"
    return None


def _bad_request(message: str) -> web.Response:
    return web.json_response({"message": message}, status=400)


class GoalReachContract:
    """POST /outer/v1.0/goal/reach with a JSON body; 200 and an empty body on success."""

    name = "goal_reach"

    def check(self, request: web.Request, body: bytes) -> Accepted | Refused:
        """Validate the path, method, media type and every documented field."""
        if request.path != PATH:
            return Refused(web.Response(status=404), reason="unknown path")
        if request.method != "POST":
            return Refused(web.Response(status=405), reason="method not allowed")
        if request.content_type != "application/json":
            return Refused(web.Response(status=415), reason="not JSON")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return Refused(_bad_request("body is not valid JSON"), reason="not JSON")
        if not isinstance(data, dict):
            return Refused(_bad_request("body must be an object"), reason="not an object")
        problem = _problem(data)
        if problem is not None:
            return Refused(_bad_request(problem), payload=data, reason=problem)
        return Accepted(web.Response(status=200), payload=data)

    def rejection(self) -> web.StreamResponse:
        """What the vendor answers for a goal or customer it does not know."""
        return _bad_request("Customer not found")
