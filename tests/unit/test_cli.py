"""The command line without a broker: one-line errors, exit codes, help, tables."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from service import __version__
from service.cli import build_parser, main
from service.core.render import age, printable, table
from tests.conftest import ROOT


def _run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["dlq", "inspect", "--by", "vendr"], "vendr: not a field; choose from vendor,reason"),
        (["dlq", "inspect", "--since", "yesterday"], "'yesterday' is not a time"),
        (["dlq", "inspect", "--reason", "nope"], "invalid choice: 'nope'"),
        (["run", "--log-level", "bogus"], "invalid choice: 'bogus'"),
        (["dev", "--rate", "0"], "give events per second above 0"),
        (["dev", "--port", "70000"], "is not a port"),
        (["dlq", "replay"], "the following arguments are required: --vendor"),
        (["publish", "--sample", "3"], "give --bootstrap and --topic, or --config"),
        (["dlq", "inspect"], "--config: give a config file"),
    ],
)
def test_usage_mistakes_are_one_line_on_stderr_with_exit_code_2(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No traceback, no usage block: one line naming the mistake and where help is."""
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    try:
        code = main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert says in lines[0]
    assert "--help" in lines[0]


def test_publish_of_a_missing_file_is_one_line_and_exit_1() -> None:
    """A runtime failure is exit code 1, one line, no traceback."""
    done = _run("publish", "--bootstrap", "127.0.0.1:1", "--topic", "t", "no-such.jsonl")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "conversion-relay: error: cannot read no-such.jsonl: No such file or directory"
    )


def test_debug_shows_the_traceback() -> None:
    """--debug adds the traceback before the one line."""
    done = _run("--debug", "publish", "--bootstrap", "127.0.0.1:1", "--topic", "t", "nope.jsonl")
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("conversion-relay: error: cannot read")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the program and its version."""
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"conversion-relay {__version__}"


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_every_option_has_help_and_closed_ones_have_choices() -> None:
    """Help text on every option and positional; the closed sets are choices."""
    closed = {"--reason", "--log-level", "mode"}
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest
            assert action.help, f"{parser.prog} {name} has no help"
            # `vendor pause --reason TEXT` is the operator's own words, not a DLQ reason.
            if name in closed and not parser.prog.endswith("vendor pause"):
                assert action.choices, f"{parser.prog} {name} has no choices"


def test_help_names_every_command_and_shows_defaults() -> None:
    """The top-level help lists dlq too; an option's default is shown."""
    top = build_parser().format_help()
    for command in ("run", "dev", "publish", "dlq", "fault", "check-config"):
        assert command in top
    shown = " ".join(_run("dev", "--help").stdout.split())
    assert "demo events per second (default: 20.0)" in shown
    assert "(default: 8080)" in shown


def test_a_closed_stdout_pipe_ends_check_config_quietly() -> None:
    """`check-config … | head` with the reader gone: no BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "service", "check-config", "examples/config.yaml"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "KAFKA_BOOTSTRAP": "k:9092"},
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr
    assert "BrokenPipe" not in done.stderr
    assert done.returncode == 141


def test_printable_shows_control_characters_as_escapes() -> None:
    """ESC, NUL, newlines and bidi overrides cannot reach the terminal raw."""
    assert printable("a\x1b[31mb\x00\nc\u202e") == "a\\x1b[31mb\\x00\\nc\\u202e"


def test_table_keeps_markup_as_text_and_fits_the_width() -> None:
    """Rich-like markup is just text; the shrink column is cut so each line fits."""
    rows = [
        {"event_id": "x" * 36, "vendor": "sustain_impact", "reason": "retries_exhausted"},
        {"event_id": "[link=http://evil]click[/link]", "vendor": "[/v3/agent-api]", "reason": None},
    ]
    text = table(rows, ["event_id", "vendor", "reason"], width=50, shrink="event_id")
    lines = text.splitlines()
    assert lines[0].split() == ["EVENT", "ID", "VENDOR", "REASON"]
    assert all(len(line) <= 50 for line in lines)
    assert "[/v3/agent-api]" in lines[2]
    assert lines[1].startswith("xxxxxxxx") and "…" in lines[1]
    assert lines[2].rstrip().endswith("-")


def test_age_is_short() -> None:
    """Ages read like kubectl's."""
    assert [age(s) for s in (None, 5, 125, 7300, 90000)] == ["?", "5s", "2m", "2h", "1d"]


def test_run_raises_the_collectors_thresholds_before_the_relay_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Thousands of in-flight records must not be re-scanned by every young collection."""
    import gc

    from service.cli import common
    from service.cli import run as cli

    seen: list[tuple[int, int, int]] = []

    def started(coro: object) -> int:
        seen.append(gc.get_threshold())
        coro.close()  # type: ignore[attr-defined]
        return 0

    monkeypatch.setattr(common, "run_async", started)
    monkeypatch.setenv("RELAY_CONFIG", str(ROOT / "examples" / "config.yaml"))
    monkeypatch.delenv("RELAY_GC_THRESHOLD", raising=False)
    before = gc.get_threshold()
    try:
        assert main(["run"]) == 0
        monkeypatch.setenv("RELAY_GC_THRESHOLD", "700")  # CPython's own, for whoever wants it
        assert main(["run"]) == 0
        monkeypatch.setenv("RELAY_GC_THRESHOLD", "lots")
        assert main(["run"]) == 2
    finally:
        gc.set_threshold(*before)
    assert seen == [cli.GC_THRESHOLDS, (700, *cli.GC_THRESHOLDS[1:])]
    assert cli.GC_THRESHOLDS[0] >= 10 * before[0]
