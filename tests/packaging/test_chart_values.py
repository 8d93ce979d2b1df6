"""values.yaml and values.schema.json: wrong types and unknown keys are refused before anything
renders, and every chart key is documented."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest
import yaml

from tests.packaging.relay_packaging import CHART_DIR, SCENARIOS, scenario_values

WRONG_VALUES = {
    "replica count as text": {"replicaCount": "two"},
    "image tag as a number": {"image": {"tag": 1.2}},
    "split flag as text": {"splitByVendor": "yes"},
    "grace below one second": {"terminationGracePeriodSeconds": 0},
    "kafka port as text": {"config": {"http": {"port": "eighty"}}},
    "unknown protocol": {
        "config": {"vendors": {"x": {"protocol": "smtp", "base_url": "https://x.example"}}}
    },
    "secret key that is not an env name": {"secret": {"data": {"my-key": "v"}}},
    "relay-wide proxy direct (a vendor's word)": {"config": {"http": {"proxy": "direct"}}},
    "socks proxy url": {"config": {"http": {"proxy": {"url": "socks5://p:1080"}}}},
    "proxy url with a path": {"config": {"http": {"proxy": {"url": "http://p:3128/x"}}}},
    "unknown proxy key": {"config": {"http": {"proxy": {"url": "http://p:1", "user": "u"}}}},
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_schema_accepts_every_ci_scenario(chart: helm_python.Chart, scenario: str) -> None:
    """Each ci scenario's values satisfy values.schema.json."""
    chart.validate_schema(chart.merge_values(scenario_values(scenario)))


@pytest.mark.parametrize("bad", WRONG_VALUES.values(), ids=WRONG_VALUES.keys())
def test_schema_rejects_a_wrong_type(chart: helm_python.Chart, bad: dict[str, Any]) -> None:
    """A value of the wrong type or shape fails schema validation, and so does the render."""
    values = _merge(scenario_values("minimal"), bad)
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(chart.merge_values(values))
    with pytest.raises(helm_python.HelmValuesError):
        chart.render(values, name="rel")


@pytest.mark.parametrize("key", ["replicas", "vendors", "configs"])
def test_schema_rejects_an_unknown_top_level_key(chart: helm_python.Chart, key: str) -> None:
    """A misspelt top-level key is an error, not a silently ignored value."""
    values = {**scenario_values("minimal"), key: 1}
    with pytest.raises(helm_python.HelmValuesError, match=key):
        chart.render(values, name="rel")


def test_schema_rejects_an_unknown_relay_config_key(chart: helm_python.Chart) -> None:
    """A key the relay's config does not have is refused at install, not at pod start."""
    values = _merge(scenario_values("minimal"), {"config": {"kafka": {"bootstrap": "x:9092"}}})
    with pytest.raises(helm_python.HelmValuesError, match="bootstrap"):
        chart.render(values, name="rel")


def _documented_paths(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every key path the schema declares (chart-owned keys, not pass-through objects)."""
    paths: set[tuple[str, ...]] = set()
    for key, sub in schema.get("properties", {}).items():
        paths.add((*prefix, key))
        paths |= _documented_paths(sub, (*prefix, key))
    return paths


def _keys_with_lines(
    node: yaml.Node, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], int]]:
    found: list[tuple[tuple[str, ...], int]] = []
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = (*prefix, key.value)
            found.append((path, key.start_mark.line))
            found += _keys_with_lines(value, path)
    return found


def test_every_values_key_has_a_comment(values_schema: dict[str, Any]) -> None:
    """Each key of values.yaml the schema declares has a comment on the line(s) just above it."""
    text = (CHART_DIR / "values.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    declared = _documented_paths(values_schema)
    keys = _keys_with_lines(yaml.compose(text))
    assert {path[0] for path, _ in keys if len(path) == 1} == set(values_schema["properties"])
    undocumented = [
        ".".join(path)
        for path, line in keys
        if path in declared and not lines[line - 1].lstrip().startswith("#")
    ]
    assert undocumented == []


def test_cluster_features_are_off_by_default(chart: helm_python.Chart) -> None:
    """ServiceMonitor, PrometheusRule, NetworkPolicy, KEDA, HPA and the dashboard default to off."""
    defaults = chart.values
    for feature in (
        "serviceMonitor",
        "prometheusRule",
        "networkPolicy",
        "keda",
        "autoscaling",
        "grafanaDashboard",
    ):
        assert defaults[feature]["enabled"] is False, feature
    assert defaults["resources"] == {}
