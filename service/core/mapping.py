"""Declared input mapping: how a producer's own record becomes the canonical ConversionEvent.

A mapping is `fields: {target: spec}` from the config, compiled once at start into:

- a *shape*: msgspec Struct types made from every source path, so one C decode reads only the
  fields the mapping names and skips the rest of the record (no dict of the whole record);
- one generated straight-line function from a decoded record to the event's fields: attribute
  reads through the shape inlined (each object on the way read once), the common conversions
  inlined, the rest (and every error, named by its field) in small per-field functions;
- the event's own validation (msgspec.convert into ConversionEvent) at the end.

Nothing is parsed per record from text. A record that does not fit raises `MappingError` (an
`EventError`, so it is dead-lettered as `invalid_event`) naming the target field and its source.

Source expressions: `PATH [OP NUMBER] [| CONVERSION]`, PATH = `$` then `.name`, `["any key"]` or
`[index]` steps, or one of the Kafka record's own (`RECORD_PATHS`: `@key`, `@timestamp`,
`@topic`, `@partition`, `@offset`, `@headers.NAME`); OP one of `* / + -`; CONVERSION one of
`CONVERSIONS`.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from service.errors import EventError
from service.events import ConversionEvent

# Targets a mapping may fill: the canonical event's fields (service/events.py), dotted.
SCALAR_TARGETS = frozenset(
    {
        "event_id",
        "goal",
        "occurred_at",
        "value",
        "currency",
        "vendors",
        "customer.email",
        "customer.phone",
        "customer.ip",
        "customer.user_agent",
        "context.session_id",
        "context.referer",
        "context.accept_language",
        "context.utm_source",
        "context.utm_medium",
        "context.utm_campaign",
        "context.utm_term",
        "context.utm_content",
        "order.order_id",
        "order.product_id",
        "order.sku_id",
        "order.count_items",
        "order.categories",
    }
)
# Maps a whole source object may be copied into, or filled key by key (`params.plan`).
MAP_TARGETS = ("params", "page_params", "attributes", "customer.ids")
REQUIRED_TARGETS = ("event_id", "goal", "occurred_at")
SPEC_KEYS = frozenset({"from", "as", "map", "default", "const"})

_NAME = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)")
_QUOTED = re.compile(r"""\[\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')\s*\]""")
_INDEX = re.compile(r"\[\s*(-?\d+)\s*\]")
_ARITH = re.compile(r"\s*([*/+-])\s*(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*$")
_INDEXES = re.compile(r"\[(?:\d+|\.\.\.)\]")  # `[0]`, `[...]` in msgspec's error paths
_OPS: dict[str, Callable[[float, float], float]] = {
    "*": operator.mul,
    "/": operator.truediv,
    "+": operator.add,
    "-": operator.sub,
}


# A tuple, not `int | float`: a union object would be built on every call.
_NUMBERS = (int, float)


class SpecError(Exception):
    """A mapping that cannot be compiled; `where` is the key under `fields` it is about."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)


class MappingError(EventError):
    """A record the mapping cannot turn into an event; the message names the target field."""

    def __init__(self, message: str, kind: str = "schema", field: str = "") -> None:
        self.field = field
        super().__init__(message, kind)


class _Fault(Exception):
    """Why one field's value cannot be had (the caller adds the field and its source)."""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


# ---------------------------------------------------------------- conversions


def _number(value: Any) -> float | int:
    """A JSON number, or a string holding one (producers often quote numbers)."""
    kind = type(value)
    if kind is int or kind is float:
        return value  # type: ignore[no-any-return]
    if kind is not str:
        raise _Fault(f"expected a number, got {_type_name(value)}")
    try:
        number = float(value) if any(c in value for c in ".eEnN") else int(value)
    except ValueError:  # also a numeric string of more than 4300 digits
        raise _Fault("expected a number, got a str that is not a number") from None
    if not math.isfinite(number):  # "1e400", "nan", "inf"
        raise _Fault("expected a number, got a str that is not a finite number")
    return number


def _epoch(scale: float, unit: str) -> Callable[[Any], Any]:
    # Seconds, not a datetime: the event's validation (lax mode) makes the UTC datetime of a
    # number in C, and says so when it is out of range.
    def convert(value: Any) -> float | int:
        try:
            number = _number(value)
            return number / scale if scale != 1.0 else number
        except _Fault as fault:
            raise _Fault(f"{unit} since the epoch: {fault}") from None
        except OverflowError:
            raise _Fault(f"{unit} since the epoch out of range") from None

    return convert


def _iso8601(value: Any) -> datetime:
    """ISO 8601 as Python reads it (basic or extended, date alone too); no offset = UTC."""
    if not isinstance(value, str):
        raise _Fault(f"expected an ISO 8601 date-time string, got {_type_name(value)}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _Fault("not an ISO 8601 date-time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _rfc3339(value: Any) -> Any:
    # The event's own decoder parses RFC 3339 (strictly, offset required) when the event is
    # validated: the string is passed on untouched, the fastest path for the common case.
    if not isinstance(value, str):
        raise _Fault(f"expected an RFC 3339 date-time string, got {_type_name(value)}")
    return value


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _NUMBERS):
        return str(value)
    raise _Fault(f"expected a string, number or bool to make a string of, got {_type_name(value)}")


# Conversions to a time, for occurred_at only.
TIME_CONVERSIONS = frozenset({"epoch_ms", "epoch_s", "unix_s", "rfc3339", "iso8601"})
CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "epoch_ms": _epoch(1000.0, "milliseconds"),
    "epoch_s": _epoch(1.0, "seconds"),
    "unix_s": _epoch(1.0, "seconds"),
    "rfc3339": _rfc3339,
    "iso8601": _iso8601,
    "string": _string,
    "number": _number,
}


