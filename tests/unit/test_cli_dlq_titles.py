"""`dlq inspect`'s headline and `--by state`: what the counts say matches what is counted."""

from __future__ import annotations

from service.cli.dlq import _by, _inspect_title
from service.delivery.replay import LetterInfo, aggregate


def _letter(replayed: bool) -> LetterInfo:
    return LetterInfo(
        event_id="e",
        vendor="altcraft",
        reason="rejected",
        http_status=200,
        attempts=1,
        failed_at=None,
        source="",
        dlq_partition=0,
        dlq_offset=0,
        error="",
        replayed=replayed,
    )


def test_with_all_the_headline_counts_waiting_and_replayed_letters_apart() -> None:
    """`--all` over 5 replayed letters never says "5 dead letters waiting"."""
    title = _inspect_title([_letter(True)] * 5, "conversions.dlq", shown_all=True)
    assert title == "5 dead letters in conversions.dlq: 0 waiting, 5 already replayed"


def test_without_all_the_headline_counts_the_waiting_and_points_at_the_rest() -> None:
    """The default view names the waiting letters and how many --all would add."""
    letters = [_letter(False)] * 2 + [_letter(True)] * 3
    title = _inspect_title(letters, "conversions.dlq", shown_all=False)
    assert title == (
        "2 dead letters waiting in conversions.dlq (3 more already replayed: --all shows them)"
    )


def test_letters_can_be_counted_by_state() -> None:
    """`--by state` is a field, and counts open and replayed letters apart."""
    assert _by("vendor,state") == ["vendor", "state"]
    rows = aggregate([_letter(False), _letter(True), _letter(True)], ["state"])
    assert rows == [{"state": "replayed", "count": 2}, {"state": "open", "count": 1}]
