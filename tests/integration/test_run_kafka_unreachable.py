"""`run` while Kafka cannot be reached (issue 25, finding 8): it keeps trying, says so once per
interval naming the bootstrap it tries, stays unready, and SIGTERM stops it at once."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import aiohttp
import orjson
import pytest

from service import app
from service.app import Relay
from service.config import parse_config
from service.net import free_port


def _config(bootstrap: str) -> dict[str, object]:
    return {
        "kafka": {"bootstrap_servers": [bootstrap], "topics": ["conversions"]},
        "http": {"host": "127.0.0.1", "port": 0},
        "dlq": {"topic": "conversions.dlq"},
        "vendors": {
            "wh": {
                "protocol": "webhook",
                "base_url": "https://127.0.0.1:9",
                "goals": {"purchase": "p"},
            }
        },
    }


async def test_an_unreachable_broker_is_one_line_per_interval_naming_the_bootstrap(
    relay_process,
) -> None:
    """4 s of retries: one line from the relay naming the bootstrap, none from aiokafka per
    try; /readyz is 503; SIGTERM: exit 0 within 1 s."""
    nowhere = f"127.0.0.1:{free_port()}"
    relay = relay_process(_config(nowhere))
    relay.start()
    await asyncio.sleep(4)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{relay.http_port}/readyz") as resp,
    ):
        assert resp.status == 503
    sent_s = time.monotonic()
    relay.signal(signal.SIGTERM)
    code = await relay.wait_exit(10)
    took_s = time.monotonic() - sent_s
    records = [orjson.loads(line) for line in relay.logs().splitlines() if line.startswith("{")]
    about_kafka = [r["message"] for r in records if "Kafka" in r["message"]]
    assert about_kafka == [
        f"cannot reach Kafka at {nowhere} (KafkaConnectionError); retrying every 0.5-10 s, "
        "not ready until it answers; next report in 30 s"
    ], relay.logs()
    assert not [r for r in records if r["logger"] == "aiokafka"], relay.logs()
    assert code == 0
    assert took_s < 1.0, f"took {took_s:.2f}s"


async def test_the_unreachable_report_repeats_once_per_interval_with_the_time_down(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """At a 1 s interval, 5 s of tries (at 0, 0.5, 1.5 and 3.5 s) make 3 lines (the try at 0.5 s
    is within the interval), the later ones saying for how long Kafka has been unreachable."""
    monkeypatch.setattr(app, "UNREACHABLE_REPORT_EVERY_S", 1.0)
    nowhere = f"127.0.0.1:{free_port()}"
    relay = Relay(parse_config(_config(nowhere)))
    caplog.set_level(logging.INFO, logger="conversion_relay.app")
    task = asyncio.create_task(relay.run(install_signals=False))
    await asyncio.sleep(5.0)
    relay.request_stop()
    await asyncio.wait_for(task, 2)
    lines = [r.getMessage() for r in caplog.records if "cannot reach Kafka" in r.getMessage()]
    assert len(lines) == 3, lines
    assert all(nowhere in line for line in lines)
    assert "unreachable for 2 s" in lines[1] and "unreachable for 4 s" in lines[2], lines
