"""The pure parts of delivery traces (service/core/tracing.py): the W3C `traceparent` of a Kafka
record, and span attributes that name where a record is and what happened to it, never what it
says (no customer id, email, phone, payload, secret)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from service.core.exchange import Decision, DecisionKind, Outcome, OutcomeKind
from service.core.records import Fetched
from service.core.tracing import (
    ATTEMPT_KEYS,
    EVENT_KEYS,
    TraceParent,
    attempt_attributes,
    event_end_attributes,
    parse_traceparent,
    record_attributes,
    record_traceparent,
)
from tests.conftest import ROOT

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_gives_its_trace_id_parent_span_id_and_sampled_flag() -> None:
    """Version 00: 32 hex trace id, 16 hex parent id, flags (bit 0 = sampled)."""
    parent = parse_traceparent(VALID.encode())
    assert parent == TraceParent(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736, span_id=0x00F067AA0BA902B7, sampled=True
    )
    unsampled = parse_traceparent(VALID[:-2] + "00")
    assert unsampled is not None and not unsampled.sampled


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        "garbage",
        VALID.upper(),  # W3C: lowercase hex only
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
        VALID + "-extra",  # version 00 has exactly four fields
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # trace id one digit short
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  # flags one digit short
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",  # not hex
        b"\xff\xfe",  # not text
    ],
)
def test_a_malformed_traceparent_is_ignored_not_an_error(value: str | bytes | None) -> None:
    """Anything not a valid traceparent starts a new trace instead (the record still goes)."""
    assert parse_traceparent(value) is None


def test_a_future_version_is_read_by_its_first_four_fields() -> None:
    """W3C: a higher version may append fields after the flags; its first four are read."""
    parent = parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")
    assert parent is not None and parent.span_id == 0x00F067AA0BA902B7


def test_the_records_traceparent_header_is_found_by_name_whatever_its_case() -> None:
    """Kafka header names are str or (not UTF-8) bytes; the first `traceparent` counts."""
    headers = (("content-type", b"application/json"), ("TraceParent", VALID.encode()))
    parent = record_traceparent(headers)
    assert parent is not None and parent.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert record_traceparent(((b"\xff", b"x"), ("traceparent", None))) is None
    assert record_traceparent(()) is None


# A record full of personal data and secrets, in its key, value and headers.
EMAIL, PHONE, CUSTOMER, API_KEY = "anna@example.com", "+49301234567", "cust-829101", "sk_live_42"
PAYLOAD = json.dumps(
    {"event_id": "e-1", "customer": {"email": EMAIL, "phone": PHONE, "ids": {"crm": CUSTOMER}}}
).encode()
RECORD = Fetched(
    "conversions",
    3,
    1042,
    0,
    0,
    CUSTOMER.encode(),
    PAYLOAD,
    None,
    -1,
    len(PAYLOAD),
    (("traceparent", VALID.encode()), ("x-api-key", API_KEY.encode()), ("email", EMAIL.encode())),
)
LEAKY = Outcome(
    kind=OutcomeKind.RETRY,
    reason="http_503",
    detail=f"upstream said: {EMAIL} {PHONE} customer {CUSTOMER} apikey={API_KEY}",
    status=503,
)


def _values(attributes: dict[str, str | int]) -> str:
    return " ".join(str(value) for value in attributes.values())


def test_span_attributes_name_the_vendor_record_and_answer_and_nothing_personal() -> None:
    """Vendor, topic/partition/offset, attempt, status, outcome, reason code: never the record's
    key, value or headers, nor the vendor's own words (its `detail`)."""
    where = record_attributes("acme", RECORD.topic, RECORD.partition, RECORD.offset)
    attempt = attempt_attributes(2, LEAKY)
    ended = event_end_attributes(
        Decision(kind=DecisionKind.DEAD_LETTER, outcome=LEAKY, dlq_reason="retries_exhausted"), 5
    )
    assert where == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": "conversions",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 1042,
        "conversion_relay.vendor": "acme",
    }
    assert attempt == {
        "conversion_relay.attempt": 2,
        "conversion_relay.outcome": "retry",
        "conversion_relay.reason": "http_503",
        "http.response.status_code": 503,
    }
    assert ended == {
        "conversion_relay.outcome": "dead_lettered",
        "conversion_relay.dlq_reason": "retries_exhausted",
        "conversion_relay.attempts": 5,
        "conversion_relay.reason": "http_503",
        "http.response.status_code": 503,
    }
    assert set(where) | set(attempt) <= ATTEMPT_KEYS
    assert set(where) | set(ended) <= EVENT_KEYS
    text = _values(where) + _values(attempt) + _values(ended)
    for leaked in (EMAIL, PHONE, CUSTOMER, API_KEY, "upstream said", "e-1"):
        assert leaked not in text


