from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.rating import PrefixIndex, Rate, rate_applies

D = Decimal
AT = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)  # Wednesday 12:00 = minute 3600
JAN = datetime(2026, 1, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)


def rate(prefix: str, price: str = "0.1", **fields: object) -> Rate:
    return Rate(prefix, D(price), **fields)  # type: ignore[arg-type]


def test_longest_prefix_wins() -> None:
    index = PrefixIndex("t", [rate("4"), rate("44"), rate("4420"), rate("442", "0.3")])
    assert index.lookup("442079460000", AT) == (rate("4420"),)
    assert index.lookup("442179460000", AT) == (rate("442", "0.3"),)
    assert index.lookup("4", AT) == (rate("4"),)
    assert index.lookup("49", AT) == (rate("4"),)
    assert index.lookup("33", AT) == ()
    assert index.lookup("", AT) == ()


def test_prefix_lengths_with_gaps() -> None:
    index = PrefixIndex("t", [rate("1"), rate("123456"), rate("1234567890")])
    assert index.max_prefix_len == 10
    assert index.lookup("12345", AT) == (rate("1"),)
    assert index.lookup("123456", AT) == (rate("123456"),)
    assert index.lookup("123456789", AT) == (rate("123456"),)
    assert index.lookup("123456789012345", AT) == (rate("1234567890"),)


def test_numbers_that_are_not_digits_match_nothing() -> None:
    index = PrefixIndex("t", [rate("44")])
    for number in ("+44123", "44*1", "44 12", "٤٤١"):
        assert index.lookup(number, AT) == ()


def test_lookup_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        PrefixIndex("t", [rate("44")]).lookup("44", datetime(2026, 1, 1))


def test_dates_filter_and_fall_back_to_a_shorter_prefix() -> None:
    old = rate("44", "0.2", valid_to=JAN)
    future = rate("44", "0.3", valid_from=DEC)
    current = rate("44", "0.4", valid_from=JAN, valid_to=DEC)
    fallback = rate("4", "0.9")
    index = PrefixIndex("t", [old, future, fallback])
    assert index.lookup("4412", AT) == (fallback,)  # 44 has rates, none valid now
    assert index.lookup("4412", DEC) == (future,)
    assert index.lookup("4412", JAN - timedelta(seconds=1)) == (old,)
    index = PrefixIndex("t", [old, future, current, fallback])
    assert index.lookup("4412", AT) == (current,)
    assert index.lookup("4412", JAN) == (current,)  # valid_to is exclusive, valid_from not


def test_week_windows_filter_including_the_wrap() -> None:
    office = rate("33", "0.5", week_start=0 * 1440 + 480, week_end=4 * 1440 + 1079)
    weekend = rate("33", "0.1", week_start=5 * 1440, week_end=1439)  # Sat 00:00 .. Mon 23:59
    index = PrefixIndex("t", [office, weekend])
    assert index.lookup("331", AT) == (office,)  # Wednesday noon
    assert index.lookup("331", datetime(2026, 11, 22, 23, 0, tzinfo=UTC)) == (weekend,)
    monday_early = datetime(2026, 11, 16, 7, 59, tzinfo=UTC)
    assert index.lookup("331", monday_early) == (weekend,)
    assert index.lookup("331", monday_early + timedelta(minutes=1)) == (office, weekend)
    assert index.lookup("331", datetime(2026, 11, 20, 18, 0, tzinfo=UTC)) == ()  # Fri 18:00


def test_an_always_valid_rate_shares_its_prefix_with_a_windowed_one() -> None:
    plain = rate("33", "0.5")
    evening = rate("33", "0.2", week_start=1080, week_end=1439)  # Monday 18:00 .. 23:59
    index = PrefixIndex("t", [plain, evening])
    assert index.lookup("331", AT) == (plain,)
    assert index.lookup("331", datetime(2026, 11, 16, 20, 0, tzinfo=UTC)) == (plain, evening)
    assert index.get("33") == (plain, evening)


def test_a_single_rate_outside_its_window_falls_back() -> None:
    night = rate("331", "0.05", week_start=1320, week_end=1800)  # Mon 22:00 .. Tue 06:00
    index = PrefixIndex("t", [night, rate("33")])
    assert index.lookup("3312", AT) == (rate("33"),)
    assert index.lookup("3312", datetime(2026, 11, 16, 23, 0, tzinfo=UTC)) == (night,)


def test_size_version_and_exact_get() -> None:
    a, b = rate("44", "0.1", valid_to=JAN), rate("44", "0.2", valid_from=JAN)
    index = PrefixIndex("uk", [a, b, rate("4")], default_trunk="carrier", version=7)
    assert len(index) == 3
    assert index.prefix_count == 2
    assert index.max_prefix_len == 2
    assert index.version == 7
    assert index.name == "uk" and index.default_trunk == "carrier"
    assert index.get("44") == (a, b)
    assert index.get("4") == (rate("4"),)
    assert index.get("443") == ()
    assert repr(index) == "PrefixIndex(name='uk', rates=3, prefixes=2, version=7)"
    index.get("44")  # the index is not changed by reads
    assert len(index) == 3


def test_empty_index() -> None:
    index = PrefixIndex("empty", [])
    assert len(index) == 0 and index.max_prefix_len == 0 and index.default_trunk is None
    assert index.lookup("44", AT) == ()


def test_only_rates_go_in() -> None:
    with pytest.raises(TypeError, match="not a Rate"):
        PrefixIndex("t", ["44"])  # type: ignore[list-item]


def test_rate_applies_combines_dates_and_window() -> None:
    assert rate_applies(rate("1", valid_from=JAN, week_start=3600, week_end=3600), AT)
    assert not rate_applies(rate("1", valid_from=DEC, week_start=3600, week_end=3600), AT)
    assert not rate_applies(rate("1", valid_from=JAN, week_start=3601, week_end=3601), AT)


digits = st.text("0123456789", min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(st.sets(digits, min_size=1, max_size=40), digits)
def test_longest_matching_prefix_wins_always(prefixes: set[str], suffix: str) -> None:
    index = PrefixIndex("t", [rate(prefix) for prefix in sorted(prefixes)])
    for number in (suffix, sorted(prefixes)[0] + suffix):
        matching = [prefix for prefix in prefixes if number.startswith(prefix)]
        found = index.lookup(number, AT)
        if matching:
            assert [r.prefix for r in found] == [max(matching, key=len)]
        else:
            assert found == ()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["4", "44", "441", "4412"]),
            st.integers(0, 10079),
            st.integers(0, 10079),
            st.integers(-60, 60),
            st.integers(1, 60),
        ),
        min_size=1,
        max_size=10,
    ),
    st.integers(0, 10079),
)
def test_lookup_returns_the_longest_prefix_with_an_applying_rate(
    specs: list[tuple[str, int, int, int, int]], minute: int
) -> None:
    monday = datetime(2026, 11, 16, tzinfo=UTC)
    at = monday + timedelta(minutes=minute)
    rates = [
        rate(
            prefix,
            week_start=start,
            week_end=end,
            valid_from=at + timedelta(days=shift),
            valid_to=at + timedelta(days=shift + length),
        )
        for prefix, start, end, shift, length in specs
    ]
    found = PrefixIndex("t", rates).lookup("44123", at)
    applying = [r for r in rates if rate_applies(r, at)]
    if not applying:
        assert found == ()
        return
    longest = max(len(r.prefix) for r in applying)
    assert found == tuple(r for r in applying if len(r.prefix) == longest)
