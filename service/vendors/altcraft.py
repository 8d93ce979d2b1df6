"""Altcraft goal registration: `POST {base_url}/api/v1.1/goals/register` with a JSON body.

One event is one goal, sent as `goal` + `value` (`goals[]` is for several goals in one call).
Besides `token`, `db_id`, `pixel_id`, the RFC 3339 `date` and `external_event_id` = event_id, the
body has the `matching` mode with the identity it needs, the HTTP, UTM and order fields the event
has, and `pixel_data` = the event's `attributes` (flat scalars, nulls dropped).

Every string is capped at 128 characters by the doc: descriptive text (user_agent, referer,
accept_language, utm_*) is truncated; identifiers (email, phone, profile id, custom field value,
goal, external_event_id, order/product/sku ids, categories) and pixel_data values are never
altered: too long, or pixel_data over 1 KB encoded, is a VendorInputError naming the field.

Answers: 2xx with `{"error": 0}` (or its `<xml>` form) = delivered; a non-zero `error`, even with
HTTP 200, is a failure.
The doc defines no code but 0, so none is known to be transient: each is rejected (reason
`vendor_<error>`, detail `error_text`) unless listed in `retry_error_codes`. A 2xx without that
answer is retried (whether the goal was recorded is unknown). Others: the default table.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, ClassVar, Literal

import msgspec

from service.core.redact import redact
from service.core.retry import classify_status, delivered_outcome, parse_retry_after
from service.errors import VendorInputError
from service.events import ConversionEvent, ParamValue
from service.vendors.base import (
    Outcome,
    OutcomeKind,
    Route,
    VendorBase,
    VendorRequest,
    VendorResponse,
)

PATH = "/api/v1.1/goals/register"
MAX_STRING_CHARS = 128
MAX_PIXEL_DATA_BYTES = 1024
_HEADERS = MappingProxyType({"Content-Type": "application/json"})

Bounded = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_STRING_CHARS)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class AltcraftConfig(VendorBase, tag="altcraft", frozen=True, kw_only=True):
    """An Altcraft pixel: credentials, goal names and how profiles are matched."""

    # The pixel's API token; give it as `${ENV}`.
    token: Bounded
    # Id of the Altcraft database the profiles are in.
    db_id: PositiveInt
    # Id of the pixel the goals are registered on.
    pixel_id: PositiveInt
    # Canonical goal name → Altcraft goal name.
    goals: Mapping[str, Bounded] = {}
    # How the profile is found: `customer.email`, `customer.phone`, a profile id or a
    # custom field.
    matching: Literal["email", "phone", "profile_id", "custom"] = "email"
    # matching: profile_id reads the profile id from this key of `customer.ids`.
    profile_id_key: NonEmpty = "altcraft_profile_id"
    # matching: custom sends field_name and the value of this key of `customer.ids`.
    field_name: Bounded | None = None
    # matching: custom: the key of `customer.ids` whose value is sent as field_value.
    field_value_key: NonEmpty | None = None
    # Non-zero `error` codes to retry instead of reject (the doc names none as transient).
    retry_error_codes: frozenset[int] = frozenset()
    # Sends `"is_test": true` with every goal (Altcraft's test flag).
    is_test: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("field_name", "field_value_key"):
            if self.matching == "custom" and getattr(self, name) is None:
                raise ValueError(f"{name}: required when matching is custom")

    def goal_ids(self) -> Mapping[str, str]:
        """Canonical goal name → Altcraft goal name."""
        return dict(self.goals)


class AltcraftBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The request body, field names exactly as the vendor documents them."""

    token: str
    db_id: int
    pixel_id: int
    goal: str
    value: float | None = None
    date: str
    external_event_id: str
    matching: str
    email: str | None = None
    phone: str | None = None
    profile_id: str | None = None
    field_name: str | None = None
    field_value: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    referer: str | None = None
    accept_language: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    order_eid: str | None = None
    product_eid: str | None = None
    sku_eid: str | None = None
    count_items: int | None = None
    categories: list[str] = []
    pixel_data: dict[str, ParamValue] = {}
    is_test: bool = False


class AltcraftAnswer(msgspec.Struct, frozen=True):
    """The documented answer: `error` (0 = success) and `error_text`."""

    error: int
    error_text: str = ""


_encoder = msgspec.json.Encoder()
_answer_decoder = msgspec.json.Decoder(AltcraftAnswer)


def exact(value: str | None, field: str) -> str | None:
    """An identifier sent unaltered, or VendorInputError when it exceeds the doc's limit."""
    if value is not None and len(value) > MAX_STRING_CHARS:
        raise VendorInputError(f"{field} has {len(value)} characters; Altcraft's limit is 128")
    return value


def _date(moment: datetime) -> str:
    """The moment in ISO 8601 to the second with its own offset (`2026-01-01T10:00:00+03:00`)."""
    if moment.tzinfo is UTC:
        # msgspec writes `"2026-01-01T10:00:00[.ffffff]Z"` ~10x faster than isoformat.
        return f"{_encoder.encode(moment)[1:20].decode()}+00:00"
    return moment.isoformat(timespec="seconds")


def clipped(value: str | None) -> str | None:
    """Descriptive text cut to the doc's limit."""
    return None if value is None else value[:MAX_STRING_CHARS]


