"""Strict ExpertSender goal contract: `POST /v2/Api/Goals` with an XML ApiRequest; 201 Created.

Faults are answered in the doc's error shape: HTTP 400, `text/xml; charset=utf-8`,
`ApiResponse/ErrorMessage/{Code,Message}`. A MessageGuid that is not a GUID, or (when
`known_guids` is set) one the sandbox does not know, gets the doc's own "Message GUID was not
recognized."; an ApiKey outside `api_keys` (when set) gets the same shape with 401.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Collection
from typing import Any

from aiohttp import web

from service.sandbox.base import Accepted, Refused
from service.vendors.expertsender import CHANNELS, INT32_MAX, INT32_MIN, PATH

GUID_NOT_RECOGNIZED = "Message GUID was not recognized."
XML_TYPES = ("application/xml", "text/xml")
_DATA_FIELDS = ("GoalId", "GoalValue", "MessageGuid", "Channel")
_INTEGER = re.compile(r"^-?\d{1,10}$")


def error_response(message: str, code: int = 400) -> web.Response:
    """The documented error answer: ApiResponse/ErrorMessage with Code and Message."""
    root = ET.Element("ApiResponse")
    error = ET.SubElement(root, "ErrorMessage")
    ET.SubElement(error, "Code").text = str(code)
    ET.SubElement(error, "Message").text = message
    body: bytes = ET.tostring(root, encoding="utf-8")
    return web.Response(status=code, body=body, content_type="text/xml", charset="utf-8")


def _int32(text: str | None) -> bool:
    if text is None or not _INTEGER.match(text.strip()):
        return False
    return INT32_MIN <= int(text) <= INT32_MAX


def _children(element: ET.Element) -> dict[str, str] | str:
    """Child tag → text, or a problem when a child repeats or has children of its own."""
    found: dict[str, str] = {}
    for child in element:
        if child.tag in found or len(child):
            return f"Element {child.tag} is not valid here."
        found[child.tag] = (child.text or "").strip()
    return found


class ExpertSenderContract:
    """The goal-fulfillment method exactly as documented, credentials optionally pinned."""

    name = "expertsender"

    def __init__(
        self, api_keys: Collection[str] | None = None, known_guids: Collection[str] | None = None
    ) -> None:
        self.api_keys = None if api_keys is None else set(api_keys)
        self.known_guids = None if known_guids is None else {uuid.UUID(g) for g in known_guids}

    def _guid_known(self, text: str) -> bool:
        try:
            guid = uuid.UUID(text)
        except ValueError:
            return False
        return self.known_guids is None or guid in self.known_guids

    def _problem(self, root: ET.Element) -> tuple[str, int] | None:
        if root.tag != "ApiRequest":
            return f"Root element must be ApiRequest, not {root.tag}.", 400
        top = {child.tag: child for child in root}
        if set(top) - {"ApiKey", "Data"} or len(top) != len(root):
            return "ApiRequest takes one ApiKey and one Data element.", 400
        key = (top["ApiKey"].text or "").strip() if "ApiKey" in top else ""
        if not key:
            return "ApiKey is required.", 400
        if self.api_keys is not None and key not in self.api_keys:
            return "Invalid API key.", 401
        if "Data" not in top:
            return "Data is required.", 400
        data = _children(top["Data"])
        if isinstance(data, str):
            return data, 400
        unknown = set(data) - set(_DATA_FIELDS)
        if unknown:
            return f"Unknown element(s) in Data: {', '.join(sorted(unknown))}.", 400
        if not _int32(data.get("GoalId")):
            return "GoalId is required and must be an integer.", 400
        if "GoalValue" in data and not _int32(data["GoalValue"]):
            return "GoalValue must be an integer.", 400
        if not self._guid_known(data.get("MessageGuid", "")):
            return GUID_NOT_RECOGNIZED, 400
        if "Channel" in data and data["Channel"] not in CHANNELS:
            return f"Channel must be one of {', '.join(CHANNELS)}.", 400
        return None

    def check(self, request: web.Request, body: bytes) -> Accepted | Refused:
        """Validate path, method, media type, the XML envelope and every Data element."""
        if request.path != PATH:
            return Refused(web.Response(status=404), reason="unknown path")
        if request.method != "POST":
            return Refused(web.Response(status=405), reason="method not allowed")
        if request.content_type not in XML_TYPES:
            return Refused(error_response("Content-Type must be XML."), reason="not XML")
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            return Refused(error_response("Request body is not valid XML."), reason="not XML")
        problem = self._problem(root)
        if problem is not None:
            message, code = problem
            return Refused(error_response(message, code), reason=message)
        data_element = root.find("Data")
        data = {} if data_element is None else _children(data_element)
        payload: dict[str, Any] = {"ApiKey": (root.findtext("ApiKey") or "").strip()}
        payload.update(data if isinstance(data, dict) else {})
        return Accepted(web.Response(status=201), payload=payload)

    def rejection(self) -> web.StreamResponse:
        """The doc's own error example: the GUID is not one ExpertSender sent."""
        return error_response(GUID_NOT_RECOGNIZED)
