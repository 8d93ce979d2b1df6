"""Declared input mapping (service/core/mapping.py, service/core/inputs.py): every conversion,
every way a record or a mapping can be wrong, and CloudEvents in both content modes."""

from __future__ import annotations

import base64
import contextlib
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.inputs import (
    CanonicalInput,
    CloudEventsInput,
    JsonInput,
    build_input,
    input_problems,
)
from service.core.mapping import MappingError, SpecError, compile_fields, parse_expr
from service.delivery.stages import Terminal, TopicInputs
from service.errors import EventError
from service.events import ConversionEvent

CRM = {
    "type": "order.paid",
    "ts": 1765100000000,
    "order": {
        "uuid": "5f0c3c7e-8f5e-4a55-9a53-3c1f5f6f7a11",
        "total_cents": 12999,
        "currency": "EUR",
        "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}],
    },
    "customer": {"email": "ann@example.com", "crm_id": "c-1234"},
    "properties": {"plan": "pro", "coupon": "WINTER"},
    "meta": {"trace": "x" * 100},
}
FIELDS: dict[str, Any] = {
    "event_id": "$.order.uuid",
    "goal": {"from": "$.type", "map": {"order.paid": "purchase", "lead.created": "lead"}},
    "occurred_at": "$.ts | epoch_ms",
    "value": "$.order.total_cents / 100",
    "currency": {"from": "$.order.currency", "default": "USD"},
    "customer.email": "$.customer.email",
    "customer.ids.sustain_impact": "$.customer.crm_id",
    "params": "$.properties",
    "params.first_sku": "$.order.items[0].sku",
    "attributes.source": "crm",
}


def _map(record: dict[str, Any], fields: dict[str, Any] | None = None) -> ConversionEvent:
    return JsonInput(FIELDS if fields is None else fields).decode(orjson.dumps(record), ())


def _fails(record: Any, fields: dict[str, Any] | None = None) -> MappingError:
    # msgspec's encoder, not orjson's: it writes integers past 64 bits, as producers may.
    raw = record if isinstance(record, bytes) else msgspec.json.encode(record)
    with pytest.raises(MappingError) as caught:
        JsonInput(FIELDS if fields is None else fields).decode(raw, ())
    return caught.value


def _minimal(**more: Any) -> dict[str, Any]:
    return {"event_id": "$.id", "goal": "purchase", "occurred_at": "$.at", **more}


# ---------------------------------------------------------------- what a mapping makes


def test_a_crm_record_becomes_the_canonical_event():
    """Paths, a value map, epoch milliseconds, arithmetic, a default, a constant, a whole-object
    copy with a key beside it: each lands in its canonical field."""
    event = _map(CRM)
    assert event.event_id == "5f0c3c7e-8f5e-4a55-9a53-3c1f5f6f7a11"
    assert event.goal == "purchase"
    assert event.occurred_at == datetime(2025, 12, 7, 9, 33, 20, tzinfo=UTC)
    assert event.value == pytest.approx(129.99)
    assert event.currency == "EUR"
    assert event.customer.email == "ann@example.com"
    assert event.customer.ids == {"sustain_impact": "c-1234"}
    assert event.params == {"plan": "pro", "coupon": "WINTER", "first_sku": "A-1"}
    assert event.attributes == {"source": "crm"}


def test_a_default_fills_a_missing_or_null_source():
    """`default` stands in when the path is absent or null."""
    record = {**CRM, "order": {**CRM["order"], "currency": None}}
    assert _map(record).currency == "USD"
    del record["order"]["currency"]
    assert _map(record).currency == "USD"


def test_a_value_not_in_the_map_is_kept_as_it_is():
    """Goals the map does not name pass through (routing then skips goals a vendor lacks)."""
    assert _map({**CRM, "type": "order.refunded"}).goal == "order.refunded"


def test_a_key_mapped_on_its_own_wins_over_the_copied_object():
    """`params.plan` overrides the `plan` of a copied `params` object, whatever the order."""
    fields = {"params.plan": "$.tier", **FIELDS}
    assert _map({**CRM, "tier": "gold"}, fields).params["plan"] == "gold"


