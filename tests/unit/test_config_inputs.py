"""The `inputs:` section: check-config names each mapping mistake by its path, in one pass with
every other problem of the file, and `map` shows what a sample record becomes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from service.cli import main
from service.config import parse_config
from service.errors import ConfigError

GOAL = "299837db-9b51-45a4-996b-844d3fd05bbd"
CRM_FIELDS = {
    "event_id": "$.order.uuid",
    "goal": {"from": "$.type", "map": {"order.paid": "purchase"}},
    "occurred_at": "$.ts | epoch_ms",
    "value": "$.order.total_cents / 100",
    "customer.ids.sustain_impact": "$.customer.crm_id",
}


def _config(**inputs: Any) -> dict[str, Any]:
    return {
        "kafka": {
            "bootstrap_servers": ["k:9092"],
            "topics": ["conversions", "crm.orders", "platform.events"],
        },
        "inputs": inputs,
        "vendors": {
            "sustain_impact": {
                "protocol": "goal_reach",
                "base_url": "https://api.x.de",
                "goals": {"purchase": GOAL},
            }
        },
    }


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, {})
    return caught.value.problems


def test_a_valid_input_loads():
    """An input's topic, format, mode and fields load as given."""
    config = parse_config(_config(crm={"topic": "crm.orders", "fields": CRM_FIELDS}), {})
    entry = config.inputs["crm"]
    assert (entry.topic, entry.format, entry.mode) == ("crm.orders", "json", "auto")
    assert entry.fields == CRM_FIELDS


def test_every_mapping_mistake_is_named_by_its_path_in_one_pass():
    """A bad path, an unknown conversion, an unknown target, an unknown field option, a topic
    not read, a topic read twice, a bad format: each problem named by its full path, and the
    vendors' own mistakes beside them."""
    data = _config(
        crm={
            "topic": "crm.orders",
            "fields": {
                **CRM_FIELDS,
                "event_id": "$.order..uuid",
                "occurred_at": "$.ts | epoch_hours",
                "custmer.email": "$.email",
                "goal": {"from": "$.type", "mapp": {}},
            },
        },
        lost={"topic": "nowhere", "fields": CRM_FIELDS},
        twice={"topic": "crm.orders", "format": "cloudevents"},
        odd={"topic": "platform.events", "format": "xml"},
    )
    data["vendors"]["sustain_impact"]["timeout_s"] = -1
    problems = _problems(data)
    by_path = {p.partition(": ")[0]: p.partition(": ")[2] for p in problems}
    assert "cannot read the path" in by_path["inputs.crm.fields.event_id"]
    assert "unknown conversion 'epoch_hours'" in by_path["inputs.crm.fields.occurred_at"]
    assert "not a field of the canonical event" in by_path["inputs.crm.fields.custmer.email"]
    assert "unknown key mapp" in by_path["inputs.crm.fields.goal"]
    assert by_path["inputs.lost.topic"].startswith("nowhere is not in kafka.topics")
    assert by_path["inputs.twice.topic"] == "crm.orders is already read by inputs.crm"
    assert "xml" in by_path["inputs.odd.format"]
    assert any(p.startswith("vendors.sustain_impact.timeout_s") for p in problems)


def test_mapping_problems_are_reported_even_when_another_section_is_broken():
    """A broken kafka section does not hide the inputs' mistakes."""
    data = _config(crm={"topic": "crm.orders", "fields": {**CRM_FIELDS, "value": "$.v / 0"}})
    data["kafka"]["session_timeout_ms"] = "soon"
    problems = _problems(data)
    assert "inputs.crm.fields.value: division by zero" in problems
    assert any(p.startswith("kafka.session_timeout_ms") for p in problems)


def test_a_mapping_missing_a_required_target_names_fields():
    """event_id, goal and occurred_at must be mapped (CloudEvents maps them by default)."""
    fields = {k: v for k, v in CRM_FIELDS.items() if k != "goal"}
    problems = _problems(_config(crm={"topic": "crm.orders", "fields": fields}))
    assert problems == [
        "inputs.crm.fields: goal not mapped: every canonical event has event_id, goal and "
        "occurred_at"
    ]
    parse_config(_config(ce={"topic": "platform.events", "format": "cloudevents"}), {})


def test_check_config_prints_the_path_and_summarises_inputs(tmp_path: Path, capsys):
    """check-config exits 1 naming `inputs.<name>.fields.<target>`; a good file's summary lists
    each input."""
    bad = _config(crm={"topic": "crm.orders", "fields": {**CRM_FIELDS, "value": "$.v | hours"}})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "inputs.crm.fields.value: unknown conversion 'hours'" in err
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_config(crm={"topic": "crm.orders", "fields": CRM_FIELDS})))
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "input crm: topic crm.orders format=json fields: customer.ids.sustain_impact, " in out


