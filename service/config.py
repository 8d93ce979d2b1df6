"""Configuration: one YAML file decoded into frozen Structs, `${ENV}` secrets resolved at load,
and every problem reported with its path."""

from __future__ import annotations

import os
import re
import ssl
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from service.core.inputs import REGISTRY_FORMATS, Format, Mode, input_problems
from service.core.proxy import (
    ProxySetting,
    ProxySettingError,
    VendorProxySetting,
    effective_proxy,
    proxy_policy,
)
from service.core.redact import is_secret_key, redact, remember_secrets
from service.errors import ConfigError
from service.vendors import VendorConfig
from service.vendors.base import PROXY_TRANSPORTS, TransportName
from service.vendors.paths import shown_url

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]


class Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of config sections: immutable, and a misspelt key is an error, not a silent default."""


class KafkaConfig(Strict, frozen=True):
    """Where the events are and how to reach the cluster."""

    # Brokers to start from, `host:port` each.
    bootstrap_servers: Annotated[list[str], msgspec.Meta(min_length=1)]
    # Topics the canonical events are read from; every vendor pipeline reads all of them.
    topics: Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]
    # Each vendor's consumer group is `<group_prefix>.<vendor>`.
    group_prefix: Annotated[str, msgspec.Meta(min_length=1)] = "conversion-relay"
    # Kafka client id of the relay's consumers and producer.
    client_id: str = "conversion-relay"
    # How to reach the brokers; SASL_* need sasl_mechanism, sasl_username and sasl_password.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # SASL mechanism (required with SASL_PLAINTEXT / SASL_SSL).
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    # SASL user name.
    sasl_username: str | None = None
    # SASL password: give it as `${ENV}`, never in the file.
    sasl_password: str | None = None
    # CA bundle (PEM) the brokers' certificates are checked against.
    ssl_cafile: str | None = None
    # Client certificate (PEM) for mutual TLS.
    ssl_certfile: str | None = None
    # Private key (PEM) of ssl_certfile.
    ssl_keyfile: str | None = None
    # Where a new consumer group starts: the oldest record or only new ones.
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # Real Kafka wants >= 6000 ms; the embedded Tansu broker rebalances faster with less.
    session_timeout_ms: PositiveInt = 10_000
    # Consumer heartbeat interval; must be below session_timeout_ms.
    heartbeat_interval_ms: PositiveInt = 3_000
    # Kafka's poll deadline; the fetch loop keeps polling while paused, so a slow vendor
    # never exceeds it.
    max_poll_interval_ms: PositiveInt = 300_000
    # Idempotence is off by default because Tansu does not support InitProducerId.
    enable_idempotence: bool = False
    # Records of aborted transactions are never read (every consumer: pipelines, replay, lag).
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    # Longest a fetch waits at the broker for new records. Kafka answers as soon as a record
    # arrives; brokers that do not (Tansu) hold every fetch this long, which is then the
    # latency floor. Kafka's own 500 ms default made that p95 ~250 ms; 25 ms costs an idle
    # pipeline ~40 empty fetches per second.
    fetch_max_wait_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 25
    # Most bytes one fetch response may bring (a larger record batch still arrives, alone:
    # KIP-74). A pipeline holds a fetch's bytes until it has delivered its records; aiokafka's
    # 50 MiB default let five busy vendors peak over the 150 MiB budget. 1 MiB is ~1,600
    # events, more than a pipeline's max_in_flight.
    fetch_max_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1024 * 1024
    # Where each vendor group keeps its progress above the commit point (offsets completed
    # behind a record still retrying, and that record's first-attempt time): `metadata` = in
    # the OffsetCommit metadata (Kafka, MSK, Confluent, Redpanda); `topic` = also in the
    # compacted progress_topic, for brokers that drop commit metadata (the embedded Tansu);
    # `auto` = metadata, switching to the topic after the first commit if the broker dropped it.
    progress_store: Literal["auto", "metadata", "topic"] = "auto"
    # The compacted progress topic (`topic` store); null = `<group_prefix>.progress`. Created
    # (1 partition, cleanup.policy=compact) on first use if missing.
    progress_topic: str | None = None
    # The compacted control topic holding each vendor's operator state (`vendor pause`,
    # `resume`, `reset`); null = `<group_prefix>.control`. Created (1 partition,
    # cleanup.policy=compact) if missing; read by every replica.
    control_topic: str | None = None
    # Longest progress text one commit carries: under the brokers' offset.metadata.max.bytes
    # (Kafka's default 4096). Past it the commit keeps only the retry clocks, then the offset.
    commit_metadata_max_bytes: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 4000


EnvName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class HttpConfig(Strict, frozen=True):
    """The health and metrics server (/status by choice) and the HTTP client vendors get."""

    # Interface the server binds (`127.0.0.1` when nothing outside scrapes it).
    host: str = "0.0.0.0"
    # Port of /livez /readyz /metrics /status (0 picks a free one).
    port: Port = 8080
    # Who may read /status: `loopback` (only clients on 127.0.0.1/::1, e.g. kubectl port-forward),
    # `token` (a client sending `Authorization: Bearer <$status_token_env>`), or `any`.
    status_access: Literal["loopback", "token", "any"] = "loopback"
    # The environment variable holding the /status bearer token (status_access: token).
    status_token_env: EnvName = "RELAY_STATUS_TOKEN"
    # The outgoing HTTP client of every vendor (a vendor's `transport` overrides it): `h1` (the
    # relay's own HTTP/1.1 keep-alive client on asyncio + llhttp, the least CPU per request),
    # `pyreqwest` (Rust hyper + rustls; HTTP/1.1 here) or `aiohttp`. None follows redirects; all
    # verify TLS. docs/performance.md has the figures behind the default.
    transport: TransportName = "h1"
    # A PEM file of extra root certificates trusted for vendor TLS (on top of the system's), e.g.
    # a private CA in front of a vendor; null = the system's roots only.
    ca_bundle: str | None = None
    # The egress proxy of every vendor (a vendor's `proxy` overrides it): null = direct, and the
    # environment's HTTPS_PROXY/HTTP_PROXY are never read; `env` = take them (and NO_PROXY) from
    # the environment, as curl does; or `{url: http://proxy:3128, username, password: ${ENV},
    # no_proxy: [...]}`. https:// vendors are reached through a CONNECT tunnel.
    proxy: ProxySetting = None


class DlqConfig(Strict, frozen=True):
    """Where dead letters go."""

    # The dead-letter topic: failed records with their story in `relay-*` headers.
    topic: Annotated[str, msgspec.Meta(min_length=1)] = "conversions.dlq"


class PipelineConfig(Strict, frozen=True):
    """Flow control shared by every vendor pipeline."""

    # Records tracked per pipeline, and per partition from its commit point (the fetch window).
    max_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 1000
    # Bytes of fetched record values and keys held per pipeline before fetching pauses.
    max_in_flight_bytes: PositiveInt = 32 * 1024 * 1024
    # Partitions paused at max_in_flight resume below this many in-flight records.
    resume_below: Annotated[int, msgspec.Meta(ge=0)] | None = None
    # Offsets are committed at least this often (and on every revocation).
    commit_interval_s: PositiveFloat = 1.0
    # A commit point that advanced is committed within this delay (commits coalesced over it).
    commit_coalesce_s: PositiveFloat = 0.1
    # How long a revocation waits for the in-flight deliveries of the revoked partitions.
    revoke_timeout_s: PositiveFloat = 10.0
    # SIGTERM drain budget: in-flight records finish within it, then offsets are committed.
    shutdown_grace_s: PositiveFloat = 20.0
    # Larger records are dead-lettered as invalid (`too_large`).
    max_record_bytes: PositiveInt = 1_048_576
    # How often each pipeline refreshes its consumer-lag gauge.
    lag_interval_s: PositiveFloat = 5.0

    @property
    def low_water(self) -> int:
        """In-flight count under which paused partitions resume."""
        if self.resume_below is None:
            return self.max_in_flight // 2
        return min(self.resume_below, self.max_in_flight - 1)


class InputConfig(Strict, frozen=True):
    """A topic of a producer's own events and how they become canonical ones
    (docs/guide/producers.md)."""

    # The topic this input reads (listed in kafka.topics too: every topic read is there).
    topic: Annotated[str, msgspec.Meta(min_length=1)]
    # What its records are: `json` (the producer's own JSON object, mapped by `fields`),
    # `cloudevents` (CloudEvents 1.0 in the Kafka binding, mapped by `fields`), `avro`,
    # `protobuf` or `json_schema` (Avro, Protobuf or JSON Schema in the Confluent Schema Registry
    # wire format, decoded through `schema_registry:`, mapped by `fields`), or `canonical` (the
    # relay's own event, as on every topic without an input).
    format: Format = "json"
    # CloudEvents content mode: `auto` tells them apart per record (content-type
    # application/cloudevents+json = structured, ce_* headers = binary); `structured` or `binary`
    # accept that one only.
    mode: Mode = "auto"
    # Canonical field <- source, e.g. `event_id: $.order.uuid`, `value: $.total_cents / 100`,
    # `occurred_at: $.ts | epoch_ms`, `goal: {from: $.type, map: {order.paid: purchase}}`,
    # `currency: EUR`, `params: $.properties`; compiled once at start.
    fields: dict[str, Any] = {}


class SchemaRegistryConfig(Strict, frozen=True):
    """The Confluent Schema Registry that `avro`, `protobuf` and `json_schema` inputs read their
    writers' schemas from."""

    # Its base URL, `http(s)://host:port[/path]`.
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    # HTTP basic auth user (Confluent Cloud: the API key).
    username: str | None = None
    # HTTP basic auth password (Confluent Cloud: the API secret): give it as `${ENV}`.
    password: str | None = None
    # CA bundle (PEM) the registry's certificate is checked against (default: the system's).
    ssl_cafile: str | None = None
    # Client certificate (PEM) for mutual TLS.
    ssl_certfile: str | None = None
    # Private key (PEM) of ssl_certfile.
    ssl_keyfile: str | None = None
    # Per request; a slower registry counts as down (its records wait, none is dead-lettered).
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # While the registry is down, how often it is tried again (steady, never backed off).
    retry_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    # Compiled schemas kept, by id (least recently used dropped first).
    max_schemas: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000


