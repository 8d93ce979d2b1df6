"""ExpertSender goal fulfillment: `POST {base_url}/v2/Api/Goals` with an XML `ApiRequest`.

The body carries `ApiKey` and `Data` with `GoalId` (int), `GoalValue` (int, optional, the doc's
default is 0), `MessageGuid` (the GUID ExpertSender put in the message link; required) and an
optional `Channel` (All, Email, SmsMms, WebPush). 201 Created = delivered. A 400 answer carries
`ApiResponse/ErrorMessage/{Code,Message}` (e.g. "Message GUID was not recognized."): rejected,
reason `vendor_<Code>`, detail the Message. Other statuses follow the default table (an XML error
body still names the reason).

GoalValue must be an integer, so the event's value is multiplied by `value_multiplier` and rounded
by `value_rounding` in decimal (19.99 × 100 is 1999, not 1998.9999…). ExpertSender is a .NET
service, so an integer outside Int32 cannot be expressed (VendorInputError).
"""

from __future__ import annotations

import math
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Annotated, ClassVar, Literal
from xml.sax.saxutils import escape

import msgspec

from service.core.redact import redact
from service.core.retry import classify_status, delivered_outcome
from service.errors import VendorInputError
from service.events import ConversionEvent
from service.vendors.base import Outcome, Route, VendorBase, VendorRequest, VendorResponse

PATH = "/v2/Api/Goals"
CHANNELS = ("All", "Email", "SmsMms", "WebPush")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_HEADERS = MappingProxyType({"Content-Type": "application/xml"})
# The namespace declarations of the doc's example, kept so the body looks like the vendor's own.
_NAMESPACES = {
    "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "xmlns:xs": "http://www.w3.org/2001/XMLSchema",
}
_ROUNDING = {
    "half_up": ROUND_HALF_UP,
    "half_even": ROUND_HALF_EVEN,
    "floor": ROUND_FLOOR,
    "ceiling": ROUND_CEILING,
    "truncate": ROUND_DOWN,
}
# Error bodies are a few hundred bytes; never parse an unbounded answer.
_MAX_ERROR_BYTES = 64 * 1024

GoalId = Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class ExpertSenderConfig(VendorBase, tag="expertsender", frozen=True, kw_only=True):
    """An ExpertSender account: API key, goal ids, where the message GUID is and how to round."""

    # The account's API key; give it as `${ENV}`.
    api_key: NonEmpty
    # Canonical goal name → ExpertSender GoalId (a positive 32-bit integer).
    goals: Mapping[str, GoalId] = {}
    # Which key of `customer.ids` holds the MessageGuid from the message link.
    message_guid_key: NonEmpty = "expertsender_message_guid"
    # Sent as `Data/Channel` when set.
    channel: Literal["All", "Email", "SmsMms", "WebPush"] | None = None
    # GoalValue = round(value × value_multiplier); e.g. 100 to send cents.
    value_multiplier: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    # How value × value_multiplier is rounded to the integer GoalValue.
    value_rounding: Literal["half_up", "half_even", "floor", "ceiling", "truncate"] = "half_up"

    def goal_ids(self) -> Mapping[str, str]:
        """Canonical goal name → GoalId, as text."""
        return {name: str(goal) for name, goal in self.goals.items()}


def goal_value(value: float, multiplier: float, rounding: str) -> int:
    """The event's value as the integer GoalValue, by the configured rule."""
    if not math.isfinite(value):
        raise VendorInputError(f"value {value!r} cannot be a GoalValue")
    scaled = Decimal(repr(value)) * Decimal(repr(multiplier))
    result = int(scaled.quantize(Decimal(1), rounding=_ROUNDING[rounding]))
    if not INT32_MIN <= result <= INT32_MAX:
        raise VendorInputError(f"GoalValue {result} is outside the Int32 range ExpertSender takes")
    return result


# The canonical spelling, either case; any other (braces, `urn:uuid:`, no hyphens) goes through
# uuid.UUID (~1.5 µs, several times the match).
_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def _guid_text(value: str, field: str) -> str:
    if _GUID.fullmatch(value):
        return value
    try:
        uuid.UUID(value)
    except ValueError as exc:
        raise VendorInputError(redact(f"{field} must be a GUID, got {value[:64]!r}")) from exc
    # Sent as given: the GUID originates at ExpertSender, its spelling is theirs.
    return value.strip()


