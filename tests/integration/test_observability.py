"""Metrics of a relay that delivered, rejected, retried and dead-lettered events, checked against
the metrics reference, what the sandboxes recorded, and the dashboard and alert rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import promql_parser
from prometheus_client.parser import text_string_to_metric_families

from service.devtools.demo import sample_lines
from service.devtools.publish import publish
from tests.conftest import goal_reach_vendor, relay_config, wait_for
from tests.unit.test_alert_rules import PROMETHEUS_METRICS, QUERIES, metric_name, selectors

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = ROOT / "docs" / "reference" / "metrics.md"
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created", "_info")


def catalogue() -> dict[str, tuple[str, set[str]]]:
    """The metrics reference's table (docs/reference/metrics.md): name → (type, label names)."""
    rows = re.findall(
        r"^\| `(conversion_relay_\w+)` \| ([^|]+) \| ([^|]*) \|",
        CATALOGUE.read_text(),
        flags=re.MULTILINE,
    )
    return {
        name: (kind.split()[0], set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows
    }


async def _scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        return await resp.text()


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    return sum(
        s.value
        for s in families[family].samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_every_catalogued_metric_is_exported_with_its_type_labels_and_true_values(
    broker, topics, sandbox_factory, run_relay
):
    """After deliveries, rejections, retries and dead letters, /metrics holds every metric of the
    reference's catalogue, typed and labelled as documented, counting what the sandboxes saw."""
    good, flaky = await sandbox_factory(), await sandbox_factory()
    good.faults.reject_next = 2
    flaky.faults.error_rate = 1.0  # every answer 503: retried, then dead-lettered
    vendors = {
        "sustain_impact": goal_reach_vendor(
            good, rate_limit={"per_s": 500}, adaptive_concurrency=True
        ),
        "sales_ninja": goal_reach_vendor(
            flaky, retry={"max_attempts": 2, "initial_backoff_s": 0.01}, breaker={"enabled": False}
        ),
    }
    config = relay_config(broker, topics, vendors, pipeline={"lag_interval_s": 0.3})
    relay = await run_relay(config)
    lines = list(sample_lines(40))
    await publish(broker.bootstrap, topics.source, [*lines, b"{not json"])
    sample = relay.metrics.registry.get_sample_value

    def settled() -> bool:
        lags = [
            sample(
                "conversion_relay_consumer_lag",
                {"vendor": v, "topic": topics.source, "partition": str(p)},
            )
            for v in vendors
            for p in range(topics.partitions)
        ]
        idle = all(p.in_flight == 0 for p in relay.pipelines.values())
        return idle and all(lag == 0 for lag in lags)

    await wait_for(settled, 40, "everything terminal, committed and measured")
    families = _families(await _scrape(relay.http_port))

    for name, (kind, labels) in catalogue().items():
        base = name.removesuffix("_total").removesuffix("_info")
        family = families.get(base) or families.get(name)
        assert family is not None, f"{name} is not exported"
        # An Info is exposed as a gauge of value 1 in the text format.
        allowed = {"info", "gauge"} if kind == "info" else {kind}
        assert family.type in allowed, f"{name}: {family.type} is not {kind}"
        seen = {k for s in family.samples for k in s.labels if k not in ("le",)}
        assert family.samples, f"{name} has no samples"
        assert seen == labels, f"{name}: labels {seen} are not {labels}"

    si = {"vendor": "sustain_impact"}
    sn = {"vendor": "sales_ninja"}
    total = "conversion_relay_deliveries_total"
    assert _value(families, "conversion_relay_deliveries", total, outcome="delivered", **si) == len(
        good.accepted
    )
    assert (
        _value(families, "conversion_relay_deliveries", total, outcome="rejected", **si)
        == len(good.refused)
        == 2
    )
    assert (
        _value(
            families,
            "conversion_relay_http_requests",
            "conversion_relay_http_requests_total",
            status_class="5xx",
            **sn,
        )
        == flaky.statuses[503]
    )
    dead = _value(families, "conversion_relay_deliveries", total, outcome="dead_lettered", **sn)
    assert dead > 0
    assert (
        _value(families, "conversion_relay_deliveries", total, outcome="retried", **sn) == dead
    )  # max_attempts 2: one retry each
    assert (
        _value(
            families,
            "conversion_relay_dlq_writes",
            "conversion_relay_dlq_writes_total",
            reason="retries_exhausted",
            **sn,
        )
        == dead
    )
    assert (
        _value(
            families,
            "conversion_relay_dlq_writes",
            "conversion_relay_dlq_writes_total",
            reason="invalid_event",
            **si,
        )
        == 1
    )
    assert (
        _value(
            families,
            "conversion_relay_events_consumed",
            "conversion_relay_events_consumed_total",
            **si,
        )
        == len(lines) + 1
    )
    assert _value(
        families,
        "conversion_relay_request_duration_seconds",
        "conversion_relay_request_duration_seconds_count",
        **si,
    ) == len(good.accepted) + len(good.refused)
    assert (
        _value(families, "conversion_relay_consumer_lag", "conversion_relay_consumer_lag", **si)
        == 0
    )
    assert (
        _value(
            families,
            "conversion_relay_assigned_partitions",
            "conversion_relay_assigned_partitions",
            **si,
        )
        == topics.partitions
    )

    # The dashboard and the alert rules only name metrics this live relay exports.
    exported = {s.name for f in families.values() for s in f.samples} | PROMETHEUS_METRICS
    for where, expr in QUERIES:
        for selector in selectors(promql_parser.parse(expr)):
            assert metric_name(selector) in exported, f"{where}: {expr!r}"


async def test_lag_rises_while_a_vendor_is_down_and_falls_to_zero_after(
    broker, topics, sandbox_factory, run_relay
):
    """With the vendor stopped, lag climbs to the undelivered count; after recovery, back to 0."""
    sandbox = await sandbox_factory()
    await sandbox.go_down()
    vendor = goal_reach_vendor(sandbox, breaker={"min_requests": 5, "cooldown_s": 1})
    config = relay_config(
        broker, topics, {"sustain_impact": vendor}, pipeline={"lag_interval_s": 0.3}
    )
    routed = [line for line in sample_lines(140) if b'"goal":"lead"' not in line]
    lines = routed[:90]  # every one is for this vendor, so none can complete while it is down
    # Published first: a fast failing vendor opens the breaker (pausing every partition) within
    # milliseconds, and Tansu's ListOffsets undercounts, so records not fetched by then would
    # be missing from the lag (the last fetch's high watermark is what counts them).
    await publish(broker.bootstrap, topics.source, lines)
    relay = await run_relay(config)
    pipeline = relay.pipelines["sustain_impact"]
    await wait_for(lambda: pipeline.lag() == len(lines), 30, "lag to reach the backlog")
    families = _families(await _scrape(relay.http_port))
    assert _value(
        families,
        "conversion_relay_consumer_lag",
        "conversion_relay_consumer_lag",
        vendor="sustain_impact",
    ) == len(lines)
    await sandbox.go_up()
    await wait_for(lambda: pipeline.lag() == 0, 60, "lag back to zero")
    families = _families(await _scrape(relay.http_port))
    assert (
        _value(
            families,
            "conversion_relay_consumer_lag",
            "conversion_relay_consumer_lag",
            vendor="sustain_impact",
        )
        == 0
    )