# ---------------------------------------------------------------- expressions


class Path(msgspec.Struct, frozen=True):
    """A parsed source path: `$` then key (str) and index (int) steps; `record`: a path into
    the Kafka record itself (`@key`: steps ("key",); `@headers.NAME`: ("headers", NAME))."""

    text: str
    steps: tuple[str | int, ...]
    record: bool = False


# What `@` paths read of the Kafka record, as Kafka Connect's InsertField and Redpanda Connect's
# metadata give them: the key and header values as UTF-8 text, the timestamp in epoch
# milliseconds (map it with `| epoch_ms`), the topic, partition and offset as they are.
RECORD_PATHS = ("key", "timestamp", "topic", "partition", "offset", "headers")


class RecordMeta(Protocol):
    """The Kafka record around a value (aiokafka's ConsumerRecord is one)."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def timestamp(self) -> int: ...

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def headers(self) -> Any: ...


class Expr(msgspec.Struct, frozen=True):
    """A parsed source expression: a path, optional arithmetic, optional conversion."""

    text: str
    path: Path
    op: str | None = None
    operand: float = 0.0
    conversion: str | None = None


def parse_path(text: str) -> Path:
    """`$.order.items[0]["unit price"]` → its steps; ValueError saying what is wrong."""
    text = text.strip()
    if text.startswith("@"):
        return _record_path(text)
    if not text.startswith("$"):
        raise ValueError(
            f"a path starts with $ (the record's value) or @ (its key, timestamp, "
            f"topic, partition, offset or headers), got {text!r}"
        )
    steps: list[str | int] = []
    pos = 1
    while pos < len(text):
        for pattern in (_NAME, _QUOTED, _INDEX):
            match = pattern.match(text, pos)
            if match is None:
                continue
            if pattern is _INDEX:
                steps.append(int(match.group(1)))
            elif pattern is _QUOTED:
                quoted = match.group(1) if match.group(1) is not None else match.group(2)
                steps.append(re.sub(r"\\(.)", r"\1", quoted))
            else:
                steps.append(match.group(1))
            pos = match.end()
            break
        else:
            raise ValueError(
                f"cannot read the path {text!r} at {text[pos:]!r}: steps are .name, "
                '["any key"] or [index]'
            )
    if not steps:
        raise ValueError("`$` alone is the whole record: name the field or object to take")
    if isinstance(steps[0], int):
        raise ValueError(f"{text!r}: a record is a JSON object; start with $.name")
    return Path(text, tuple(steps))


_RECORD_NAME = re.compile(r"@([A-Za-z_]+)")


def _record_path(text: str) -> Path:
    """`@key`, `@timestamp`, `@topic`, `@partition`, `@offset`, `@headers.NAME` (or
    `@headers["any name"]`) → a record Path; ValueError saying what is wrong."""
    choices = ", ".join(f"@{name}" for name in RECORD_PATHS[:-1]) + ", @headers.NAME"
    match = _RECORD_NAME.match(text)
    if match is None or match.group(1) not in RECORD_PATHS:
        raise ValueError(
            f"unknown record path {text!r}; choose from {choices} (a constant starting with @ "
            "is written {const: ...})"
        )
    name, rest = match.group(1), text[match.end() :]
    if name != "headers":
        if rest:
            raise ValueError(f"{text!r}: @{name} is a whole value (nothing below it to read)")
        return Path(text, (name,), record=True)
    header: str | None = None
    for pattern in (_NAME, _QUOTED):
        found = pattern.fullmatch(rest)
        if found is None:
            continue
        if pattern is _QUOTED:
            quoted = found.group(1) if found.group(1) is not None else found.group(2)
            header = re.sub(r"\\(.)", r"\1", quoted)
        else:
            header = found.group(1)
    if not header:
        raise ValueError(f'{text!r}: name one header, as @headers.NAME or @headers["any name"]')
    return Path(text, ("headers", header), record=True)


def parse_expr(text: str) -> Expr:
    """`$.total_cents / 100`, `$.ts | epoch_ms` → an Expr; ValueError saying what is wrong."""
    body, bar, conversion = text.partition("|")
    name = conversion.strip() if bar else None
    if name is not None and name not in CONVERSIONS:
        raise ValueError(f"unknown conversion {name!r}; choose from {', '.join(CONVERSIONS)}")
    op, operand = None, 0.0
    arith = _ARITH.search(body)
    if arith is not None and not body[: arith.start()].rstrip().endswith(("[", "(")):
        op, operand = arith.group(1), float(arith.group(2))
        body = body[: arith.start()]
        if op == "/" and operand == 0:
            raise ValueError("division by zero")
    return Expr(text.strip(), parse_path(body), op, operand, name)


# ---------------------------------------------------------------- field specs


class FieldSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One target field as declared: from an expression or a constant, with its options."""

    target: str
    source: Expr | None = None
    const: Any = None
    default: Any = None
    mapping: Mapping[Any, Any] | None = None

    @property
    def shown(self) -> str:
        """What the field comes from, as the user wrote it (for errors)."""
        if self.source is not None:
            return self.source.text
        return "a constant"