def test_optional_targets_left_out_when_their_source_is_missing():
    """A missing optional source leaves its field out of the event (its default)."""
    record = {"id": "e1", "at": "2026-12-07T10:00:00Z"}
    event = _map(record, _minimal(value="$.amount", **{"customer.email": "$.who.email"}))
    assert event.value is None
    assert event.customer.email is None


@pytest.mark.parametrize(
    ("conversion", "source", "expected"),
    [
        ("epoch_ms", 1765100000123, datetime(2025, 12, 7, 9, 33, 20, 123000, tzinfo=UTC)),
        ("epoch_ms", "1765100000000", datetime(2025, 12, 7, 9, 33, 20, tzinfo=UTC)),
        ("epoch_s", 1765100000, datetime(2025, 12, 7, 9, 33, 20, tzinfo=UTC)),
        ("unix_s", 1765100000.5, datetime(2025, 12, 7, 9, 33, 20, 500000, tzinfo=UTC)),
        ("rfc3339", "2026-12-07T10:15:00+01:00", datetime(2026, 12, 7, 9, 15, tzinfo=UTC)),
        ("iso8601", "2026-12-07T10:15:00Z", datetime(2026, 12, 7, 10, 15, tzinfo=UTC)),
        ("iso8601", "20261207T101500", datetime(2026, 12, 7, 10, 15, tzinfo=UTC)),
        ("iso8601", "2026-12-07", datetime(2026, 12, 7, tzinfo=UTC)),
    ],
)
def test_time_conversions(conversion: str, source: Any, expected: datetime):
    """epoch_ms, epoch_s / unix_s (numbers or numeric strings), RFC 3339 and ISO 8601 (no
    offset = UTC) each make the event's occurred_at."""
    fields = _minimal(occurred_at=f"$.at | {conversion}")
    assert _map({"id": "e", "at": source}, fields).occurred_at == expected


def test_occurred_at_without_a_conversion_is_rfc3339():
    """A bare path is read as RFC 3339; the object form `as:` names a conversion too."""
    assert _map({"id": "e", "at": "2026-12-07T10:15:00Z"}, _minimal()).occurred_at.hour == 10
    fields = _minimal(occurred_at={"from": "$.at", "as": "epoch_s"})
    assert _map({"id": "e", "at": 0}, fields).occurred_at == datetime(1970, 1, 1, tzinfo=UTC)


def test_string_and_number_conversions_and_arithmetic():
    """`| string` makes an id of a number, `| number` a number of a string; arithmetic takes a
    number or a numeric string."""
    fields = _minimal(
        event_id="$.id | string",
        value="$.cents * 0.01",
        **{"order.count_items": "$.count | number", "params.sum": "$.sum + 1"},
    )
    event = _map(
        {"id": 42, "at": "2026-12-07T10:00:00Z", "cents": "250", "count": "3", "sum": 1.5}, fields
    )
    assert event.event_id == "42"
    assert event.value == pytest.approx(2.5)
    assert event.order.count_items == 3
    assert event.params["sum"] == 2.5


def test_quoted_keys_indexes_and_constants():
    """`["odd key"]`, negative indexes, `{const: ...}` and list constants for vendors."""
    fields = _minimal(
        **{
            "params.odd": '$["odd key"].v',
            "params.last": "$.items[-1]",
            "params.dollar": {"const": "$5 off"},
            "vendors": ["sustain_impact"],
        }
    )
    record = {"id": "e", "at": "2026-12-07T10:00:00Z", "odd key": {"v": 1}, "items": [1, 2, 3]}
    event = _map(record, fields)
    assert event.params == {"odd": 1, "last": 3, "dollar": "$5 off"}
    assert event.vendors == ["sustain_impact"]


def test_a_copied_object_may_also_be_read_into():
    """A path into an object that is also copied whole reads it as plain JSON."""
    fields = _minimal(attributes="$.props", **{"params.plan": "$.props.plan"})
    event = _map({"id": "e", "at": "2026-12-07T10:00:00Z", "props": {"plan": "pro"}}, fields)
    assert event.attributes == {"plan": "pro"}
    assert event.params == {"plan": "pro"}


# ---------------------------------------------------------------- records that fail


