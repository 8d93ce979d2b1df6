"""The relay config the chart renders: the relay itself accepts it (`conversion-relay
check-config`), every secret it references is supplied, and the chart's schema of it follows the
relay's own config Structs and protocols."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import msgspec
import pytest
import yaml

from service.cli import build_parser
from service.config import Config
from service.vendors import PROTOCOLS
from tests.packaging.relay_packaging import (
    REPO,
    SCENARIOS,
    Rendered,
    relay_container,
    render,
    scenario_values,
)

CONFIG_PATH = "/etc/conversion-relay/config.yaml"
# `${NAME}` without a default: the relay refuses to start when NAME is not set.
REQUIRED_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _check_config_command() -> list[str]:
    script = Path(sys.executable).parent / "conversion-relay"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service"]


def _check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `conversion-relay check-config` with only the given variables (plus PATH and HOME)."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return subprocess.run(
        [*_check_config_command(), "check-config", str(path)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _chart_secret_data(result: Rendered, name: str) -> dict[str, str] | None:
    for secret in result.of_kind("Secret"):
        if secret["metadata"]["name"] == name:
            data: dict[str, str] = secret.get("stringData", {})
            return data
    return None


def pod_environment(result: Rendered, deployment: dict[str, Any]) -> tuple[dict[str, str], bool]:
    """The variables the pod is known to get, and whether it also reads an opaque source
    (a Secret or ConfigMap the chart does not create, whose keys it cannot know)."""
    container = relay_container(deployment)
    env: dict[str, str] = {}
    opaque = False
    for source in container.get("envFrom", []):
        secret_ref = source.get("secretRef")
        data = _chart_secret_data(result, secret_ref["name"]) if secret_ref else None
        if data is None:
            opaque = opaque or not source.get(next(iter(source)), {}).get("optional", False)
        else:
            env.update(data)
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", f"from-{item['name'].lower()}")
    return env, opaque


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_required_env_reference_is_supplied(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    """Each `${VAR}` the config needs comes from the chart's Secret, extraEnv or existingSecret."""
    result = rendered[scenario]
    wanted = set(REQUIRED_REF.findall(result.relay_config()))
    for deployment in result.of_kind("Deployment"):
        env, opaque = pod_environment(result, deployment)
        missing = wanted - set(env)
        assert not missing or opaque, f"nothing supplies {sorted(missing)}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_config_passes_check_config(
    rendered: dict[str, Rendered], scenario: str, tmp_path: Path
) -> None:
    """`conversion-relay check-config` accepts the config the chart mounts, with the pod's env."""
    result = rendered[scenario]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(result.relay_config(), encoding="utf-8")
    env, _ = pod_environment(result, result.of_kind("Deployment")[0])
    for name in REQUIRED_REF.findall(result.relay_config()):
        env.setdefault(name, f"existing-secret-{name.lower()}")
    completed = _check_config(config_file, env)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("ok")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_config_is_mounted_where_the_relay_reads_it(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    """The ConfigMap's config.yaml is mounted at the path the `run --config` argument names."""
    result = rendered[scenario]
    for deployment in result.of_kind("Deployment"):
        container = relay_container(deployment)
        args = container["args"]
        assert args[:3] == ["run", "--config", CONFIG_PATH]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
        assert mount["mountPath"] == str(Path(CONFIG_PATH).parent) and mount["readOnly"]
        volume = next(
            v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"
        )
        config_map = result.one("ConfigMap", volume["configMap"]["name"])
        assert Path(CONFIG_PATH).name in config_map["data"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_relay_accepts_the_arguments_the_chart_passes(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    """The relay's own argument parser accepts each Deployment's `run --config ... --vendor`."""
    for deployment in rendered[scenario].of_kind("Deployment"):
        args = build_parser().parse_args(relay_container(deployment)["args"])
        assert args.command == "run" and args.config == CONFIG_PATH
        vendor = deployment["spec"]["selector"]["matchLabels"].get("conversion-relay/vendor")
        assert args.vendor == ([vendor] if vendor else None)


def test_container_port_follows_the_configured_http_port(rendered: dict[str, Rendered]) -> None:
    """config.http.port sets the container port the probes, Service and ServiceMonitor use."""
    result = rendered["full"]
    port = scenario_values("full")["config"]["http"]["port"]
    container = relay_container(result.one("Deployment"))
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert result.one("Service")["spec"]["ports"][0]["targetPort"] == "http"
    assert result.one("ServiceMonitor")["spec"]["endpoints"][0]["port"] == "http"


def _documented_values() -> list[dict[str, Any]]:
    """The values files shown in the Kubernetes guide (yaml headed `# values.yaml`)."""
    text = (REPO / "docs" / "guide" / "kubernetes.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(# values\.yaml.*?)```", text, re.DOTALL)
    return [yaml.safe_load(block) for block in blocks]


def test_documented_values_render_a_config_the_relay_accepts(
    chart: helm_python.Chart, tmp_path: Path
) -> None:
    """Every values example in the Kubernetes guide renders, and its config passes check-config."""
    examples = _documented_values()
    assert len(examples) >= 2
    for index, values in enumerate(examples):
        result = render(chart, values)
        config_file = tmp_path / f"config-{index}.yaml"
        config_file.write_text(result.relay_config(), encoding="utf-8")
        env = {name: "x" for name in REQUIRED_REF.findall(result.relay_config())}
        completed = _check_config(config_file, env)
        assert completed.returncode == 0, completed.stderr


def _struct_fields(node: msgspec.inspect.Type) -> list[str] | None:
    if isinstance(node, msgspec.inspect.UnionType):
        structs = [t for t in node.types if isinstance(t, msgspec.inspect.StructType)]
        node = structs[0] if len(structs) == 1 else node
    if isinstance(node, msgspec.inspect.StructType):
        return [f.encode_name for f in node.fields]
    return None


def test_schema_of_config_follows_the_relay_config_structs(values_schema: dict[str, Any]) -> None:
    """values.schema.json's `config` has exactly the relay's sections and each section's keys."""
    config_schema = values_schema["properties"]["config"]
    info = msgspec.inspect.type_info(Config)
    assert isinstance(info, msgspec.inspect.StructType)
    assert set(config_schema["properties"]) == {f.encode_name for f in info.fields}
    assert config_schema["additionalProperties"] is False
    for section in info.fields:
        fields = _struct_fields(section.type)
        if fields is not None:
            assert set(config_schema["properties"][section.encode_name]["properties"]) == set(
                fields
            ), f"config.{section.encode_name}"


def _registered_protocols() -> set[str]:
    return {str(cls.__struct_config__.tag) for cls in PROTOCOLS}


def test_schema_lists_every_registered_protocol(values_schema: dict[str, Any]) -> None:
    """The schema's vendor `protocol` enum is exactly the protocols the relay registers."""
    vendor = values_schema["properties"]["config"]["properties"]["vendors"]["additionalProperties"]
    assert set(vendor["properties"]["protocol"]["enum"]) == _registered_protocols()


def test_full_scenario_configures_a_vendor_of_every_protocol() -> None:
    """ci/full-values.yaml has a vendor of each registered protocol, so check-config covers all."""
    vendors = scenario_values("full")["config"]["vendors"]
    assert {v["protocol"] for v in vendors.values()} == _registered_protocols()
