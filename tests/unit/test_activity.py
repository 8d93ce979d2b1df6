"""VendorActivity: counter samples turned into /status's times and one-minute rate."""

from __future__ import annotations

import pytest

from service.core.activity import VendorActivity


def test_growth_is_stamped_and_the_first_sample_is_the_baseline() -> None:
    """Counts present at the first sample are not news; growth after it is, with its time."""
    activity = VendorActivity()
    activity.observe(0.0, 1000.0, delivered=5, errors=2, error_text="")
    assert activity.last_delivery_at is None and activity.last_error_at is None
    activity.observe(1.0, 1001.0, delivered=5, errors=3, error_text="HTTP 503")
    assert activity.last_error_at == 1001.0 and activity.last_delivery_at is None
    activity.observe(2.0, 1002.0, delivered=9, errors=3, error_text="HTTP 503")
    assert activity.last_delivery_at == 1002.0 and activity.last_error_at == 1001.0


def test_a_new_error_text_is_stamped_even_without_a_count() -> None:
    """A pipeline task that died says so in last_error only."""
    activity = VendorActivity()
    activity.observe(0.0, 10.0, delivered=0, errors=0, error_text="")
    activity.observe(1.0, 11.0, delivered=0, errors=0, error_text="task fetch died")
    assert activity.last_error_at == 11.0


def test_the_window_keeps_the_last_minute_only() -> None:
    """60 s at 10/s, then 30 s idle: the window holds the last 30 s of deliveries."""
    activity = VendorActivity(window_s=60.0)
    for second in range(61):
        activity.observe(float(second), 1000.0 + second, second * 10, 0, "")
    assert activity.delivered_in_window() == 600
    assert activity.per_s() == pytest.approx(10.0)
    for second in range(61, 91):
        activity.observe(float(second), 1000.0 + second, 600, 0, "")
    assert activity.delivered_in_window() == 300
    assert activity.per_s() == pytest.approx(5.0)