def test_a_required_field_missing_names_it_and_its_source():
    """event_id, goal and occurred_at must come out of the record."""
    error = _fails({**CRM, "order": {"total_cents": 1}})
    assert error.field == "event_id"
    assert str(error) == "event_id (from $.order.uuid): missing or null"
    assert error.kind == "schema"


def test_a_time_that_is_not_one_names_occurred_at():
    """Epoch milliseconds that are not a number; an ISO string that is not a time; a time out
    of range; an RFC 3339 without an offset."""
    error = _fails({**CRM, "ts": "soon"})
    assert error.field == "occurred_at"
    assert "milliseconds since the epoch" in str(error)
    error = _fails({"id": "e", "at": "nope"}, _minimal(occurred_at="$.at | iso8601"))
    assert str(error) == "occurred_at (from $.at | iso8601): not an ISO 8601 date-time"
    error = _fails({**CRM, "ts": 10**18})
    assert error.field == "occurred_at"
    error = _fails({"id": "e", "at": "2026-12-07T10:00:00"}, _minimal())
    assert error.field == "occurred_at" and "timezone" in str(error)
    error = _fails({"id": "e", "at": 1765100000}, _minimal())
    assert "expected an RFC 3339 date-time string, got int" in str(error)


def test_numbers_past_a_floats_range_name_their_field():
    """An integer of 400 digits in epoch milliseconds or under arithmetic, and a numeric string
    that is not finite: each a MappingError naming the field, never an OverflowError."""
    error = _fails({**CRM, "ts": 10**400})
    assert (
        str(error)
        == "occurred_at (from $.ts | epoch_ms): milliseconds since the epoch out of range"
    )
    error = _fails({**CRM, "order": {**CRM["order"], "total_cents": 10**400}})
    assert (
        str(error) == "value (from $.order.total_cents / 100): cannot compute / 100: out of range"
    )
    error = _fails({**CRM, "order": {**CRM["order"], "total_cents": "1e400"}})
    assert error.field == "value" and "not a finite number" in str(error)


def test_arithmetic_on_a_non_number_names_the_field():
    """`$.total_cents / 100` of a word fails, naming value and its expression."""
    error = _fails({**CRM, "order": {**CRM["order"], "total_cents": "lots"}})
    assert error.field == "value"
    assert str(error).startswith("value (from $.order.total_cents / 100): cannot compute / 100")


def test_a_record_of_another_shape_names_the_field_it_breaks():
    """An object where a path goes through is a string: the field it feeds is named."""
    error = _fails({**CRM, "customer": "ann"})
    assert error.field == "customer.email"
    assert "$.customer: expected object | null, got str" in str(error)


def test_a_wrong_type_for_the_event_names_the_target():
    """A number where the event wants a string, a currency that is no ISO code, params that are
    not an object, a value looked up in a map that is an object."""
    error = _fails({**CRM, "order": {**CRM["order"], "uuid": 5}})
    assert error.field == "event_id" and "(from $.order.uuid)" in str(error)
    error = _fails({**CRM, "order": {**CRM["order"], "currency": "euro"}})
    assert error.field == "currency"
    error = _fails({**CRM, "properties": [1, 2]})
    assert str(error) == "params (from $.properties): expected an object to copy, got array"
    error = _fails({**CRM, "type": {"a": 1}})
    assert error.field == "goal" and "cannot be looked up in map" in str(error)


def test_a_copied_object_holding_an_object_is_invalid_like_a_canonical_event():
    """Parameters are scalars, as in the canonical event: a nested value fails the record,
    naming the target and its source (map the nested keys one by one instead)."""
    fields = _minimal(params="$.props")
    error = _fails({"id": "e", "at": "2026-12-07T10:00:00Z", "props": {"a": {"b": 1}}}, fields)
    assert error.field == "params"
    assert str(error).startswith("params (from $.props): expected bool | int | float | str")
    error = _fails({"id": "e", "at": "2026-12-07T10:00:00Z", "props": "text"}, fields)
    assert str(error) == "params (from $.props): expected object, got str"


