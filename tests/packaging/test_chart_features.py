"""What the chart promises an operator: hardened pods, a drain that Kubernetes does not cut
short, pods that roll when the config changes, one Deployment per vendor when asked, credentials
from a Secret, scaling on each vendor's lag, and the monitoring resources."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.packaging.relay_packaging import (
    CHART_DIR,
    REPO,
    SCENARIOS,
    Rendered,
    deployments,
    parse_dockerfile,
    relay_container,
    render,
    scenario_values,
)

VENDOR_LABEL = "conversion-relay/vendor"


def _pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_run_non_root_read_only_without_capabilities(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    """Pods run as a numeric non-root user, read-only, unprivileged, with RuntimeDefault seccomp."""
    for deployment in deployments(rendered[scenario]):
        pod = _pod_spec(deployment)
        pod_context = pod["securityContext"]
        assert pod_context["runAsNonRoot"] is True
        assert isinstance(pod_context["runAsUser"], int) and pod_context["runAsUser"] > 0
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
        context = relay_container(deployment)["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_tmp_is_a_writable_empty_dir(rendered: dict[str, Rendered], scenario: str) -> None:
    """With a read-only root filesystem, /tmp is an emptyDir volume."""
    for deployment in deployments(rendered[scenario]):
        mounts = {m["mountPath"]: m["name"] for m in relay_container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in _pod_spec(deployment)["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]


def test_pod_user_is_the_images_user(chart: helm_python.Chart) -> None:
    """The chart's default runAsUser is the numeric USER the Dockerfile's runtime stage sets."""
    runtime = parse_dockerfile((REPO / "Dockerfile").read_text())[-1]
    uid = int(runtime.all("USER")[-1].args.partition(":")[0])
    assert chart.values["podSecurityContext"]["runAsUser"] == uid
    assert chart.values["securityContext"]["runAsUser"] == uid


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_check_livez_and_readyz(rendered: dict[str, Rendered], scenario: str) -> None:
    """Liveness probes GET /livez and readiness probes GET /readyz on the http port."""
    for deployment in deployments(rendered[scenario]):
        container = relay_container(deployment)
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_termination_grace_exceeds_the_relays_drain_grace(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    """terminationGracePeriodSeconds is above pipeline.shutdown_grace_s, so a drain completes."""
    result = rendered[scenario]
    drain = yaml.safe_load(result.relay_config()).get("pipeline", {}).get("shutdown_grace_s", 20)
    for deployment in deployments(result):
        assert _pod_spec(deployment)["terminationGracePeriodSeconds"] > drain


def test_termination_grace_is_computed_from_the_drain_grace(chart: helm_python.Chart) -> None:
    """Unset, the grace is shutdown_grace_s rounded up plus the margin."""
    values = scenario_values("minimal")
    values["config"]["pipeline"] = {"shutdown_grace_s": 32.5}
    values["terminationGraceMarginSeconds"] = 15
    deployment = render(chart, values).one("Deployment")
    assert _pod_spec(deployment)["terminationGracePeriodSeconds"] == 33 + 15


def test_termination_grace_at_or_below_the_drain_grace_is_refused(
    chart: helm_python.Chart,
) -> None:
    """An explicit grace that would kill the relay mid-drain fails the render."""
    values = {**scenario_values("minimal"), "terminationGracePeriodSeconds": 20}
    with pytest.raises(helm_python.HelmRenderError, match="shutdown_grace_s"):
        render(chart, values)


def _pod_annotations(result: Rendered) -> dict[str, str]:
    annotations: dict[str, str] = result.one("Deployment")["spec"]["template"]["metadata"][
        "annotations"
    ]
    return annotations


def test_config_change_rolls_the_pods(chart: helm_python.Chart) -> None:
    """A changed relay config changes the pod template's checksum; an unchanged one does not."""
    values = scenario_values("minimal")
    changed = copy.deepcopy(values)
    changed["config"]["kafka"]["topics"] = ["conversions", "conversions.web"]
    first = _pod_annotations(render(chart, values))["checksum/config"]
    again = _pod_annotations(render(chart, values))["checksum/config"]
    after = _pod_annotations(render(chart, changed))["checksum/config"]
    assert first == again and first != after


