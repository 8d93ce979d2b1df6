"""The Confluent Schema Registry client of `avro`, `protobuf` and `json_schema` inputs:
`GET /schemas/ids/{id}`, one fetch per id at a time, its answer compiled into the bounded cache
(service/core/registry.py).

A PROTOBUF schema is read as the base64 FileDescriptorProto confluent-kafka's serializer
registers; a registry answering with .proto text (its default) is asked again with
`?format=serialized`. Its `references` (imported files under other subjects) are fetched with
`GET /subjects/{subject}/versions/{version}?format=serialized`, each before the files that
import it; the well-known google/protobuf/*.proto files are built in, never fetched.

A registry that is down, slow or refusing (5xx, timeout, connection error, 401/403) never
dead-letters a record: the records that need its schema wait, the fetch is tried again every
`retry_interval_s` (steady, so the first record after the outage goes within about one
interval), and the outage is visible in /status, `conversion_relay_schema_registry_down` and one
log line when it starts (one more when it ends). Only Confluent's 40403 "Schema not found" makes
an id unknown (its records are dead-lettered as unknown_schema).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp
import orjson

from service.config import SchemaRegistryConfig
from service.core.protobuf import is_builtin, serialized
from service.core.registry import (
    UNDECODABLE,
    UNKNOWN_SCHEMA,
    Cached,
    SchemaCache,
    Unusable,
    compile_schema,
)
from service.logs import redact
from service.metrics import Metrics

log = logging.getLogger("conversion_relay.schema_registry")

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_ACCEPT = f"{_CONTENT_TYPE}, application/json"
_SCHEMA_NOT_FOUND = 40403
# Subject not found, version not found: a reference naming what the registry does not hold.
_VERSION_NOT_FOUND = (40401, 40402)
_JITTER = 0.2


class RegistryDown(Exception):
    """The registry gave no usable answer (down, slow, refusing): try again later."""


class SchemaRegistryClient:
    """Fetches and caches writer schemas by id; the `SchemaSource` of every registry input."""

    def __init__(self, config: SchemaRegistryConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.cache = SchemaCache(config.max_schemas)
        self._base = config.url.rstrip("/")
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._fetches: dict[int, asyncio.Task[None]] = {}
        self.down_since_s: float | None = None  # epoch seconds of the outage's first failure
        self.last_error = ""
        self.waiting = 0  # records waiting for a schema now
        self._closed = False
        if metrics is not None:
            metrics.schema_registry_down.set(0)
            for result in ("ok", "unknown", "error"):
                metrics.schema_registry_requests.labels(result)

    # ---- SchemaSource ------------------------------------------------------------------------

    def cached(self, schema_id: int) -> Cached | None:
        """The compiled schema if cached; None if the registry must be asked."""
        return self.cache.get(schema_id)

    def when_ready(self, schema_id: int, callback: Callable[[], None]) -> None:
        """Fetch the id if no one is fetching it (one fetch per id however many records wait);
        call `callback` once it is cached. Nothing is called back after `aclose`."""
        if self._closed:
            return
        task = self._fetches.get(schema_id)
        if task is None:
            task = self._fetches[schema_id] = asyncio.create_task(self._fetch(schema_id))
            task.add_done_callback(lambda _: self._fetches.pop(schema_id, None))
        self.waiting += 1

        def done(finished: asyncio.Task[None]) -> None:
            self.waiting -= 1
            if not finished.cancelled():
                callback()

        task.add_done_callback(done)

    # ---- state -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For /status: up or down (since when, why), schemas cached, records waiting."""
        down = self.down_since_s
        return {
            "url": redact(self._base),
            "state": "down" if down is not None else "up",
            "down_for_s": round(time.time() - down, 1) if down is not None else None,
            "last_error": self.last_error or None,
            "schemas_cached": len(self.cache),
            "max_schemas": self.cache.max_schemas,
            "records_waiting": self.waiting,
        }

    async def aclose(self) -> None:
        """Stop every fetch and close the HTTP session."""
        self._closed = True
        for task in list(self._fetches.values()):
            task.cancel()
        await self.close_session()

    async def close_session(self) -> None:
        """Close the HTTP session (the next fetch opens another, e.g. in another event loop)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- I/O ---------------------------------------------------------------------------------

    def _make_session(self) -> aiohttp.ClientSession:
        config = self.config
        context: ssl.SSLContext | bool = True
        if config.url.startswith("https://") and (config.ssl_cafile or config.ssl_certfile):
            context = ssl.create_default_context(cafile=config.ssl_cafile)
            if config.ssl_certfile:
                context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile)
        headers = {"Accept": _ACCEPT}
        if config.username is not None and config.password is not None:
            headers["Authorization"] = aiohttp.encode_basic_auth(config.username, config.password)
        return aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=config.timeout_s),
            connector=aiohttp.TCPConnector(ssl=context, limit=8),
        )

    async def _fetch(self, schema_id: int) -> None:
        """Ask until the registry answers for the id (a schema, or 40403), then cache it."""
        while True:
            try:
                entry = await self._get(schema_id)
            except RegistryDown as exc:
                self._count("error")
                self._down(str(exc))
                interval_s = self.config.retry_interval_s
                await asyncio.sleep(interval_s * random.uniform(1 - _JITTER, 1 + _JITTER))
                continue
            self._count("unknown" if isinstance(entry, Unusable) else "ok")
            self._up()
            self.cache.put(schema_id, entry)
            return

    async def _request(self, path: str) -> tuple[int, dict[str, Any], bytes]:
        """(status, JSON answer, body) of a GET; RegistryDown when no answer came."""
        if self._session is None:
            self._session = self._make_session()
        try:
            async with self._session.get(f"{self._base}{path}") as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RegistryDown(f"{type(exc).__name__}: {exc}") from None
        return status, _json(body), body

    async def _get(self, schema_id: int) -> Cached:
        path = f"/schemas/ids/{schema_id}"
        status, answer, body = await self._request(path)
        if status == 200 and isinstance(answer.get("schema"), str):
            kind = str(answer.get("schemaType") or "AVRO").upper()
            text: str = answer["schema"]
            if kind == "PROTOBUF" and serialized(text) is None:
                # .proto text, a real registry's default: the FileDescriptorProto, as the
                # deserializer asks for it.
                status, answer, body = await self._request(f"{path}?format=serialized")
                if status != 200 or not isinstance(answer.get("schema"), str):
                    _no_answer(status, answer, body)
                text = answer["schema"]
            references = _references(answer)
            if kind == "PROTOBUF" and references:
                imports = await self._imports(schema_id, references, set())
                if isinstance(imports, Unusable):
                    return imports
                return compile_schema(schema_id, kind, text, imports)
            return compile_schema(schema_id, kind, text, references=[r[0] for r in references])
        if status == 404 and answer.get("error_code") == _SCHEMA_NOT_FOUND:
            return Unusable(UNKNOWN_SCHEMA, f"schema id {schema_id} is not in the registry")
        _no_answer(status, answer, body)

    async def _imports(
        self, schema_id: int, references: list[tuple[str, str, int]], seen: set[str]
    ) -> list[tuple[str, bytes]] | Unusable:
        """The serialized files a protobuf schema's references name (and theirs, first), or why
        one cannot be had (a subject or version the registry does not hold: undecodable)."""
        found: list[tuple[str, bytes]] = []
        for name, subject, version in references:
            if is_builtin(name) or name in seen:
                continue
            seen.add(name)
            path = f"/subjects/{quote(subject, safe='')}/versions/{version}?format=serialized"
            status, answer, body = await self._request(path)
            if status == 404 and answer.get("error_code") in _VERSION_NOT_FOUND:
                return Unusable(
                    UNDECODABLE,
                    f"schema {schema_id} imports {name} (subject {subject} version {version}), "
                    "which is not in the registry",
                )
            if status != 200 or not isinstance(answer.get("schema"), str):
                _no_answer(status, answer, body)
            raw = serialized(answer["schema"])
            if raw is None:
                return Unusable(
                    UNDECODABLE,
                    f"schema {schema_id} imports {name} (subject {subject} version {version}), "
                    "which the registry gave as .proto text, not serialized",
                )
            nested = await self._imports(schema_id, _references(answer), seen)
            if isinstance(nested, Unusable):
                return nested
            found += [*nested, (name, raw)]
        return found

    async def register(self, subject: str, schema_text: str, schema_type: str = "AVRO") -> int:
        """The id of a schema under a subject (`POST /subjects/{subject}/versions`: registered as
        its next version if new, as a producer's serializer does); RegistryDown if refused."""
        if self._session is None:
            self._session = self._make_session()
        body: dict[str, str] = {"schema": schema_text}
        if schema_type != "AVRO":
            body["schemaType"] = schema_type
        url = f"{self._base}/subjects/{quote(subject, safe='')}/versions"
        try:
            async with self._session.post(
                url, data=orjson.dumps(body), headers={"Content-Type": _CONTENT_TYPE}
            ) as response:
                answer_bytes = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RegistryDown(f"{type(exc).__name__}: {exc}") from None
        answer = _json(answer_bytes)
        if status == 200 and isinstance(answer.get("id"), int):
            return int(answer["id"])
        message = answer.get("message") or answer_bytes[:200].decode("utf-8", "replace")
        raise RegistryDown(f"registering under {subject}: HTTP {status}: {message}")

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.schema_registry_requests.labels(result).inc()

    def _down(self, error: str) -> None:
        self.last_error = redact(error)[:300]
        if self.down_since_s is None:
            self.down_since_s = time.time()
            if self._metrics is not None:
                self._metrics.schema_registry_down.set(1)
            log.warning(
                "schema registry unreachable; records needing a schema wait (none is "
                "dead-lettered), retrying every %ss: %s",
                self.config.retry_interval_s,
                self.last_error,
            )

    def _up(self) -> None:
        down = self.down_since_s
        if down is None:
            return
        self.down_since_s = None
        if self._metrics is not None:
            self._metrics.schema_registry_down.set(0)
        log.info("schema registry reachable again after %.1fs", time.time() - down)


def _no_answer(status: int, answer: dict[str, Any], body: bytes) -> NoReturn:
    """Anything else (5xx, 401/403, a 404 from a wrong URL) is no answer about the id."""
    message = answer.get("message") or body[:200].decode("utf-8", "replace")
    raise RegistryDown(f"HTTP {status}: {message}")


def _references(answer: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(name, subject, version) of each reference an answer lists."""
    found = answer.get("references")
    if not isinstance(found, list):
        return []
    return [
        (str(r.get("name")), str(r.get("subject")), int(r.get("version") or -1))
        for r in found
        if isinstance(r, dict)
    ]


def _json(body: bytes) -> dict[str, Any]:
    try:
        found = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}
