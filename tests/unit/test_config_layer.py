"""The config layer stands alone: loading a config imports none of the I/O shells (issue 25,
the house: the Redis settings were defined in service/delivery/redis_config.py)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_the_config_module_imports_no_delivery_module_and_no_redis_client() -> None:
    """service.config defines every section itself (RedisConfig and DedupConfig included)."""
    code = (
        "import sys, service.config as c; "
        "assert c.RedisConfig.__module__ == c.DedupConfig.__module__ == 'service.config'; "
        "print(sorted(m for m in sys.modules "
        "if m.startswith('service.delivery') or m.split('.')[0] == 'redis'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_redis_settings_are_still_importable_from_where_they_were() -> None:
    """The modules and tests that import them from service.delivery.redis_config keep working."""
    from service import config
    from service.delivery import redis_config

    assert redis_config.RedisConfig is config.RedisConfig
    assert redis_config.DedupConfig is config.DedupConfig
    assert redis_config.SEVEN_DAYS_S == config.SEVEN_DAYS_S
