"""The one redaction function: every credential form the relay handles is masked in full."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service import logs
from service.core.redact import is_secret_key, redact, remember_secrets

SECRET = "Zq9-SECRET-4711-xyz"


@pytest.mark.parametrize(
    "text",
    [
        f"<ApiKey>{SECRET}",  # cut off by a length limit: no closing tag
        f"<ApiRequest><ApiKey>{SECRET}</ApiKey>",
        f"<ApiKey><![CDATA[{SECRET}]]></ApiKey>",
        f"X-Secret-Key: {SECRET}",
        f"X-Auth: {SECRET}",
        f"X-Auth: Bearer {SECRET}",
        f"X-Signature: {SECRET}",
        f"GET /x?key={SECRET}&y=1",
        f"GET /x?sig={SECRET}",
        f"GET /x?access_key={SECRET}",
        f"GET /x?apikey%3D{SECRET}",
        f"body=apikey%3D{quote(SECRET)}%26vid%3Dv",
        quote(f"<ApiKey>{SECRET}</ApiKey>", safe=""),
        f"&lt;ApiKey&gt;{SECRET}&lt;/ApiKey&gt;",
        f'{{"echo": "\\u003cApiKey\\u003e{SECRET}\\u003c/ApiKey\\u003e"}}',
        f"the vendor said: invalid credentials Bearer {SECRET} rejected",
        f'{{"headers": {{"x-hmac": "{SECRET}"}}}}',
        f'{{"token": "{SECRET}',  # a JSON body cut off inside the value
        f'{{\\"token\\": \\"{SECRET}',
        f"sasl_password='{SECRET}",
    ],
)
def test_every_credential_form_is_masked_in_full(text: str) -> None:
    """Truncated XML, secret header names, short query keys, encoded forms and prose bearers."""
    out = redact(text)
    assert SECRET not in out, out
    assert "SECRET" not in out and "4711" not in out, out


def test_logs_redact_is_the_core_function() -> None:
    """`service.logs.redact` stays importable and is the same one function."""
    assert logs.redact is redact


@pytest.mark.parametrize(
    "text",
    [
        "monkey=3 donkey: 4",
        "partition 3 offset 1234567890",
        "token bucket empty, 12 tokens per second",
        "authentication failed for vendor altcraft",
    ],
)
def test_words_that_only_contain_a_secret_word_are_kept(text: str) -> None:
    """`monkey` is not a key; ordinary prose is left alone."""
    assert redact(text) == text


def test_a_remembered_secret_is_masked_in_any_text_even_cut_off() -> None:
    """A config secret is masked literally, percent-encoded, and as a cut-off start at the end."""
    secret = "kK83-unknown-form-secret"
    remember_secrets([secret])
    assert secret not in redact(f"the vendor echoed [{secret}] back")
    assert quote(secret, safe="") not in redact(f"q={quote(secret, safe='')}")
    cut = f"echo: {secret}"[:-5]
    assert redact(cut).endswith("***"), redact(cut)
    assert secret[:10] not in redact(cut)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("X-Secret-Key", True),
        ("X-Auth", True),
        ("x-signature", True),
        ("sig", True),
        ("Authorization", True),
        ("monkey", False),
        ("message_guid_key", False),
        ("visitor_id_key", False),
        ("field_value_key", False),
        ("content-type", False),
        ("base_url", False),
    ],
)
def test_secret_key_names(name: str, secret: bool) -> None:
    """Field and header names that carry credentials are recognised by name."""
    assert is_secret_key(name) is secret


@given(st.text(max_size=200))
def test_redact_with_decoding_is_idempotent(text: str) -> None:
    """Redacting redacted text changes nothing, whatever encodings the text mixes."""
    once = redact(text)
    assert redact(once) == once


@given(st.sampled_from(["%3C", "%25", "&lt;", "\\u003c", "%"]), st.text(max_size=60))
def test_encoded_texts_stay_idempotent(prefix: str, rest: str) -> None:
    """Texts starting with an escape are stable under a second redaction."""
    once = redact(prefix + "ApiKey" + rest)
    assert redact(once) == once