def _check_target(target: str) -> None:
    if target in SCALAR_TARGETS or target in MAP_TARGETS:
        return
    if any(target.startswith(m + ".") and len(target) > len(m) + 1 for m in MAP_TARGETS):
        return
    raise SpecError(
        target,
        "not a field of the canonical event; choose from "
        + ", ".join(sorted(SCALAR_TARGETS))
        + ", or a map: "
        + ", ".join(f"{m} / {m}.KEY" for m in MAP_TARGETS),
    )


def _expr(target: str, where: str, text: Any) -> Expr:
    if not isinstance(text, str):
        raise SpecError(
            where, f"expected an expression ($.path or @key...), got {_type_name(text)}"
        )
    try:
        return parse_expr(text)
    except ValueError as exc:
        raise SpecError(where, str(exc)) from None


def parse_field(target: str, spec: Any) -> FieldSpec:
    """A target's spec (a `$` expression, a constant, or `{from, as, map, default, const}`)."""
    _check_target(target)
    if isinstance(spec, str) and spec.lstrip().startswith(("$", "@")):
        return _timed(FieldSpec(target=target, source=_expr(target, target, spec)), target)
    if not isinstance(spec, dict):
        if isinstance(spec, list) and target != "vendors" and target != "order.categories":
            raise SpecError(target, "a constant list fits only vendors and order.categories")
        return _checked(FieldSpec(target=target, const=spec), target)
    unknown = sorted(str(k) for k in spec if k not in SPEC_KEYS)
    if unknown:
        raise SpecError(
            target,
            f"unknown key {', '.join(unknown)}; a field takes {', '.join(sorted(SPEC_KEYS))}",
        )
    if "const" in spec:
        if len(spec) > 1:
            raise SpecError(target, "const stands alone (no from, as, map or default with it)")
        return _checked(FieldSpec(target=target, const=spec["const"]), f"{target}.const")
    if "from" not in spec:
        raise SpecError(target, "expected `from: $.path` (or `const:`)")
    source = _expr(target, f"{target}.from", spec["from"])
    conversion = spec.get("as")
    if conversion is not None:
        if source.conversion is not None:
            raise SpecError(f"{target}.as", "a conversion is given twice (`| ...` and `as`)")
        if conversion not in CONVERSIONS:
            raise SpecError(
                f"{target}.as",
                f"unknown conversion {conversion!r}; choose from {', '.join(CONVERSIONS)}",
            )
        source = msgspec.structs.replace(
            source, conversion=conversion, text=f"{source.text} | {conversion}"
        )
    mapping = spec.get("map")
    if mapping is not None and not isinstance(mapping, dict):
        raise SpecError(f"{target}.map", f"expected a mapping, got {_type_name(mapping)}")
    made = _timed(
        FieldSpec(target=target, source=source, default=spec.get("default"), mapping=mapping),
        f"{target}.as" if conversion is not None else f"{target}.from",
    )
    if made.default is not None:
        _check_value(target, made.default, f"{target}.default")
    for key, value in (mapping or {}).items():
        _check_value(target, value, f"{target}.map.{key}")
    return made