# The optional Redis (shared rate limit, Retry-After pauses, dedup store) and the dedup store.
SEVEN_DAYS_S = 7 * 24 * 3600.0


class RedisConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where Redis is, how many replicas share its limits, and how patient to be with it."""

    # `redis://[:password@]host:port/db`, `rediss://` for TLS, or `unix://`; give it as `${ENV}`.
    url: Annotated[str, msgspec.Meta(pattern=r"^(redis|rediss|unix)://")]
    # Replicas sharing the limits: while Redis is down each takes `per_s / replicas`.
    replicas: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    # Prefix of every key the relay writes.
    key_prefix: str = "conversion-relay:"
    # Per command; a slower Redis counts as down.
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 0.5
    # While Redis is down, how often the limiter tries it again (2 s: back on the shared limit
    # within 5 s of Redis returning, the fleet drill's bound, for one command per probe).
    reprobe_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0


class DedupConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where delivered (vendor, event_id) pairs are remembered, and for how long."""

    # Off: every event is sent even if it was delivered before.
    enabled: bool = True
    # `memory`: per process, bounded by max_entries, lost on restart; `redis`: shared,
    # survives restarts (needs `redis:`).
    backend: Literal["memory", "redis"] = "memory"
    # How long a delivered (vendor, event_id) is remembered (default 7 days; the memory
    # backend forgets in 16 steps, so a pair is remembered for 15/16 of this at least).
    ttl_s: Annotated[float, msgspec.Meta(gt=0)] = SEVEN_DAYS_S
    # Memory backend only: how many pairs are remembered; past it the oldest 1/16 are
    # forgotten. About 125 bytes an entry with its UUID: 150,000 take ~18 MiB of the 150 MiB
    # budget (use Redis to remember more).
    max_entries: Annotated[int, msgspec.Meta(ge=1)] = 150_000


