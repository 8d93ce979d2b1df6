"""The make bench hotpath scenario turns bench.hotpath's figure lines into report rows."""

from bench.hotpath_scenario import rows_of


def test_each_figure_line_becomes_a_row_named_by_what_it_measures() -> None:
    output = (
        "100000 deliveries in 2.10s: 20.5 µs CPU per delivery (relay hot path)\n"
        "\n"
        "tracing off vs no tracing code: the worker's test 3.0 ns: 0.004 µs (target <= 0.5 µs)\n"
    )
    assert rows_of(output) == [
        ["100000 deliveries in 2.10s", "20.5 µs CPU per delivery (relay hot path)"],
        ["tracing off vs no tracing code", "the worker's test 3.0 ns: 0.004 µs (target <= 0.5 µs)"],
    ]


def test_a_line_without_a_label_is_kept_whole_and_tracebacks_are_not_rows() -> None:
    output = "plain figure\nTraceback (most recent call last):\n  File x\n"
    assert rows_of(output) == [["hot path", "plain figure"]]