# Stand-ins for the required fields while one constant is checked.
_REQUIRED_SAMPLE = {"event_id": "e", "goal": "g", "occurred_at": "2000-01-01T00:00:00Z"}


def _check_value(target: str, value: Any, where: str) -> None:
    """A value from the config (constant, default, map value) that the target takes, checked
    once at start: otherwise every record would be dead-lettered for it."""
    if value is None:
        if target in REQUIRED_TARGETS:
            raise SpecError(where, f"{target} is required: null would fail every record")
        return
    data: dict[str, Any] = dict(_REQUIRED_SAMPLE)
    into = data
    dest = _destination(target)
    for key in dest[:-1]:
        into = into.setdefault(key, {})
    into[dest[-1]] = value
    try:
        msgspec.convert(data, ConversionEvent, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc).rpartition(" - at `")[0] or str(exc)
        raise SpecError(
            where, f"not a valid {target}: {_lower(message.replace('`', ''))}"
        ) from None


def _checked(spec: FieldSpec, where: str) -> FieldSpec:
    _check_value(spec.target, spec.const, where)
    return spec


def _timed(spec: FieldSpec, where: str) -> FieldSpec:
    """Time conversions are for occurred_at, which takes RFC 3339 unless one is given."""
    source = spec.source
    if source is None:
        return spec
    if spec.target != "occurred_at":
        if source.conversion in TIME_CONVERSIONS:
            raise SpecError(where, f"{source.conversion} makes a time: only for occurred_at")
        return spec
    if source.conversion is None:
        return msgspec.structs.replace(
            spec, source=msgspec.structs.replace(source, conversion="rfc3339")
        )
    if source.conversion not in TIME_CONVERSIONS:
        raise SpecError(
            where, f"occurred_at is a time: convert with {', '.join(sorted(TIME_CONVERSIONS))}"
        )
    return spec


# ---------------------------------------------------------------- the shape


class _Node:
    """Where paths go in the record: object keys, an array's items, or a value taken whole."""

    __slots__ = ("item", "keys", "whole")

    def __init__(self) -> None:
        self.keys: dict[str, _Node] = {}
        self.item: _Node | None = None
        self.whole = False

    @property
    def kind(self) -> str:
        if self.whole or (self.keys and self.item is not None):
            return "any"
        return "array" if self.item is not None else "object"


_names = itertools.count()


def _tree(paths: Iterable[Path], forced: Iterable[str] = ()) -> _Node:
    root = _Node()
    for key in forced:
        root.keys.setdefault(key, _Node()).whole = True
    for path in paths:
        node = root
        for step in path.steps:
            if isinstance(step, int):
                node.item = node.item or _Node()
                node = node.item
            else:
                node = node.keys.setdefault(step, _Node())
        node.whole = True
    return root


def _type(node: _Node) -> Any:
    """The msgspec type a node decodes as (always accepting null)."""
    kind = node.kind
    if kind == "any":
        return Any
    if kind == "array":
        assert node.item is not None
        return list[_type(node.item)] | None  # type: ignore[misc]
    return _struct(node) | None


def _struct(node: _Node) -> type[msgspec.Struct]:
    # Field names are internal (f0, f1...) and renamed to the record's keys, so any key works.
    fields = [(f"f{i}", _type(child), None) for i, child in enumerate(node.keys.values())]
    rename = {f"f{i}": key for i, key in enumerate(node.keys)}
    made: type[msgspec.Struct] = msgspec.defstruct(
        f"Shape{next(_names)}", fields, rename=rename, gc=False, frozen=True
    )
    return made


