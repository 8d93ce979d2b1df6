"""Conductrics REST goals: `POST {base_url}/{account}/v3/agent-api?vid=..&session=..&apikey=..`.

The body is `{"commands": [{"g": "<goal code>", "v": <value>}]}`, "v" omitted when the event has
no value. `vid` is the External Visitor ID the client-side Preboot also passes (from
`customer.ids`); the REST API also requires a `session`: the event's session id, else the vid, as
the doc's own example does. Conductrics matches a goal only within 72 hours of the variation
selection, so `max_event_age_s` defaults to 72 h: routing dead-letters older events as `expired`
instead of sending goals that can no longer count.

The doc describes no answer format, so answers follow the default status table (2xx delivered,
429/5xx retried honouring Retry-After, other 4xx rejected), with the body as detail.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, ClassVar
from urllib.parse import quote, urlencode

import msgspec

from service.core.redact import redact
from service.core.retry import classify_status, delivered_outcome
from service.errors import VendorInputError
from service.events import ConversionEvent
from service.vendors.base import (
    Outcome,
    PositiveFloat,
    Route,
    VendorBase,
    VendorRequest,
    VendorResponse,
)
from service.vendors.paths import segment

AGENT_API_PATH = "/v3/agent-api"
GOAL_WINDOW_S = 72 * 3600.0
_HEADERS = MappingProxyType({"Content-Type": "application/json"})

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
# One path segment: the account code ("ac-xxx") goes between the host and /v3.
Account = Annotated[str, msgspec.Meta(pattern=r"^(?!\.\.?$)[^/?#%\s]+$")]


class ConductricsConfig(VendorBase, tag="conductrics", frozen=True, kw_only=True):
    """A Conductrics account: its code, API key, goal codes and where the visitor id is."""

    # The Conductrics account code, the first segment of the API path.
    account: Account
    # The account's API key (sent as `apikey`); give it as `${ENV}`.
    api_key: NonEmpty
    # Canonical goal name → Conductrics goal (API) code.
    goals: Mapping[str, NonEmpty] = {}
    # Which key of `customer.ids` holds the External Visitor ID (`vid`).
    visitor_id_key: NonEmpty = "conductrics"
    # Goals count only within 72 h of the variation selection (the doc's default window).
    max_event_age_s: PositiveFloat | None = GOAL_WINDOW_S

    def goal_ids(self) -> Mapping[str, str]:
        """Canonical goal name → Conductrics goal (API) code."""
        return dict(self.goals)


class GoalCommand(msgspec.Struct, frozen=True, omit_defaults=True):
    """One goal command: `g` the goal code, `v` its optional numeric value."""

    g: str
    v: float | None = None


class CommandsBody(msgspec.Struct, frozen=True):
    """The request body: a list of commands, here always one goal."""

    commands: list[GoalCommand]


_encoder = msgspec.json.Encoder()


def agent_api_url(base_url: str, account: str, query: Mapping[str, str]) -> str:
    """The agent-api URL with every query value percent-encoded (never `+` for a space)."""
    path = f"{base_url.rstrip('/')}/{segment(account, 'account')}{AGENT_API_PATH}"
    return f"{path}?{urlencode(query, quote_via=quote)}"


class ConductricsAdapter:
    """Builds and classifies Conductrics REST goal requests for one vendor."""

    protocol: ClassVar[str] = "conductrics"

    def __init__(self, vendor: str, config: ConductricsConfig) -> None:
        self.vendor = vendor
        self.config = config
        # agent_api_url, split around the two per-event values (it cost ~3.6 µs per request).
        self._url_head = agent_api_url(config.base_url, config.account, {"vid": ""})
        self._apikey = quote(config.api_key, safe="")

    def missing_identity(self, event: ConversionEvent) -> str | None:
        """The goal is matched to the variation by the External Visitor ID alone."""
        if event.customer.ids.get(self.config.visitor_id_key, "").strip():
            return None
        return f"customer.ids.{self.config.visitor_id_key}"

    def build(self, event: ConversionEvent, route: Route) -> VendorRequest:
        """Translate the event into one goal command for the visitor."""
        config = self.config
        if event.value is not None and not math.isfinite(event.value):
            raise VendorInputError(f"value {event.value!r} is not a finite number")
        vid = event.customer.ids[config.visitor_id_key]
        session = event.context.session_id or vid
        # = agent_api_url(base_url, account, {"vid": vid, "session": session, "apikey": key})
        url = (
            f"{self._url_head}{quote(vid, safe='')}&session={quote(session, safe='')}"
            f"&apikey={self._apikey}"
        )
        body = CommandsBody([GoalCommand(g=route.goal_id, v=event.value)])
        return VendorRequest("POST", url, _HEADERS, _encoder.encode(body))

    def classify(self, response: VendorResponse) -> Outcome:
        """The doc defines no answer body: the default status table, the body as detail."""
        delivered = delivered_outcome(response.status)
        if delivered is not None:
            return delivered
        detail = redact(response.body[:512].decode("utf-8", "replace"))
        return classify_status(response.status, response.headers, detail)
