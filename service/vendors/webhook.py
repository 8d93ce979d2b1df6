"""A generic JSON webhook, for vendors without a built-in protocol.

`{method} {base_url}{path}`: `path` may hold `{goal_id}` / `{event_id}` (percent-encoded, `/`
included; a filled segment of `.` or `..` is refused as a VendorInputError), `headers`
are sent as configured (secrets via `${ENV}`), and the JSON body is built from the `body`
template: each value is a canonical event path (`"$.customer.email"`, `"$.occurred_at"`,
`"$.goal_id"` = the routed vendor goal id, `"$.vendor"`), a literal, or an object or list of
these. A path the event lacks leaves its key out (list in `required` what must be present); a
literal string that starts with `$.` is written `$$.`. Template and `required` paths are checked
against the event schema when the config loads, so a typo is a config error, not a bad request.

Answers: status codes listed under `status.delivered` / `retry` / `reject` mean that; every other
code follows the default table. A retry honours Retry-After.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import msgspec.inspect as mi

from service.core.redact import redact
from service.core.retry import classify_status, delivered_outcome, parse_retry_after
from service.errors import VendorInputError
from service.events import ConversionEvent
from service.vendors.base import (
    Outcome,
    OutcomeKind,
    Route,
    VendorBase,
    VendorRequest,
    VendorResponse,
)
from service.vendors.paths import DOT_SEGMENTS, encoded_part

PATH_PREFIX, ESCAPED_PREFIX = "$.", "$$."
PLACEHOLDERS = ("{goal_id}", "{event_id}")
# Route fields a template may use besides the event's own.
ROUTE_FIELDS = ("goal_id", "vendor")
_EVENT_TYPE = mi.type_info(ConversionEvent)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")

StatusCode = Annotated[int, msgspec.Meta(ge=100, le=599)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


@dataclass(frozen=True, slots=True)
class EventPath:
    """A compiled `$.a.b` reference: the segments to walk."""

    segments: tuple[str, ...]


def _unwrap(node: mi.Type) -> mi.Type:
    if isinstance(node, mi.UnionType):
        present = [t for t in node.types if not isinstance(t, mi.NoneType)]
        if len(present) == 1:
            return present[0]
    return node


def parse_path(text: str) -> EventPath:
    """Compile `$.customer.email`; ValueError when the event schema has no such path."""
    segments = tuple(text[len(PATH_PREFIX) :].split("."))
    if not text.startswith(PATH_PREFIX) or "" in segments:
        raise ValueError(f"{text!r} is not a path like $.customer.email")
    if segments[0] in ROUTE_FIELDS and len(segments) == 1:
        return EventPath(segments)
    node: mi.Type = _EVENT_TYPE
    for depth, segment in enumerate(segments):
        node, where = _unwrap(node), ".".join(segments[:depth]) or "the event"
        if isinstance(node, mi.StructType):
            fields = {f.encode_name: f.type for f in node.fields}
            if segment not in fields:
                raise ValueError(f"{text}: {where} has no field {segment!r}")
            node = fields[segment]
        elif isinstance(node, mi.DictType):
            node = node.value_type
        else:
            raise ValueError(f"{text}: {where} has no fields")
    return EventPath(segments)


def compile_template(node: Any, where: str) -> Any:
    """Replace every `$.` string by an EventPath; ValueError naming the template key at fault."""
    if isinstance(node, str):
        if node.startswith(ESCAPED_PREFIX):
            return node[1:]
        if not node.startswith(PATH_PREFIX):
            return node
        try:
            return parse_path(node)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if isinstance(node, dict):
        return {str(k): compile_template(v, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [compile_template(v, f"{where}[{i}]") for i, v in enumerate(node)]
    if node is None or isinstance(node, bool | int | float):
        return node
    raise ValueError(f"{where}: {node!r} is not a JSON value (quote it)")


class StatusOverrides(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """HTTP status codes whose meaning differs from the default table."""

    # Status codes that mean delivered.
    delivered: frozenset[StatusCode] = frozenset()
    # Status codes that are retried (honouring Retry-After).
    retry: frozenset[StatusCode] = frozenset()
    # Status codes that reject the event (dead-lettered as `rejected`).
    reject: frozenset[StatusCode] = frozenset()

    def __post_init__(self) -> None:
        lists = {"delivered": self.delivered, "retry": self.retry, "reject": self.reject}
        for code in sorted(self.delivered | self.retry | self.reject):
            owners = [name for name, codes in lists.items() if code in codes]
            if len(owners) > 1:
                raise ValueError(f"{code} is listed under both {' and '.join(owners)}")
        redirects = sorted(code for code in self.delivered if 300 <= code < 400)
        if redirects:
            raise ValueError(
                f"delivered: {redirects} are redirects, never followed: retry or reject"
            )

    def kinds(self) -> dict[int, OutcomeKind]:
        """Status code → the outcome it is configured to mean."""
        pairs = [(self.delivered, OutcomeKind.DELIVERED), (self.retry, OutcomeKind.RETRY)]
        pairs.append((self.reject, OutcomeKind.REJECT))
        return {code: kind for codes, kind in pairs for code in codes}


class WebhookConfig(VendorBase, tag="webhook", frozen=True, kw_only=True):
    """An HTTP endpoint described entirely by configuration."""

    # HTTP method of the request.
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    # Appended to base_url; `{goal_id}` and `{event_id}` are replaced, URL-quoted.
    path: str = ""
    # Sent as given (secrets as `${ENV}`); Content-Type defaults to application/json.
    headers: Mapping[str, str] = {}
    # JSON template: each value an event path (`$.event_id`, `$.goal_id`, `$.vendor`...), a
    # literal, or an object or list of these; a path the event lacks leaves its key out.
    body: Mapping[str, Any] = {}
    # Canonical goal name → the vendor's goal id (`{goal_id}`, `$.goal_id`).
    goals: Mapping[str, NonEmpty] = {}
    # Event paths that must be non-empty; an event without one is skipped as
    # missing_identity.
    required: tuple[str, ...] = ()
    # Status codes whose meaning differs from the default table (a code in one list only).
    status: StatusOverrides = StatusOverrides()

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.path and not self.path.startswith("/")) or any(c.isspace() for c in self.path):
            raise ValueError(f"path: {self.path!r} must start with / and hold no spaces")
        for placeholder in _PLACEHOLDER.findall(self.path):
            if placeholder not in PLACEHOLDERS:
                raise ValueError(f"path: unknown placeholder {placeholder} (use {PLACEHOLDERS})")
        for name, value in self.headers.items():
            if not _HEADER_NAME.match(name) or "\r" in value or "\n" in value:
                raise ValueError(f"headers.{name}: not a valid header name and value")
        compile_template(dict(self.body), "body")
        for i, text in enumerate(self.required):
            try:
                parse_path(text)
            except ValueError as exc:
                raise ValueError(f"required[{i}]: {exc}") from None

    def goal_ids(self) -> Mapping[str, str]:
        """Canonical goal name → the vendor's goal id."""
        return dict(self.goals)