def _accessor(root: _Node, path: Path) -> Callable[[Any], Any]:
    """A function from a decoded record to the value at `path` (None when absent or null), for
    paths with an index or below a copied object (attribute-only paths are inlined)."""
    plan: list[tuple[int, Any]] = []  # (0 attribute | 1 key | 2 index, argument)
    node: _Node | None = root
    for step in path.steps:
        typed = node is not None and node.kind != "any"
        if isinstance(step, int):
            plan.append((2, step))
            node = node.item if typed and node is not None else None
        elif typed and node is not None:
            plan.append((0, f"f{list(node.keys).index(step)}"))
            node = node.keys[step]
        else:
            plan.append((1, step))
            node = None
    steps = tuple(plan)

    def by_steps(record: Any) -> Any:
        value = record
        for kind, arg in steps:
            if value is None:
                return None
            if kind == 0:
                value = getattr(value, arg)
            elif kind == 1:
                value = value.get(arg) if type(value) is dict else None
            elif type(value) is list and -len(value) <= arg < len(value):
                value = value[arg]
            else:
                return None
        return value

    return by_steps


# ---------------------------------------------------------------- compiled mapping


_Getter = Callable[[Any], Any]
# The generated function: (decoded value, Kafka record or None) → the event's plain data.
_Build = Callable[[Any, Any], dict[str, Any]]


def _transform(spec: FieldSpec, fail: Callable[[str, _Fault], MappingError]) -> _Getter | None:
    """A found value (not null) → the target's value (arithmetic, conversion, map), raising the
    MappingError that names the target; None if the value is taken as it is."""
    source = spec.source
    assert source is not None
    op = _OPS[source.op] if source.op is not None else None
    operand = source.operand
    convert = CONVERSIONS[source.conversion] if source.conversion is not None else None
    mapping = spec.mapping
    target = spec.target
    if op is None and convert is None and mapping is None:
        return None

    def value(found: Any) -> Any:
        try:
            if op is not None:
                try:
                    found = op(_number(found), operand)
                except _Fault as fault:
                    raise _Fault(f"cannot compute {source.op} {operand:g}: {fault}") from None
                except OverflowError:
                    raise _Fault(f"cannot compute {source.op} {operand:g}: out of range") from None
            if convert is not None:
                found = convert(found)
            if mapping is not None:
                try:
                    found = mapping.get(found, found)
                except TypeError:  # an object or array is no key of the map
                    raise _Fault(f"a {_type_name(found)} cannot be looked up in map") from None
        except _Fault as fault:
            raise fail(target, fault) from None
        return found

    return value


def _attribute_chain(root: _Node, path: Path) -> list[str] | None:
    """The attribute names of a path that stays in the shape's Structs, else None."""
    names: list[str] = []
    node = root
    for step in path.steps:
        if isinstance(step, int) or node.kind != "object":
            return None
        names.append(f"f{list(node.keys).index(step)}")
        node = node.keys[step]
    return names


def _inline(spec: FieldSpec, var: str, index: int, namespace: dict[str, Any]) -> str:
    """The statement applying a field's transform: the common cases inline (a number divided,
    epoch milliseconds, a string passed on or looked up in a map), the rest through
    `t<index>`, which also raises the error naming the field."""
    source = spec.source
    assert source is not None
    general = f"{var} = t{index}({var})"
    number = f"(type({var}) is int or type({var}) is float)"
    if spec.mapping is not None:
        if source.op is not None or source.conversion is not None:
            return general
        namespace[f"m{index}"] = spec.mapping
        return f"{var} = m{index}.get({var}, {var}) if type({var}) is str else t{index}({var})"
    if source.op is not None and source.conversion is None:
        namespace[f"k{index}"] = source.operand
        return f"{var} = {var} {source.op} k{index} if {number} else t{index}({var})"
    if source.op is None and source.conversion == "epoch_ms":
        return f"{var} = {var} / 1000.0 if {number} else t{index}({var})"
    if source.op is None and source.conversion == "rfc3339":
        return f"{var} = {var} if type({var}) is str else t{index}({var})"
    return general


class _Layout:
    """Where generated variables land in the event's plain data: keys, then nested sections."""

    def __init__(self) -> None:
        self.values: list[tuple[str, str, bool]] = []  # (key, variable, required)
        self.sections: dict[str, _Layout] = {}
        self.copied: tuple[str, str] | None = None  # (variable, target) of a copied object