def test_secret_change_rolls_the_pods(chart: helm_python.Chart) -> None:
    """A changed chart-created Secret changes the pod template's checksum."""
    values = {**scenario_values("minimal"), "secret": {"create": True, "data": {"A_KEY": "1"}}}
    rotated = {**values, "secret": {"create": True, "data": {"A_KEY": "2"}}}
    before = _pod_annotations(render(chart, values))["checksum/secret"]
    assert before != _pod_annotations(render(chart, rotated))["checksum/secret"]


def test_split_by_vendor_runs_one_deployment_per_enabled_vendor(
    rendered: dict[str, Rendered],
) -> None:
    """Each enabled vendor gets its own Deployment running `--vendor NAME`; a disabled one none."""
    result = rendered["split-by-vendor"]
    by_vendor = {d["spec"]["selector"]["matchLabels"][VENDOR_LABEL]: d for d in deployments(result)}
    assert set(by_vendor) == {"sustain_impact", "sales_ninja"}
    for vendor, deployment in by_vendor.items():
        args = relay_container(deployment)["args"]
        assert args[args.index("--vendor") + 1] == vendor
        assert args.count("--vendor") == 1
        assert deployment["spec"]["template"]["metadata"]["labels"][VENDOR_LABEL] == vendor
        assert deployment["metadata"]["name"].endswith(vendor.replace("_", "-"))
    budgets = {
        p["spec"]["selector"]["matchLabels"][VENDOR_LABEL]
        for p in result.of_kind("PodDisruptionBudget")
    }
    assert budgets == set(by_vendor)
    assert VENDOR_LABEL not in result.one("Service")["spec"]["selector"]


def test_split_by_vendor_scales_and_sizes_a_vendor_alone(rendered: dict[str, Rendered]) -> None:
    """vendorOverrides set one vendor's replicas and resources; the others keep the defaults."""
    values = scenario_values("split-by-vendor")
    result = rendered["split-by-vendor"]
    by_vendor = {d["spec"]["selector"]["matchLabels"][VENDOR_LABEL]: d for d in deployments(result)}
    override = values["vendorOverrides"]["sustain_impact"]
    assert by_vendor["sustain_impact"]["spec"]["replicas"] == override["replicaCount"]
    assert relay_container(by_vendor["sustain_impact"])["resources"] == override["resources"]
    assert by_vendor["sales_ninja"]["spec"]["replicas"] == values["replicaCount"]
    assert relay_container(by_vendor["sales_ninja"])["resources"] == values["resources"]


def test_single_deployment_runs_every_vendor(rendered: dict[str, Rendered]) -> None:
    """Without splitByVendor one Deployment runs all vendors: no `--vendor` argument."""
    deployment = rendered["full"].one("Deployment")
    assert "--vendor" not in relay_container(deployment)["args"]
    assert VENDOR_LABEL not in deployment["spec"]["selector"]["matchLabels"]


def test_split_by_vendor_autoscales_each_vendor(rendered: dict[str, Rendered]) -> None:
    """With an HPA per vendor Deployment, replicas are left to it and overrides set its bounds."""
    result = rendered["split-by-vendor-hpa"]
    targets = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in result.of_kind("HorizontalPodAutoscaler")
    }
    assert set(targets) == {d["metadata"]["name"] for d in deployments(result)}
    for deployment in deployments(result):
        assert "replicas" not in deployment["spec"]
    sales = next(h for name, h in targets.items() if name.endswith("sales-ninja"))
    assert (sales["spec"]["minReplicas"], sales["spec"]["maxReplicas"]) == (2, 3)
    metric = sales["spec"]["metrics"][0]["resource"]
    assert metric["name"] == "cpu" and metric["target"]["averageUtilization"] == 60