def test_an_answer_below_http_has_no_status_and_a_delivery_no_reason() -> None:
    """A timeout has no status code to report; a delivered answer has no reason code."""
    timeout = Outcome(kind=OutcomeKind.RETRY, reason="timeout", detail="read timed out")
    assert attempt_attributes(1, timeout) == {
        "conversion_relay.attempt": 1,
        "conversion_relay.outcome": "retry",
        "conversion_relay.reason": "timeout",
    }
    ok = Outcome(kind=OutcomeKind.DELIVERED, status=200)
    assert event_end_attributes(Decision(kind=DecisionKind.DELIVERED, outcome=ok), 1) == {
        "conversion_relay.outcome": "delivered",
        "conversion_relay.attempts": 1,
        "http.response.status_code": 200,
    }
    assert event_end_attributes(Decision(kind=DecisionKind.ABANDONED), 0) == {
        "conversion_relay.outcome": "abandoned",
        "conversion_relay.attempts": 0,
    }


CONFIG = {
    "kafka": {"bootstrap_servers": ["127.0.0.1:9"], "topics": ["t"]},
    "vendors": {
        "v": {
            "protocol": "goal_reach",
            "base_url": "http://127.0.0.1:9",
            "goals": {"purchase": "299837db-9b51-45a4-996b-844d3fd05bbd"},
        }
    },
}
ON = {"enabled": True, "endpoint": "http://127.0.0.1:9/v1/traces"}
# The SDK's tracing modules; redis-py imports OpenTelemetry's metrics API and SDK by itself
# whenever they are installed (the reason tracing is an extra), never these.
TRACING_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http")
# Run first in a child: makes the OpenTelemetry packages unimportable, as without the extra.
WITHOUT_SDK = """
import sys
class _NoOpenTelemetry:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ImportError(name)
sys.meta_path.insert(0, _NoOpenTelemetry())
"""


def _child(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _loads_tracing_sdk(tracing: dict[str, object]) -> bool:
    """Whether building a Relay with this `tracing:` section imports the SDK's tracing."""
    config = {**CONFIG, "tracing": tracing}
    return (
        _child(f"""
import sys
from service.app import Relay
from service.config import parse_config
Relay(parse_config({config!r}))
print(any(m in sys.modules for m in {TRACING_MODULES!r}))
""")
        == "True"
    )


def test_the_tracing_sdk_is_imported_only_when_tracing_is_enabled() -> None:
    """Off (the default), a relay loads none of the SDK's tracing: start-up and the hot path
    pay nothing."""
    assert not _loads_tracing_sdk({})
    assert _loads_tracing_sdk(ON)


def test_check_config_names_the_missing_extra_when_tracing_is_on_without_the_sdk() -> None:
    """Without the `tracing` extra, enabling traces is a config problem saying what to install;
    with tracing off nothing needs it."""
    check = f"""
from service.config import parse_config
from service.errors import ConfigError
for tracing in ({{}}, {ON!r}):
    try:
        parse_config({{**{CONFIG!r}, "tracing": tracing}})
        print("ok")
    except ConfigError as exc:
        print(exc.problems)
"""
    off, on = _child(WITHOUT_SDK + check).splitlines()
    assert off == "ok"
    assert "tracing.enabled: the OpenTelemetry SDK is not installed" in on
    assert "conversion-relay[tracing]" in on
    assert _child(check).splitlines() == ["ok", "ok"]


def test_check_config_refuses_export_batches_larger_than_the_queue() -> None:
    """The SDK refuses a batch larger than its queue only when the relay starts; check-config
    says so first, with the key's path."""
    from service.config import parse_config
    from service.errors import ConfigError

    tracing = {**ON, "max_queue_size": 8, "max_export_batch_size": 16}
    with pytest.raises(ConfigError) as caught:
        parse_config({**CONFIG, "tracing": tracing})
    assert caught.value.problems == [
        "tracing.max_export_batch_size: must be at most max_queue_size"
    ]