def _generate(
    specs: list[FieldSpec],
    tree: _Node,
    fail: Callable[[str, _Fault], MappingError],
    inline: bool = True,
) -> tuple[_Build, str]:
    """Generate the one function that makes a record's event data: straight-line code, each
    field's access inlined (no loop, no call per plain field, each object on the way read once).
    Values from the config (constants, maps, defaults) are bound as names, never written into
    the source; keys are written as repr() literals."""
    namespace: dict[str, Any] = {"_fail": fail, "_Fault": _Fault, "_object": _object}
    lines = ["def build(root, record=None):"]
    prefixes: dict[tuple[str, ...], str] = {}

    def read(chain: list[str]) -> str:
        """The variable holding the object at `chain` (read once, None when absent)."""
        key = tuple(chain)
        if not key:
            return "root"
        name = prefixes.get(key)
        if name is None:
            parent = read(chain[:-1])
            name = prefixes[key] = f"p{len(prefixes)}"
            if parent == "root":
                lines.append(f"    {name} = root.{chain[-1]}")
            else:
                lines.append(f"    {name} = {parent}.{chain[-1]} if {parent} is not None else None")
        return name

    layout = _Layout()
    # Whole-object copies first, so a key mapped on its own (`params.plan`) wins over it.
    ordered = sorted(specs, key=lambda s: s.target not in MAP_TARGETS)
    for index, spec in enumerate(ordered):
        var = f"v{index}"
        if spec.source is None:
            namespace[f"c{index}"] = spec.const
            lines.append(f"    {var} = c{index}")
        else:
            chain = None if spec.source.path.record else _attribute_chain(tree, spec.source.path)
            if spec.source.path.record:
                namespace[f"g{index}"] = _record_getter(spec.source.path, spec.target, fail)
                lines.append(f"    {var} = g{index}(record)")
            elif chain is not None:
                lines.append(f"    {var} = {read(chain)}")
            else:
                namespace[f"g{index}"] = _accessor(tree, spec.source.path)
                lines.append(f"    {var} = g{index}(root)")
            transform = _transform(spec, fail)
            step = None
            if transform is not None:
                namespace[f"t{index}"] = transform
                step = (
                    _inline(spec, var, index, namespace) if inline else f"{var} = t{index}({var})"
                )
            if spec.default is not None:
                namespace[f"d{index}"] = spec.default
                lines.append(f"    if {var} is None:")
                lines.append(f"        {var} = d{index}")
                if step is not None:
                    lines.append("    else:")
                    lines.append(f"        {step}")
            elif step is not None:
                lines.append(f"    if {var} is not None:")
                lines.append(f"        {step}")
        required = spec.target in REQUIRED_TARGETS
        if required:
            lines.append(f"    if {var} is None:")
            lines.append(f"        raise _fail({spec.target!r}, _Fault('missing or null'))")
        dest = _destination(spec.target)
        place = layout
        for key in dest[:-1]:
            place = place.sections.setdefault(key, _Layout())
        if spec.target in MAP_TARGETS:
            place = place.sections.setdefault(dest[-1], _Layout())
            place.copied = (var, spec.target)
        else:
            place.values.append((dest[-1], var, required))
    counter = itertools.count()

    def emit(place: _Layout, into: str) -> None:
        for key, var, required in place.values:
            if required:
                lines.append(f"    {into}[{key!r}] = {var}")
            else:
                lines.append(f"    if {var} is not None:")
                lines.append(f"        {into}[{key!r}] = {var}")
        for key, section in place.sections.items():
            name = f"s{next(counter)}"
            copied = section.copied
            if copied is not None and not section.values and not section.sections:
                # Taken as it is: validating the event checks it is an object of scalars.
                lines.append(f"    if {copied[0]} is not None:")
                lines.append(f"        {into}[{key!r}] = {copied[0]}")
                continue
            if copied is not None:  # keys are added to it: it must be an object (copied)
                lines.append(f"    {name} = _object({copied[0]}, {copied[1]!r}, _fail)")
            else:
                lines.append(f"    {name} = {{}}")
            emit(section, name)
            lines.append(f"    if {name}:")
            lines.append(f"        {into}[{key!r}] = {name}")

    lines.append("    out = {}")
    emit(layout, "out")
    lines.append("    return out")
    source = "\n".join(lines) + "\n"
    # Our own source: names and keys are repr()s, config values are bound as names.
    exec(compile(source, "<input mapping>", "exec"), namespace)
    build: _Build = namespace["build"]
    return build, source


