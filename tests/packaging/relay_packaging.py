"""Helpers of the packaging tests: chart paths and scenarios, a parsed render of the chart, and a
small Dockerfile parser."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "conversion-relay"
CI_DIR = CHART_DIR / "ci"
SCENARIOS = sorted(p.name.removesuffix("-values.yaml") for p in CI_DIR.glob("*-values.yaml"))
RELEASE = "rel"
NAMESPACE = "relay"


def load_yaml(path: Path) -> Any:
    """Parse one YAML document from a file."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def scenario_values(scenario: str) -> dict[str, Any]:
    """The values of one `ci/<scenario>-values.yaml` file."""
    values: dict[str, Any] = load_yaml(CI_DIR / f"{scenario}-values.yaml")
    return values


@dataclass(frozen=True)
class Rendered:
    """One render of the chart: its values, the parsed manifests (what an install creates),
    the hooks (`helm test` pods, created only by `helm test`) and NOTES.txt."""

    values: dict[str, Any]
    manifests: list[dict[str, Any]]
    notes: str
    templates: dict[str, str] = field(repr=False)
    hooks: list[dict[str, Any]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Every manifest of a kind."""
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        """The only manifest of a kind (or the one with that name)."""
        found = [m for m in self.of_kind(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def relay_config(self) -> str:
        """The relay config text rendered into the ConfigMap."""
        for config_map in self.of_kind("ConfigMap"):
            if "config.yaml" in config_map.get("data", {}):
                text: str = config_map["data"]["config.yaml"]
                return text
        raise AssertionError("no ConfigMap carries config.yaml")


def render(chart: helm_python.Chart, values: dict[str, Any], release: str = RELEASE) -> Rendered:
    """Render the chart offline, as `helm template` would, and parse every manifest."""
    templates = chart.render(values, name=release, namespace=NAMESPACE)
    manifests: list[dict[str, Any]] = []
    hooks: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(templates.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                hook = "helm.sh/hook" in (doc["metadata"].get("annotations") or {})
                (hooks if hook else manifests).append(doc)
    return Rendered(
        values=values, manifests=manifests, notes=notes, templates=templates, hooks=hooks
    )


def deployments(result: Rendered) -> list[dict[str, Any]]:
    """The relay Deployments of a render."""
    return result.of_kind("Deployment")


def relay_container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The relay container of a Deployment."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == "relay"]
    assert len(found) == 1
    container: dict[str, Any] = found[0]
    return container


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword, its arguments and its flags."""

    keyword: str
    args: str

    def flags(self) -> dict[str, str]:
        """`--from=builder` style flags before the arguments."""
        return dict(re.findall(r"--([a-z-]+)=(\S+)", self.args))

    def exec_form(self) -> list[str]:
        """The JSON (exec) form of ENTRYPOINT/CMD."""
        parsed: list[str] = json.loads(self.args)
        return parsed

    def words(self) -> list[str]:
        """The arguments split like a shell would, flags removed."""
        return [w for w in shlex.split(self.args) if not w.startswith("--")]


@dataclass(frozen=True)
class Stage:
    """One build stage: its base image, its name and its instructions."""

    image: str
    name: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        """Every instruction of a keyword."""
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Split a Dockerfile into stages of instructions (comments dropped, continuations joined)."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(image=words[0], name=name, instructions=[]))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages
