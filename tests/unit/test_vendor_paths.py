"""No event value moves a vendor request, and no vendor answer brings a credential back out.

For every vendor, hostile event values (dot segments, slashes, query and fragment marks, CR/LF,
encoded forms) go into every field that can reach the URL; the request's scheme, host, port and
path (as aiohttp's URL library resolves them) stay those of the config, or the event is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from yarl import URL

from service.errors import VendorInputError
from service.events import ConversionEvent, decode_event
from service.vendors import make_adapter
from service.vendors.base import Adapter, Route, VendorBase, VendorRequest, VendorResponse
from service.vendors.conductrics import ConductricsConfig
from service.vendors.paths import check_segments, segment, shown_url

HOSTILE = [
    "..",
    ".",
    "../admin",
    "a/../../b",
    "x?admin=1",
    "x#frag",
    "x\r\nX-Injected: 1",
    "%2e%2e",
    "%2F..%2F",
    "..%00",
    "/absolute",
    "//evil.example.com/x",
    "@evil.example.com",
]
SECRET = "Zq9-SECRET-4711-xyz"
GUID = "C7015756-95F3-4509-8C6C-759FEEC48F91"
UUID = "2eccd743-4164-4892-a416-dc5c16f44971"

VENDORS: dict[str, dict[str, Any]] = {
    "webhook": {
        "protocol": "webhook",
        "base_url": "https://hooks.example.com:8443/base",
        "path": "/in/{goal_id}/{event_id}.json",
        "headers": {"X-Api-Key": SECRET},
        "goals": {"purchase": "p"},
    },
    "conductrics": {
        "protocol": "conductrics",
        "base_url": "https://api.conductrics.example:8443/",
        "account": "ac-1",
        "api_key": SECRET,
        "goals": {"purchase": "g"},
    },
    "expertsender": {
        "protocol": "expertsender",
        "base_url": "https://api.esv2.example:8443/",
        "api_key": SECRET,
        "goals": {"purchase": 2},
    },
    "altcraft": {
        "protocol": "altcraft",
        "base_url": "https://ac.example:8443",
        "token": SECRET,
        "db_id": 1,
        "pixel_id": 7,
        "goals": {"purchase": "card"},
    },
    "goal_reach": {
        "protocol": "goal_reach",
        "base_url": "https://gr.example:8443",
        "goals": {"purchase": UUID},
    },
}
EXPECTED_PATH = {
    "conductrics": "/ac-1/v3/agent-api",
    "expertsender": "/v2/Api/Goals",
    "altcraft": "/api/v1.1/goals/register",
    "goal_reach": "/outer/v1.0/goal/reach",
}


def adapter(name: str) -> Adapter:
    """The vendor's adapter from its config above."""
    from service.vendors import VendorConfig

    config: VendorBase = msgspec.convert(VENDORS[name], VendorConfig)
    return make_adapter(name, config)


def hostile_event(value: str) -> ConversionEvent:
    """An event with `value` in every free-text field that could reach a URL."""
    data = {
        "event_id": value,
        "goal": value,
        "occurred_at": "2026-01-01T00:00:00Z",
        "customer": {
            "email": "anna@example.com",
            "ids": {
                "conductrics": value,
                "expertsender_message_guid": GUID,
                "goal_reach": UUID,
            },
        },
        "context": {"session_id": value},
    }
    return decode_event(msgspec.json.encode(data))


def _built(build: Callable[[], VendorRequest]) -> VendorRequest | None:
    try:
        return build()
    except VendorInputError:
        return None  # refused: dead-lettered, nothing sent


def _assert_stays(name: str, request: VendorRequest) -> None:
    url = URL(request.url)  # what aiohttp resolves the text to (dot segments collapsed)
    base = URL(VENDORS[name]["base_url"])
    assert (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port), request.url
    assert url.user is None and url.fragment == ""
    if name == "webhook":
        parts = url.raw_path.split("/")  # one raw segment per placeholder, `%2F` kept
        assert parts[:3] == ["", "base", "in"] and len(parts) == 5, url.raw_path
        assert all(p not in (".", "..") for p in parts)
    else:
        assert url.path == EXPECTED_PATH[name], request.url
    for ch in "\r\n":
        assert ch not in request.url


