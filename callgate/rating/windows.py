"""When a rate applies: its validity dates and its time-of-week window (RATING.md "A rate").

Pure functions of the call's start time `at`, which the caller passes in. Validity compares
instants (aware datetimes); the week window reads `at`'s own wall clock, so the caller passes
`at` converted to the operator's time zone.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["MINUTES_PER_WEEK", "in_validity", "in_week_window", "week_minute"]

MINUTES_PER_WEEK = 7 * 24 * 60  # 10080: a window bound is 0..10079


def week_minute(at: datetime) -> int:
    """Minutes since Monday 00:00 of `at`'s wall clock, 0..10079."""
    return at.weekday() * 1440 + at.hour * 60 + at.minute


def in_week_window(at: datetime, week_start: int | None, week_end: int | None) -> bool:
    """Whether `at` falls in the window [week_start, week_end], both ends inclusive.

    A window with ``week_start > week_end`` wraps from Sunday into Monday. No window (either
    bound None) means always.
    """
    if week_start is None or week_end is None:
        return True
    minute = week_minute(at)
    if week_start <= week_end:
        return week_start <= minute <= week_end
    return minute >= week_start or minute <= week_end


def in_validity(at: datetime, valid_from: datetime | None, valid_to: datetime | None) -> bool:
    """Whether `at` falls in [valid_from, valid_to); a missing bound is open."""
    return (valid_from is None or valid_from <= at) and (valid_to is None or at < valid_to)
