"""The canonical conversion event and its one decoder."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from service.errors import EventError

# A scalar parameter value; vendors that want strings get them converted by their adapter.
ParamValue = str | int | float | bool
ShortStr = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
Params = Annotated[dict[ShortStr, ParamValue | None], msgspec.Meta(max_length=256)]


class Customer(msgspec.Struct, gc=False, frozen=True, kw_only=True, omit_defaults=True):
    """Who reached the goal: contact data and each vendor's own id for them."""

    email: Text | None = None
    phone: Text | None = None
    ip: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    user_agent: Text | None = None
    # Vendor-side identifiers, keyed by the name the vendor config points at
    # (e.g. "sustain_impact", "conductrics", "expertsender_message_guid").
    ids: Annotated[dict[ShortStr, Text], msgspec.Meta(max_length=64)] = {}


class Context(msgspec.Struct, gc=False, frozen=True, kw_only=True, omit_defaults=True):
    """Where the conversion came from: session, referer, language and UTM tags."""

    session_id: Text | None = None
    referer: Text | None = None
    accept_language: Text | None = None
    utm_source: Text | None = None
    utm_medium: Text | None = None
    utm_campaign: Text | None = None
    utm_term: Text | None = None
    utm_content: Text | None = None


class Order(msgspec.Struct, gc=False, frozen=True, kw_only=True, omit_defaults=True):
    """The order behind a purchase conversion, for vendors that take one."""

    order_id: Text | None = None
    product_id: Text | None = None
    sku_id: Text | None = None
    count_items: Annotated[int, msgspec.Meta(ge=0)] | None = None
    categories: Annotated[list[Text], msgspec.Meta(max_length=256)] = []


class ConversionEvent(msgspec.Struct, gc=False, frozen=True, kw_only=True, omit_defaults=True):
    """One goal reached by one customer; vendor-neutral, unknown fields ignored."""

    event_id: ShortStr
    goal: ShortStr
    occurred_at: Annotated[datetime, msgspec.Meta(tz=True)]
    value: float | None = None
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")] | None = None
    customer: Customer = Customer()
    params: Params = {}
    page_params: Params = {}
    attributes: Params = {}
    context: Context = Context()
    order: Order = Order()
    # Explicit routing: when set, only these vendors receive the event.
    vendors: Annotated[list[ShortStr], msgspec.Meta(max_length=64)] | None = None


_decoder = msgspec.json.Decoder(ConversionEvent)
_encoder = msgspec.json.Encoder()


def decode_event(raw: bytes | None) -> ConversionEvent:
    """Decode one record value; raise EventError naming the field and what was wrong."""
    if raw is None:
        raise EventError("record has no value (tombstone)", kind="tombstone")
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise EventError(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise EventError(f"not valid JSON: {exc}", kind="not_json") from exc
    except RecursionError as exc:  # nesting deeper than the decoder's stack, even if ignored
        raise EventError("not valid JSON: nested too deeply", kind="not_json") from exc
    except UnicodeDecodeError as exc:  # msgspec reports most bad UTF-8 itself
        raise EventError(
            f"invalid UTF-8: {exc.reason} at byte {exc.start}", kind="not_json"
        ) from exc


def encode_event(event: ConversionEvent) -> bytes:
    """Encode an event as canonical JSON (used by `publish` and the demo traffic)."""
    return _encoder.encode(event)
