"""The chart is documented like the best ones: a README generated from values.yaml's `# --`
comments (stale means failing), complete Chart.yaml metadata (lint says nothing), and a
`helm test` pod that really checks /readyz."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from aiohttp import web

from tests.conftest import goal_reach_vendor, relay_config
from tests.packaging.relay_packaging import (
    CHART_DIR,
    NAMESPACE,
    REPO,
    Rendered,
    load_yaml,
    scenario_values,
)

GENERATOR = REPO / "scripts" / "gen-chart-readme.py"
README = CHART_DIR / "README.md"


@functools.cache
def generator() -> ModuleType:
    """scripts/gen-chart-readme.py as a module (its name has dashes)."""
    spec = importlib.util.spec_from_file_location("gen_chart_readme", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_chart_readme_is_what_the_generator_makes_from_the_current_files() -> None:
    """README.md equals scripts/gen-chart-readme.py's output: edit values.yaml, regenerate."""
    assert README.read_text() == generator().generate(), (
        "helm/conversion-relay/README.md is stale: run python scripts/gen-chart-readme.py"
    )
    check = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout


def test_the_generator_reads_helm_docs_comments() -> None:
    """`# --` documents the next key at its indent, `#` lines continue it, nesting is by indent,
    and a comment above a list item or an undocumented key documents nothing."""
    text = (
        "# -- Top level.\n# Continued.\na: 1\nb:\n  # -- Nested.\n  c: x\n  d: []\n"
        "e:\n  - # -- not a key's\n    f: 1\n# plain comment\ng: true\n"
    )
    assert generator().documented_keys(text) == [("a", "Top level. Continued."), ("b.c", "Nested.")]
    rows = generator().rows(text)
    assert [(r.path, r.kind, r.default) for r in rows] == [
        ("a", "int", "`1`"),
        ("b.c", "string", '`"x"`'),
    ]


def test_every_top_level_value_has_a_documented_row() -> None:
    """Each top-level key of values.yaml is a row of the README's table."""
    values = load_yaml(CHART_DIR / "values.yaml")
    documented = {
        path for path, _ in generator().documented_keys((CHART_DIR / "values.yaml").read_text())
    }
    assert set(values) <= documented, sorted(set(values) - documented)
    for key in values:
        assert f"\n| {key} | " in README.read_text(), key


def test_chart_metadata_is_complete_and_lint_says_nothing_about_it() -> None:
    """Chart.yaml has home, icon, sources and maintainers; `helm lint` has no word on it."""
    chart = load_yaml(CHART_DIR / "Chart.yaml")
    assert chart["home"].startswith("https://")
    assert chart["icon"].startswith("https://") and chart["icon"].endswith(".svg")
    assert (REPO / "deploy" / Path(chart["icon"]).name).is_file()  # the icon the URL serves
    assert chart["sources"] and all(s.startswith("https://") for s in chart["sources"])
    assert chart["maintainers"] and all(m["name"] for m in chart["maintainers"])
    report = helm_python.lint(
        CHART_DIR, scenario_values("minimal"), strict=True, namespace=NAMESPACE
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["path"] == "Chart.yaml"] == []


def test_values_recommend_resources_with_measured_figures() -> None:
    """The resources comment recommends requests and a memory limit, and says what was measured."""
    [(_, text)] = [
        row
        for row in generator().documented_keys((CHART_DIR / "values.yaml").read_text())
        if row[0] == "resources"
    ]
    assert "requests: {cpu: 500m, memory: 128Mi}" in text
    assert "limits: {memory: 256Mi}" in text
    assert "MiB RSS idle" in text and "MiB peak" in text and "cores" in text


def helm_test_pod(rendered: dict[str, Rendered], scenario: str) -> dict[str, Any]:
    [pod] = [h for h in rendered[scenario].hooks if h["kind"] == "Pod"]
    return pod


@pytest.mark.parametrize("scenario", ["minimal", "full", "split-by-vendor"])
def test_helm_test_pod_asks_the_service_for_readyz(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    """A `helm test` hook pod runs the relay's image against the Service's /readyz, locked down
    like the relay, and the Service never selects it."""
    result = rendered[scenario]
    pod = helm_test_pod(rendered, scenario)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    kubernetes_validate.validate(pod, "1.30.0", strict=True)
    service = result.one("Service")
    selector = service["spec"]["selector"]
    labels = pod["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in selector.items())
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True
    [container] = spec["containers"]
    relay = result.of_kind("Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == relay["image"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    url = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/readyz"
    assert url in container["command"][-1]


async def test_helm_test_pod_script_passes_on_a_ready_relay_and_fails_otherwise(
    rendered: dict[str, Rendered], broker, topics, sandbox_factory, run_relay
) -> None:
    """The pod's own script, pointed at a real ready relay, exits 0; at a 503, it fails."""
    pod = helm_test_pod(rendered, "minimal")
    command = pod["spec"]["containers"][0]["command"]
    service = rendered["minimal"].one("Service")
    host = f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    sandbox = await sandbox_factory()
    relay = await run_relay(relay_config(broker, topics, {"si": goal_reach_vendor(sandbox)}))

    async def run_script(target: str) -> subprocess.CompletedProcess[str]:
        script = command[-1].replace(host, target)
        process = await _run([sys.executable, *command[1:-1], script])
        return process

    ready = await run_script(f"127.0.0.1:{relay.http_port}")
    assert ready.returncode == 0, ready.stderr
    assert "/readyz 200" in ready.stdout

    async def unready(request: web.Request) -> web.Response:
        return web.json_response({"ready": False}, status=503)

    app = web.Application()
    app.router.add_get("/readyz", unready)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        unready = await run_script(f"127.0.0.1:{port}")
    finally:
        await runner.cleanup()
    assert unready.returncode != 0
    assert "503" in unready.stderr


async def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """A subprocess, without blocking the event loop the relay runs on."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    return subprocess.CompletedProcess(argv, process.returncode or 0, out.decode(), err.decode())


def test_rendered_yaml_of_the_hook_is_a_single_document(rendered: dict[str, Rendered]) -> None:
    """The hook template renders exactly one Pod (and nothing else) in every scenario."""
    for scenario, result in rendered.items():
        kinds = [h["kind"] for h in result.hooks]
        assert kinds == ["Pod"], (scenario, kinds)
        text = result.templates["conversion-relay/templates/tests/test-readyz.yaml"]
        assert len([d for d in yaml.safe_load_all(text) if d]) == 1
