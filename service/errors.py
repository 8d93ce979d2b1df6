"""The one error tree of conversion-relay.

    RelayError
    ├── ConfigError            the configuration file is unusable (every problem listed)
    ├── EventError             a Kafka record is not a valid conversion event (→ DLQ invalid_event)
    ├── VendorInputError       a valid event cannot be expressed in a vendor's API (→ DLQ rejected)
    ├── DeliveryError          an HTTP exchange with a vendor failed below the protocol level
    │   ├── VendorTimeout      no answer within the vendor's timeout_s (retriable)
    │   └── VendorUnreachable  connection refused, reset, DNS failure (retriable)
    ├── UsageError             a command line that cannot work as given (CLI exit code 2)
    └── KafkaUnavailable       a command could not reach Kafka in time (CLI exit code 1)

Foreign errors (aiohttp, aiokafka, msgspec) are translated at one boundary each and raised
`from` the original. Retryability is a property of the error, not of the call site.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error raised by conversion-relay."""

    retriable: bool = False


class ConfigError(RelayError):
    """The configuration cannot be used; `problems` lists every `path: what is wrong`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


# Why a record is not an event (a metric label): see EventError.kind.
INVALID_KINDS = ("not_json", "schema", "tombstone", "too_large")


class EventError(RelayError):
    """A record is not a valid conversion event; the message names the field and the fault."""

    def __init__(self, message: str, kind: str = "schema") -> None:
        # kind is a metric label from a fixed set: not_json | schema | tombstone | too_large
        self.kind = kind
        super().__init__(message)


class VendorInputError(RelayError):
    """A valid event that a vendor's documented contract cannot accept (e.g. a field too long)."""


class DeliveryError(RelayError):
    """The HTTP exchange failed before a vendor answer could be classified."""

    retriable = True


class VendorTimeout(DeliveryError):
    """The vendor did not answer within its timeout."""


class VendorUnreachable(DeliveryError):
    """The vendor could not be reached (refused, reset, DNS)."""


class UsageError(RelayError):
    """A command line that cannot work as given (exit code 2); the message says what to do."""


class KafkaUnavailable(RelayError):
    """A command could not reach Kafka within its bound (exit code 1)."""