class TracingConfig(Strict, frozen=True):
    """OpenTelemetry traces of deliveries, exported over OTLP/HTTP (docs/guide/observability.md)."""

    # On: a span per event per vendor and one per delivery attempt, continuing the record's W3C
    # `traceparent` header when it has one. Off (the default), the SDK is not even imported.
    enabled: bool = False
    # The collector's OTLP/HTTP traces URL, path included. Headers it needs (a token) come from
    # OTEL_EXPORTER_OTLP_TRACES_HEADERS or OTEL_EXPORTER_OTLP_HEADERS, never from this file.
    endpoint: Annotated[str, msgspec.Meta(pattern=r"^https?://")] = (
        "http://localhost:4318/v1/traces"
    )
    # Share of new traces recorded (parent-based: a record whose traceparent says sampled or
    # not decides for itself; this ratio applies to records without one).
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    # Spans waiting for export, at most: past it new ones are dropped and counted
    # (conversion_relay_trace_spans_dropped_total), never waited for.
    max_queue_size: Annotated[int, msgspec.Meta(ge=1)] = 2048
    # Spans per export request (at most max_queue_size).
    max_export_batch_size: Annotated[int, msgspec.Meta(ge=1)] = 512
    # How often waiting spans are exported (sooner when a batch is full).
    export_interval_s: PositiveFloat = 1.0
    # One export's time limit, its retries included (the stop waits about twice this at most).
    export_timeout_s: PositiveFloat = 5.0
    # The spans' `service.name`.
    service_name: Annotated[str, msgspec.Meta(min_length=1)] = "conversion-relay"