def resolve(path: EventPath, event: ConversionEvent, route: Route | None) -> Any:
    """The value at a path, or None when the event lacks it."""
    first = path.segments[0]
    if first in ROUTE_FIELDS and len(path.segments) == 1:
        return None if route is None else getattr(route, first)
    node: Any = event
    for segment in path.segments:
        if isinstance(node, msgspec.Struct):
            node = getattr(node, segment, None)
        elif isinstance(node, dict):
            node = node.get(segment)
        else:
            return None
    return node


def render(node: Any, event: ConversionEvent, route: Route) -> Any:
    """Fill a compiled template; a key whose path is absent is left out, a literal null is kept."""
    if isinstance(node, dict):
        filled: dict[str, Any] = {}
        for key, value in node.items():
            result = render(value, event, route)
            if result is not None or not isinstance(value, EventPath):
                filled[key] = result
        return filled
    if isinstance(node, list):
        return [render(value, event, route) for value in node]
    if isinstance(node, EventPath):
        return resolve(node, event, route)
    return node


_encoder = msgspec.json.Encoder()


def _fill(part: str, values: Mapping[str, tuple[str, str]]) -> str:
    """One path segment with its placeholders filled; never `.`/`..`, `/`, `?`, `#`, CR, LF."""
    for placeholder, (value, field) in values.items():
        if placeholder in part:
            part = part.replace(placeholder, encoded_part(value, field))
    if part in DOT_SEGMENTS:
        raise VendorInputError(f"path segment {part!r} from event data would move the request")
    return part


class WebhookAdapter:
    """Builds requests from the configured template; classifies by the status overrides."""

    protocol: ClassVar[str] = "webhook"

    def __init__(self, vendor: str, config: WebhookConfig) -> None:
        self.vendor = vendor
        self.config = config
        self._template = compile_template(dict(config.body), "body")
        self._required = [(text[len(PATH_PREFIX) :], parse_path(text)) for text in config.required]
        self._kinds = config.status.kinds()
        # A configured Content-Type (e.g. application/vnd.x+json) replaces the default.
        own_type = any(name.lower() == "content-type" for name in config.headers)
        default = {} if own_type else {"Content-Type": "application/json"}
        self._headers = MappingProxyType({**default, **config.headers})
        self._url = config.base_url.rstrip("/")

    def missing_identity(self, event: ConversionEvent) -> str | None:
        """The first `required` path the event lacks (absent or empty), or None."""
        for name, path in self._required:
            if path.segments[0] in ROUTE_FIELDS and len(path.segments) == 1:
                continue  # known only once routed, and always present then
            if resolve(path, event, None) in (None, "", [], {}):
                return name
        return None

    def build(self, event: ConversionEvent, route: Route) -> VendorRequest:
        """Fill the path placeholders and the body template."""
        values = {
            "{goal_id}": (route.goal_id, "goal_id"),
            "{event_id}": (event.event_id, "event_id"),
        }
        path = "/".join(
            _fill(part, values) if "{" in part else part for part in self.config.path.split("/")
        )
        body = _encoder.encode(render(self._template, event, route))
        return VendorRequest(self.config.method, self._url + path, self._headers, body)

    def classify(self, response: VendorResponse) -> Outcome:
        """A configured status override first, then the default table."""
        kind = self._kinds.get(response.status)
        if kind is None and (delivered := delivered_outcome(response.status)):
            return delivered
        detail = redact(response.body[:512].decode("utf-8", "replace"))
        if kind is None:
            return classify_status(response.status, response.headers, detail)
        wait_s = None
        if kind is OutcomeKind.RETRY:
            wait_s = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
        reason = "" if kind is OutcomeKind.DELIVERED else f"http_{response.status}"
        return Outcome(
            kind=kind, reason=reason, detail=detail, status=response.status, retry_after_s=wait_s
        )
