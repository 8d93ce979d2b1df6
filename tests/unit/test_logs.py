"""Structured logs: the JSON line shape, the terminal format, and redaction of secrets and PII."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.logs import configure_logging, mask_email, mask_phone, redact

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class TtyStream(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        return True


Configure = Callable[..., io.StringIO]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """configure_logging on a fresh in-memory stream; the root logger is restored afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)

    def setup(level: str = "debug", *, tty: bool = False, json: bool | None = None) -> io.StringIO:
        stream = TtyStream() if tty else io.StringIO()
        configure_logging(level, stream=stream, json=json)
        return stream

    yield setup
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in lines(stream)]


def test_json_line_shape(configure: Configure) -> None:
    """A record becomes one JSON object with level, RFC 3339 UTC time, logger, message, fields."""
    stream = configure("info")
    logging.getLogger("conversion_relay.sender").info(
        "delivered %s",
        "7d4c",
        extra={
            "vendor": "altcraft",
            "event_id": "7d4c",
            "outcome": "delivered",
            "status": 200,
            "attempt": 1,
            "reason": "ok",
            "topic": "conversions",
            "partition": 3,
            "offset": 1234567890,
        },
    )
    [doc] = records(stream)
    assert list(doc)[:4] == ["level", "time", "logger", "message"]
    assert doc["level"] == "info"
    assert RFC3339_UTC.match(doc["time"]), doc["time"]
    assert doc["logger"] == "conversion_relay.sender"
    assert doc["message"] == "delivered 7d4c"
    assert doc["vendor"] == "altcraft"
    assert doc["event_id"] == "7d4c"
    assert doc["outcome"] == "delivered"
    assert (doc["status"], doc["attempt"], doc["partition"]) == (200, 1, 3)
    assert doc["offset"] == 1234567890, "numbers stay numbers and digit runs are not phones"
    assert (doc["topic"], doc["reason"]) == ("conversions", "ok")


def test_only_passed_fields_and_unknown_extras_are_written(configure: Configure) -> None:
    """Fields not passed are absent; other extra keys are written after the known ones."""
    stream = configure("info")
    logging.getLogger("x").warning("paused", extra={"in_flight": 1000, "vendor": "altcraft"})
    [doc] = records(stream)
    assert doc == {**doc, "level": "warning", "vendor": "altcraft", "in_flight": 1000}
    assert "event_id" not in doc
    assert list(doc)[-2:] == ["vendor", "in_flight"]


def test_every_record_is_exactly_one_line(configure: Configure) -> None:
    """Multi-line messages and tracebacks are escaped so each record stays one JSON line."""
    stream = configure("debug")
    log = logging.getLogger("conversion_relay.pipeline")
    log.debug("first\nsecond line")
    try:
        raise RuntimeError("boom\nagain")
    except RuntimeError:
        log.exception("commit failed", extra={"vendor": "conductrics"})
    docs = records(stream)
    assert len(lines(stream)) == 2
    assert docs[0]["message"] == "first\nsecond line"
    assert docs[1]["level"] == "error"
    assert "RuntimeError: boom" in docs[1]["exception"]


def test_level_filters_records(configure: Configure) -> None:
    """Records below the configured level are not written."""
    stream = configure("WARNING")
    log = logging.getLogger("conversion_relay.x")
    log.info("quiet")
    log.warning("loud")
    assert [doc["message"] for doc in records(stream)] == ["loud"]


def test_unknown_level_is_an_error() -> None:
    """A misspelt level is reported instead of silently logging at some default."""
    with pytest.raises(ValueError, match="unknown log level 'verbose'"):
        configure_logging("verbose", stream=io.StringIO())