def test_an_error_deep_in_the_event_names_its_target():
    """A bad list member is blamed on its target (`order.categories`), and a shape error on a
    key blames only the fields read through that key, not a longer key sharing its prefix."""
    fields = _minimal(**{"order.categories": "$.cats", "params.o": "$.orders.n"})
    error = _fails({"id": "e", "at": "2026-12-07T10:00:00Z", "cats": ["a", 5]}, fields)
    assert error.field == "order.categories"
    assert str(error).startswith("order.categories (from $.cats): expected str")
    fields = _minimal(**{"params.b": "$.orders.n", "params.a": "$.order.id"})
    error = _fails({"id": "e", "at": "2026-12-07T10:00:00Z", "order": 1}, fields)
    assert error.field == "params.a"


def test_a_record_that_is_no_object_says_so():
    """An array or a string where an object is expected blames no one field."""
    assert str(_fails(b"[1, 2]")) == "record is not a JSON object: expected object, got array"


def test_bytes_that_are_not_json_are_not_json():
    """Not JSON, bad UTF-8, a tombstone: the same kinds the canonical decoder uses."""
    assert _fails(b"{nope").kind == "not_json"
    assert _fails(b'{"type": "\xff"}').kind == "not_json"
    with pytest.raises(EventError) as caught:
        JsonInput(FIELDS).decode(None, ())
    assert caught.value.kind == "tombstone"


# ---------------------------------------------------------------- mappings that fail


@pytest.mark.parametrize(
    ("fields", "where", "says"),
    [
        (_minimal(event_id="$.a..b"), "event_id", "cannot read the path"),
        (_minimal(event_id="$"), "event_id", "`$` alone is the whole record"),
        (_minimal(event_id="$[0]"), "event_id", "a record is a JSON object"),
        (_minimal(occurred_at="$.at | epoch_hours"), "occurred_at", "unknown conversion"),
        (_minimal(value="$.v / 0"), "value", "division by zero"),
        (_minimal(**{"custmer.email": "$.e"}), "custmer.email", "not a field of the canonical"),
        (_minimal(goal={"from": "$.t", "mapp": {}}), "goal", "unknown key mapp"),
        (_minimal(goal={"map": {}}), "goal", "expected `from: $.path`"),
        (_minimal(goal={"from": 5}), "goal.from", "expected an expression"),
        (_minimal(goal={"from": "$.t", "map": [1]}), "goal.map", "expected a mapping"),
        (_minimal(goal={"const": "x", "default": "y"}), "goal", "const stands alone"),
        (_minimal(value={"from": "$.v | number", "as": "string"}), "value.as", "given twice"),
        (_minimal(value={"from": "$.v", "as": "hours"}), "value.as", "unknown conversion"),
        (_minimal(value="$.v | epoch_ms"), "value", "only for occurred_at"),
        (_minimal(occurred_at="$.at | number"), "occurred_at", "occurred_at is a time"),
        (_minimal(params=["a"]), "params", "a constant list fits only"),
        (_minimal(currency="euro"), "currency", "not a valid currency"),
        (_minimal(goal={"const": None}), "goal.const", "null would fail every record"),
        (_minimal(value={"from": "$.v", "default": "lots"}), "value.default", "not a valid"),
        (_minimal(goal={"from": "$.t", "map": {"a": 5}}), "goal.map.a", "not a valid goal"),
        (_minimal(**{"params.x": {"const": {"a": 1}}}), "params.x.const", "not a valid"),
    ],
)
def test_every_mapping_mistake_is_named_by_its_key(fields: dict[str, Any], where: str, says: str):
    """Each mistake a mapping can hold is a SpecError naming the key under `fields`."""
    with pytest.raises(SpecError) as caught:
        compile_fields(fields)
    assert caught.value.where == where
    assert says in caught.value.message


def test_every_problem_of_an_input_in_one_pass():
    """input_problems lists each bad field, a required target not mapped, and mode misuse."""
    problems = input_problems("json", {"event_id": "$..x", "value": "$.v | hours"}, "binary")
    assert [p for p, _ in problems] == ["mode", "fields.event_id", "fields.value", "fields"]
    assert "goal, occurred_at not mapped" in problems[-1][1]
    assert input_problems("canonical", {"goal": "x"}, "auto") == [
        ("fields", "the canonical format maps nothing; use format: json")
    ]
    assert input_problems("cloudevents", {}, "auto") == []  # id, type and time by default


