"""Sample conversion events: demo traffic for dev mode, `publish --sample` and the tests."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from service.events import Context, ConversionEvent, Customer, Order, encode_event

GOALS = ("purchase", "signup", "lead")


def sample_event(rng: random.Random, index: int, now: datetime | None = None) -> ConversionEvent:
    """A plausible event; about one in ten lacks some vendor ids, so routing has work to do."""
    event_uuid = uuid.UUID(int=rng.getrandbits(128), version=4)
    goal = GOALS[index % len(GOALS)]
    ids = {
        "sustain_impact": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "sales_ninja": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "conductrics": f"visitor-{index}",
        "expertsender_message_guid": str(uuid.UUID(int=rng.getrandbits(128), version=4)).upper(),
        "altcraft_profile_id": f"{rng.getrandbits(96):024x}",
    }
    if index % 10 == 7:
        ids.pop("sales_ninja")
        ids.pop("conductrics")
    value = round(rng.uniform(5, 500), 2) if goal == "purchase" else None
    return ConversionEvent(
        event_id=str(event_uuid),
        goal=goal,
        occurred_at=now or datetime.now(UTC),
        value=value,
        currency="EUR" if value is not None else None,
        customer=Customer(
            email=f"customer{index}@example.com",
            phone=f"+4930{rng.randrange(10**6, 10**7)}",
            ip=f"185.237.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            user_agent="Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
            ids=ids,
        ),
        params={"Revenue": str(int((value or 0) * 100))} if value is not None else {},
        attributes={"order_id": f"o-{index}"} if value is not None else {},
        context=Context(utm_source="newsletter", utm_medium="email"),
        order=Order(order_id=f"o-{index}") if value is not None else Order(),
    )


def sample_lines(count: int, seed: int = 7) -> Iterator[bytes]:
    """`count` encoded sample events."""
    rng = random.Random(seed)
    for index in range(count):
        yield encode_event(sample_event(rng, index))
