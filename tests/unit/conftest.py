"""Unit-test loops: the H1 transport's tests run on asyncio's loop and on uvloop (production's)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

# Modules whose async tests run once per loop: their code drives transports directly, and the
# two loops differ where it matters (EOF and TLS close handling, socket options).
_BOTH_LOOPS = frozenset({"test_h1_transport"})


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """asyncio and uvloop for the modules above; asyncio's own loop for every other test."""
    module = getattr(item, "module", None)
    if module is not None and module.__name__.rpartition(".")[2] in _BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