# ElementTree's serialisation of the doc's ApiRequest, written out: the tags and attributes are
# ours and fixed, so only the text nodes need escaping (ET.tostring cost ~17 µs per request).
_PROLOGUE = "<?xml version='1.0' encoding='utf-8'?>\n<ApiRequest {}>".format(
    " ".join(f'{name}="{value}"' for name, value in _NAMESPACES.items())
)


def _element(tag: str, text: str) -> str:
    # As ElementTree writes it: text escaped (&, <, >), an empty element self-closed.
    return f"<{tag}>{escape(text)}</{tag}>" if text else f"<{tag} />"


def request_xml(api_key: str, data: Mapping[str, str]) -> bytes:
    """Serialise an ApiRequest exactly as ElementTree would, every text node escaped."""
    elements = "".join([_element(tag, text) for tag, text in data.items()])
    data_xml = f"<Data>{elements}</Data>" if elements else "<Data />"
    xml = f"{_PROLOGUE}{_element('ApiKey', api_key)}{data_xml}</ApiRequest>"
    return xml.encode("utf-8", "xmlcharrefreplace")


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def error_message(body: bytes) -> tuple[str, str] | None:
    """`(Code, Message)` from an `ApiResponse/ErrorMessage` body, or None when there is none."""
    if not body.lstrip().startswith(b"<") or len(body) > _MAX_ERROR_BYTES:
        return None
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    for element in root.iter():
        if _local(element.tag) == "ErrorMessage":
            fields = {_local(child.tag): (child.text or "").strip() for child in element}
            return fields.get("Code", ""), fields.get("Message", "")
    return None


def _reason_code(code: str) -> str:
    return "".join(ch for ch in code if ch.isalnum())[:32] or "unknown"


class ExpertSenderAdapter:
    """Builds and classifies ExpertSender goal requests for one vendor."""

    protocol: ClassVar[str] = "expertsender"

    def __init__(self, vendor: str, config: ExpertSenderConfig) -> None:
        self.vendor = vendor
        self.config = config
        self._url = config.base_url.rstrip("/") + PATH

    def missing_identity(self, event: ConversionEvent) -> str | None:
        """ExpertSender identifies the subscriber only by the message GUID."""
        if event.customer.ids.get(self.config.message_guid_key, "").strip():
            return None
        return f"customer.ids.{self.config.message_guid_key}"

    def build(self, event: ConversionEvent, route: Route) -> VendorRequest:
        """Translate the event into the documented XML ApiRequest."""
        config = self.config
        # int() would also take " 2", "+2" and "2_000"; a GoalId is plain digits in Int32.
        if not route.goal_id.isascii() or not route.goal_id.isdigit():
            raise VendorInputError(redact(f"GoalId must be an integer, got {route.goal_id[:64]!r}"))
        if not 1 <= int(route.goal_id) <= INT32_MAX:
            raise VendorInputError(f"GoalId {route.goal_id} is outside 1..{INT32_MAX}")
        data = {"GoalId": str(int(route.goal_id))}
        if event.value is not None:
            value = goal_value(event.value, config.value_multiplier, config.value_rounding)
            data["GoalValue"] = str(value)
        key = config.message_guid_key
        data["MessageGuid"] = _guid_text(event.customer.ids[key], f"customer.ids.{key}")
        if config.channel is not None:
            data["Channel"] = config.channel
        return VendorRequest("POST", self._url, _HEADERS, request_xml(config.api_key, data))

    def classify(self, response: VendorResponse) -> Outcome:
        """201 is delivered; an XML ErrorMessage names the vendor's code; else the default table."""
        if response.status < 300 and (delivered := delivered_outcome(response.status)):
            return delivered
        found = error_message(response.body) if response.status >= 300 else None
        if found is None:
            detail = redact(response.body[:512].decode("utf-8", "replace"))
            return classify_status(response.status, response.headers, detail)
        code, message = found
        outcome = classify_status(response.status, response.headers, redact(message[:512]))
        return msgspec.structs.replace(outcome, reason=f"vendor_{_reason_code(code)}")