def test_configuring_again_replaces_the_handler(configure: Configure) -> None:
    """A second configure_logging call replaces the first handler rather than doubling lines."""
    first = configure("info")
    second = configure("info")
    logging.getLogger("x").info("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1


def test_tty_gets_human_readable_lines(configure: Configure, monkeypatch: Any) -> None:
    """On a terminal the line is plain text: time, level, logger, message, key=value fields."""
    monkeypatch.setenv("NO_COLOR", "1")
    stream = configure("info", tty=True)
    logging.getLogger("conversion_relay.sender").info(
        "delivered", extra={"vendor": "altcraft", "status": 200}
    )
    [line] = lines(stream)
    assert not line.startswith("{")
    assert re.match(
        r"^\d\d:\d\d:\d\d\.\d{3} INFO  conversion_relay\.sender  delivered  "
        r"vendor=altcraft status=200$",
        line,
    ), line


def test_tty_lines_are_coloured_unless_no_color(configure: Configure, monkeypatch: Any) -> None:
    """The level is coloured on a terminal, and NO_COLOR turns colour off."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    stream = configure("info", tty=True)
    logging.getLogger("x").error("failed")
    assert "\x1b[31mERROR\x1b[0m" in stream.getvalue()


def test_json_argument_overrides_the_tty_check(configure: Configure) -> None:
    """json=True forces JSON on a terminal and json=False forces text on a pipe."""
    tty = configure("info", tty=True, json=True)
    logging.getLogger("x").info("a")
    assert orjson.loads(tty.getvalue())["message"] == "a"
    pipe = configure("info", json=False)
    logging.getLogger("x").info("b")
    assert not pipe.getvalue().startswith("{")
    assert " INFO  x  b" in pipe.getvalue()


# Every secret and personal datum below must never reach the output, in either format.
API_KEY = "api-1234567890abc"
JSON_TOKEN = "91f1dfa81c264a938b475677c60ce967"
XML_API_KEY = "test_api_key1-secret"
BEARER = "eyJhbGciOiJIUzI1NiJ9.payload.sig"
SASL_PASSWORD = "hunter2-sasl-pw"
REDIS_PASSWORD = "r3dis-pass"
EMAIL = "anna.schmidt@example.com"
PHONE = "+49301234567"
PHONE_NATIONAL = "0301234567"
SECRETS = (API_KEY, JSON_TOKEN, XML_API_KEY, BEARER, SASL_PASSWORD, REDIS_PASSWORD)
PERSONAL = (EMAIL, "anna.schmidt", PHONE, "49301234567", PHONE_NATIONAL, "30123456")


def log_everything_sensitive() -> None:
    """Log every kind of secret the relay handles, in messages, fields and a traceback."""
    log = logging.getLogger("conversion_relay.sender")
    url = f"https://api-xxx.conductrics.com/ac-1/v3/agent-api?vid=lana-123&apikey={API_KEY}"
    log.warning("POST %s failed", url, extra={"vendor": "conductrics", "status": 503})
    body = f'{{"token": "{JSON_TOKEN}", "email": "{EMAIL}", "phone": "{PHONE}"}}'
    log.error("altcraft rejected %s", body, extra={"vendor": "altcraft", "reason": body})
    xml = f"<ApiRequest><ApiKey>{XML_API_KEY}</ApiKey><Data><Phone>{PHONE_NATIONAL}</Phone></Data>"
    log.error("expertsender 400 for %s", xml, extra={"vendor": "expertsender"})
    headers = {"Authorization": f"Bearer {BEARER}", "Content-Type": "application/json"}
    log.debug("request headers %s", headers, extra={"headers": headers})
    log.info("raw http\r\nAuthorization: Bearer %s\r\nHost: api", BEARER)
    log.error(
        "kafka config sasl_password=%s and KafkaConfig(sasl_password='%s')",
        SASL_PASSWORD,
        SASL_PASSWORD,
        extra={"config": {"kafka": {"sasl_username": "relay", "sasl_password": SASL_PASSWORD}}},
    )
    log.info("redis at redis://relay:%s@redis:6379/0", REDIS_PASSWORD)
    log.info("customer %s", EMAIL, extra={"customer": {"email": EMAIL, "phone": PHONE_NATIONAL}})
    log.info("sms to %s", PHONE, extra={"phone": PHONE_NATIONAL, "event_id": EMAIL})
    try:
        raise ConnectionError(f"401 for apikey={API_KEY} user {EMAIL}")
    except ConnectionError:
        log.exception("delivery failed", extra={"vendor": "conductrics"})


@pytest.mark.parametrize("tty", [False, True], ids=["json", "tty"])
def test_secrets_and_personal_data_never_appear(configure: Configure, tty: bool) -> None:
    """No API key, token, ApiKey, bearer, SASL/Redis password, email or phone reaches the output."""
    stream = configure("debug", tty=tty)
    log_everything_sensitive()
    output = stream.getvalue()
    assert len(lines(stream)) >= 10, output
    for secret in SECRETS + PERSONAL:
        assert secret not in output, f"{secret!r} leaked:\n{output}"
    # What is left still tells the operator what happened.
    for kept in ("apikey=***", "<ApiKey>***</ApiKey>", "Bearer ***", "a***@example.com"):
        assert kept in output
    assert "67" in output
    assert "vid=lana-123" in output


def test_structured_extra_values_are_masked_by_key(configure: Configure) -> None:
    """Inside dict fields, a secret-named key loses its value and a phone key keeps 2 digits."""
    stream = configure("info")
    logging.getLogger("x").info(
        "config",
        extra={
            "config": {
                "kafka": {"sasl_password": SASL_PASSWORD, "sasl_username": "relay"},
                "vendors": [{"api_key": 12345678, "token": None, "base_url": "https://a"}],
            },
            "customer": {"phone": PHONE_NATIONAL, "email": EMAIL},
        },
    )
    [doc] = records(stream)
    assert doc["config"] == {
        "kafka": {"sasl_password": "***", "sasl_username": "relay"},
        "vendors": [{"api_key": "***", "token": None, "base_url": "https://a"}],
    }
    assert doc["customer"] == {"phone": "********67", "email": "a***@example.com"}


def test_mask_email_keeps_first_letter_and_domain() -> None:
    """`anna@example.com` becomes `a***@example.com`."""
    assert mask_email("anna@example.com") == "a***@example.com"
    assert mask_email("not-an-email") == "***"


def test_mask_phone_keeps_last_two_digits() -> None:
    """Every digit but the last two is masked; separators and the plus sign stay."""
    assert mask_phone("+49301234567") == "+*********67"
    assert mask_phone("+49 30 1234-567") == "+** ** ****-*67"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("?vid=a&apikey=k1&session=b", "?vid=a&apikey=***&session=b"),
        ("?api_key=k1", "?api_key=***"),
        ('{"token": "t1", "x": 1}', '{"token": "***", "x": 1}'),
        ('{"token":"t\\"1"}', '{"token":"***"}'),
        ('b\'{\\"token\\": \\"t1\\"}\'', 'b\'{\\"token\\": \\"***\\"}\''),
        ("<ApiKey>k1</ApiKey>", "<ApiKey>***</ApiKey>"),
        ("<token>t1</token>", "<token>***</token>"),
        ("Authorization: Bearer t1", "Authorization: Bearer ***"),
        ("authorization=Basic dXNlcg==", "authorization=Basic ***"),
        ("{'X-Api-Key': 'k1'}", "{'X-Api-Key': '***'}"),
        ("X-Auth-Token: t1", "X-Auth-Token: ***"),
        ("password=p1 user=u", "password=*** user=u"),
        ("sasl_plain_password='p1'", "sasl_plain_password='***'"),
        ("redis://:p1@redis:6379", "redis://:***@redis:6379"),
        ("mail b.o+b@mail.example.co.uk!", "mail b***@mail.example.co.uk!"),
        ("call +1 (415) 555-2671", "call +* (***) ***-**71"),
        ('"phone": "0301234567"', '"phone": "********67"'),
    ],
)
def test_redact_masks_each_form(text: str, expected: str) -> None:
    """Each secret/PII form is masked in place and the text around it is kept."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "committed offset 1234567890 on partition 3",
        "occurred_at 2026-11-20T14:03:11+02:00 from 185.237.80.128",
        "event 7d4c9f6e-1b8a-4f5e-9a51-3c2b7f0e8d11 goal purchase value 129.90",
        "token bucket empty, 12 tokens per second",
    ],
)
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    """Offsets, timestamps, ids and the word 'token' in prose are not mistaken for secrets."""
    assert redact(text) == text


secret_values = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), max_codepoint=127)
    | st.sampled_from("-_.~+/="),
    min_size=1,
    max_size=40,
)


@given(secret_values)
def test_any_query_api_key_is_masked(value: str) -> None:
    """Whatever an API key looks like, it is masked in a query string."""
    assert redact(f"POST /v3/agent-api?vid=v1&apikey={value}&x=1") == (
        "POST /v3/agent-api?vid=v1&apikey=***&x=1"
    )


@given(st.text(max_size=200))
def test_redact_is_idempotent(text: str) -> None:
    """Redacting redacted text changes nothing."""
    once = redact(text)
    assert redact(once) == once