def test_keda_scales_on_the_lag_of_each_vendor_consumer_group(
    rendered: dict[str, Rendered],
) -> None:
    """The ScaledObject has a Kafka lag trigger for each vendor group `<group_prefix>.<vendor>`."""
    values = scenario_values("full")
    result = rendered["full"]
    scaled = result.one("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == result.one("Deployment")["metadata"]["name"]
    groups = {t["metadata"]["consumerGroup"] for t in scaled["spec"]["triggers"]}
    prefix = values["config"]["kafka"]["group_prefix"]
    assert groups == {f"{prefix}.{vendor}" for vendor in values["config"]["vendors"]}
    assert "replicas" not in result.one("Deployment")["spec"]
    auth = result.one("TriggerAuthentication")
    assert all(
        t["authenticationRef"]["name"] == auth["metadata"]["name"]
        for t in scaled["spec"]["triggers"]
    )


def test_keda_with_split_by_vendor_scales_each_vendor_on_its_own_lag(
    chart: helm_python.Chart,
) -> None:
    """Split by vendor, each ScaledObject targets its own Deployment and watches only its group."""
    values = {**scenario_values("split-by-vendor"), "keda": {"enabled": True}}
    result = render(chart, values)
    prefix = values["config"]["kafka"]["group_prefix"]
    scaled_objects = result.of_kind("ScaledObject")
    assert len(scaled_objects) == len(deployments(result)) == 2
    for scaled in scaled_objects:
        target = result.one("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
        vendor = target["spec"]["selector"]["matchLabels"][VENDOR_LABEL]
        [trigger] = scaled["spec"]["triggers"]
        assert trigger["metadata"]["consumerGroup"] == f"{prefix}.{vendor}"
        assert trigger["metadata"]["topic"] == "conversions"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"autoscaling": {"enabled": True}, "keda": {"enabled": True}}, "exclusive"),
        ({"existingSecret": "mine", "secret": {"create": True}}, "exclusive"),
        (
            {
                "keda": {"enabled": True},
                "config": {"kafka": {"bootstrap_servers": ["${KAFKA_BOOTSTRAP}"], "topics": ["t"]}},
            },
            "keda.bootstrapServers",
        ),
        ({"splitByVendor": True, "vendorOverrides": {"sustain-impact": {}}}, "sustain-impact"),
        ({"autoscaling": {"enabled": True}}, "resources.requests.cpu"),
    ],
    ids=[
        "hpa-and-keda",
        "two-secrets",
        "keda-with-env-bootstrap",
        "override-of-unknown-vendor",
        "hpa-without-cpu-request",
    ],
)
def test_contradictory_values_are_refused(
    chart: helm_python.Chart, override: dict[str, Any], message: str
) -> None:
    """Settings that cannot work together fail the render with a message saying why."""
    values = {**scenario_values("minimal"), **override}
    if "config" in override:
        values["config"] = {**scenario_values("minimal")["config"], **override["config"]}
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render(chart, values)


def test_cluster_resources_are_not_rendered_by_default(rendered: dict[str, Rendered]) -> None:
    """The minimal install renders no cluster-dependent resource and no Secret."""
    kinds = {m["kind"] for m in rendered["minimal"].manifests}
    assert kinds == {"Deployment", "ConfigMap", "Service", "ServiceAccount", "PodDisruptionBudget"}


def test_existing_secret_becomes_the_pods_environment(rendered: dict[str, Rendered]) -> None:
    """existingSecret is exposed whole with envFrom, and the chart creates no Secret of its own."""
    values = scenario_values("sasl-ssl-existing-secret")
    result = rendered["sasl-ssl-existing-secret"]
    env_from = relay_container(result.one("Deployment"))["envFrom"]
    assert {"secretRef": {"name": values["existingSecret"]}} in env_from
    assert result.of_kind("Secret") == []
    config = yaml.safe_load(result.relay_config())
    assert config["kafka"]["sasl_password"] == "${KAFKA_SASL_PASSWORD}"


def test_created_secret_holds_secret_data_as_environment(rendered: dict[str, Rendered]) -> None:
    """secret.create renders a Secret of secret.data that the pod reads with envFrom."""
    values = scenario_values("full")
    result = rendered["full"]
    secret = result.one("Secret")
    assert secret["stringData"] == values["secret"]["data"]
    env_from = relay_container(result.one("Deployment"))["envFrom"]
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in env_from


