from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callgate.rating import in_validity, in_week_window, week_minute

MONDAY = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday, 00:00
LAST = 10079


def at_minute(minute: int, tz: timezone = UTC) -> datetime:
    return (MONDAY + timedelta(minutes=minute)).replace(tzinfo=tz)


def test_week_minute_counts_from_monday_midnight() -> None:
    assert MONDAY.weekday() == 0
    assert week_minute(MONDAY) == 0
    assert week_minute(datetime(2026, 11, 17, 9, 30, 59, tzinfo=UTC)) == 1440 + 570
    assert week_minute(datetime(2026, 11, 22, 23, 59, tzinfo=UTC)) == LAST


def test_week_minute_reads_the_wall_clock_of_at() -> None:
    paris = timezone(timedelta(hours=1))
    instant = datetime(2026, 11, 16, 23, 30, tzinfo=UTC)  # Monday 23:30 UTC
    assert week_minute(instant) == 1410
    assert week_minute(instant.astimezone(paris)) == 1440 + 30  # Tuesday 00:30 in Paris


@pytest.mark.parametrize(
    ("start", "end", "minute", "inside"),
    [
        (540, 1020, 539, False),
        (540, 1020, 540, True),  # inclusive start
        (540, 1020, 1020, True),  # inclusive end
        (540, 1020, 1021, False),
        (7200, 1439, 7199, False),  # Saturday 00:00 .. Monday 23:59 wraps
        (7200, 1439, 7200, True),
        (7200, 1439, LAST, True),
        (7200, 1439, 0, True),
        (7200, 1439, 1439, True),
        (7200, 1439, 1440, False),
        (100, 100, 100, True),  # a one-minute window
        (100, 100, 101, False),
        (0, LAST, 5000, True),
    ],
)
def test_week_window_inclusive_and_wrapping(
    start: int, end: int, minute: int, inside: bool
) -> None:
    assert in_week_window(at_minute(minute), start, end) is inside


def test_no_week_window_means_always() -> None:
    assert in_week_window(MONDAY, None, None)


@given(
    st.integers(0, LAST),
    st.integers(0, LAST),
    st.integers(0, LAST),
    st.integers(0, 59),
)
def test_week_window_matches_the_set_of_minutes(
    start: int, end: int, minute: int, second: int
) -> None:
    if start <= end:
        minutes = set(range(start, end + 1))
    else:
        minutes = set(range(start, LAST + 1)) | set(range(0, end + 1))
    at = at_minute(minute) + timedelta(seconds=second)
    assert in_week_window(at, start, end) is (minute in minutes)


def test_validity_is_half_open() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = datetime(2026, 2, 1, tzinfo=UTC)
    assert not in_validity(start - timedelta(microseconds=1), start, end)
    assert in_validity(start, start, end)
    assert in_validity(end - timedelta(microseconds=1), start, end)
    assert not in_validity(end, start, end)
    assert in_validity(end, start, None)
    assert in_validity(start - timedelta(days=999), None, end)
    assert in_validity(start, None, None)


def test_validity_compares_instants_across_zones() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    east = timezone(timedelta(hours=3))
    assert not in_validity(datetime(2026, 1, 1, 2, 59, tzinfo=east), start, None)
    assert in_validity(datetime(2026, 1, 1, 3, 0, tzinfo=east), start, None)
