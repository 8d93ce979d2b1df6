"""Batched hot-path metrics expose exactly what direct prometheus_client calls would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from service.metrics import REQUEST_BUCKETS_S, Metrics

amounts = st.lists(
    st.one_of(
        st.sampled_from([0.0, *REQUEST_BUCKETS_S]),  # exactly on a bound: `amount <= bound`
        st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
    ),
    max_size=60,
)


def _samples(metrics: Metrics, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        if family.name == name
        for s in family.samples
        if not s.name.endswith("_created")
    }


@given(amounts)
def test_a_batched_histogram_exposes_the_same_buckets_sum_and_count_as_direct_observes(
    values: list[float],
) -> None:
    direct, batched = Metrics(), Metrics()
    child = direct.request_duration.labels("v")
    fast = batched.batched_histogram(batched.request_duration.labels("v"))
    for value in values:
        child.observe(value)
        fast.observe(value)
    name = "conversion_relay_request_duration_seconds"
    want, got = _samples(direct, name), _samples(batched, name)
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-9, key


def test_a_scrape_sees_batched_counts_without_an_explicit_flush() -> None:
    metrics = Metrics()
    counter = metrics.batched_counter(metrics.events_decoded.labels("v"))
    for _ in range(3):
        counter.inc()
    body = generate_latest(metrics.registry).decode()
    assert 'conversion_relay_events_decoded_total{vendor="v"} 3.0' in body
    counter.inc(2)
    assert (
        metrics.registry.get_sample_value("conversion_relay_events_decoded_total", {"vendor": "v"})
        == 5.0
    )


def test_flushing_twice_counts_once() -> None:
    metrics = Metrics()
    counter = metrics.batched_counter(metrics.events_decoded.labels("v"))
    histogram = metrics.batched_histogram(metrics.request_duration.labels("v"))
    counter.inc()
    histogram.observe(0.02)
    metrics.flush()
    metrics.flush()
    get = metrics.registry.get_sample_value
    assert get("conversion_relay_events_decoded_total", {"vendor": "v"}) == 1.0
    assert get("conversion_relay_request_duration_seconds_count", {"vendor": "v"}) == 1.0
    assert get("conversion_relay_request_duration_seconds_sum", {"vendor": "v"}) == 0.02
