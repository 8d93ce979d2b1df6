"""Where a running dev mode leaves its config and state: light, so `fault` starts fast."""

from __future__ import annotations

import tempfile
from pathlib import Path


def default_config_path() -> Path:
    """Where dev mode writes the running stack's config unless told otherwise."""
    return Path(tempfile.gettempdir()) / "conversion-relay-dev.yaml"


def state_path(config_path: Path) -> Path:
    """The file next to the config with the control endpoint's URL (read by `fault`)."""
    return config_path.with_suffix(".json")
