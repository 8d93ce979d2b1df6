"""Request targets percent-encoded as RFC 3986 allows, for every transport (core/targets.py)."""

from __future__ import annotations

from urllib.parse import unquote

from service.core.targets import encoded_target, encoded_url


def test_a_clean_target_is_the_same_object() -> None:
    """The common case costs one regex search and no copy."""
    target = "/v1/goal?id=42&x=%20"
    assert encoded_target(target) is target


def test_characters_a_target_may_not_hold_are_encoded_and_escapes_kept() -> None:
    """Space, `"<>{}|\\^` and backtick and non-ASCII are encoded; `%41` stays as it was."""
    encoded = encoded_target('/a b"<>{}|\\^`/ü?q=%41')
    assert not set(encoded) & set(' "<>{}|\\^`ü')
    assert "%41" in encoded
    assert unquote(encoded) == unquote('/a b"<>{}|\\^`/ü?q=%41')


def test_a_urls_target_is_encoded_and_its_host_left_to_the_client() -> None:
    """Only the path and query are encoded: an IDN host stays for the client's IDNA."""
    assert encoded_url("https://bücher.test:8443/a|b^c?q=x y") == (
        "https://bücher.test:8443/a%7Cb%5Ec?q=x%20y"
    )
    assert encoded_url("https://vendor.test") == "https://vendor.test"
    assert encoded_url("https://vendor.test/ok?x=1") == "https://vendor.test/ok?x=1"
