"""The chart renders with the real Helm SDK, lints clean in strict mode, and every manifest it
renders is valid: built-in kinds against Kubernetes 1.30's schemas, custom resources against
their own required fields."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import helm_python
import kubernetes_validate
import promql_parser
import pytest

from tests.packaging.relay_packaging import (
    CHART_DIR,
    NAMESPACE,
    REPO,
    SCENARIOS,
    Rendered,
    load_yaml,
    render,
    scenario_values,
)

KUBERNETES_VERSION = "1.30.0"
CUSTOM_API_GROUPS = {"monitoring.coreos.com/v1", "keda.sh/v1alpha1"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
STANDARD_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)


def test_chart_app_version_is_the_package_version() -> None:
    """Chart.yaml's appVersion (the default image tag) equals the version in pyproject.toml."""
    chart_meta = load_yaml(CHART_DIR / "Chart.yaml")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart_meta["apiVersion"] == "v2"
    assert str(chart_meta["appVersion"]) == project["version"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_strict_lint_reports_no_warning_or_error(scenario: str) -> None:
    """`helm lint --strict` of each ci scenario reports nothing worse than information."""
    report = helm_python.lint(
        CHART_DIR,
        scenario_values(scenario),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBERNETES_VERSION}",
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_builtin_manifests_validate_strictly_against_kubernetes_1_30(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    """Every built-in-kind manifest passes kubernetes-validate's strict 1.30 schema."""
    builtin = [m for m in rendered[scenario].manifests if m["apiVersion"] not in CUSTOM_API_GROUPS]
    assert {"Deployment", "ConfigMap", "Service"} <= {m["kind"] for m in builtin}
    for manifest in builtin:
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            name = f"{manifest['kind']}/{manifest['metadata']['name']}"
            pytest.fail(f"{name}: {where}: {exc.message}")


def test_validator_rejects_an_unknown_field() -> None:
    """The strict validator rejects an unknown field, so the validation above is not vacuous."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "c", "image": "i", "runAsUser": 1}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def _require(obj: dict[str, Any], *paths: str) -> None:
    for path in paths:
        node: Any = obj
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"{obj['kind']}: missing {path}"
            node = node[part]
        assert node not in (None, "", [], {}), f"{obj['kind']}: empty {path}"


def _check_service_monitor(monitor: dict[str, Any]) -> None:
    _require(monitor, "metadata.name", "spec.selector.matchLabels", "spec.endpoints")
    for endpoint in monitor["spec"]["endpoints"]:
        assert "port" in endpoint or "targetPort" in endpoint
        assert endpoint.get("path", "/metrics") == "/metrics"


def _check_prometheus_rule(rule: dict[str, Any]) -> None:
    _require(rule, "metadata.name", "spec.groups")
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for item in group["rules"]:
            assert ("alert" in item) != ("record" in item)
            promql_parser.parse(item["expr"])


def _check_scaled_object(scaled: dict[str, Any]) -> None:
    _require(scaled, "metadata.name", "spec.scaleTargetRef.name", "spec.triggers")
    assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "kafka"
        metadata = trigger["metadata"]
        for key in ("bootstrapServers", "consumerGroup", "lagThreshold"):
            assert metadata.get(key)
        assert all(isinstance(v, str) for v in metadata.values()), "KEDA metadata are strings"


def _check_trigger_authentication(auth: dict[str, Any]) -> None:
    _require(auth, "metadata.name", "spec.secretTargetRef")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] and ref["name"] and ref["key"]


CUSTOM_CHECKS = {
    "ServiceMonitor": _check_service_monitor,
    "PrometheusRule": _check_prometheus_rule,
    "ScaledObject": _check_scaled_object,
    "TriggerAuthentication": _check_trigger_authentication,
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_custom_resources_have_their_required_fields(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    """Each custom resource (monitoring, KEDA) carries the fields its CRD requires."""
    for manifest in rendered[scenario].manifests:
        if manifest["apiVersion"] in CUSTOM_API_GROUPS:
            assert manifest["kind"] in CUSTOM_CHECKS, f"unchecked custom kind {manifest['kind']}"
            CUSTOM_CHECKS[manifest["kind"]](manifest)


def test_full_scenario_renders_every_optional_resource(rendered: dict[str, Rendered]) -> None:
    """The full scenario turns every feature on, so every template is exercised by the tests."""
    kinds = {m["kind"] for m in rendered["full"].manifests}
    assert {
        "ServiceMonitor",
        "PrometheusRule",
        "ScaledObject",
        "TriggerAuthentication",
        "NetworkPolicy",
        "Secret",
        "PodDisruptionBudget",
        "ServiceAccount",
    } <= kinds
    all_kinds = {m["kind"] for r in rendered.values() for m in r.manifests}
    assert "HorizontalPodAutoscaler" in all_kinds


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_resource_has_standard_labels_and_a_dns_name(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    """Each resource has the app.kubernetes.io labels and a name of at most 63 DNS characters."""
    for manifest in rendered[scenario].manifests:
        labels = manifest["metadata"]["labels"]
        for label in STANDARD_LABELS:
            assert label in labels, f"{manifest['kind']} lacks {label}"
        name = manifest["metadata"]["name"]
        assert len(name) <= 63 and DNS_LABEL.match(name), name


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_selectors_use_name_and_instance_never_the_version(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    """Selectors hold name and instance (plus the vendor when split), never version or chart."""
    result = rendered[scenario]
    selectors = [d["spec"]["selector"]["matchLabels"] for d in result.of_kind("Deployment")]
    for budget in result.of_kind("PodDisruptionBudget"):
        selectors.append(budget["spec"]["selector"]["matchLabels"])
    selectors.append(result.one("Service")["spec"]["selector"])
    for selector in selectors:
        assert {"app.kubernetes.io/name", "app.kubernetes.io/instance"} <= set(selector)
        assert set(selector) <= {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "conversion-relay/vendor",
        }
    for deployment in result.of_kind("Deployment"):
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_long_release_names_are_truncated_to_63_characters(chart: helm_python.Chart) -> None:
    """A release name beyond 63 characters still yields valid resource names."""
    result = render(chart, scenario_values("split-by-vendor"), release="r" * 53)
    names = [m["metadata"]["name"] for m in result.manifests]
    assert names and all(len(n) <= 63 and DNS_LABEL.match(n) for n in names), names
    assert len({d["metadata"]["name"] for d in result.of_kind("Deployment")}) == 2


def test_default_values_refuse_to_render_without_a_vendor(chart: helm_python.Chart) -> None:
    """With no vendor configured the chart fails with a message naming config.vendors."""
    with pytest.raises(helm_python.HelmRenderError, match=r"config\.vendors"):
        render(chart, {})


def test_notes_show_how_to_reach_status_and_metrics(rendered: dict[str, Rendered]) -> None:
    """NOTES.txt names the consumer groups and the port-forward for /status and /metrics."""
    notes = rendered["minimal"].notes
    assert "conversion-relay.sustain_impact" in notes
    assert "port-forward" in notes and "/status" in notes and "/metrics" in notes
