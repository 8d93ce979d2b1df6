"""The docs tell the truth about the code: the generated reference pages are current (a stale page
fails), they hold every config key and metric, and every link in README.md and docs/ resolves."""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import msgspec
import pytest
import yaml
from prometheus_client import CollectorRegistry

from service.config import Config, PipelineConfig
from service.metrics import Metrics
from service.vendors import PROTOCOLS

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "gen-docs.py"
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)\s]+)\)")


@functools.cache
def generator() -> ModuleType:
    """scripts/gen-docs.py as a module (its name has a dash)."""
    spec = importlib.util.spec_from_file_location("gen_docs", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["reference/config.md", "reference/metrics.md"])
def test_generated_page_is_current(page: str) -> None:
    """Each generated page equals what scripts/gen-docs.py makes from the code now."""
    wanted = generator().pages()[DOCS / page]
    assert (DOCS / page).read_text() == wanted, f"docs/{page} is stale: run scripts/gen-docs.py"


def test_check_fails_on_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`gen-docs.py --check` exits 1 when a page differs from the code, 0 once rewritten."""
    gen = generator()
    stale = tmp_path / "config.md"
    stale.write_text(gen.pages()[gen.CONFIG_PAGE].replace("`1000`", "`999`"))
    metrics_page = tmp_path / "metrics.md"
    monkeypatch.setattr(gen, "CONFIG_PAGE", stale)
    monkeypatch.setattr(gen, "METRICS_PAGE", metrics_page)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    assert "`1000`" in stale.read_text()


def test_field_comment_lands_in_the_config_reference() -> None:
    """A field's source comment is its description, and its default is the Struct's default."""
    page = (DOCS / "reference" / "config.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| `commit_coalesce_s` |"))
    assert "committed within this delay" in row
    assert f"`{PipelineConfig().commit_coalesce_s}`" in row


def test_config_reference_lists_every_key() -> None:
    """Every field of Config, its sections and every vendor protocol has a row."""
    page = (DOCS / "reference" / "config.md").read_text()
    keys = set(re.findall(r"^\| `(\w+)` \|", page, flags=re.MULTILINE))
    structs: list[type] = [Config, *PROTOCOLS]
    for field in msgspec.structs.fields(Config):
        structs += [t.cls for t in _struct_types(msgspec.inspect.type_info(field.type))]
    for cls in structs:
        for field in msgspec.structs.fields(cls):
            assert field.encode_name in keys, f"{cls.__name__}.{field.encode_name}"
    for cls in PROTOCOLS:
        assert f"(protocol: {cls.__struct_config__.tag})" in page


def _struct_types(node: msgspec.inspect.Type) -> list[msgspec.inspect.StructType]:
    if isinstance(node, msgspec.inspect.StructType):
        return [node]
    if isinstance(node, msgspec.inspect.UnionType):
        return [t for inner in node.types for t in _struct_types(inner)]
    return []


def test_metrics_reference_lists_every_metric() -> None:
    """Every family the relay registers (its own, process and GC) has a row."""
    page = (DOCS / "reference" / "metrics.md").read_text()
    rows = set(re.findall(r"^\| `(\w+)` \|", page, flags=re.MULTILINE))
    registry = CollectorRegistry()
    Metrics(registry)
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in rows, name


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (code fences left out)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+?)\s*$", text, flags=re.MULTILINE)}


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page: Path) -> None:
    """Each relative link names a file that exists, and its #anchor a heading in that file."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name}: {target}: no such file"
        if anchor:
            assert anchor in _anchors(path), f"{page.name}: {target}: no such heading"


def test_every_alert_has_its_runbook_page() -> None:
    """docs/runbooks/ holds one page per alert rule, titled with the alert's name."""
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    names = {rule["alert"] for group in alerts["groups"] for rule in group["rules"]}
    pages = {p.stem for p in (DOCS / "runbooks").glob("ConversionRelay*.md")}
    assert pages == names
    for name in names:
        first = (DOCS / "runbooks" / f"{name}.md").read_text().splitlines()[0]
        assert first == f"# Runbook: {name}"
