"""The Grafana dashboard is an importable JSON model: variables, rows, datasource, units.

(Its PromQL is parsed and checked against the exported metrics in test_alert_rules.py.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "conversion-relay.json"
PERFORMANCE = ROOT / "docs" / "performance.md"
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
INSTALL = 'namespace=~"$namespace", job=~"$job", instance=~"$instance"'


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row, including any nested in collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def variable(dashboard: dict[str, Any], name: str) -> dict[str, Any]:
    [var] = [v for v in dashboard["templating"]["list"] if v["name"] == name]
    return var


def test_is_importable_as_is(dashboard: dict[str, Any]) -> None:
    """No __inputs or hard-wired ids: the file imports on any Grafana 10+ unchanged."""
    assert "__inputs" not in dashboard
    assert "__requires" not in dashboard
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["id"] is None
    assert dashboard["uid"] == "conversion-relay"
    assert dashboard["title"]
    assert "${DS_" not in DASHBOARD.read_text(), "exported-for-sharing placeholders remain"


def test_datasource_variable_is_prometheus(dashboard: dict[str, Any]) -> None:
    """The datasource is a template variable of type datasource, restricted to Prometheus."""
    var = variable(dashboard, "datasource")
    assert var["type"] == "datasource"
    assert var["query"] == "prometheus"


def test_vendor_variable_lists_vendors_multi_with_all(dashboard: dict[str, Any]) -> None:
    """The vendor variable comes from the deliveries metric, is multi-value and includes All."""
    var = variable(dashboard, "vendor")
    assert var["type"] == "query"
    assert var["datasource"] == DS_REF
    query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
    assert query == f"label_values(conversion_relay_deliveries_total{{{INSTALL}}}, vendor)"
    assert var["definition"] == query
    assert var["multi"] is True
    assert var["includeAll"] is True
    assert var["allValue"] == ".*"


@pytest.mark.parametrize(
    ("name", "query"),
    [
        ("namespace", "label_values(conversion_relay_build_info, namespace)"),
        ("job", 'label_values(conversion_relay_build_info{namespace=~"$namespace"}, job)'),
        (
            "instance",
            'label_values(conversion_relay_build_info{namespace=~"$namespace", job=~"$job"}, '
            "instance)",
        ),
    ],
)
def test_install_variables_come_from_the_relays_build_info(
    dashboard: dict[str, Any], name: str, query: str
) -> None:
    """namespace, job and instance list only relay targets (by build_info), multi with All."""
    var = variable(dashboard, name)
    assert var["type"] == "query"
    assert var["datasource"] == DS_REF
    assert var["query"]["query"] == var["definition"] == query
    assert var["multi"] is True
    assert var["includeAll"] is True
    # All matches a series without the label too (a plain scrape config has no namespace).
    assert var["allValue"] == ".*"
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "namespace", "job", "instance", "vendor"]


def test_every_selector_filters_on_the_install(dashboard: dict[str, Any]) -> None:
    """Each metric selector honours namespace, job and instance; two installs never mix."""
    selector = re.compile(r"\b([a-z_]+)\{([^}]*)\}")
    for panel in panels(dashboard):
        for target in panel["targets"]:
            found = selector.findall(target["expr"])
            assert found, panel["title"]
            for name, matchers in found:
                assert matchers.startswith(INSTALL), f"{panel['title']}: {name}"


def test_generic_metrics_are_joined_to_relay_targets(dashboard: dict[str, Any]) -> None:
    """up, process_* and python_* exist for every job: each is tied to the relay's build_info."""
    for panel in panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            if re.search(r"\b(up|process_\w+|python_\w+)\{", expr):
                assert re.search(
                    r"and on \(job, instance\) (last_over_time\()?conversion_relay_build_info\{",
                    expr,
                ), panel["title"]


def test_every_panel_and_query_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    """No panel or query is bound to a fixed datasource uid."""
    for panel in panels(dashboard):
        assert panel["datasource"] == DS_REF, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS_REF, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_rows_in_order(dashboard: dict[str, Any]) -> None:
    """The rows are overview, per vendor, dead letters and Kafka."""
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Overview", "Per vendor", "Dead letters", "Kafka", "Processes"]


def test_panels_are_timeseries_or_stat_with_units(dashboard: dict[str, Any]) -> None:
    """Every panel is a timeseries or stat with a unit and a description."""
    for panel in panels(dashboard):
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert panel.get("description"), panel["title"]


