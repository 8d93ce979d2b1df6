"""`conversion-relay dev` shows a producer's Avro: a shop's orders published through the stand-in
Schema Registry onto shop.orders, mapped by the demo config's `inputs.shop` and delivered to the
same vendors as the canonical stream, none dead-lettered."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.devtools.demo_avro import ORDER_FIELDS
from tests.integration.test_dev_mode import _start, _wait_ready


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


def _samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    families = text_string_to_metric_families(_get(url).decode())
    return [(s.labels, s.value) for f in families for s in f.samples if s.name == name]


def test_dev_mode_delivers_the_shop_avro_stream_through_its_stand_in_registry(
    tmp_path: Path,
) -> None:
    process, config_path = _start(tmp_path, "pipe")
    try:
        _wait_ready(process, config_path, settle_s=0)
        config = yaml.safe_load(config_path.read_text())
        assert config["inputs"]["shop"] == {
            "topic": "shop.orders",
            "format": "avro",
            "fields": ORDER_FIELDS,  # as the bench maps the same orders
        }
        base = f"http://127.0.0.1:{config['http']['port']}"
        deadline = time.monotonic() + 45
        while True:
            status = json.loads(_get(f"{base}/status"))
            consumed = {
                labels["vendor"]: value
                for labels, value in _samples(
                    f"{base}/metrics", "conversion_relay_events_consumed_total"
                )
                if labels["topic"] == "shop.orders"
            }
            if len(consumed) == len(status["vendors"]) and min(consumed.values()) >= 5:
                break
            assert time.monotonic() < deadline, (consumed, status.get("schema_registry"))
            time.sleep(0.5)
        registry = status["schema_registry"]
        assert registry["state"] == "up" and registry["schemas_cached"] == 1, registry
        assert registry["records_waiting"] == 0
        letters = _samples(f"{base}/metrics", "conversion_relay_dlq_writes_total")
        avro_letters = [
            v for labels, v in letters if labels["reason"] in ("unknown_schema", "undecodable")
        ]
        assert avro_letters and sum(avro_letters) == 0
        fetched = _samples(f"{base}/metrics", "conversion_relay_schema_registry_requests_total")
        assert {labels["result"]: v for labels, v in fetched}["ok"] >= 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    assert process.returncode == 0
