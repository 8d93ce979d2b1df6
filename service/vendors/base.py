"""What every vendor protocol shares: its config base, the request/response/outcome types and
the Adapter protocol (pure `build` and `classify`; no I/O)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Annotated, ClassVar, Protocol

import msgspec

from service.events import ConversionEvent

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class RetryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How often and how patiently one record is retried before it is dead-lettered."""

    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    initial_backoff_s: PositiveFloat = 0.2
    max_backoff_s: PositiveFloat = 30.0
    max_elapsed_s: PositiveFloat = 300.0


class VendorBase(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="protocol"
):
    """Settings every vendor has, whatever its protocol."""

    enabled: bool = True
    base_url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")]
    timeout_s: PositiveFloat = 10.0
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    # Events older than this are not sent (dead-lettered as `expired`); None = no limit.
    max_event_age_s: PositiveFloat | None = None
    retry: RetryConfig = RetryConfig()

    def goal_ids(self) -> Mapping[str, str]:
        """Canonical goal name → the vendor's goal id, as text."""
        raise NotImplementedError


class VendorRequest(msgspec.Struct, frozen=True):
    """One HTTP request, fully built and encoded once."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


class VendorResponse(msgspec.Struct, frozen=True):
    """What a vendor answered."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class OutcomeKind(enum.Enum):
    """The three things an answer can mean."""

    DELIVERED = "delivered"
    RETRY = "retry"
    REJECT = "reject"


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """A classified answer: what happened, a short reason code and the vendor's own words."""

    kind: OutcomeKind
    reason: str = ""
    detail: str = ""
    status: int | None = None
    retry_after_s: float | None = None

    @property
    def retriable(self) -> bool:
        """Whether trying the same request again may succeed."""
        return self.kind is OutcomeKind.RETRY


class Route(msgspec.Struct, frozen=True):
    """An event routed to a vendor: the vendor's own id for the event's goal."""

    vendor: str
    goal_id: str


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