def test_ids_are_unique_and_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    """Panel ids are unique and no two panels share a grid cell on the 24-column grid."""
    nested = [p for row in dashboard["panels"] for p in row.get("panels", [])]
    ids = [p["id"] for p in dashboard["panels"] + nested]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_vendor_metrics_are_filtered_by_the_vendor_variable(dashboard: dict[str, Any]) -> None:
    """Every relay metric selector in a panel honours the vendor selection (build_info by the
    vendors it runs)."""
    selector = re.compile(r"(conversion_relay_\w+)(\{[^}]*\})?")
    for panel in panels(dashboard):
        for target in panel["targets"]:
            for name, matchers in selector.findall(target["expr"]):
                if name == "conversion_relay_build_info":
                    assert 'vendors=~".*$vendor.*"' in matchers, panel["title"]
                else:
                    assert 'vendor=~"$vendor"' in matchers, f"{panel['title']}: {name}"


def test_per_topic_panels_count_each_record_once(dashboard: dict[str, Any]) -> None:
    """Consumption per topic takes one vendor pipeline per topic; it never adds pipelines up."""
    for title in ("Events consumed /s", "Events consumed by topic"):
        [panel] = [p for p in panels(dashboard) if p["title"] == title]
        [target] = panel["targets"]
        assert "max by (topic) (sum by (vendor, topic) (rate(" in target["expr"], title


def test_invalid_records_are_counted_once_not_per_vendor(dashboard: dict[str, Any]) -> None:
    """Invalid-record panels take the max over vendor pipelines; vendor dead letters leave them
    out."""
    for title in ("Invalid records in range", "Invalid events by reason"):
        [panel] = [p for p in panels(dashboard) if p["title"] == title]
        assert panel["targets"][0]["expr"].startswith("max"), title
    [panel] = [p for p in panels(dashboard) if p["title"] == "Vendor dead letters in range"]
    assert 'reason!="invalid_event"' in panel["targets"][0]["expr"]


def test_memory_panel_draws_the_readme_budget(dashboard: dict[str, Any]) -> None:
    """The RSS panel shows each process against the documented memory budget, as a line."""
    match = re.search(r"memory budget[^.]*?(\d+) MiB per process", PERFORMANCE.read_text())
    assert match, "docs/performance.md states no memory budget"
    budget_bytes = int(match.group(1)) * 1024 * 1024
    [panel] = [p for p in panels(dashboard) if p["title"] == "Memory (RSS) per process"]
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["unit"] == "bytes"
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "line"
    assert [s["value"] for s in defaults["thresholds"]["steps"]] == [None, budget_bytes]
    assert "process_resident_memory_bytes" in panel["targets"][0]["expr"]
    assert "by (instance, worker)" in panel["targets"][0]["expr"]


@pytest.mark.parametrize(
    "title",
    [
        "Events in / out per second",
        "Error ratio",
        "Consumer lag",
        "Deliveries by outcome",
        "Vendor request latency p50 / p95 / p99",
        "End-to-end latency p50 / p95 / p99",
        "Consumer lag by vendor",
        "Rate-limit waits",
        "Concurrency limit",
        "Circuit breaker",
        "In flight",
        "Paused replicas",
        "Dead letters by vendor and reason",
        "Offset commits",
        "Commit failures",
        "Rebalances",
        "Assigned partitions",
        "Memory (RSS) per process",
        "CPU per process",
        "Open file descriptors",
        "Garbage collections per second",
    ],
)
def test_expected_panel_exists(dashboard: dict[str, Any], title: str) -> None:
    """Each panel the runbook refers to is on the dashboard."""
    assert title in {p["title"] for p in panels(dashboard)}


def test_latency_panels_show_three_quantiles_in_seconds(dashboard: dict[str, Any]) -> None:
    """Both latency panels plot p50, p95 and p99 of their histogram, in seconds."""
    for title, histogram in [
        ("Vendor request latency p50 / p95 / p99", "request_duration_seconds_bucket"),
        ("End-to-end latency p50 / p95 / p99", "end_to_end_latency_seconds_bucket"),
    ]:
        [panel] = [p for p in panels(dashboard) if p["title"] == title]
        assert panel["fieldConfig"]["defaults"]["unit"] == "s"
        exprs = [t["expr"] for t in panel["targets"]]
        assert [e.split(",")[0] for e in exprs] == [
            "histogram_quantile(0.5",
            "histogram_quantile(0.95",
            "histogram_quantile(0.99",
        ]
        assert all(histogram in e and "by (vendor, le)" in e for e in exprs)


def test_breaker_state_is_mapped_to_names(dashboard: dict[str, Any]) -> None:
    """The breaker panels show closed / half-open / open rather than 0 / 1 / 2."""
    for panel in panels(dashboard):
        if "breaker_state" in panel["targets"][0]["expr"]:
            [mapping] = panel["fieldConfig"]["defaults"]["mappings"]
            texts = {k: v["text"] for k, v in mapping["options"].items()}
            assert texts == {"0": "closed", "1": "half-open", "2": "open"}