# ---------------------------------------------------------------- `map`


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "relay.yaml"
    data = _config(
        crm={"topic": "crm.orders", "fields": CRM_FIELDS},
        platform={"topic": "platform.events", "format": "cloudevents"},
    )
    path.write_text(yaml.safe_dump(data))
    return path


def _sample(tmp_path: Path, record: Any) -> str:
    path = tmp_path / "sample.json"
    path.write_bytes(record if isinstance(record, bytes) else orjson.dumps(record))
    return str(path)


CRM = {
    "type": "order.paid",
    "ts": 1765100000000,
    "order": {"uuid": "u-1", "total_cents": 12999},
    "customer": {"crm_id": "c-1"},
}


def test_map_prints_the_canonical_event(config_file: Path, tmp_path: Path, capsys):
    """`map --topic crm.orders FILE` prints the event the record becomes; exit 0."""
    args = ["map", "--config", str(config_file), "--topic", "crm.orders"]
    assert main([*args, _sample(tmp_path, CRM)]) == 0
    assert orjson.loads(capsys.readouterr().out) == {
        "event_id": "u-1",
        "goal": "purchase",
        "occurred_at": "2025-12-07T09:33:20Z",
        "value": 129.99,
        "customer": {"ids": {"sustain_impact": "c-1"}},
    }


def test_map_says_why_a_record_fails_and_exits_1(config_file: Path, tmp_path: Path, capsys):
    """A record the mapping cannot make an event of: the dead letter's reason and the field."""
    args = ["map", "--config", str(config_file), "--topic", "crm.orders"]
    assert main([*args, _sample(tmp_path, {**CRM, "ts": "later"})]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        "dead-lettered as invalid_event (schema): occurred_at (from $.ts | epoch_ms): "
    )


def test_map_reads_binary_cloudevents_headers_and_json_lines(
    config_file: Path, tmp_path: Path, capsys
):
    """`--header ce_*=...` makes a binary CloudEvent; `--lines` maps each line on its own and
    numbers the one that fails."""
    headers = [
        "--header=ce_specversion=1.0",
        "--header=ce_id=e-1",
        "--header=ce_source=/shop",
        "--header=ce_type=purchase",
        "--header=ce_time=2026-12-07T10:00:00Z",
    ]
    path = tmp_path / "two.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"b": 2}\n')
    args = ["map", "--config", str(config_file), "--topic", "platform.events", *headers]
    assert main([*args, "--lines", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count('"event_id": "e-1"') == 2
    assert main([*args[:-1], "--lines", str(path)]) == 1  # no ce_time
    assert capsys.readouterr().err.count("record ") == 2


def test_map_gives_record_paths_the_key_timestamp_and_headers_it_is_told(tmp_path: Path, capsys):
    """`--key`, `--timestamp-ms` and `--header` are what `@key`, `@timestamp` and `@headers.X`
    read; without them a required field from one fails, naming it."""
    path = tmp_path / "keyed.yaml"
    fields = {
        "event_id": "@key",
        "goal": "$.type",
        "occurred_at": "@timestamp | epoch_ms",
        "attributes.tenant": "@headers.tenant",
        "attributes.offset": "@offset | string",
    }
    path.write_text(yaml.safe_dump(_config(keyed={"topic": "crm.orders", "fields": fields})))
    args = ["map", "--config", str(path), "--topic", "crm.orders"]
    sample = _sample(tmp_path, {"type": "purchase"})
    told = ["--key", "deal-9", "--timestamp-ms", "1765100000000", "--header", "tenant=acme"]
    assert main([*args, *told, sample]) == 0
    assert orjson.loads(capsys.readouterr().out) == {
        "event_id": "deal-9",
        "goal": "purchase",
        "occurred_at": "2025-12-07T09:33:20Z",
        "attributes": {"tenant": "acme", "offset": "0"},
    }
    assert main([*args, "--key", "deal-9", sample]) == 1
    assert "occurred_at (from @timestamp | epoch_ms): missing or null" in capsys.readouterr().err


def test_map_on_a_canonical_topic_and_on_an_unknown_one(config_file: Path, tmp_path: Path, capsys):
    """A topic without an input reads the canonical event; a topic the config does not read is
    a usage error (exit 2) naming the topics it does."""
    event = {"event_id": "e", "goal": "purchase", "occurred_at": "2026-12-07T10:00:00Z"}
    sample = _sample(tmp_path, event)
    assert main(["map", "--config", str(config_file), "--topic", "conversions", sample]) == 0
    assert orjson.loads(capsys.readouterr().out) == event
    assert main(["map", "--config", str(config_file), "--topic", "elsewhere", sample]) == 2
    assert "choose from conversions, crm.orders, platform.events" in capsys.readouterr().err
