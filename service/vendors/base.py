"""What every vendor protocol shares: its config base and the Adapter protocol (pure `build` and
`classify`; no I/O). The exchange types live in `service.core.exchange` and are re-exported here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal, Protocol

import msgspec

from service.core.breaker import BreakerConfig
from service.core.exchange import (
    Outcome,
    OutcomeKind,
    Route,
    VendorRequest,
    VendorResponse,
)
from service.core.proxy import VendorProxySetting
from service.core.ratelimit import RateLimitConfig
from service.core.retry import RetryConfig
from service.events import ConversionEvent

__all__ = [
    "PROXY_TRANSPORTS",
    "Adapter",
    "Outcome",
    "OutcomeKind",
    "RetryConfig",
    "Route",
    "TransportName",
    "VendorBase",
    "VendorRequest",
    "VendorResponse",
]

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
# The outgoing HTTP clients the relay can deliver with (service/delivery/transport.py).
TransportName = Literal["h1", "pyreqwest", "aiohttp"]
# The transports that can send through an egress proxy (`http.proxy`, a vendor's `proxy`); a
# proxied vendor on another one is a config error, never a silent direct connection.
PROXY_TRANSPORTS: frozenset[TransportName] = frozenset({"h1", "pyreqwest", "aiohttp"})


class VendorBase(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="protocol"
):
    """Settings every vendor has, whatever its protocol."""

    # False: the vendor stays in the file but gets no pipeline (nothing is consumed for it).
    enabled: bool = True
    # Scheme and host of the vendor's API (and a path prefix); `http://` logs a warning.
    base_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")]
    # Whole request budget: connect, send and read the answer; a timeout is retried.
    timeout_s: PositiveFloat = 10.0
    # Budget for opening a connection (TCP and TLS handshake), within timeout_s; retried too.
    connect_timeout_s: PositiveFloat = 5.0
    # This vendor's HTTP client; null = `http.transport` (the whole relay's choice).
    transport: TransportName | None = None
    # This vendor's egress proxy: `direct`, `env` or a proxy of its own (url, username,
    # password, no_proxy); null = `http.proxy` (the whole relay's choice).
    proxy: VendorProxySetting = None
    # Requests in flight at once (the ceiling with adaptive_concurrency); also the pool size.
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    # Adaptive (AIMD) concurrency between 1 and `concurrency`; off = always `concurrency`.
    adaptive_concurrency: bool = False
    # Events older than this are not sent (dead-lettered as `expired`); None = no limit.
    max_event_age_s: PositiveFloat | None = None
    retry: RetryConfig = RetryConfig()
    # Requests per second allowed by the vendor; shared by every replica when Redis is set.
    rate_limit: RateLimitConfig | None = None
    # Per-status overrides of the default table, e.g. {409: delivered, 404: retry}.
    status_actions: dict[Annotated[int, msgspec.Meta(ge=100, le=599)], OutcomeKind] = {}
    breaker: BreakerConfig = BreakerConfig()

    def __post_init__(self) -> None:
        """Refuse `status_actions` that would count a redirect (never followed) as delivered."""
        redirects = sorted(
            s
            for s, k in self.status_actions.items()
            if 300 <= s < 400 and k is OutcomeKind.DELIVERED
        )
        if redirects:
            raise ValueError(
                f"status_actions: {redirects} are redirects, never followed: retry or reject"
            )

    def goal_ids(self) -> Mapping[str, str]:
        """Canonical goal name → the vendor's goal id, as text."""
        raise NotImplementedError


class Adapter(Protocol):
    """One vendor protocol: pure translation between canonical events and HTTP."""

    protocol: ClassVar[str]

    def missing_identity(self, event: ConversionEvent) -> str | None:
        """Name what identity the vendor needs and the event lacks, or None when it has it."""
        ...

    def build(self, event: ConversionEvent, route: Route) -> VendorRequest:
        """Build the vendor request; raise VendorInputError when the event cannot be expressed."""
        ...

    def classify(self, response: VendorResponse) -> Outcome:
        """Decide what the vendor's answer means."""
        ...