def test_network_policy_allows_only_dns_kafka_redis_and_vendors(
    rendered: dict[str, Rendered],
) -> None:
    """Egress is DNS, the Kafka and Redis CIDRs and ports, the vendors' ports and the extras."""
    values = scenario_values("full")["networkPolicy"]
    policy = rendered["full"].one("NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    rules = policy["spec"]["egress"]
    ports = [{(p["port"], p["protocol"]) for p in rule["ports"]} for rule in rules]
    cidrs = [
        {peer["ipBlock"]["cidr"] for peer in rule["to"] if "ipBlock" in peer} for rule in rules
    ]
    assert {(53, "UDP"), (53, "TCP")} == ports[0]
    for target in ("kafka", "redis", "vendors"):
        wanted_ports = {(p, "TCP") for p in values[target]["ports"]}
        wanted_cidrs = set(values[target]["cidrs"])
        assert any(
            p == wanted_ports and wanted_cidrs <= c for p, c in zip(ports, cidrs, strict=True)
        )
    assert rules[-1] == values["extraEgress"][0]
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_prometheus_rule_carries_the_charts_alerts(rendered: dict[str, Rendered]) -> None:
    """The PrometheusRule holds the groups of files/alerts.yaml, then the extra groups."""
    alerts = yaml.safe_load((CHART_DIR / "files" / "alerts.yaml").read_text())
    rule = rendered["full"].one("PrometheusRule")
    extra = scenario_values("full")["prometheusRule"]["extraGroups"]
    assert rule["spec"]["groups"] == alerts["groups"] + extra
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_config_map_is_labelled_for_the_grafana_sidecar(
    rendered: dict[str, Rendered],
) -> None:
    """The dashboard ConfigMap has `grafana_dashboard: "1"` and the dashboard JSON verbatim."""
    result = rendered["full"]
    [dashboard] = [
        c for c in result.of_kind("ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = (CHART_DIR / "files" / "dashboard.json").read_text()
    assert json.loads(dashboard["data"]["conversion-relay.json"]) == json.loads(source)


@pytest.mark.parametrize(
    ("chart_file", "source"),
    [
        ("alerts.yaml", "deploy/prometheus/alerts.yaml"),
        ("dashboard.json", "deploy/grafana/conversion-relay.json"),
    ],
    ids=["alerts", "dashboard"],
)
def test_chart_copies_match_their_sources(chart_file: str, source: str) -> None:
    """The chart's files/ copies of the alert rules and the dashboard equal the deploy/ sources."""
    source_path = REPO / source
    if not source_path.exists():
        pytest.skip(f"{source} does not exist yet; the chart ships its own starter")
    assert (CHART_DIR / "files" / chart_file).read_bytes() == source_path.read_bytes(), (
        f"copy {source} to helm/conversion-relay/files/{chart_file} (and bump the chart version)"
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_topology_spread_selects_each_deployments_own_pods(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    """Each spread constraint without its own labelSelector gets its Deployment's selector."""
    for deployment in deployments(rendered[scenario]):
        constraints = _pod_spec(deployment)["topologySpreadConstraints"]
        assert constraints
        for constraint in constraints:
            assert (
                constraint["labelSelector"]["matchLabels"]
                == deployment["spec"]["selector"]["matchLabels"]
            )


def test_image_tag_defaults_to_the_app_version(rendered: dict[str, Rendered]) -> None:
    """Without image.tag the image is `<repository>:<appVersion>`; a digest wins over the tag."""
    app_version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
    image = relay_container(rendered["minimal"].one("Deployment"))["image"]
    assert image == f"conversion-relay:{app_version}"


def test_image_digest_pins_the_image(chart: helm_python.Chart) -> None:
    """image.digest makes the pod pull `<repository>@sha256:...`."""
    digest = "sha256:" + "a" * 64
    values = {**scenario_values("minimal"), "image": {"repository": "r/relay", "digest": digest}}
    image = relay_container(render(chart, values).one("Deployment"))["image"]
    assert image == f"r/relay@{digest}"


def test_chart_files_are_in_the_chart_directory() -> None:
    """The alert rules and dashboard the templates read exist in the chart's files/."""
    for name in ("alerts.yaml", "dashboard.json"):
        assert Path(CHART_DIR / "files" / name).is_file()