@pytest.mark.parametrize("name", sorted(VENDORS))
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_event_values_cannot_move_the_request(name: str, value: str) -> None:
    """Every vendor's request keeps its configured scheme, host, port and path, or is refused."""
    vendor = adapter(name)
    event = hostile_event(value)
    for route in (Route(name, value), Route(name, "p")):
        request = _built(lambda route=route: vendor.build(event, route))  # type: ignore[misc]
        if request is not None:
            _assert_stays(name, request)


def test_webhook_dot_segments_from_events_are_refused() -> None:
    """`..` as event_id or goal would collapse to another path: the event is refused instead."""
    from service.vendors.webhook import WebhookAdapter, WebhookConfig

    raw = {**VENDORS["webhook"], "path": "/in/{goal_id}/{event_id}"}
    whole = WebhookAdapter("webhook", msgspec.convert(raw, WebhookConfig))
    for value in ("..", "."):
        with pytest.raises(VendorInputError):
            whole.build(hostile_event(value), Route("webhook", "p"))
        with pytest.raises(VendorInputError):
            whole.build(hostile_event("e1"), Route("webhook", value))
    vendor = adapter("webhook")
    ok = vendor.build(hostile_event("a/b?c"), Route("webhook", "p"))
    assert ok.url == "https://hooks.example.com:8443/base/in/p/a%2Fb%3Fc.json"


@pytest.mark.parametrize("account", ["..", ".", "a/b", "a?b", "a#b", "a%2Fb", "a b"])
def test_a_conductrics_account_must_be_one_plain_segment(account: str) -> None:
    """The account code sits between the host and /v3: it can never be a dot segment."""
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({**VENDORS["conductrics"], "account": account}, ConductricsConfig)


@pytest.mark.parametrize("value", [".", "..", ""])
def test_segment_refuses_dot_and_empty_segments(value: str) -> None:
    """`segment` never returns something a URL library collapses."""
    with pytest.raises(VendorInputError):
        segment(value, "x")


def test_check_segments_refuses_a_filled_path_with_a_dot_segment() -> None:
    """A filled path is checked segment by segment."""
    assert check_segments("/a/b%2F..", "path") == "/a/b%2F.."
    with pytest.raises(VendorInputError):
        check_segments("/a/../b", "path")


def test_shown_url_drops_userinfo_query_and_fragment() -> None:
    """What is printed or served of a URL: scheme, host, port and path only."""
    assert shown_url(f"https://u:{SECRET}@h.example:8443/p?apikey={SECRET}#x") == (
        "https://h.example:8443/p"
    )


def _echo(request: VendorRequest, status: int) -> VendorResponse:
    """A hostile vendor answer: the whole request (URL, headers, body) echoed back."""
    echoed = f"{request.method} {request.url}\n{dict(request.headers)}\n".encode()
    return VendorResponse(status=status, headers={}, body=echoed + request.body)


@pytest.mark.parametrize("name", sorted(VENDORS))
@pytest.mark.parametrize("status", [200, 201, 400, 500])
def test_an_answer_echoing_the_request_carries_no_secret_in_its_detail(
    name: str, status: int
) -> None:
    """Each adapter redacts the vendor's body where it makes the detail (and the reason)."""
    vendor = adapter(name)
    request = vendor.build(hostile_event("e1"), Route(name, next(iter(_goals(name)))))
    outcome = vendor.classify(_echo(request, status))
    for text in (outcome.detail, outcome.reason):
        assert SECRET not in text and "4711" not in text, text


def _goals(name: str) -> list[str]:
    return [str(v) for v in VENDORS[name]["goals"].values()]
