"""Alert rules and dashboard queries: promtool accepts and unit-tests the rules, every PromQL
expression parses, and every metric it names is one the relay exports (a scrape of the
catalogue, not a hand-written list). Each alert links to a runbook section that exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import OUTCOMES, Metrics
from service.workers import WORKER_LABEL

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERTS_TEST = ROOT / "tests" / "fixtures" / "alerts_test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "conversion-relay.json"
DOC = ROOT / "README.md"
RUNBOOK_BASE = "https://github.com/example/conversion-relay#"
# Prometheus' own metric, written by the scrape itself.
PROMETHEUS_METRICS = {"up"}
# Labels Prometheus attaches to every scraped series (namespace: the Prometheus operator's).
TARGET_LABELS = {"job", "instance", "namespace"}
# The --workers supervisor labels each worker's process_* series.
SUPERVISOR_LABELS = {WORKER_LABEL}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and of the vendor variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield f"panel {inner['title']!r} {target['refId']}", target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
            assert match, f"variable {var['name']}: unexpected query {query!r}"
            yield f"variable {var['name']}", match.group(1)


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables by values of the right kind so the query can be parsed."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?(\w+)(?::\w+)?\}?", "placeholder", expr)


QUERIES = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()] + [
    (where, grafana_to_promql(expr)) for where, expr in dashboard_queries()
]


def selectors(expr: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(expr, visit)
    return found


def grouping_labels(expr: promql_parser.Expr) -> set[str]:
    """Label names in `by (...)`, `without (...)`, `on (...)` and `ignoring (...)` clauses."""
    labels: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        modifier = node.modifier if isinstance(node, promql_parser.BinaryExpr) else None
        if modifier is not None and modifier.matching is not None:
            labels.update(modifier.matching.labels)

    promql_parser.walk(expr, visit)
    return labels


def metric_name(selector: promql_parser.VectorSelector) -> str | None:
    if selector.name:
        return selector.name
    for matcher in selector.matchers.matchers:
        if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal:
            return matcher.value
    return None


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Sample name → label names, from a scrape of a fresh Metrics with every metric touched."""
    metrics = Metrics(registry=CollectorRegistry())
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*["placeholder"] * len(metric._labelnames))
    text = generate_latest(metrics.registry).decode()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_scrape_covers_the_whole_catalogue(exported: dict[str, set[str]]) -> None:
    """Every metric defined in service/metrics.py shows up in the scrape the checks rely on."""
    metrics = Metrics(registry=CollectorRegistry())
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            assert any(name.startswith(metric._name) for name in exported), metric._name
    assert "conversion_relay_request_duration_seconds_bucket" in exported
    assert "conversion_relay_deliveries_total" in exported


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[w for w, _ in QUERIES])
def test_query_parses_and_names_exported_metrics(
    where: str, expr: str, exported: dict[str, set[str]]
) -> None:
    """The expression is valid PromQL and each metric it selects is exported by the relay."""
    try:
        ast = promql_parser.parse(expr)
    except ValueError as exc:
        pytest.fail(f"{where}: {exc}\n{expr}")
    found = selectors(ast)
    assert found, f"{where}: selects no metric"
    for selector in found:
        name = metric_name(selector)
        assert name is not None, f"{where}: a selector without a metric name"
        if name in PROMETHEUS_METRICS:
            continue
        assert name in exported, f"{where}: {name} is not exported by service/metrics.py"
        for matcher in selector.matchers.matchers:
            assert matcher.name in exported[name] | TARGET_LABELS | {"__name__"}, (
                f"{where}: {name} has no label {matcher.name!r}"
            )
            if matcher.name == "outcome":
                for value in matcher.value.split("|"):
                    assert value in OUTCOMES, f"{where}: unknown outcome {value!r}"


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[w for w, _ in QUERIES])
def test_query_groups_by_existing_labels(
    where: str, expr: str, exported: dict[str, set[str]]
) -> None:
    """Every label in a by/on clause is one the relay's metrics (or the scrape) carry."""
    known = set().union(*exported.values()) | TARGET_LABELS | SUPERVISOR_LABELS
    unknown = grouping_labels(promql_parser.parse(expr)) - known
    assert not unknown, f"{where}: unknown labels {sorted(unknown)}"


def test_rules_are_complete() -> None:
    """Each alert has a unique name, a severity, a summary, a description and a runbook link."""
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description", "runbook_url"}, rule["alert"]
        anchor = f"runbook-{rule['alert'].lower()}"
        assert annotations["runbook_url"] == RUNBOOK_BASE + anchor, rule["alert"]


def test_every_rule_waits_before_firing() -> None:
    """Each alert has a `for:` of at least a minute, so one scrape or one event never pages."""
    for rule in alert_rules():
        duration = rule.get("for", "0s")
        assert re.fullmatch(r"\d+[mh]", duration), f"{rule['alert']}: for: {duration!r}"


def test_no_rule_or_panel_knows_relays_by_job_name() -> None:
    """Targets are selected through the relay's own build_info, never a job-name pattern.

    The job is whatever the scrape config calls it (the chart's `nameOverride` changes it).
    """
    for where, expr in QUERIES:
        for selector in selectors(promql_parser.parse(expr)):
            jobs = [m for m in selector.matchers.matchers if m.name == "job"]
            assert all("$" in m.value or "placeholder" in m.value for m in jobs), (
                f"{where}: matches the job by name: {expr}"
            )
            if metric_name(selector) == "up":
                assert "conversion_relay_build_info" in expr, f"{where}: up not tied to a relay"


def test_demo_traffic_hour_checks_every_alert_quiet() -> None:
    """The promtool fixture has an hour of the dev mode's traffic, with every alert quiet."""
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    [demo] = [
        t
        for t in tests
        if any("vendors=" in s["series"] and "rare_goals" in s["series"] for s in t["input_series"])
    ]
    quiet = {c["alertname"] for c in demo["alert_rule_test"] if not c.get("exp_alerts")}
    assert quiet == {rule["alert"] for rule in alert_rules()}
    assert all(not c.get("exp_alerts") for c in demo["alert_rule_test"])


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_runbook_link_has_a_section() -> None:
    """The README has a heading for each alert's runbook anchor (and for #runbook)."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", DOC.read_text(), flags=re.MULTILINE)
    anchors = {github_slug(h) for h in headings}
    assert "runbook" in anchors
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook_url"].rpartition("#")[2]
        assert anchor in anchors, f"{rule['alert']}: no section for #{anchor}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    """The promtool fixture makes each alert fire once and checks it quiet at least once."""
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    checks = [check for test in tests for check in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [c for c in checks if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']} never fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']} never quiet"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool not found: run scripts/install-promtool.sh (Debian's prometheus package) "
            "to check and unit-test the alert rules"
        )
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


def test_promtool_check_rules() -> None:
    """`promtool check rules` accepts the rules file."""
    result = run_promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules` passes: each alert fires on its fault and stays quiet otherwise."""
    result = run_promtool("test", "rules", str(ALERTS_TEST.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
