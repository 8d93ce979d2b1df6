"""The runtime package does not import the dev tools."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_the_runtime_modules_never_import_service_devtools() -> None:
    """Importing the relay, its workers, replay and the CLI loads nothing from devtools."""
    code = (
        "import sys, service.app, service.workers, service.cli, service.delivery.replay, "
        "service.http; print(sorted(m for m in sys.modules if m.startswith('service.devtools')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