class Config(Strict, frozen=True):
    """The whole configuration."""

    # The Kafka cluster and topics.
    kafka: KafkaConfig
    # The vendors, by name; each entry's `protocol` picks its wire format.
    vendors: dict[str, VendorConfig]
    # The health and metrics server, and the HTTP client vendors are reached with.
    http: HttpConfig = HttpConfig()
    # Where dead letters go.
    dlq: DlqConfig = DlqConfig()
    # Flow control shared by every vendor pipeline.
    pipeline: PipelineConfig = PipelineConfig()
    # Optional shared state: global rate limits, Retry-After pauses and the dedup store.
    redis: RedisConfig | None = None
    # Skipping events already delivered to a vendor (same event_id).
    dedup: DedupConfig = DedupConfig()
    # Relay processes in this container (`run --workers N` overrides): one per core.
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # Topics whose records are a producer's own events (its JSON, CloudEvents), by a name of
    # your choice; topics not named here carry the canonical event.
    inputs: dict[str, InputConfig] = {}
    # The Confluent Schema Registry of `format: avro`, `protobuf` and `json_schema` inputs.
    schema_registry: SchemaRegistryConfig | None = None
    # OpenTelemetry traces of deliveries (off by default).
    tracing: TracingConfig = TracingConfig()

    def enabled_vendors(self) -> dict[str, VendorConfig]:
        """The vendors that get a pipeline."""
        return {name: vendor for name, vendor in self.vendors.items() if vendor.enabled}


# More values than a config ever has: an alias bomb (a few hundred bytes of nested `*refs`)
# expands to millions; the walk stops here instead of building them.
MAX_CONFIG_VALUES = 100_000
# Environment values this short are not masked in problem texts: they would garble the message.
_MIN_MASKED_ENV_CHARS = 3