def test_parse_expr_reads_arithmetic_and_conversion():
    """The expression grammar: PATH [OP NUMBER] [| CONVERSION]."""
    expr = parse_expr("$.a.b[2] * 1.5e2 | string")
    assert expr.path.steps == ("a", "b", 2)
    assert (expr.op, expr.operand, expr.conversion) == ("*", 150.0, "string")


def test_the_mapping_is_compiled_once_into_straight_line_code():
    """The mapper's build function is generated source holding no config value: constants,
    maps and defaults are bound names (a value can never become code)."""
    mapper = compile_fields(_minimal(goal="'); import os #", **{"params.x": {"const": "}"}}))
    assert "import os" not in mapper.source
    assert "for " not in mapper.source.split("def build")[1].split("out = {}")[0]
    event = mapper.apply(mapper.decode(b'{"id": "e", "at": "2026-12-07T10:00:00Z"}'))
    assert event.goal == "'); import os #"


def test_a_plain_mapper_maps_records_another_decoder_made():
    """`plain=True` (the seam a Schema Registry decoder uses): the same fields applied to a
    record already decoded to dicts make the same event as from the JSON bytes."""
    from_json = _map(CRM)
    mapper = compile_fields(FIELDS, plain=True)
    assert mapper.apply(orjson.loads(orjson.dumps(CRM))) == from_json
    with pytest.raises(MappingError) as caught:
        mapper.apply({**CRM, "ts": None})
    assert caught.value.field == "occurred_at"


# ---------------------------------------------------------------- CloudEvents

CE = {
    "specversion": "1.0",
    "id": "ce-1",
    "source": "/shop/checkout",
    "type": "purchase",
    "time": "2026-12-07T10:00:00Z",
    "subject": "order-7",
    "datacontenttype": "application/json",
    "data": {"total": 12.5, "email": "ann@example.com"},
}
CE_FIELDS = {
    "value": "$.data.total",
    "customer.email": "$.data.email",
    "attributes.source": "$.source",
    "attributes.subject": "$.subject",
}
STRUCTURED = [("content-type", b"application/cloudevents+json; charset=UTF-8")]


def _binary_headers(**attributes: str) -> list[tuple[str, bytes]]:
    base = {"specversion": "1.0", "id": "ce-2", "source": "/crm", "type": "signup"}
    base |= {"time": "2026-12-07T11:00:00Z"} | attributes
    headers = [(f"ce_{k}", v.encode()) for k, v in base.items()]
    return [*headers, ("content-type", b"application/json")]


def test_a_structured_cloudevent_maps_id_type_time_source_subject_and_data():
    """The envelope is the value; id, type and time are the event's by default."""
    event = CloudEventsInput(CE_FIELDS).decode(orjson.dumps(CE), STRUCTURED)
    assert (event.event_id, event.goal) == ("ce-1", "purchase")
    assert event.occurred_at == datetime(2026, 12, 7, 10, tzinfo=UTC)
    assert event.value == 12.5
    assert event.customer.email == "ann@example.com"
    assert event.attributes == {"source": "/shop/checkout", "subject": "order-7"}


def test_a_binary_cloudevent_maps_its_ce_headers_and_its_value_as_data():
    """ce_* headers are the attributes, the value is data."""
    value = orjson.dumps({"total": 3, "email": "bo@example.com"})
    event = CloudEventsInput(CE_FIELDS).decode(value, _binary_headers(subject="s-1"))
    assert (event.event_id, event.goal) == ("ce-2", "signup")
    assert event.occurred_at == datetime(2026, 12, 7, 11, tzinfo=UTC)
    assert event.value == 3
    assert event.attributes == {"source": "/crm", "subject": "s-1"}


def test_a_structured_cloudevent_ignores_odd_ce_headers():
    """In structured mode the envelope is the event: a ce_* header that is not UTF-8 is not
    read, so it does not fail the record."""
    headers = [*STRUCTURED, ("ce_trace", b"\xff")]
    assert CloudEventsInput(CE_FIELDS).decode(orjson.dumps(CE), headers).event_id == "ce-1"


