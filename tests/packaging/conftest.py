"""Fixtures of the packaging tests: the chart loaded with the real Helm SDK, and every
`ci/*-values.yaml` scenario rendered once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import helm_python
import pytest

from tests.packaging.relay_packaging import CHART_DIR, SCENARIOS, Rendered, render, scenario_values


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    """The chart, loaded once with the Helm SDK."""
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def rendered(chart: helm_python.Chart) -> dict[str, Rendered]:
    """Every ci scenario, rendered once."""
    return {name: render(chart, scenario_values(name)) for name in SCENARIOS}


@pytest.fixture(scope="session")
def values_schema() -> dict[str, Any]:
    """values.schema.json."""
    schema: dict[str, Any] = json.loads((CHART_DIR / "values.schema.json").read_text())
    return schema