class _Resolution:
    """What resolving `${ENV}` references found: problems, the values put in, a value budget."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []
        self.values: set[str] = set()
        self.left = MAX_CONFIG_VALUES

    def scrub(self, text: str) -> str:
        """A problem text with every substituted environment value masked, then redacted."""
        for value in sorted(self.values, key=len, reverse=True):
            if len(value) >= _MIN_MASKED_ENV_CHARS:
                text = text.replace(value, "***")
        # `kafka.sasl_password: ...` is a path and a message; only the message can hold a value.
        path, sep, message = text.partition(": ")
        return path + sep + redact(message) if sep else redact(text)


def _resolve_env(node: Any, path: str, found: _Resolution) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string by the variable's text, as text.

    The result is never parsed again: `abc #tail`, quotes, `0123`, `yes` and `{a: 1}` arrive byte
    for byte, and only the field a string lands in may convert it (an int field takes "8080").
    """
    found.left -= 1
    if found.left < 0:
        raise ConfigError(
            [
                f"(top level): the YAML expands to more than {MAX_CONFIG_VALUES} values "
                "(nested aliases?); refused"
            ]
        )
    if isinstance(node, dict):
        return {
            k: _resolve_env(v, f"{path}.{k}" if path else str(k), found) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_resolve_env(v, f"{path}[{i}]", found) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in found.env:
            found.values.add(found.env[name])
            return found.env[name]
        if default is not None:
            return default
        found.problems.append(f"{path}: environment variable {name} is not set")
        return ""

    return _ENV_REF.sub(substitute, node)


def _secret_values(node: Any, key: str = "", parent: str = "") -> list[str]:
    """Every string under a secret-looking key (api_key, token, X-Api-Key, Authorization...)."""
    if isinstance(node, dict):
        return [v for k, child in node.items() for v in _secret_values(child, str(k), key)]
    if isinstance(node, list):
        return [v for child in node for v in _secret_values(child, key, parent)]
    if isinstance(node, str) and key and _is_secret_field(key, parent):
        # `Bearer abc`: the token alone is the secret, wherever it turns up later.
        return [node, node.split()[-1]] if node.split() else []
    return []


def _msgspec_problem(prefix: str, exc: msgspec.ValidationError) -> str:
    """`Expected int, got str - at $.goals.x` → `vendors.v.goals.x: expected int, got str`."""
    message = str(exc)
    where = ""
    if " - at `$" in message:
        message, _, at = message.rpartition(" - at `$")
        where = at.rstrip("`")
    path = (prefix + where).lstrip(".") or "(top level)"
    text = message.replace("`", "")
    if path.startswith("vendors.") and path.endswith(".protocol") and text.startswith("Invalid"):
        text += "; choose from " + ", ".join(_protocol_names())
    return f"{path}: {text[:1].lower()}{text[1:]}"


def _protocol_names() -> list[str]:
    """Every vendor `protocol` tag the relay knows, sorted."""
    from service.vendors import PROTOCOLS

    return sorted(str(cls.__struct_config__.tag) for cls in PROTOCOLS)


def _vendor_problems(prefix: str, raw: Any, exc: msgspec.ValidationError) -> list[str]:
    """Name the exact map key msgspec reports as `[...]` (e.g. `goals.purchase`), every bad one."""
    message = str(exc)
    marker = message.find("[...]")
    at = message.find(" - at `$.")
    if marker < 0 or at < 0 or not isinstance(raw, dict):
        return [_msgspec_problem(prefix, exc)]
    keys = message[at + len(" - at `$.") : marker].split(".")
    container: Any = raw
    for key in keys:
        container = container.get(key) if isinstance(container, dict) else None
    if not isinstance(container, dict) or len(keys) != 1:
        return [_msgspec_problem(prefix, exc)]
    found = []
    for entry_key, entry in container.items():
        try:
            msgspec.convert(
                {**raw, keys[0]: {entry_key: entry}}, VendorConfig, str_keys=True, strict=False
            )
        except msgspec.ValidationError as entry_exc:
            text = _msgspec_problem(prefix, entry_exc)
            found.append(text.replace(f"{keys[0]}[...]", f"{keys[0]}.{entry_key}", 1))
    return found or [_msgspec_problem(prefix, exc)]


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----"
)


