"""One default HTTP client, stated from one source: the relay's `HttpConfig` default. The chart
leaves `http.transport` unset (so the relay's own default applies), and its values comment,
its schema, the README and docs/performance.md name that same default."""

from __future__ import annotations

import re
from typing import Any

import helm_python
import msgspec
import yaml

from service.config import HttpConfig
from tests.packaging.relay_packaging import CHART_DIR, REPO, load_yaml, render, scenario_values
from tests.transports import TRANSPORTS

DEFAULT = HttpConfig().transport


def _rendered_http(chart: helm_python.Chart, values: dict[str, Any]) -> HttpConfig:
    """The `http` section of the relay config the chart renders from `values`."""
    config = yaml.safe_load(render(chart, values).relay_config())
    return msgspec.convert(config.get("http") or {}, HttpConfig)


def _values_comment(key: str) -> str:
    """The `# --` comment right above `key:` in values.yaml, joined into one line."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
    comment: list[str] = []
    for line in reversed(lines[:at]):
        text = line.strip()
        if not text.startswith("#"):
            break
        comment.insert(0, text.lstrip("#").removeprefix(" --").strip())
    return " ".join(comment)


def test_the_chart_leaves_the_transport_to_the_relays_own_default(
    chart: helm_python.Chart,
) -> None:
    """values.yaml sets no transport, and the config the chart renders gets the relay's default;
    a transport set in the values still reaches the relay."""
    values = load_yaml(CHART_DIR / "values.yaml")
    assert values["config"]["http"]["transport"] is None
    assert _rendered_http(chart, scenario_values("minimal")).transport == DEFAULT
    other = next(kind for kind in TRANSPORTS if kind != DEFAULT)
    chosen = scenario_values("minimal")
    chosen.setdefault("config", {}).setdefault("http", {})["transport"] = other
    assert _rendered_http(chart, chosen).transport == other


def test_the_chart_schema_offers_every_transport_and_unset(values_schema: dict[str, Any]) -> None:
    """The schema accepts each transport the relay has (the default included) and null."""
    http = values_schema["properties"]["config"]["properties"]["http"]["properties"]
    assert set(http["transport"]["enum"]) == {*TRANSPORTS, None}


def test_readme_docs_and_chart_name_the_same_default_transport() -> None:
    """The README, docs/performance.md and the chart's values comment (and so its generated
    README) each name HttpConfig's default transport as the default."""
    readme = (REPO / "README.md").read_text()
    performance = (REPO / "docs" / "performance.md").read_text()
    chart_readme = (CHART_DIR / "README.md").read_text()
    default_of = r"null = the relay's own default, `(\w+)`"
    stated = {
        "README.md": re.findall(r"client per vendor: by default `(\w+)`", readme),
        "docs/performance.md why": re.findall(r"\*\*Why `(\w+)` is the default\.\*\*", performance),
        "docs/performance.md setup": re.findall(
            r"at its defaults \(`(\w+)` transport\)", performance
        ),
        "values.yaml": re.findall(default_of, _values_comment("transport")),
        "chart README": re.findall(default_of, chart_readme),
    }
    assert stated == {where: [DEFAULT] for where in stated}, stated
