"""make bench's inputs and registry_outage scenarios: configs, records, rows and verdicts."""

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from bench.hotpath import MAPPED_FIELDS
from bench.inputs import (
    CRM_SCHEMA,
    MIB,
    InputRun,
    OutageRun,
    avro_values,
    input_config,
    inputs_rows,
    inputs_verdict,
    json_values,
    outage_rows,
    outage_verdict,
    ratios,
    round_order,
)
from bench.run import parse_args
from service.config import parse_config
from service.core.inputs import AvroInput, JsonInput
from service.core.registry import AvroSchema
from service.devtools.demo import sample_lines
from service.events import ConversionEvent, decode_event

REGISTRY = "http://127.0.0.1:18081"


def _config(kind: str) -> dict[str, Any]:
    return input_config(
        "127.0.0.1:9092", "t", kind, "http://127.0.0.1:8080", 64, 9100, "g", REGISTRY
    )


def test_each_contender_config_is_accepted_by_the_relay_and_reads_its_topic_as_its_kind() -> None:
    canonical, mapped, avro = (parse_config(_config(k)) for k in ("canonical", "json", "avro"))
    assert canonical.inputs == {}
    assert canonical.schema_registry is None
    (entry,) = mapped.inputs.values()
    assert (entry.topic, entry.format, entry.fields) == ("t", "json", MAPPED_FIELDS)
    (entry,) = avro.inputs.values()
    assert (entry.topic, entry.format, entry.fields) == ("t", "avro", MAPPED_FIELDS)
    assert avro.schema_registry is not None and avro.schema_registry.url == REGISTRY
    # The three differ only in how the topic is read: the same vendor, topics and defaults.
    for config in (mapped, avro):
        assert config.vendors == canonical.vendors
        assert config.kafka.topics == canonical.kafka.topics == ["t"]
        assert config.pipeline == canonical.pipeline


def test_an_avro_config_without_the_registry_url_is_refused_before_the_run() -> None:
    with pytest.raises(ValueError, match="registry"):
        input_config("127.0.0.1:9092", "t", "avro", "http://127.0.0.1:8080", 64, 9100, "g")


def _same_events(made: list[ConversionEvent], lines: list[bytes]) -> None:
    for event, line in zip(made, lines, strict=True):
        canonical = decode_event(line)
        assert abs((event.occurred_at - canonical.occurred_at).total_seconds()) < 0.001
        assert msgspec.structs.replace(event, occurred_at=canonical.occurred_at) == canonical


def test_mapped_json_and_avro_records_become_the_canonical_backlogs_events() -> None:
    """The relay's own inputs make the same events of all three backlogs (occurred_at to the
    ms): what the contenders deliver is the same, only the wire format differs."""
    lines = list(sample_lines(300))
    mapped = JsonInput(MAPPED_FIELDS)
    _same_events([mapped.decode(value, ()) for _, value in json_values(lines)], lines)
    schema = AvroSchema(5, CRM_SCHEMA)

    class Source:
        def cached(self, schema_id: int) -> AvroSchema | None:
            return schema if schema_id == 5 else None

        def when_ready(self, schema_id: int, callback: Callable[[], None]) -> None:
            raise AssertionError("the schema is cached")

    avro = AvroInput(MAPPED_FIELDS, Source())
    pairs = list(avro_values(lines, 5))
    assert all(value[:5] == b"\x00\x00\x00\x00\x05" for _, value in pairs)  # Confluent frame
    assert [key for key, _ in pairs] == [decode_event(line).event_id.encode() for line in lines]
    _same_events([avro.decode(value, ()) for _, value in pairs], lines)


def _runs(json_rate: float, avro_rate: float, **avro: int) -> list[InputRun]:
    return [
        InputRun("canonical", 20_000.0, 40.0, 1_000, 1_000, 0),
        InputRun("json", json_rate, 44.0, 1_000, 1_000, 0),
        InputRun(
            "avro",
            avro_rate,
            50.0,
            avro.get("delivered", 1_000),
            1_000,
            avro.get("dead", 0),
        ),
    ]


def test_the_target_is_met_when_each_input_reaches_nine_tenths_of_canonical() -> None:
    runs = _runs(19_000.0, 18_000.0)
    assert ratios(runs) == pytest.approx({"json": 0.95, "avro": 0.9})
    verdict = inputs_verdict(runs)
    assert ": met:" in verdict
    assert "0.95×" in verdict and "0.90×" in verdict


