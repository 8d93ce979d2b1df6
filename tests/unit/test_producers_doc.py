"""docs/guide/producers.md is run as written: every file it shows is written, every command in
its console blocks is run, and what the command prints is what the page says it prints."""

from __future__ import annotations

import asyncio
import re
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.cli import main
from service.devtools.registry import RegistryServer

PAGE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "producers.md"
# `<!-- file: order.bin (hex) -->`: a binary file (an Avro record), shown as hex.
_FILE = re.compile(
    r"<!-- file: (?P<name>[\w.-]+)(?P<hex> \(hex\))? -->\n```\w*\n(?P<body>.*?)```\n", re.DOTALL
)
_REGISTRY_PASSWORD = "doc-registry-pw"
_CONSOLE = re.compile(r"```console\n(?P<body>.*?)```\n", re.DOTALL)


def _files() -> dict[str, str | bytes]:
    return {
        m["name"]: bytes.fromhex(m["body"]) if m["hex"] else m["body"]
        for m in _FILE.finditer(PAGE.read_text(encoding="utf-8"))
    }


def _write(path: Path, body: str | bytes) -> None:
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body, encoding="utf-8")


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[RegistryServer]:
    """The stand-in Schema Registry the examples' configs name (${SCHEMA_REGISTRY_URL}),
    holding the page's order.avsc as schema id 1 and order.schema.json as id 2, on its own
    thread (the CLI blocks)."""
    server = RegistryServer(username="relay", password=_REGISTRY_PASSWORD)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    schema = _files()["order.avsc"]
    assert isinstance(schema, str)
    assert server.register("shop.orders-value", schema) == 1
    json_schema = _files()["order.schema.json"]
    assert isinstance(json_schema, str)
    assert server.register("web.orders-value", json_schema, "JSON") == 2
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", server.url)
    monkeypatch.setenv("SCHEMA_REGISTRY_PASSWORD", _REGISTRY_PASSWORD)
    yield server
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _commands() -> list[tuple[str, str]]:
    """(command line, what it prints) for each `$ ` line of each console block."""
    found = []
    for block in _CONSOLE.finditer(PAGE.read_text(encoding="utf-8")):
        lines = block["body"].splitlines()
        index = 0
        while index < len(lines):
            assert lines[index].startswith("$ "), f"a console block starts with $: {lines[index]}"
            command = lines[index][2:]
            while command.endswith("\\"):
                index += 1
                command = command[:-1] + " " + lines[index].strip()
            index += 1
            output = []
            while index < len(lines) and not lines[index].startswith("$ "):
                output.append(lines[index])
                index += 1
            found.append((command, "\n".join(output)))
    return found


def test_the_page_holds_the_examples_the_guide_promises():
    """A CRM's JSON, CloudEvents in both modes, and Avro, Protobuf and JSON Schema through a
    Schema Registry."""
    files, text = _files(), PAGE.read_text(encoding="utf-8")
    assert {"crm.yaml", "crm-order.json", "platform.yaml", "structured.json", "data.json"} <= set(
        files
    )
    assert {"shop.yaml", "order.avsc", "order.bin"} <= set(files)
    assert {"mobile.yaml", "web.yaml", "order.schema.json", "web-order.bin"} <= set(files)
    assert "not yet" not in text.partition("## Avro with a Schema Registry")[2][:300]
    commands = [c for c, _ in _commands()]
    assert any("ce_specversion=1.0" in c for c in commands)
    assert any("application/cloudevents+json" in c for c in commands)


@pytest.mark.parametrize(("command", "printed"), _commands(), ids=lambda v: v[:60])
def test_each_command_prints_what_the_page_says(
    command: str, printed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, registry
):
    """Run in a folder holding the page's files: the output matches line for line, and the exit
    code is 0 unless the page shows a failure (a dead letter or check-config's problems)."""
    for name, body in _files().items():
        _write(tmp_path / name, body)
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)
    assert argv[0] == "conversion-relay"
    code = main(argv[1:])
    captured = capsys.readouterr()
    assert (captured.out + captured.err).rstrip("\n") == printed
    fails = printed.startswith("dead-lettered") or ": " in printed.splitlines()[0]
    assert code == (1 if fails else 0)


@pytest.mark.parametrize(
    "name", ["crm.yaml", "platform.yaml", "shop.yaml", "mobile.yaml", "web.yaml"]
)
def test_each_example_config_passes_check_config(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, registry
):
    """The example configs are complete files check-config accepts."""
    path = tmp_path / name
    _write(path, _files()[name])
    assert main(["check-config", str(path)]) == 0, capsys.readouterr().err
