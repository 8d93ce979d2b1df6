"""A seeded generator of hostile Kafka records for the hostile-input drill.

Each record says what the relay must do with it: a valid one names the event (and the customer
ids the goal-reach vendors will see); an invalid one lists the fragments, one of which the
dead letter's `relay-error` must contain. The expectations are written here from the canonical
event's documented schema, not computed by the relay's own decoder.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

VENDORS = ("sustain_impact", "sales_ninja")
GOALS = ("purchase", "signup", "lead")
ONE_MB = 1_000_000  # "1 MB" records: under max_record_bytes (1 MiB) with room for DLQ headers
NOT_JSON = ("not valid JSON", "invalid UTF-8")
BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80")
MARK = "@@BAD-BYTES@@"
# Characters from many scripts (no surrogates): Latin, Cyrillic, CJK, RTL, emoji, controls.
ALPHABET = 'aZ09 _-.:/ÄéßЖжя中文字あアعربيעברית😀🚀👩‍💻\t\n"\\\x00\x1f\u2028\u2029'


@dataclass
class Hostile:
    """One record and the relay's duty towards it."""

    kind: str
    key: bytes | None
    value: bytes | None
    event_id: str | None = None  # valid: the event every vendor must get
    customer_ids: dict[str, str] | None = None  # valid: what each goal-reach vendor sees
    errors: tuple[str, ...] = ()  # invalid: `relay-error` contains one of these

    @property
    def valid(self) -> bool:
        """Whether the record is a valid event the vendors must receive."""
        return self.event_id is not None