def _record_getter(
    path: Path, target: str, fail: Callable[[str, _Fault], MappingError]
) -> Callable[[RecordMeta | None], Any]:
    """A function from the Kafka record to what an `@` path reads (None when absent)."""
    name = path.steps[0]

    def text(raw: Any, what: str) -> str | None:
        if raw is None:
            return None
        if type(raw) is str:
            return raw
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise fail(target, _Fault(f"{what} is not UTF-8 text (byte {exc.start})")) from None

    if name == "key":
        return lambda record: None if record is None else text(record.key, "the record's key")
    if name == "timestamp":
        # -1: a record without a timestamp (the message format before Kafka 0.10).
        return lambda record: (
            None
            if record is None or record.timestamp is None or record.timestamp < 0
            else record.timestamp
        )
    if name != "headers":
        return lambda record: None if record is None else getattr(record, str(name))
    header = str(path.steps[1])
    wanted = header.encode()

    def by_header(record: RecordMeta | None) -> Any:
        if record is None or not record.headers:
            return None
        found = None
        for key, value in record.headers:  # the last one of a repeated header wins
            if key in (header, wanted):
                found = value
        return text(found, f"header {header}")

    return by_header


def _object(value: Any, target: str, fail: Callable[[str, _Fault], MappingError]) -> dict[str, Any]:
    """A copied object that keys are added to: a copy of it (an empty one when absent)."""
    if value is None:
        return {}
    if type(value) is not dict:
        raise fail(target, _Fault(f"expected an object to copy, got {_type_name(value)}"))
    return dict(value)


class Mapper:
    """A compiled mapping: `decode(bytes)` or `apply(root)` → ConversionEvent, or MappingError."""

    def __init__(
        self, specs: list[FieldSpec], forced_keys: Iterable[str] = (), plain: bool = False
    ) -> None:
        paths = [s.source.path for s in specs if s.source is not None and not s.source.path.record]
        tree = _tree(paths, forced_keys)
        if plain:  # records already decoded to dicts (e.g. Avro by its schema): item steps
            tree.whole = True
        self.root_type = _struct(tree)
        self.root_keys = {key: f"f{i}" for i, key in enumerate(tree.keys)}
        self._decoder = msgspec.json.Decoder(self.root_type)
        self._key_decoders: dict[str, msgspec.json.Decoder[Any]] = {}
        self._tree = tree
        self.specs = specs
        self._shown = {s.target: s.shown for s in specs}
        self._by_path = [
            (_renders(s.source.path), s.target)
            for s in specs
            if s.source is not None and not s.source.path.record
        ]
        self._build, self.source = _generate(specs, tree, self._fail)
        # The same without inlined arithmetic: run only when the fast one overflowed (a number
        # past a float's range), so the field to blame is named.
        self._careful, _ = _generate(specs, tree, self._fail, inline=False)

    def decode(self, raw: bytes, key: str | None = None) -> Any:
        """The record as the shape reads it (or, with `key`, the value of that root key alone,
        e.g. a binary CloudEvent's data); MappingError when it does not fit."""
        decoder = self._decoder if key is None else self._key_decoder(key)
        try:
            return decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise self._shape_error(exc, key) from None
        except msgspec.DecodeError as exc:
            where = f"{key}: " if key else ""
            raise MappingError(f"{where}not valid JSON: {exc}", kind="not_json") from exc
        except RecursionError as exc:
            raise MappingError("not valid JSON: nested too deeply", kind="not_json") from exc
        except UnicodeDecodeError as exc:
            raise MappingError(
                f"invalid UTF-8: {exc.reason} at byte {exc.start}", kind="not_json"
            ) from exc

    def convert(self, record: Any) -> Any:
        """A record another format decoded to dicts and lists (Avro by its schema) as the shape
        reads it, as `decode` makes it of JSON (faster to map than `plain`); MappingError when
        it does not fit."""
        try:
            return msgspec.convert(record, self.root_type)
        except msgspec.ValidationError as exc:
            raise self._shape_error(exc) from None

    def _key_decoder(self, key: str) -> msgspec.json.Decoder[Any]:
        decoder = self._key_decoders.get(key)
        if decoder is None:
            decoder = self._key_decoders[key] = msgspec.json.Decoder(_type(self._tree.keys[key]))
        return decoder

    def uses(self, key: str) -> bool:
        """Whether a path reads this key of the root (e.g. `data`)."""
        return key in self._tree.keys

    def reads_into(self, key: str) -> bool:
        """Whether a path reads below this root key (it must then be an object or array)."""
        node = self._tree.keys.get(key)
        return node is not None and node.kind != "any"

    def _shape_error(self, exc: msgspec.ValidationError, key: str | None = None) -> MappingError:
        message, _, at = str(exc).rpartition(" - at `")
        where = at.rstrip("`") if message else "$"
        if key is not None:
            where = f"$.{key}{where[1:]}"
        message = (message or str(exc)).replace("`", "")
        if where == "$":  # the record itself is no object: no one field is to blame
            return MappingError(f"record is not a JSON object: {_lower(message)}")
        for rendered, target in self._by_path:
            if rendered == where or rendered.startswith((f"{where}.", f"{where}[")):
                return MappingError(
                    f"{target} (from {self._shown[target]}): {where}: {_lower(message)}",
                    field=target,
                )
        return MappingError(f"record does not fit the mapping: {where}: {_lower(message)}")

    def _fail(self, target: str, fault: _Fault) -> MappingError:
        return MappingError(f"{target} (from {self._shown[target]}): {fault}", field=target)

    def fields(self, root: Any, record: RecordMeta | None = None) -> dict[str, Any]:
        """The event's fields as plain data, before validation (for benches and tests)."""
        try:
            built: dict[str, Any] = self._build(root, record)
        except OverflowError:
            built = self._careful(root, record)
        return built

    def apply(self, root: Any, record: RecordMeta | None = None) -> ConversionEvent:
        """The canonical event made from a decoded value and the Kafka record around it (what
        `@` paths read; None when there is none, e.g. a sample file: they read null)."""
        try:
            built = self._build(root, record)
        except OverflowError:
            built = self._careful(root, record)
        try:
            # Lax: a numeric string fills a number field, epoch seconds become a UTC time.
            return msgspec.convert(built, ConversionEvent, strict=False)
        except msgspec.ValidationError as exc:
            raise self._event_error(exc) from None

    def _event_error(self, exc: msgspec.ValidationError) -> MappingError:
        message, _, at = str(exc).rpartition(" - at `$")
        if not message:
            return MappingError(str(exc))
        where = _INDEXES.sub("", at.rstrip("`").lstrip("."))
        target = where
        while target and target not in self._shown:
            target = target.rpartition(".")[0]
        shown = f" (from {self._shown[target]})" if target else ""
        text = _lower(message.replace("`", ""))
        return MappingError(f"{where or 'event'}{shown}: {text}", field=where)


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


