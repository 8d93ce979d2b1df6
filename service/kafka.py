"""aiokafka client settings from the config: one place for bootstrap, security and timeouts."""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from service.config import KafkaConfig


def client_kwargs(kafka: KafkaConfig) -> dict[str, Any]:
    """Connection and security settings shared by consumers, the producer and the admin client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": ",".join(kafka.bootstrap_servers),
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = create_ssl_context(
            cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile
        )
    if kafka.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = kafka.sasl_password
    return kwargs


def consumer_kwargs(kafka: KafkaConfig, group_id: str) -> dict[str, Any]:
    """Settings of a vendor pipeline's consumer: its own group, manual commits."""
    return {
        **client_kwargs(kafka),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": kafka.auto_offset_reset,
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "max_poll_interval_ms": kafka.max_poll_interval_ms,
    }


def producer_kwargs(kafka: KafkaConfig) -> dict[str, Any]:
    """Settings of the DLQ producer: acknowledged by every in-sync replica."""
    return {
        **client_kwargs(kafka),
        "acks": "all",
        "enable_idempotence": kafka.enable_idempotence,
        "linger_ms": 5,
    }


def coordinator_known(consumer: Any) -> bool:
    """Whether a group consumer currently knows (and so reaches) its group coordinator.

    aiokafka exposes no public signal for this; its coordinator forgets the coordinator's node
    when heartbeats or requests to it fail, and finds it again when the broker is back.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    return coordinator is not None and getattr(coordinator, "coordinator_id", None) is not None
