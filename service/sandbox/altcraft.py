"""Strict Altcraft goal-registration contract: `POST /api/v1.1/goals/register`, JSON or XML.

Every answer is HTTP 200 (XML to an XML request, JSON otherwise); success is
`{"error": 0, "error_text": "Successful operation"}`. The doc names no other code, so the sandbox
picks these (plausible, documented here, permanent):

    1  Invalid request body       not a JSON object / not an <xml> document
    2  Invalid token              token missing, empty, or not in `tokens` when set
    3  Invalid db_id              db_id missing or not an integer
    4  Invalid pixel_id           pixel_id missing or not an integer
    5  Invalid parameter: ...     unknown field, wrong type, string over 128 characters, bad date,
                                  pixel_data nested or over 1 KB, no goal, lat without lon,
                                  sku_eid without product_eid, the matching identity missing
    6  Profile not found          `rejection()` (reject_next)

pixel_data: the doc says no nested objects or arrays, yet its own example holds `"arr": [1,2,3]`;
so objects are refused anywhere and arrays only when they hold something other than scalars.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape

import orjson
from aiohttp import web

from service.sandbox.base import Accepted, Refused
from service.vendors.altcraft import MAX_PIXEL_DATA_BYTES, MAX_STRING_CHARS, PATH

SUCCESS_TEXT = "Successful operation"
# Every string field the doc lists, grouped as the doc's tables are.
_STRING_FIELDS = """
    token goal date matching email phone profile_id field_name
    referer user_agent accept_language client_ip client_ip_v4 client_ip_v6 browser os device
    country region city address zip time_zone
    utm_content utm_medium utm_source utm_campaign utm_term
    net_ssid net_mac_addr net_gateway_ipv4 net_gateway_ipv6 send_message_id promo_id
    vendor external_type external_event_id altcraft_client_id
    endpoint_eid order_eid product_eid sku_eid region_eid