def pixel_data(attributes: Mapping[str, ParamValue | None]) -> dict[str, ParamValue]:
    """The event's attributes as pixel_data: flat scalars, none longer than the limits."""
    data: dict[str, ParamValue] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        # The field names are built only for the error (an f-string per attribute cost more
        # than the rest of the check).
        if len(key) > MAX_STRING_CHARS:
            exact(key, f"attributes key {key[:32]!r}")
        if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            exact(value, f"attributes.{key}")
        data[key] = value
    if not data:
        return data
    size = len(_encoder.encode(data))
    if size > MAX_PIXEL_DATA_BYTES:
        raise VendorInputError(f"attributes encode to {size} bytes; pixel_data's limit is 1 KB")
    return data


def parse_answer(body: bytes) -> AltcraftAnswer | None:
    """The documented answer, as JSON or as the doc's `<xml>` form; None when it is neither."""
    try:
        if not body.lstrip().startswith(b"<"):
            return _answer_decoder.decode(body)
        root = ET.fromstring(body[:65536])
        return AltcraftAnswer(int(root.findtext("error", "")), root.findtext("error_text", ""))
    except (msgspec.DecodeError, ET.ParseError, ValueError):
        return None


class AltcraftAdapter:
    """Builds and classifies Altcraft goal registrations for one vendor."""

    protocol: ClassVar[str] = "altcraft"

    def __init__(self, vendor: str, config: AltcraftConfig) -> None:
        self.vendor = vendor
        self.config = config
        self._url = config.base_url.rstrip("/") + PATH
        key = config.profile_id_key if config.matching == "profile_id" else config.field_value_key
        self._id_key = key or ""
        contact = {"email": "customer.email", "phone": "customer.phone"}
        self._identity_path = contact.get(config.matching, f"customer.ids.{self._id_key}")

    def _identity(self, event: ConversionEvent) -> str | None:
        matching = self.config.matching
        if matching == "email":
            return event.customer.email
        if matching == "phone":
            return event.customer.phone
        return event.customer.ids.get(self._id_key)

    def missing_identity(self, event: ConversionEvent) -> str | None:
        """The matching mode decides which identity the profile lookup needs."""
        value = self._identity(event)
        return None if value and value.strip() else self._identity_path

    def build(self, event: ConversionEvent, route: Route) -> VendorRequest:
        """Translate the event into the documented JSON body (one goal)."""
        config, context, order = self.config, event.context, event.order
        if event.value is not None and not math.isfinite(event.value):
            raise VendorInputError(f"value {event.value!r} is not a finite number")
        if order.sku_id is not None and order.product_id is None:
            raise VendorInputError("order.sku_id needs order.product_id (Altcraft product_eid)")
        matching = config.matching
        identity = exact(self._identity(event), self._identity_path)
        body = AltcraftBody(
            token=config.token,
            db_id=config.db_id,
            pixel_id=config.pixel_id,
            goal=exact(route.goal_id, "goal") or "",
            value=event.value,
            date=_date(event.occurred_at),
            external_event_id=exact(event.event_id, "event_id") or "",
            matching=matching,
            email=identity if matching == "email" else None,
            phone=identity if matching == "phone" else None,
            profile_id=identity if matching == "profile_id" else None,
            field_name=config.field_name if matching == "custom" else None,
            field_value=identity if matching == "custom" else None,
            client_ip=exact(event.customer.ip, "customer.ip"),
            user_agent=clipped(event.customer.user_agent),
            referer=clipped(context.referer),
            accept_language=clipped(context.accept_language),
            utm_source=clipped(context.utm_source),
            utm_medium=clipped(context.utm_medium),
            utm_campaign=clipped(context.utm_campaign),
            utm_term=clipped(context.utm_term),
            utm_content=clipped(context.utm_content),
            order_eid=exact(order.order_id, "order.order_id"),
            product_eid=exact(order.product_id, "order.product_id"),
            sku_eid=exact(order.sku_id, "order.sku_id"),
            count_items=order.count_items,
            categories=[exact(c, "order.categories[]") or "" for c in order.categories],
            pixel_data=pixel_data(event.attributes),
            is_test=config.is_test,
        )
        return VendorRequest("POST", self._url, _HEADERS, _encoder.encode(body))

    def classify(self, response: VendorResponse) -> Outcome:
        """`{"error": 0}` is delivered; a non-zero error is rejected unless configured transient."""
        status, answer = response.status, parse_answer(response.body)
        if answer is not None and answer.error == 0 and (delivered := delivered_outcome(status)):
            return delivered  # the common case: nothing to redact or explain
        success = 200 <= status < 300
        text = redact(response.body[:512].decode("utf-8", "replace"))
        if answer is None and success:  # HTTP says fine, yet nothing says the goal was recorded
            return Outcome(
                kind=OutcomeKind.RETRY, reason="unreadable_answer", detail=text, status=status
            )
        if answer is None or answer.error == 0:
            delivered = delivered_outcome(status) if answer is not None else None
            return delivered or classify_status(status, response.headers, text)
        outcome = classify_status(status, response.headers, redact(answer.error_text[:512]))
        if success:  # HTTP says fine, the body says it failed
            retry = answer.error in self.config.retry_error_codes
            wait_s = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
            kind, wait_s = (OutcomeKind.RETRY, wait_s) if retry else (OutcomeKind.REJECT, None)
            outcome = msgspec.structs.replace(outcome, kind=kind, retry_after_s=wait_s)
        return msgspec.structs.replace(outcome, reason=f"vendor_{answer.error}")
