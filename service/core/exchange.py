"""One exchange with a vendor: the request built, the answer received, what it meant, and the
route that chose the vendor. Pure data shared by core policy, adapters and the sender."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import msgspec


class VendorRequest(msgspec.Struct, gc=False, frozen=True):
    """One HTTP request, fully built and encoded once."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


class VendorResponse(msgspec.Struct, gc=False, frozen=True):
    """What a vendor answered."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class OutcomeKind(enum.Enum):
    """The three things an answer can mean."""

    DELIVERED = "delivered"
    RETRY = "retry"
    REJECT = "reject"


class Outcome(msgspec.Struct, gc=False, frozen=True, kw_only=True):
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


class Route(msgspec.Struct, gc=False, frozen=True):
    """An event routed to a vendor: the vendor's own id for the event's goal."""

    vendor: str
    goal_id: str


class DecisionKind(enum.Enum):
    """What the sender tells the pipeline to do with a record after one try."""

    DELIVERED = "delivered"
    RETRY = "retry"  # try the same request again after `delay_s`
    DEAD_LETTER = "dead_letter"  # terminal: write a dead letter with `dlq_reason`
    ABANDONED = "abandoned"  # not sent: the record's partition was revoked while it waited


class Decision(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """The sender's answer to the pipeline for one try: the seam between the two."""

    kind: DecisionKind
    outcome: Outcome | None = None
    delay_s: float = 0.0
    dlq_reason: str = ""  # rejected | retries_exhausted, with DEAD_LETTER