def ca_bundle_certificates(path: str) -> list[bytes]:
    """Each PEM certificate of the `http.ca_bundle` file; a ConfigError naming the field if none."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"http.ca_bundle: cannot read {path}: {exc.strerror}"]) from None
    certificates: list[bytes] = _PEM_CERTIFICATE.findall(data)
    if not certificates:
        raise ConfigError([f"http.ca_bundle: {path} holds no PEM certificate"])
    try:
        # OpenSSL parses each one: a truncated or corrupt certificate is refused here, at load,
        # rather than by whichever transport meets it first.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=b"\n".join(certificates).decode("ascii"))
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        problem = f"http.ca_bundle: {path}: a certificate is not valid ({reason})"
        raise ConfigError([problem]) from None
    return certificates


def _proxy_problems(config: Config, env: Mapping[str, str]) -> list[str]:
    """Each proxy setting that cannot be used, and each proxied vendor on a transport without
    proxy support; the secrets of the usable ones are remembered for redaction."""
    problems: list[str] = []
    secrets: list[str] = []
    for name, vendor in config.enabled_vendors().items():
        where = f"vendors.{name}.proxy" if vendor.proxy is not None else "http.proxy"
        try:
            policy = proxy_policy(effective_proxy(config.http.proxy, vendor.proxy), env)
        except ProxySettingError as exc:
            problems.append(exc.problem(where))
            continue
        if policy is None:
            continue
        secrets.extend(policy.secrets)
        kind = vendor.transport or config.http.transport
        if kind not in PROXY_TRANSPORTS:
            field = f"vendors.{name}.transport" if vendor.transport else "http.transport"
            problems.append(
                f"{field}: {kind} cannot send through an egress proxy ({where} is set);"
                f" use {' or '.join(sorted(PROXY_TRANSPORTS))}, or `proxy: direct` for {name}"
            )
    remember_secrets(secrets)
    return list(dict.fromkeys(problems))


def tracing_installed() -> bool:
    """Whether the `tracing` extra (OpenTelemetry SDK, OTLP/HTTP exporter) can be imported."""
    import importlib.util

    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http")
        )
    except (ImportError, ValueError):
        return False


def _check_semantics(config: Config, env: Mapping[str, str]) -> list[str]:
    problems = _proxy_problems(config, env)
    if config.http.ca_bundle is not None:
        try:
            ca_bundle_certificates(config.http.ca_bundle)
        except ConfigError as exc:
            problems.extend(exc.problems)
    kafka = config.kafka
    if kafka.security_protocol.startswith("SASL"):
        if kafka.sasl_mechanism is None:
            problems.append("kafka.sasl_mechanism: required with " + kafka.security_protocol)
        if not kafka.sasl_username or not kafka.sasl_password:
            problems.append("kafka.sasl_username/sasl_password: required with SASL")
    if kafka.heartbeat_interval_ms >= kafka.session_timeout_ms:
        problems.append("kafka.heartbeat_interval_ms: must be below session_timeout_ms")
    if not config.enabled_vendors():
        problems.append("vendors: no vendor is enabled")
    if config.dedup.enabled and config.dedup.backend == "redis" and config.redis is None:
        problems.append("dedup.backend: redis needs a `redis:` section")
    if config.tracing.max_export_batch_size > config.tracing.max_queue_size:
        problems.append("tracing.max_export_batch_size: must be at most max_queue_size")
    if config.tracing.enabled and not tracing_installed():
        problems.append(
            "tracing.enabled: the OpenTelemetry SDK is not installed (the `tracing` extra: "
            "pip install 'conversion-relay[tracing]')"
        )
    if config.schema_registry is None:
        problems.extend(
            f"inputs.{name}.format: {entry.format} needs a `schema_registry:` section"
            for name, entry in config.inputs.items()
            if entry.format in REGISTRY_FORMATS
        )
    registry = config.schema_registry
    if registry is not None and (registry.username is None) != (registry.password is None):
        problems.append("schema_registry: username and password go together (basic auth)")
    if registry is not None and registry.ssl_keyfile and not registry.ssl_certfile:
        problems.append("schema_registry.ssl_keyfile: needs ssl_certfile")
    return problems


def _input_problems(data: dict[str, Any]) -> list[str]:
    """Every input whose mapping cannot compile, or whose topic is not read, each named by its
    path (`inputs.crm.fields.event_id: ...`); checked whatever else is wrong in the file."""
    entries = data.get("inputs")
    if not isinstance(entries, dict):
        return []  # not a mapping: the section's own check says so
    kafka = data.get("kafka")
    topics = kafka.get("topics") if isinstance(kafka, dict) else None
    problems: list[str] = []
    owner: dict[str, str] = {}
    for name, raw in entries.items():
        try:
            entry = msgspec.convert(raw, InputConfig, strict=False)
        except msgspec.ValidationError:
            continue  # the section's own check names the field
        where = f"inputs.{name}"
        for path, message in input_problems(entry.format, entry.fields, entry.mode):
            problems.append(f"{where}.{path}: {message}")
        if isinstance(topics, list) and entry.topic not in topics:
            problems.append(
                f"{where}.topic: {entry.topic} is not in kafka.topics (the topics the relay reads)"
            )
        if entry.topic in owner:
            problems.append(
                f"{where}.topic: {entry.topic} is already read by inputs.{owner[entry.topic]}"
            )
        owner.setdefault(entry.topic, str(name))
    return problems


def _first_per_path(problems: list[str]) -> list[str]:
    """Keep the first problem of each path (a missing variable explains the type error after it)."""
    seen: set[str] = set()
    kept = []
    for problem in problems:
        path = problem.partition(": ")[0]
        if path not in seen:
            seen.add(path)
            kept.append(problem)
    return kept


def parse_config(data: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate raw YAML data; raise ConfigError listing every problem found."""
    if not isinstance(data, dict):
        raise ConfigError(["(top level): expected a mapping of sections"])
    found = _Resolution(os.environ if env is None else env)
    data = _resolve_env(data, "", found)
    problems = found.problems
    # From here on every text the process makes masks these, wherever they turn up.
    remember_secrets(_secret_values(data))
    # Each section and each vendor is checked on its own so that every error is reported.
    vendors_raw = data.get("vendors")
    if not isinstance(vendors_raw, dict) or not vendors_raw:
        problems.append("vendors: expected a mapping with at least one vendor")
        vendors_raw = {}
    vendors: dict[str, VendorConfig] = {}
    vendor_failed = False
    for name, raw in vendors_raw.items():
        try:
            vendors[str(name)] = msgspec.convert(raw, VendorConfig, str_keys=True, strict=False)
        except msgspec.ValidationError as exc:
            vendor_failed = True
            problems.extend(_vendor_entry_problems(f"vendors.{name}", raw, exc))
    rest = {k: v for k, v in data.items() if k != "vendors"}
    config: Config | None = None
    try:
        config = msgspec.convert({**rest, "vendors": {}}, Config, strict=False)
    except msgspec.ValidationError as exc:
        problems.extend(_struct_problems({**rest, "vendors": {}}, Config, "", exc))
    problems.extend(_input_problems(rest))
    if config is not None:
        # Checks across fields run whenever the sections they read are valid, so that one run
        # reports them beside the vendors' own mistakes.
        semantic = _check_semantics(msgspec.structs.replace(config, vendors=vendors), found.env)
        problems.extend(p for p in semantic if not (vendor_failed and p.startswith("vendors:")))
    if problems:
        kept = _first_per_path(_in_file_order(problems, data))
        raise ConfigError(list(dict.fromkeys(found.scrub(p) for p in kept)))
    assert config is not None
    return msgspec.structs.replace(config, vendors=vendors)