"""
_STRINGS = frozenset(_STRING_FIELDS.split())
_INTS = frozenset({"db_id", "pixel_id", "loyalty_id", "count_items"})
_FLOATS = frozenset({"value", "lat", "lon"})
_BOOLS = frozenset({"skip_triggers", "enrich_profile", "is_test"})
_LISTS = frozenset({"goals", "categories"})  # repeated elements in XML
# Matching mode → alternatives, each a set of fields that must all be present.
_MATCHING_NEEDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "email": (("email",),),
    "phone": (("phone",),),
    "profile_id": (("profile_id",),),
    "custom": (("field_name", "field_value"),),
    "email_profile": (("email",), ("profile_id",)),
}
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_STRING_CHARS


def _is_scalar(value: Any) -> bool:
    return _is_number(value) or isinstance(value, bool) or _is_text(value)


def _goals_problem(goals: Any) -> str | None:
    if not isinstance(goals, list) or not goals:
        return "goals must be a non-empty array"
    for item in goals:
        if not isinstance(item, dict) or set(item) - {"goal", "value"}:
            return "goals items are objects with goal and value"
        if not (_is_text(item.get("goal")) and item.get("goal")):
            return "goals[].goal must be a string of 1 to 128 characters"
        if "value" in item and not _is_number(item["value"]):
            return "goals[].value must be a number"
    return None


def _pixel_data_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "pixel_data must be an object"
    for key, value in data.items():
        items = value if isinstance(value, list) else [value]
        if not all(_is_scalar(item) for item in items):
            return f"pixel_data.{key} must be a scalar (no nested objects), strings <= 128"
    if len(orjson.dumps(data)) > MAX_PIXEL_DATA_BYTES:
        return "pixel_data is larger than 1 KB"
    return None


def _field_problem(key: str, value: Any) -> str | None:
    if key in _STRINGS:
        ok = _is_text(value)
    elif key in _INTS:
        ok = _is_int(value)
    elif key in _FLOATS:
        ok = _is_number(value)
    elif key in _BOOLS:
        ok = isinstance(value, bool)
    elif key == "field_value":
        ok = _is_int(value) or _is_text(value)
    elif key == "categories":
        ok = isinstance(value, list) and all(_is_text(item) for item in value)
    elif key == "goals":
        return _goals_problem(value)
    elif key == "pixel_data":
        return _pixel_data_problem(value)
    else:
        return f"unknown field {key}"
    return None if ok else f"{key} has the wrong type or is longer than 128 characters"


def _semantic_problem(data: dict[str, Any]) -> str | None:
    if "goal" not in data and "goals" not in data:
        return "goal or goals is required"
    matching = data.get("matching", "email")
    needs = _MATCHING_NEEDS.get(matching)
    if needs is None:
        return f"matching {matching!r} is not a known mode"
    if not any(all(data.get(field) not in (None, "") for field in fields) for fields in needs):
        return f"matching {matching} needs {' and '.join(needs[0])}"
    if ("lat" in data) != ("lon" in data):
        return "lat and lon are passed together"
    if "sku_eid" in data and "product_eid" not in data:
        return "product_eid is required with sku_eid"
    date = data.get("date")
    if date is not None and not _RFC3339.match(date):
        return "date must be RFC 3339, like 2006-01-25T15:04:05+07:00"
    if date is not None:
        try:
            datetime.fromisoformat(date)
        except ValueError:
            return "date is not a real moment"
    return None


def problem(data: dict[str, Any], tokens: set[str] | None = None) -> tuple[int, str] | None:
    """The Altcraft error code and text for a request body, or None when it is valid."""
    token = data.get("token")
    if not (isinstance(token, str) and token) or (tokens is not None and token not in tokens):
        return 2, "Invalid token"
    if not _is_int(data.get("db_id")):
        return 3, "Invalid db_id"
    if not _is_int(data.get("pixel_id")):
        return 4, "Invalid pixel_id"
    for key, value in data.items():
        found = _field_problem(key, value)
        if found is not None:
            return 5, f"Invalid parameter: {found}"
    found = _semantic_problem(data)
    return None if found is None else (5, f"Invalid parameter: {found}")


def _typed(key: str, text: str) -> Any:
    """An XML text node as the type the field has in JSON; left as text when it does not parse."""
    try:
        if key in _INTS:
            return int(text)
        if key in _FLOATS:
            return float(text)
    except ValueError:
        return text
    if key in _BOOLS and text in ("true", "false"):
        return text == "true"
    return text


def from_xml(root: ET.Element) -> dict[str, Any]:
    """The `<xml>` request as the equivalent JSON object (repeated elements become arrays)."""
    data: dict[str, Any] = {}
    for child in root:
        if len(child):
            value: Any = from_xml(child)
        else:  # typed by tag name, so goals' <value> becomes a float too
            value = _typed(child.tag, (child.text or "").strip())
        if child.tag in data:
            previous = data[child.tag]
            data[child.tag] = (
                [*previous, value] if isinstance(previous, list) else [previous, value]
            )
        else:
            data[child.tag] = [value] if child.tag in _LISTS else value
    return data


def answer(code: int, text: str, as_xml: bool = False) -> web.Response:
    """The documented answer, always HTTP 200, in the request's own format."""
    if not as_xml:
        return web.json_response({"error": code, "error_text": text})
    body = f"<xml>\n<error>{code}</error>\n<error_text>{escape(text)}</error_text>\n</xml>"
    return web.Response(body=body.encode(), content_type="application/xml")


class AltcraftContract:
    """goals/register exactly as documented; the token optionally pinned."""

    name = "altcraft"

    def __init__(self, tokens: set[str] | None = None) -> None:
        self.tokens = tokens

    def _parse(self, request: web.Request, body: bytes) -> dict[str, Any] | None:
        try:
            if request.content_type in ("application/xml", "text/xml"):
                root = ET.fromstring(body)
                return from_xml(root) if root.tag == "xml" else None
            if request.content_type == "application/json":
                data = orjson.loads(body)
                return data if isinstance(data, dict) else None
        except (ET.ParseError, orjson.JSONDecodeError):
            return None
        return None

    def check(self, request: web.Request, body: bytes) -> Accepted | Refused:
        """Validate the path, method and every documented field and rule."""
        if request.path != PATH:
            return Refused(web.Response(status=404), reason="unknown path")
        if request.method != "POST":
            return Refused(web.Response(status=405), reason="method not allowed")
        as_xml = request.content_type in ("application/xml", "text/xml")
        data = self._parse(request, body)
        if data is None:
            return Refused(answer(1, "Invalid request body", as_xml), reason="not an object")
        found = problem(data, self.tokens)
        if found is not None:
            code, text = found
            return Refused(answer(code, text, as_xml), payload=data, reason=text)
        return Accepted(answer(0, SUCCESS_TEXT, as_xml), payload=data)

    def rejection(self) -> web.StreamResponse:
        """A permanent failure the doc's shape allows: the profile is not in the database."""
        return answer(6, "Profile not found")