class HostileGenerator:
    """Deterministic (seeded) hostile records, valid ones mixed in."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.valid: list[Hostile] = []
        self._index = 0

    # ---- building blocks -----------------------------------------------------------------

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _text(self, low: int, high: int) -> str:
        return "".join(self.rng.choice(ALPHABET) for _ in range(self.rng.randint(low, high)))

    def _scalar(self) -> Any:
        return self.rng.choice(
            [
                self._text(0, 40),
                self.rng.randint(-(2**53), 2**53),
                self.rng.uniform(-1e9, 1e9),
                True,
                False,
                None,
                0,
                -0.0,
                1e308,
                "",
            ]
        )

    def _fill(self, size: int) -> str:
        """A long string of `size` characters (a random chunk repeated: cheap to make)."""
        chunk = self._text(64, 64)
        return (chunk * (size // 64 + 1))[:size]

    def _params(self, most: int) -> dict[str, Any]:
        return {self._text(1, 30): self._scalar() for _ in range(self.rng.randint(0, most))}

    def event(self, event_id: str | None = None) -> dict[str, Any]:
        """A valid canonical event with ids for both goal-reach vendors."""
        rng = self.rng
        octets = (rng.randrange(1, 224), rng.randrange(256), rng.randrange(256), rng.randrange(256))
        ip = rng.choice([".".join(map(str, octets)), f"2001:db8::{rng.randrange(1, 0xFFFF):x}"])
        offset = rng.choice(["Z", "+00:00", "+05:30", "-08:00", "+14:00"])
        event: dict[str, Any] = {
            "event_id": event_id or f"h{self._index}-{self._uuid()}",
            "goal": rng.choice(GOALS),
            "occurred_at": f"2026-11-{rng.randint(1, 22):02d}T{rng.randint(0, 23):02d}:"
            f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}{offset}",
            "customer": {
                "email": f"c{self._index}@example.com",
                "ip": ip,
                "ids": {vendor: self._uuid() for vendor in VENDORS},
            },
        }
        if rng.random() < 0.5:
            event["value"] = round(rng.uniform(0, 10_000), 2)
            event["currency"] = rng.choice(["EUR", "USD", "RUB"])
        if rng.random() < 0.5:
            event["params"] = self._params(8)
            event["page_params"] = self._params(4)
            event["attributes"] = self._params(4)
        if rng.random() < 0.3:
            event["context"] = {"utm_source": self._text(1, 50), "referer": self._text(0, 200)}
            event["order"] = {
                "order_id": self._text(1, 20),
                "count_items": rng.randint(0, 99),
                "categories": [self._text(1, 10) for _ in range(rng.randint(0, 5))],
            }
        return event

    def _valid(self, kind: str, event: dict[str, Any], raw: bytes | None = None) -> Hostile:
        record = Hostile(
            kind,
            event["event_id"].encode(),
            raw or orjson.dumps(event),
            event_id=event["event_id"],
            customer_ids=dict(event["customer"]["ids"]),
        )
        self.valid.append(record)
        return record

    def _invalid(self, kind: str, value: bytes | None, *errors: str) -> Hostile:
        return Hostile(kind, f"hostile-{self._index}".encode(), value, errors=errors)

    @staticmethod
    def _nested(depth: int, leaf: bytes = b"1", obj: bool = False) -> bytes:
        if obj:
            return b'{"n":' * depth + leaf + b"}" * depth
        return b"[" * depth + leaf + b"]" * depth

    # ---- valid records -------------------------------------------------------------------

    def valid_plain(self) -> Hostile:
        return self._valid("valid_plain", self.event())

    def valid_exotic(self) -> Hostile:
        """Unknown fields (huge, nested, odd), every script, a 256-character event id."""
        rng = self.rng
        event = self.event()
        event["customer"]["email"] = self._text(1, 300)
        event["params"] = self._params(40)
        event[self._text(1, 20)] = self._fill(rng.choice([10, 100, 1_000, 5_000, 20_000]))
        event["customer"]["loyalty"] = {"tier": self._text(1, 10), "points": [1, 2, {"x": None}]}
        if rng.random() < 0.2:
            event["event_id"] = f"h{self._index}-" + self._text(250, 250)
            event["event_id"] = event["event_id"][:256]
        raw = orjson.dumps(event)
        depth = rng.randint(10, 200)  # far below any recursion limit: must simply be ignored
        nested = self._nested(depth, obj=rng.random() < 0.5)
        return self._valid("valid_exotic", event, raw[:-1] + b',"future_field":' + nested + b"}")

    def valid_duplicate(self) -> Hostile:
        """The same record again, byte for byte (a producer retry)."""
        if not self.valid:
            return self.valid_plain()
        earlier = self.rng.choice(self.valid)
        return Hostile(
            "valid_duplicate",
            earlier.key,
            earlier.value,
            event_id=earlier.event_id,
            customer_ids=earlier.customer_ids,
        )

    def valid_same_id(self) -> Hostile:
        """Another event reusing an earlier event id (a producer bug); the id must arrive."""
        if not self.valid:
            return self.valid_plain()
        earlier = self.rng.choice(self.valid)
        assert earlier.event_id is not None
        return self._valid("valid_same_id", self.event(event_id=earlier.event_id))

    def valid_one_mb(self) -> Hostile:
        """A valid 1 MB record: the bulk in a parameter the vendor gets, or in an unknown field."""
        event = self.event()
        pad_field = self.rng.random() < 0.5
        event.setdefault("params", {})["blob"] = ""
        if pad_field:
            event["padding"] = ""
        size = len(orjson.dumps(event))
        filler = "x" * (ONE_MB - size)
        if pad_field:
            event["padding"] = filler
        else:
            event["params"]["blob"] = filler
        raw = orjson.dumps(event)
        assert len(raw) == ONE_MB
        return self._valid("valid_one_mb", event, raw)

    # ---- invalid records -----------------------------------------------------------------

    def truncated(self) -> Hostile:
        raw = orjson.dumps(self.event())
        return self._invalid("truncated", raw[: self.rng.randrange(1, len(raw))], *NOT_JSON)

    def huge_string(self) -> Hostile:
        rng = self.rng
        event = self.event()
        size = rng.choice([300, 1_000, 5_000, 10_000, 40_000])
        field, fragment = rng.choice(
            [
                ("event_id", "`$.event_id`"),
                ("goal", "`$.goal`"),
                ("email", "`$.customer.email`"),
                ("ids", "`$.customer.ids[...]`"),
                ("param_key", "in `$.params`"),
                ("referer", "`$.context.referer`"),
            ]
        )
        if field in ("email", "ids", "referer"):
            size = max(size, 5_000)  # these fields allow 4096 characters
        huge = self._fill(size)
        if field in ("event_id", "goal"):
            event[field] = huge
        elif field == "email":
            event["customer"]["email"] = huge
        elif field == "ids":
            event["customer"]["ids"]["sustain_impact"] = huge
        elif field == "param_key":
            event["params"] = {huge: 1}
        else:
            event["context"] = {"referer": huge}
        return self._invalid("huge_string", orjson.dumps(event), fragment)

    def deep_nesting(self) -> Hostile:
        """Deeply nested values where the schema wants scalars, or a deep array for the event."""
        rng = self.rng
        depth = rng.randint(2, 900)
        where = rng.choice(["top", "params", "ids", "categories", "customer"])
        if where == "top":
            return self._invalid(
                "deep_nesting",
                self._nested(rng.randint(1_000, 20_000)),
                "Expected `object`, got `array`",
            )
        raw = orjson.dumps(self.event())[:-1]
        nested = self._nested(depth, obj=rng.random() < 0.5)
        inject: dict[str, tuple[bytes, str]] = {
            "params": (b',"params":{"deep":' + nested + b"}}", "`$.params[...]`"),
            "ids": (b',"customer":{"ids":{"x":' + nested + b"}}}", "`$.customer.ids[...]`"),
            "categories": (
                b',"order":{"categories":[' + nested + b"]}}",
                "`$.order.categories[0]`",
            ),
            "customer": (b',"customer":' + self._nested(depth) + b"}", "`$.customer`"),
        }
        tail, fragment = inject[where]
        return self._invalid("deep_nesting", raw + tail, fragment)

    def wrong_type(self) -> Hostile:
        event = self.event()
        mutations: list[tuple[Callable[[dict[str, Any]], None], str]] = [
            (lambda e: e.update(goal=42), "`$.goal`"),
            (lambda e: e.update(event_id=None), "`$.event_id`"),
            (lambda e: e.update(event_id=""), "`$.event_id`"),
            (lambda e: e.update(occurred_at=1_763_647_391), "`$.occurred_at`"),
            (lambda e: e.update(occurred_at="2026-11-20T14:03:11"), "`$.occurred_at`"),
            (lambda e: e.update(occurred_at="yesterday"), "`$.occurred_at`"),
            (lambda e: e.update(value="129.90"), "`$.value`"),
            (lambda e: e.update(currency="eur"), "`$.currency`"),
            (lambda e: e.update(customer="anna@example.com"), "`$.customer`"),
            (lambda e: e["customer"].update(ids=["a", "b"]), "`$.customer.ids`"),
            (lambda e: e["customer"]["ids"].update(sales_ninja=7), "`$.customer.ids[...]`"),
            (lambda e: e.update(params=[1, 2]), "`$.params`"),
            (lambda e: e.update(params={"a": {"b": 1}}), "`$.params[...]`"),
            (lambda e: e.update(vendors="sustain_impact"), "`$.vendors`"),
            (lambda e: e.update(order={"count_items": -1}), "`$.order.count_items`"),
            (lambda e: e.update(context={"utm_source": 5}), "`$.context.utm_source`"),
        ]
        mutate, fragment = self.rng.choice(mutations)
        mutate(event)
        return self._invalid("wrong_type", orjson.dumps(event), fragment)

    def bad_utf8(self) -> Hostile:
        event = self.event()
        where = self.rng.choice(["event_id", "goal", "email", "param", "utm"])
        if where in ("event_id", "goal"):
            event[where] = MARK
        elif where == "email":
            event["customer"]["email"] = f"a{MARK}@example.com"
        elif where == "param":
            event["params"] = {"k": f"v{MARK}"}
        else:
            event["context"] = {"utm_source": MARK}
        raw = orjson.dumps(event).replace(MARK.encode(), self.rng.choice(BAD_UTF8))
        return self._invalid("bad_utf8", raw, *NOT_JSON)

    def not_object(self) -> Hostile:
        raw = self.rng.choice([b"true", b"12", b'"a purchase"', b"null", b"[]", b"[1, 2]"])
        return self._invalid("not_object", raw, "Expected `object`")

    def missing_field(self) -> Hostile:
        event = self.event()
        field = self.rng.choice(["event_id", "goal", "occurred_at"])
        del event[field]
        return self._invalid(
            "missing_field", orjson.dumps(event), f"missing required field `{field}`"
        )

    def empty(self) -> Hostile:
        value = self.rng.choice([b"", b"   ", b"\n", None])
        if value is None:
            return self._invalid("empty", None, "tombstone")
        return self._invalid("empty", value, "not valid JSON")

    def non_finite(self) -> Hostile:
        raw = orjson.dumps(self.event())[:-1]
        if self.rng.random() < 0.5:
            literal = self.rng.choice([b"NaN", b"Infinity", b"-Infinity"])
            return self._invalid(
                "non_finite", raw + b',"value":' + literal + b"}", "not valid JSON"
            )
        return self._invalid("non_finite", raw + b',"params":{"n":1e999}}', "Number out of range")

    def invalid_one_mb(self) -> Hostile:
        """A 1 MB record that is not an event: no event id, or cut short."""
        event = self.event()
        del event["event_id"]
        event["padding"] = ""
        event["padding"] = "y" * (ONE_MB - len(orjson.dumps(event)))
        raw = orjson.dumps(event)
        assert len(raw) == ONE_MB
        if self.rng.random() < 0.5:
            return self._invalid("invalid_one_mb", raw, "missing required field `event_id`")
        return self._invalid("invalid_one_mb", raw[:-2], "not valid JSON")

    # ---- the mix -------------------------------------------------------------------------

    def records(self, count: int, one_mb_every: int = 1_000) -> list[Hostile]:
        """`count` records: about half valid; a valid and an invalid 1 MB record per block."""
        kinds: list[tuple[Callable[[], Hostile], int]] = [
            (self.valid_plain, 36),
            (self.valid_exotic, 10),
            (self.valid_duplicate, 3),
            (self.valid_same_id, 2),
            (self.truncated, 10),
            (self.huge_string, 5),
            (self.deep_nesting, 6),
            (self.wrong_type, 12),
            (self.bad_utf8, 6),
            (self.not_object, 3),
            (self.missing_field, 4),
            (self.empty, 1),
            (self.non_finite, 2),
        ]
        makers, weights = zip(*kinds, strict=True)
        made = []
        for index in range(count):
            self._index = index
            if index % one_mb_every == one_mb_every // 2:
                made.append(self.valid_one_mb())
            elif index % one_mb_every == one_mb_every - 1:
                made.append(self.invalid_one_mb())
            else:
                made.append(self.rng.choices(makers, weights)[0]())
        return made