def test_structured_data_base64_is_read_as_json_data():
    """A structured event carrying data_base64 of JSON maps like `data`."""
    envelope = {k: v for k, v in CE.items() if k != "data"}
    envelope["data_base64"] = base64.b64encode(b'{"total": 7}').decode()
    event = CloudEventsInput(CE_FIELDS).decode(orjson.dumps(envelope), STRUCTURED)
    assert event.value == 7


def test_cloudevents_extensions_and_overridden_defaults():
    """An extension attribute is a root key like the others; fields override the defaults."""
    fields = {
        "goal": {"from": "$.type", "map": {"com.shop.paid": "purchase"}},
        "params.tenant": "$.tenant",
    }
    event = CloudEventsInput(fields).decode(
        b"{}", _binary_headers(type="com.shop.paid", tenant="acme")
    )
    assert event.goal == "purchase" and event.params == {"tenant": "acme"}


@pytest.mark.parametrize(
    ("value", "headers", "mode", "field", "says"),
    [
        (b"{}", [], "auto", "specversion", "not a CloudEvent"),
        (b"{}", [("content-type", b"application/json")], "auto", "specversion", "ce_specversion"),
        (b"{}", _binary_headers(specversion="0.3"), "auto", "specversion", "expected '1.0'"),
        (b"{}", _binary_headers(id=""), "auto", "id", "ce_id"),
        (orjson.dumps({**CE, "source": None}), STRUCTURED, "auto", "source", "source"),
        (orjson.dumps(CE), [], "structured", "", "not a structured CloudEvent"),
        (b"{}", STRUCTURED, "binary", "specversion", "no ce_specversion"),
        (
            b"hi",
            [*_binary_headers()[:-1], ("content-type", b"text/plain")],
            "auto",
            "data",
            "JSON only",
        ),
        (b"[]", [("content-type", b"application/cloudevents-batch+json")], "auto", "", "batch"),
        (
            orjson.dumps({**{k: v for k, v in CE.items() if k != "data"}, "data_base64": "%%"}),
            STRUCTURED,
            "auto",
            "data",
            "not valid base64",
        ),
        (b"{}", [("ce_specversion", b"\xff")], "auto", "ce_specversion", "not UTF-8"),
    ],
)
def test_a_cloudevent_that_is_not_one_says_why(
    value: bytes, headers: list[tuple[str, bytes]], mode: Any, field: str, says: str
):
    """Missing or wrong required attributes, the wrong content mode, data that is not JSON,
    batch mode, bad base64, a header that is not UTF-8: each a MappingError saying which."""
    with pytest.raises(MappingError) as caught:
        CloudEventsInput(CE_FIELDS, mode).decode(value, headers)
    assert caught.value.field == field
    assert says in str(caught.value)


def test_a_header_where_the_mapping_reads_into_an_object_is_refused():
    """`$.tenant.id` reads into an object: a binary event's ce_tenant header (text) cannot be
    one, so the record fails naming it (no AttributeError from the generated code)."""
    with pytest.raises(MappingError) as caught:
        CloudEventsInput({"params.tenant": "$.tenant.id"}).decode(
            b"{}", _binary_headers(tenant="acme")
        )
    assert (
        str(caught.value) == "ce_tenant: a header is text; the mapping reads fields below $.tenant"
    )


def test_a_binary_cloudevent_whose_data_breaks_the_shape_names_the_field():
    """A data path through a string: the field is named with its `$.data...` source."""
    with pytest.raises(MappingError) as caught:
        CloudEventsInput({"customer.email": "$.data.who.email"}).decode(
            b'{"who": "ann"}', _binary_headers()
        )
    assert caught.value.field == "customer.email"
    assert "$.data.who: expected object | null, got str" in str(caught.value)


# ---------------------------------------------------------------- the decode stage


class _Record:
    def __init__(self, topic: str, value: bytes, headers: tuple[Any, ...] = ()) -> None:
        self.topic, self.value, self.headers = topic, value, headers