def _in_file_order(problems: list[str], data: dict[str, Any]) -> list[str]:
    """Problems sorted by where their path first appears in the file (stable otherwise)."""
    order: dict[str, int] = {}

    def walk(node: Any, path: str) -> None:
        order.setdefault(path, len(order))
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))

    walk(data, "")

    def position(problem: str) -> int:
        path = problem.partition(": ")[0].split("[", 1)[0]
        while path and path not in order:
            path = path.rpartition(".")[0]
        return order.get(path, len(order))

    return sorted(problems, key=position)


def _vendor_entry_problems(prefix: str, raw: Any, exc: msgspec.ValidationError) -> list[str]:
    """Every mistake in one vendor's entry, once its `protocol` names a known protocol."""
    from service.vendors import PROTOCOLS

    tag = raw.get("protocol") if isinstance(raw, dict) else None
    chosen = [cls for cls in PROTOCOLS if cls.__struct_config__.tag == tag]
    if not chosen or "[...]" in str(exc):
        return _vendor_problems(prefix, raw, exc)
    return _struct_problems(raw, chosen[0], prefix, exc)


def _struct_type(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct a field holds (`X`, `X | None`, `Annotated[X, ...]`), else None."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if (
        len(options) == 1
        and isinstance(options[0], type)
        and issubclass(options[0], msgspec.Struct)
    ):
        return options[0]
    return None


def _entry_problems(raw: dict[Any, Any], annotation: Any, where: str) -> list[str]:
    """Each bad entry of a map field, named by its key (`goals.purchase`, not `goals[...]`)."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    args = typing.get_args(annotation)
    value_type = args[1] if len(args) == 2 else Any
    problems = []
    for key, value in raw.items():
        try:
            msgspec.convert(value, value_type, strict=False)
        except msgspec.ValidationError as exc:
            problems.append(_msgspec_problem(f"{where}.{key}", exc))
    return problems or [f"{where}: invalid map"]


def _struct_problems(
    raw: Any, cls: type[msgspec.Struct], prefix: str, exc: msgspec.ValidationError
) -> list[str]:
    """Each field's problem in a section (msgspec stops at the first), nested Structs walked."""
    first = _msgspec_problem(prefix, exc)
    if not isinstance(raw, dict):
        return [first]
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.encode_name: f for f in msgspec.inspect.type_info(cls).fields}  # type: ignore[attr-defined]
    tag_field = cls.__struct_config__.tag_field
    where_self = prefix or "(top level)"
    problems: list[str] = []
    for key, value in raw.items():
        if key == tag_field:
            continue
        where = f"{prefix}.{key}" if prefix else str(key)
        field = fields.get(key)
        if field is None:
            problems.append(f"{where_self}: object contains unknown field {key}")
            continue
        annotation = hints[field.name]
        try:
            msgspec.convert(value, annotation, strict=False)
        except msgspec.ValidationError as field_exc:
            nested = _struct_type(annotation)
            if nested is not None and isinstance(value, dict):
                problems.extend(_struct_problems(value, nested, where, field_exc))
            elif isinstance(value, dict) and "[...]" in str(field_exc):
                problems.extend(_entry_problems(value, annotation, where))
            else:
                problems.append(_msgspec_problem(where, field_exc))
    for field in fields.values():
        if field.required and field.encode_name not in raw:
            problems.append(f"{where_self}: object missing required field {field.encode_name}")
    return problems or [first]


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_problem(str(path), exc)]) from None
    return parse_config(data, env)