def test_the_target_is_not_met_when_one_input_falls_below_it() -> None:
    verdict = inputs_verdict(_runs(19_000.0, 17_000.0))
    assert "NOT met" in verdict and "0.85×" in verdict


@pytest.mark.parametrize(("delivered", "dead"), [(999, 0), (1_000, 1)])
def test_no_verdict_when_a_contender_missed_events_or_dead_lettered_any(
    delivered: int, dead: int
) -> None:
    verdict = inputs_verdict(_runs(19_000.0, 18_000.0, delivered=delivered, dead=dead))
    assert verdict.startswith("target not measured")
    assert f"delivered {delivered:,} of 1,000, dead-lettered {dead}" in verdict


def test_rows_show_medians_over_the_rounds_and_ratios_against_canonical() -> None:
    runs = [
        *_runs(19_000.0, 18_000.0),
        InputRun("canonical", 10_000.0, 60.0, 1_000, 1_000, 0),
        InputRun("canonical", 30_000.0, 20.0, 1_000, 1_000, 0, note="round 3: x"),
    ]
    rows = inputs_rows(runs)
    assert [row[0] for row in rows] == [
        "canonical JSON events",
        "mapped JSON input (a CRM's shape)",
        "Avro input (Confluent wire format, stand-in registry)",
    ]
    assert rows[0][1:] == ["20,000", "40.0", "1.00×", "1.00×", "3,000 / 3,000", "0", "round 3: x"]
    assert rows[1][1:7] == ["19,000", "44.0", "0.95×", "1.10×", "1,000 / 1,000", "0"]
    assert rows[2][3:5] == ["0.90×", "1.25×"]


def _outage(**changes: object) -> OutageRun:
    run = OutageRun(
        backlog=1_000_000,
        outage_s=60.0,
        peak_outage_bytes=90 * MIB,
        peak_after_bytes=110 * MIB,
        delivered_outage=0,
        delivered=1_000_000,
        dead=0,
        drain_s=70.5,
        first_after_s=0.8,
        drain_limit_s=300.0,
        waiting=4_096,
    )
    for key, value in changes.items():
        setattr(run, key, value)
    return run


def test_the_outage_target_is_met_within_the_budget_with_nothing_dead_lettered() -> None:
    verdict = outage_verdict(_outage())
    assert ": met: peak RSS 90.0 MiB, dead-lettered 0" in verdict
    assert "drained all 1,000,000" in verdict


@pytest.mark.parametrize(
    "changes", [{"peak_outage_bytes": 151 * MIB}, {"dead": 3}], ids=["over budget", "dead"]
)
def test_the_outage_target_is_not_met_over_budget_or_with_a_dead_letter(
    changes: dict[str, object],
) -> None:
    assert "NOT met" in outage_verdict(_outage(**changes))


def test_a_drain_cut_at_its_limit_says_how_much_was_delivered() -> None:
    run = _outage(delivered=400_000, drain_s=None)
    assert "delivered 400,000 of 1,000,000 within the 300 s drain limit" in outage_verdict(run)
    rows = outage_rows(run)
    assert rows[0][:3] == ["registry down (503) for 60 s", "90.0", "0"]
    assert "records_waiting 4,096" in rows[0][4]
    assert rows[1][1:4] == ["110.0", "400,000 / 1,000,000", "0"]
    assert rows[1][4] == "first delivery 0.8 s after the return; stopped at the 300 s drain limit"
    assert "all delivered 70.5 s after it" in outage_rows(_outage())[1][4]


def test_quick_alone_runs_registry_outage_but_inputs_only_when_named() -> None:
    _, quick, _ = parse_args(["--quick"])
    assert "registry_outage" in quick and "inputs" not in quick
    _, named, _ = parse_args(["--quick", "--scenario", "registry_outage", "--scenario", "inputs"])
    assert named == ["inputs", "registry_outage"]
    _, full, _ = parse_args([])
    assert full[-2:] == ["inputs", "registry_outage"]


def test_each_contender_runs_first_in_one_round_of_three() -> None:
    orders = [round_order(n) for n in range(3)]
    assert orders[0] == ["canonical", "json", "avro"]
    assert {order[0] for order in orders} == {"canonical", "json", "avro"}
    assert all(sorted(order) == ["avro", "canonical", "json"] for order in orders)
