"""`status`'s owner per partition (issue 24): merged from the replicas' /status, else the
broker's assignment, else unknown; shown within 80 columns."""

from __future__ import annotations

from typing import Any

from service.cli.status import Owner, owners, render, replica_name


def body(vendor: str, parts: list[str], breaker: str = "closed") -> dict[str, Any]:
    """A replica's /status naming the vendor's assigned partitions."""
    return {"vendors": {vendor: {"breaker": breaker, "assigned_partitions": parts}}}


def test_a_partition_is_owned_by_the_replica_whose_status_lists_it() -> None:
    replicas = [
        ("10.0.3.4:8080", body("crm", ["conversions:0", "conversions:2"])),
        ("10.0.3.5:8080", body("crm", ["conversions:1"], breaker="open")),
        ("10.0.3.6:8080", body("altcraft", ["conversions:3"])),  # another vendor's
    ]
    found = owners("crm", replicas, {})
    assert found == {
        ("conversions", 0): Owner("10.0.3.4:8080", "relay", "closed"),
        ("conversions", 2): Owner("10.0.3.4:8080", "relay", "closed"),
        ("conversions", 1): Owner("10.0.3.5:8080", "relay", "open"),
    }


def test_the_broker_assignment_fills_what_no_replica_answered_for_and_unknown_stays_out() -> None:
    replicas = [("a:8080", body("crm", ["conversions:0"]))]
    assigned = {("conversions", 0): "member-1", ("conversions", 1): "member-2"}
    found = owners("crm", replicas, assigned)
    assert found[("conversions", 0)] == Owner("a:8080", "relay", "closed")  # the replica wins
    assert found[("conversions", 1)] == Owner("member-2", "broker")
    assert ("conversions", 2) not in found


def test_two_replicas_claiming_one_partition_mid_rebalance_are_both_named() -> None:
    replicas = [
        ("b:8080", body("crm", ["my.topic:0"], breaker="open")),
        ("a:8080", body("crm", ["my.topic:0"])),
    ]
    assert owners("crm", replicas, {}) == {("my.topic", 0): Owner("a:8080,b:8080", "relay")}


def test_a_replica_status_without_the_vendor_or_partitions_adds_nothing() -> None:
    replicas = [("a:8080", {"vendors": {"crm": {"running_here": False}}}), ("b:8080", {})]
    assert owners("crm", replicas, {}) == {}


def test_the_replica_name_is_its_url_without_scheme_or_slash() -> None:
    assert replica_name("http://10.0.3.4:8080/") == "10.0.3.4:8080"
    assert replica_name("relay-0:8080") == "relay-0:8080"


def _entry(partitions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "group": "conversion-relay.crm",
        "members": 2,
        "state": "running",
        "paused": None,
        "breaker": "closed",
        "partitions": partitions,
    }


def test_the_table_shows_each_partition_owner_or_a_dash() -> None:
    rows = [
        {"topic": "conversions", "partition": 0, "committed": 5, "end": 9, "start": 0,
         "owner": "10.0.3.4:8080"},
        {"topic": "conversions", "partition": 1, "committed": None, "end": 3, "start": 0,
         "owner": None},
    ]  # fmt: skip
    lines = render({"crm": _entry(rows)})
    assert lines[2].split() == [
        "VENDOR", "TOPIC", "PART", "COMMITTED", "END", "LAG", "STATE", "OWNER",
    ]  # fmt: skip
    assert lines[3].split() == [
        "crm",
        "conversions",
        "0",
        "5",
        "9",
        "4",
        "running",
        "10.0.3.4:8080",
    ]
    assert lines[4].split() == ["crm", "conversions", "1", "-", "3", "3", "running", "-"]


def test_long_names_and_owners_are_cut_to_80_columns_keeping_the_owner_end() -> None:
    owner = "relay-0.relay.conversion-relay.svc.cluster.local:8080"
    rows = [
        {"topic": "conversions." + "x" * 40, "partition": 11, "committed": 1234567890,
         "end": 1234567999, "start": 0, "owner": owner},
    ]  # fmt: skip
    lines = render({"a-vendor-with-a-long-name": _entry(rows)})
    assert max(len(line) for line in lines) <= 80
    cells = lines[3].split()
    assert cells[0].endswith("…") and cells[1].endswith("…")
    assert cells[2:7] == ["11", "1234567890", "1234567999", "109", "running"]
    assert cells[7].startswith("…") and cells[7].endswith(":8080")


def test_a_short_owner_is_never_cut_where_names_can_give_room() -> None:
    rows = [
        {"topic": "conversions-eu-west", "partition": 3, "committed": 10, "end": 12, "start": 0,
         "owner": "127.0.0.1:41234"},
    ]  # fmt: skip
    lines = render({"sustain_impact": _entry(rows)})
    assert max(len(line) for line in lines) <= 80
    assert lines[3].split()[-1] == "127.0.0.1:41234"


def test_the_broker_assignment_is_decoded_per_member_and_an_empty_one_adds_nothing() -> None:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    from service.cli.status import broker_assignment

    given = ConsumerProtocolMemberAssignment(0, [("conversions", [0, 2])], b"").encode()
    members = [
        ("aiokafka-1-abc", "aiokafka-0.14.0", "/10.0.3.4", b"", given),
        ("aiokafka-2-def", "", "/10.0.3.5", b"", b""),  # Tansu: no assignment
        ("aiokafka-3-ghi", "", "/10.0.3.6", b"", b"\x00\x01garbage"),
    ]
    assert broker_assignment(members) == {
        ("conversions", 0): "aiokafka-1-abc",
        ("conversions", 2): "aiokafka-1-abc",
    }