def yaml_problem(path: str, exc: yaml.YAMLError) -> str:
    """Where and what the syntax error is, never the line itself (it may hold a secret)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(exc, "context", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    what = f"{context}: {problem}" if context else problem
    # The problem text names at most a character ("found character '\\t'"), never a value.
    return redact(f"{path}: not valid YAML{where}: {what}")


_SECRET_KEYS = re.compile(r"(pass|secret|token|api_?key|apikey|credential)", re.IGNORECASE)
# Webhook headers that say how the body is encoded; every other configured header may be a key.
_PLAIN_HEADERS = frozenset({"content-type", "accept", "user-agent"})


def _is_secret_field(key: str, parent: str) -> bool:
    if parent == "headers":
        return key.lower() not in _PLAIN_HEADERS
    return bool(_SECRET_KEYS.search(key)) or is_secret_key(key)


def redacted(config: Config) -> dict[str, Any]:
    """The config as plain data with every secret value (and webhook header value) as `***`."""

    def walk(node: Any, parent: str = "") -> Any:
        if isinstance(node, dict):
            return {
                k: "***" if v and _is_secret_field(str(k), parent) else walk(v, str(k))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v, parent) for v in node]
        if isinstance(node, str):
            return redact(node)
        return node

    result: dict[str, Any] = walk(msgspec.to_builtins(config))
    return result


def plaintext_warning(config: Config) -> str | None:
    """One sentence naming each plain-text transport the config uses; None when there is none."""
    found = []
    if config.kafka.security_protocol == "SASL_PLAINTEXT":
        found.append("kafka.security_protocol SASL_PLAINTEXT sends the SASL password unencrypted")
    plain = [name for name, v in config.enabled_vendors().items() if v.base_url.startswith("http:")]
    if plain:
        found.append(f"vendors {', '.join(sorted(plain))} use http:// (credentials in clear)")
    return "plain-text transport: " + "; ".join(found) if found else None


def _shown_proxy(setting: VendorProxySetting) -> str | None:
    """A vendor's proxy for the summary, credentials never shown; None = direct."""
    if setting is None or setting == "direct":
        return None
    if setting == "env":
        return "env (HTTPS_PROXY/HTTP_PROXY/NO_PROXY)"
    try:
        policy = proxy_policy(setting, {})
    except ProxySettingError:
        return "(invalid)"
    return policy.shown if policy is not None else None


def summary(config: Config) -> str:
    """A short human summary for `check-config`: vendors, protocols and goal routes, no secret."""
    kafka = redacted(config)["kafka"]
    lines = [
        f"kafka: {', '.join(kafka['bootstrap_servers'])} topics={','.join(kafka['topics'])}"
        f" security={kafka['security_protocol']} group_prefix={kafka['group_prefix']}",
        f"dlq: {config.dlq.topic}",
    ]
    for name, vendor in config.vendors.items():
        state = "enabled" if vendor.enabled else "disabled"
        routes = ", ".join(f"{goal} -> {gid}" for goal, gid in vendor.goal_ids().items())
        tag = type(vendor).__struct_config__.tag
        proxy = _shown_proxy(effective_proxy(config.http.proxy, vendor.proxy))
        lines.append(
            f"vendor {name} ({tag}, {state}): {shown_url(vendor.base_url)}"
            f" concurrency={vendor.concurrency}{f' proxy={proxy}' if proxy else ''}"
            f" goals: {routes or '(none)'}"
        )
    for name, entry in config.inputs.items():
        lines.append(
            f"input {name}: topic {entry.topic} format={entry.format}"
            + (f" mode={entry.mode}" if entry.format == "cloudevents" else "")
            + (f" fields: {', '.join(entry.fields)}" if entry.fields else "")
        )
    warning = plaintext_warning(config)
    if warning:
        lines.append(f"warning: {warning}")
    # Goal ids and topics come from the file too: the same redaction as every other output.
    return redact("\n".join(lines))
