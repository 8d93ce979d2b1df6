"""Configuration: one YAML file decoded into frozen Structs, `${ENV}` secrets resolved at load,
and every problem reported with its path."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from service.delivery.redis_config import DedupConfig, RedisConfig
from service.errors import ConfigError
from service.vendors import VendorConfig

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]


class Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of config sections: immutable, and a misspelt key is an error, not a silent default."""


class KafkaConfig(Strict, frozen=True):
    """Where the events are and how to reach the cluster."""

    bootstrap_servers: Annotated[list[str], msgspec.Meta(min_length=1)]
    topics: Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]
    group_prefix: Annotated[str, msgspec.Meta(min_length=1)] = "conversion-relay"
    client_id: str = "conversion-relay"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # Real Kafka wants >= 6000 ms; the embedded Tansu broker rebalances faster with less.
    session_timeout_ms: PositiveInt = 10_000
    heartbeat_interval_ms: PositiveInt = 3_000
    max_poll_interval_ms: PositiveInt = 300_000
    # Idempotence is off by default because Tansu does not support InitProducerId.
    enable_idempotence: bool = False
    # Records of aborted transactions are never read (every consumer: pipelines, replay, lag).
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"


class HttpConfig(Strict, frozen=True):
    """The health and metrics server."""

    host: str = "0.0.0.0"
    port: Port = 8080


class DlqConfig(Strict, frozen=True):
    """Where dead letters go."""

    topic: Annotated[str, msgspec.Meta(min_length=1)] = "conversions.dlq"


class PipelineConfig(Strict, frozen=True):
    """Flow control shared by every vendor pipeline."""

    # Records tracked per pipeline, and per partition from its commit point (the fetch window).
    max_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 1000
    # Bytes of fetched record values and keys held per pipeline before fetching pauses.
    max_in_flight_bytes: PositiveInt = 32 * 1024 * 1024
    # Partitions paused at max_in_flight resume below this many in-flight records.
    resume_below: Annotated[int, msgspec.Meta(ge=0)] | None = None
    commit_interval_s: PositiveFloat = 1.0
    # A commit point that advanced is committed within this delay (commits coalesced over it).
    commit_coalesce_s: PositiveFloat = 0.1
    revoke_timeout_s: PositiveFloat = 10.0
    shutdown_grace_s: PositiveFloat = 20.0
    max_record_bytes: PositiveInt = 1_048_576
    # How often each pipeline refreshes its consumer-lag gauge.
    lag_interval_s: PositiveFloat = 5.0

    @property
    def low_water(self) -> int:
        """In-flight count under which paused partitions resume."""
        if self.resume_below is None:
            return self.max_in_flight // 2
        return min(self.resume_below, self.max_in_flight - 1)


class Config(Strict, frozen=True):
    """The whole configuration."""

    kafka: KafkaConfig
    vendors: dict[str, VendorConfig]
    http: HttpConfig = HttpConfig()
    dlq: DlqConfig = DlqConfig()
    pipeline: PipelineConfig = PipelineConfig()
    # Optional shared state: global rate limits, Retry-After pauses and the dedup store.
    redis: RedisConfig | None = None
    dedup: DedupConfig = DedupConfig()
    # Relay processes in this container (`run --workers N` overrides): one per core.
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1

    def enabled_vendors(self) -> dict[str, VendorConfig]:
        """The vendors that get a pipeline."""
        return {name: vendor for name, vendor in self.vendors.items() if vendor.enabled}


def _resolve_env(node: Any, path: str, env: Mapping[str, str], problems: list[str]) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string, noting each missing variable."""
    if isinstance(node, dict):
        return {
            k: _resolve_env(v, f"{path}.{k}" if path else str(k), env, problems)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_resolve_env(v, f"{path}[{i}]", env, problems) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    whole = _ENV_REF.fullmatch(node)
    resolved = _ENV_REF.sub(substitute, node)
    # A value that is only a reference may stand for a number ("${DB_ID}" → 7).
    if whole is not None and resolved != node:
        try:
            return yaml.safe_load(resolved) if resolved.strip() else resolved
        except yaml.YAMLError:
            return resolved
    return resolved


def _msgspec_problem(prefix: str, exc: msgspec.ValidationError) -> str:
    """`Expected int, got str - at $.goals.x` → `vendors.v.goals.x: expected int, got str`."""
    message = str(exc)
    where = ""
    if " - at `$" in message:
        message, _, at = message.rpartition(" - at `$")
        where = at.rstrip("`")
    path = (prefix + where).lstrip(".") or "(top level)"
    text = message.replace("`", "")
    return f"{path}: {text[:1].lower()}{text[1:]}"


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
            msgspec.convert({**raw, keys[0]: {entry_key: entry}}, VendorConfig, str_keys=True)
        except msgspec.ValidationError as entry_exc:
            text = _msgspec_problem(prefix, entry_exc)
            found.append(text.replace(f"{keys[0]}[...]", f"{keys[0]}.{entry_key}", 1))
    return found or [_msgspec_problem(prefix, exc)]


def _check_semantics(config: Config) -> list[str]:
    problems = []
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
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError(["(top level): expected a mapping of sections"])
    data = _resolve_env(data, "", os.environ if env is None else env, problems)
    # Each section and each vendor is checked on its own so that every error is reported.
    vendors_raw = data.get("vendors")
    if not isinstance(vendors_raw, dict) or not vendors_raw:
        problems.append("vendors: expected a mapping with at least one vendor")
        vendors_raw = {}
    vendors: dict[str, VendorConfig] = {}
    for name, raw in vendors_raw.items():
        try:
            vendors[str(name)] = msgspec.convert(raw, VendorConfig, str_keys=True)
        except msgspec.ValidationError as exc:
            problems.extend(_vendor_problems(f"vendors.{name}", raw, exc))
    rest = {k: v for k, v in data.items() if k != "vendors"}
    try:
        msgspec.convert({**rest, "vendors": {}}, Config)
    except msgspec.ValidationError as exc:
        problems.append(_msgspec_problem("", exc))
    if problems:
        raise ConfigError(list(dict.fromkeys(_first_per_path(problems))))
    config = msgspec.convert({**rest, "vendors": {}}, Config)
    config = msgspec.structs.replace(config, vendors=vendors)
    problems = _check_semantics(config)
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    return parse_config(data, env)


_SECRET_KEYS = re.compile(r"(pass|secret|token|api_?key|apikey|credential)", re.IGNORECASE)


def redacted(config: Config) -> dict[str, Any]:
    """The config as plain data with every secret-looking value replaced by `***`."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: "***" if _SECRET_KEYS.search(str(k)) and v else walk(v) for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(msgspec.to_builtins(config))
    return result


def summary(config: Config) -> str:
    """A short human summary for `check-config`: vendors, protocols and goal routes."""
    lines = [
        f"kafka: {', '.join(config.kafka.bootstrap_servers)} topics={','.join(config.kafka.topics)}"
        f" security={config.kafka.security_protocol} group_prefix={config.kafka.group_prefix}",
        f"dlq: {config.dlq.topic}",
    ]
    for name, vendor in config.vendors.items():
        state = "enabled" if vendor.enabled else "disabled"
        routes = ", ".join(f"{goal} -> {gid}" for goal, gid in vendor.goal_ids().items())
        lines.append(
            f"vendor {name} ({type(vendor).__struct_config__.tag}, {state}): {vendor.base_url}"
            f" concurrency={vendor.concurrency} goals: {routes or '(none)'}"
        )
    return "\n".join(lines)