def test_the_decode_stage_reads_each_topic_by_its_input():
    """A mapped topic is mapped, other topics are canonical; a failure is an invalid_event
    dead letter naming the field."""
    stage = TopicInputs({"crm": build_input("json", FIELDS)}, "dlq")
    event = stage(_Record("crm", orjson.dumps(CRM)))
    assert isinstance(event, ConversionEvent) and event.goal == "purchase"
    canonical = stage(
        _Record(
            "conversions",
            orjson.dumps({"event_id": "e", "goal": "g", "occurred_at": "2026-12-07T10:00:00Z"}),
        )
    )
    assert isinstance(canonical, ConversionEvent)
    ended = stage(_Record("crm", orjson.dumps({**CRM, "ts": "x"})))
    assert isinstance(ended, Terminal)
    assert ended.dlq_reason == "invalid_event" and ended.invalid_kind == "schema"
    assert ended.error.startswith("occurred_at (from $.ts | epoch_ms):")


def test_a_dead_letter_is_read_by_its_source_topics_input():
    """A replayed letter of a mapped topic is mapped again (by relay-source-topic), not read as
    canonical; a forged header on a live topic changes nothing."""
    stage = TopicInputs({"crm": build_input("json", FIELDS)}, "dlq")
    headers = (("relay-source-topic", b"crm"), ("relay-reason", b"rejected"))
    replayed = stage(_Record("dlq", orjson.dumps(CRM), headers))
    assert isinstance(replayed, ConversionEvent) and replayed.event_id == CRM["order"]["uuid"]
    live = stage(_Record("other", orjson.dumps(CRM), headers))
    assert isinstance(live, Terminal)  # canonical there: the CRM shape is not an event


def test_canonical_input_is_the_plain_decoder():
    """format: canonical reads the relay's own event."""
    raw = orjson.dumps({"event_id": "e", "goal": "g", "occurred_at": "2026-12-07T10:00:00Z"})
    assert CanonicalInput().decode(raw, ()).event_id == "e"


# ---------------------------------------------------------------- any record at all

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(["1e400", "12", "-3.5", "2026-12-07T10:00:00Z", "order.paid", "x" * 300])
    | st.sampled_from([10**400, -(10**30), 2**64, 1765100000000]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
# Mostly-valid required fields, so that records reach every later field's conversion.
_RECORD = st.fixed_dictionaries(
    {"type": st.just("order.paid") | _JSON},
    optional={
        "ts": _JSON,
        "order": st.fixed_dictionaries(
            {"uuid": st.just("u-1") | _JSON},
            optional={"total_cents": _JSON, "currency": _JSON, "items": _JSON},
        )
        | _JSON,
        "customer": st.fixed_dictionaries({}, optional={"email": _JSON, "crm_id": _JSON}) | _JSON,
        "properties": _JSON,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=_RECORD)
def test_any_record_is_an_event_or_a_mapping_error(record: dict[str, Any]):
    """Whatever a producer sends (huge numbers, numeric strings out of range, wrong types at
    every path), the mapping makes an event or raises MappingError: never another exception,
    which the pipeline would retry as an internal error instead of dead-lettering the record."""
    raw = msgspec.json.encode(record)  # integers past 64 bits too, as producers may write
    with contextlib.suppress(MappingError):
        JsonInput(FIELDS).decode(raw, ())


_HEADER_VALUES = st.sampled_from([b"1.0", b"x", b"", b"\xff", b"2026-12-07T10:00:00Z", b"{}"])
_HEADER_NAMES = st.sampled_from(
    ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_tenant", "ce_data"]
)
_CONTENT_TYPES = [b"application/cloudevents+json", b"text/plain", b"application/json"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.none() | st.sampled_from([b"{}", b"[]", b"nope", b'{"total": "x"}', b'{"who": 1}']),
    extra=st.lists(
        st.tuples(
            _HEADER_NAMES | st.just("content-type"),
            _HEADER_VALUES | st.sampled_from(_CONTENT_TYPES),
        ),
        max_size=4,
    ),
)
def test_any_cloudevent_record_is_an_event_or_a_mapping_error(
    value: bytes | None, extra: list[tuple[str, bytes]]
):
    """A valid binary event's headers with any others after them (overriding some) and any
    value, against a mapping reading data and an extension below their top: an event, an
    EventError (a tombstone) or a MappingError, never another exception."""
    fields = {**CE_FIELDS, "params.tenant": "$.tenant.id", "params.who": "$.data.who.name"}
    with contextlib.suppress(EventError):
        CloudEventsInput(fields).decode(value, [*_binary_headers(), *extra])
