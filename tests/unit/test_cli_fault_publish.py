"""The `publish` command's argument checks and summary line (issue 25, finding 7)."""

from __future__ import annotations

import pytest

from service.cli import main


@pytest.mark.parametrize("count", ["0", "-3"])
def test_publish_sample_below_one_is_a_usage_error(
    count: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`publish --sample N` with N < 1 is a one-line usage error (exit 2), not a silent no-op."""
    code = main(["publish", "--sample", count, "--bootstrap", "127.0.0.1:1", "--topic", "t"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "--sample" in err and ">= 1" in err


def test_publish_summary_uses_singular_for_one_record() -> None:
    """The summary says "1 record" and "N records" otherwise."""
    from service.cli.publish import summary

    assert summary(1, "t") == "published 1 record to t"
    assert summary(20, "conversions") == "published 20 records to conversions"
