"""The vendors guide (docs/guide/vendors.md) stays true: its snippets load and its worked example
is sent."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from service.config import parse_config
from service.events import decode_event
from service.vendors import make_adapter
from service.vendors.base import Route

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "guide" / "vendors.md"
WEBHOOK = ROOT / "tests" / "fixtures" / "vendor_docs" / "webhook"
KAFKA = {"bootstrap_servers": ["127.0.0.1:9092"], "topics": ["conversions"]}


def section() -> str:
    """The vendors guide, the page that was the README's `## Vendors` section."""
    return DOC.read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    """The fenced code blocks of one language in the vendors guide."""
    return re.findall(rf"```{language}\n(.*?)```", section(), re.S)


def secrets(text: str) -> dict[str, str]:
    """A value for every `${NAME}` the snippet references."""
    return {name: f"secret-{name.lower()}" for name in re.findall(r"\$\{(\w+)", text)}


@pytest.mark.parametrize("snippet", blocks("yaml"), ids=lambda s: s.split("\n")[1].strip(" :"))
def test_every_config_snippet_loads(snippet: str) -> None:
    """Each YAML snippet is a valid `vendors:` section that yields working adapters."""
    raw: dict[str, Any] = yaml.safe_load(snippet)
    config = parse_config({"kafka": KAFKA, **raw}, env=secrets(snippet))
    for name, vendor in config.vendors.items():
        assert make_adapter(name, vendor).protocol == vendor.__struct_config__.tag


def test_the_webhook_worked_example_matches_the_fixtures() -> None:
    """The worked example printed in the doc is the one the contract test runs."""
    worked = next(b for b in blocks("yaml") if "crm_hook:" in b)
    assert yaml.safe_load(worked)["vendors"] == yaml.safe_load(
        (WEBHOOK / "config.yaml").read_text()
    )
    event_json = next(b for b in blocks("json") if '"event_id"' in b)
    assert msgspec.json.decode(event_json) == msgspec.json.decode(
        (WEBHOOK / "event.json").read_text()
    )
    assert blocks("http")[-1] == (WEBHOOK / "request.http").read_text()


def test_the_worked_example_builds_the_documented_request() -> None:
    """The adapter turns the doc's event into the doc's request, byte for byte."""
    worked = next(b for b in blocks("yaml") if "crm_hook:" in b)
    config = parse_config(
        {"kafka": KAFKA, **yaml.safe_load(worked)}, env={"CRM_HOOK_TOKEN": "s3cr3t"}
    )
    vendor = config.vendors["crm_hook"]
    event = decode_event((WEBHOOK / "event.json").read_bytes())
    request = make_adapter("crm_hook", vendor).build(
        event, Route("crm_hook", vendor.goal_ids()[event.goal])
    )
    head, _, body = blocks("http")[-1].partition("\n\n")
    lines = head.splitlines()
    assert lines[0] == f"{request.method} {request.url} HTTP/1.1"
    assert dict(line.split(": ", 1) for line in lines[1:]) == dict(request.headers)
    assert body.strip().encode() == request.body
