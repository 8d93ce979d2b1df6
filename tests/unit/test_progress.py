"""The progress codec (service/core/progress.py): round trip, size bound, fallback, and that a
decoded text never claims an offset done that was not."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.progress import MAGIC, MAX_SPAN, Attempt, Progress, decode, encode, progress

KAFKA_METADATA_MAX = 4096


@st.composite
def progresses(draw: st.DrawFn, max_span: int = 3000) -> Progress:
    """A base, done offsets above it (sparse or in runs), and retry clocks of unfinished ones."""
    base = draw(st.integers(0, 2**62))
    span = draw(st.integers(0, max_span))
    density = draw(st.sampled_from([0.0, 0.01, 0.5, 0.99, 1.0]))
    rnd = draw(st.randoms(use_true_random=False))
    done = [base + 1 + i for i in range(span) if rnd.random() < density]
    free = [o for o in range(base, base + span + 2) if o not in set(done)]
    clocked = draw(st.lists(st.sampled_from(free), max_size=40, unique=True))
    attempts = [
        Attempt(
            o, draw(st.integers(0, 2**40)), draw(st.integers(1, 10**6)), draw(st.integers(0, 99))
        )
        for o in clocked
    ]
    return progress(base, done, attempts)


@settings(max_examples=300, deadline=None)
@given(progresses())
def test_a_progress_that_fits_comes_back_whole(p: Progress) -> None:
    """Encoded within a generous limit, a progress decodes to itself (up to 32 clocks kept)."""
    text = encode(p, max_chars=1 << 20)
    back = decode(text)
    assert back is not None
    assert back.base == p.base and back.done == p.done
    assert back.attempts == p.attempts[:32]


@settings(max_examples=300, deadline=None)
@given(progresses(), st.integers(0, KAFKA_METADATA_MAX))
def test_a_text_stays_within_its_limit_and_never_claims_more_than_it_was_told(
    p: Progress, max_chars: int
) -> None:
    """Whatever the limit, the text fits it, is plain ASCII, and what it decodes to is a subset
    of the progress given: done offsets and clocks of the same base, or nothing at all."""
    text = encode(p, max_chars)
    assert len(text) <= max_chars
    assert text.isascii()
    back = decode(text)
    if text == "":
        assert back is None
        return
    assert back is not None and back.base == p.base
    assert set(back.done) <= set(p.done)
    assert set(back.attempts) <= set(p.attempts)


@given(progresses(max_span=20))
def test_the_text_is_versioned_by_its_magic_prefix(p: Progress) -> None:
    """Every text starts with the version's magic; without it nothing is read."""
    text = encode(p, 4000)
    assert text.startswith(MAGIC)
    assert decode(text[len(MAGIC) :]) is None
    assert decode("cr2" + text[len(MAGIC) :]) is None


def test_a_window_behind_a_stuck_head_fits_kafkas_default_limit_in_a_few_bytes() -> None:
    """1,000 offsets done behind one retrying head take one run: a few dozen characters."""
    p = progress(5_000_000, range(5_000_001, 5_001_000), [Attempt(5_000_000, 1_796_000_000, 7)])
    text = encode(p, 4000)
    assert len(text) < 40, text
    assert decode(text) == p


def test_scattered_offsets_take_a_bitset_when_runs_would_be_longer() -> None:
    """Every other offset done: the bitset (one bit each) wins over ~2,000 run lengths."""
    p = progress(100, range(102, 4100, 2))
    text = encode(p, 4000)
    assert text.startswith(MAGIC + "B")
    assert decode(text) == p


def test_too_many_offsets_fall_back_to_the_clocks_then_to_the_plain_offset() -> None:
    """Past the limit the text keeps only the retry clocks; past that it is empty."""
    rnd = __import__("random").Random(7)
    done = [o for o in range(1, 200_000) if rnd.random() < 0.5]
    p = progress(0, done, [Attempt(0, 1_796_000_000, 3)])
    text = encode(p, 4000)
    back = decode(text)
    assert back is not None and back.done == () and back.attempts == p.attempts
    assert encode(p, 8) == ""


def test_a_span_too_wide_to_expand_is_not_encoded_as_offsets() -> None:
    """An offset more than MAX_SPAN above the base is never written (nor read back)."""
    p = progress(0, [1, MAX_SPAN + 5])
    assert encode(p, 1 << 20) == ""


@given(st.text(max_size=200))
def test_any_foreign_text_decodes_to_nothing_or_to_a_valid_progress(text: str) -> None:
    """Metadata another client wrote (or garbage) never raises."""
    back = decode(text)
    assert back is None or all(o > back.base for o in back.done)


@given(st.binary(max_size=200), st.sampled_from("RB"))
def test_corrupt_bodies_never_raise_nor_claim_the_base(body: bytes, kind: str) -> None:
    """A mangled body decodes to None or to offsets strictly above its base."""
    text = MAGIC + kind + base64.urlsafe_b64encode(body).decode().rstrip("=")
    back = decode(text)
    assert back is None or all(o > back.base for o in back.done)


def test_a_runs_text_claiming_a_huge_span_is_refused() -> None:
    """A run of 2**40 done offsets would expand without bound: it decodes to None."""
    body = bytes([0, 0, 2, 1]) + bytes([0x80, 0x80, 0x80, 0x80, 0x80, 0x20])
    text = MAGIC + "R" + base64.urlsafe_b64encode(body).decode().rstrip("=")
    assert decode(text) is None


def test_since_rebases_on_a_later_commit_and_refuses_an_earlier_one() -> None:
    """Seen from a committed offset past its base, only what lies above it is kept; from one
    below its base (the group was moved back) the progress does not apply."""
    p = progress(10, [12, 13, 20], [Attempt(11, 5, 1), Attempt(14, 6, 2)])
    assert p.since(10) == p
    assert p.since(13) == Progress(13, (20,), (Attempt(14, 6, 2),))
    assert p.since(9) is None