def _renders(path: Path) -> str:
    """A path as msgspec names it in a validation error (`$.order.items[0]`)."""
    out = "$"
    for step in path.steps:
        out += f"[{step}]" if isinstance(step, int) else f".{step}"
    return out


def _destination(target: str) -> tuple[str, ...]:
    if target.startswith("customer.ids."):
        return ("customer", "ids", target[len("customer.ids.") :])
    first, _, rest = target.partition(".")
    return (first, rest) if rest else (first,)


def compile_fields(
    fields: Mapping[str, Any],
    defaults: Mapping[str, str] | None = None,
    forced_keys: Iterable[str] = (),
    plain: bool = False,
) -> Mapper:
    """Compile `fields` (target → spec); `defaults` fill unmapped targets (CloudEvents' $.id...).
    `plain`: `apply` takes records already decoded to dicts and lists (a decoder of another
    format, such as a Schema Registry's Avro, makes them) instead of the mapper's own Structs.

    Raises SpecError naming the key of the first field that cannot be compiled; use
    `spec_problems` to have every one.
    """
    problems = spec_problems(fields, defaults)
    if problems:
        raise problems[0]
    specs = [parse_field(str(t), s) for t, s in {**(defaults or {}), **fields}.items()]
    return Mapper(specs, forced_keys, plain)


def spec_problems(
    fields: Mapping[str, Any], defaults: Mapping[str, str] | None = None
) -> list[SpecError]:
    """Every field of a mapping that cannot be compiled, each with its key (all in one pass)."""
    problems: list[SpecError] = []
    merged = {**(defaults or {}), **fields}
    for target, spec in merged.items():
        try:
            parse_field(str(target), spec)
        except SpecError as exc:
            problems.append(exc)
    missing = [t for t in REQUIRED_TARGETS if t not in merged]
    if missing:
        problems.append(
            SpecError(
                "",
                f"{', '.join(missing)} not mapped: every canonical event has event_id, goal "
                "and occurred_at",
            )
        )
    return problems
