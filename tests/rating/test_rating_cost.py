from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from callgate.rating import (
    Rate,
    Route,
    billed_seconds,
    buy_cost,
    cost,
    grant,
    max_duration,
)
from callgate.rating.cost import _last_true

D = Decimal
MAX_CALL = 36000
ZERO = D(0)


def money(low: str, high: str) -> st.SearchStrategy[Decimal]:
    return st.one_of(st.just(D(0)), st.decimals(low, high, places=5))


@st.composite
def rates(draw: st.DrawFn) -> Rate:
    """Rates across the whole space: free, fee-only, floors, odd blocks, disconnect thresholds."""
    return Rate(
        prefix=draw(st.text("0123456789", min_size=1, max_size=6)),
        rate=draw(money("0.00001", "3")),
        connect_fee=draw(money("0.00001", "0.5")),
        disconnect_fee=draw(money("0.00001", "0.5")),
        disconnect_after=draw(st.one_of(st.just(0), st.integers(1, 400))),
        initial_block=draw(st.integers(0, 120)),
        increment=draw(st.integers(0, 90)),
        minimal_cost=draw(money("0.00001", "2")),
        buy_rate=draw(money("0.00001", "3")),
        buy_initial_block=draw(st.integers(0, 120)),
        buy_increment=draw(st.integers(0, 90)),
    )


# 5 places like balances, 7 places to reach the rounding edges; some negative.
availables = st.one_of(
    st.decimals("-1", "40", places=5),
    st.decimals("0", "2", places=7),
)


def per_min(
    price: str,
    x: int = 0,
    y: int = 0,
    *,
    connect_fee: Decimal = ZERO,
    minimal_cost: Decimal = ZERO,
    disconnect_fee: Decimal = ZERO,
) -> Rate:
    return Rate(
        "1",
        D(price),
        initial_block=x,
        increment=y,
        connect_fee=connect_fee,
        minimal_cost=minimal_cost,
        disconnect_fee=disconnect_fee,
    )


# ---- RATING.md's worked examples, exactly --------------------------------------------------


def test_ratings_md_examples() -> None:
    sixty_six = per_min("0.10", 60, 6)
    assert cost(sixty_six, 10) == D("0.10")
    assert billed_seconds(10, 60, 6) == 60
    assert cost(sixty_six, 61) == D("0.11")
    assert billed_seconds(61, 60, 6) == 66
    assert billed_seconds(67, 60, 6) == 72
    assert cost(sixty_six, 67) == D("0.12")
    assert cost(per_min("0.25", 30, 6), 89) == D("0.375")
    assert billed_seconds(89, 30, 6) == 90
    floor = per_min("1.99", 60, 60, connect_fee=D("0.05"), minimal_cost=D("1.00"))
    assert cost(floor, 1) == D("2.04")
    assert max_duration(sixty_six, D("0.11"), MAX_CALL) == 66


def test_costs_carry_five_places() -> None:
    assert str(cost(per_min("0.10", 60, 6), 61)) == "0.11000"
    assert str(cost(per_min("0.10"), 0)) == "0"


@pytest.mark.parametrize(
    ("billsec", "x", "y", "billed"),
    [
        (0, 60, 6, 0),
        (1, 60, 6, 60),
        (60, 60, 6, 60),
        (66, 60, 6, 66),
        (1, 0, 0, 1),  # increment 0 means 1
        (59, 0, 0, 59),
        (1, 0, 60, 60),
        (61, 0, 60, 120),
        (31, 30, 0, 31),
        (31, 45, 30, 45),
        (46, 45, 30, 75),
        (75, 45, 30, 75),  # steps count after the first block (RATING.md difference 6)
        (76, 45, 30, 105),
    ],
)
def test_billed_seconds(billsec: int, x: int, y: int, billed: int) -> None:
    assert billed_seconds(billsec, x, y) == billed


def test_negative_seconds_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="billsec"):
        billed_seconds(-1, 0, 0)
    with pytest.raises(ValueError, match="billsec"):
        cost(per_min("0.1"), -5)
    with pytest.raises(ValueError, match="billsec"):
        cost(per_min("0.1"), 10**9)
    assert billed_seconds(10**9 - 1, 0, 0) == 10**9 - 1


def test_huge_values_stay_exact() -> None:
    dear = Rate("1", D("999999999999.99999"), initial_block=10**9 - 1, minimal_cost=D(1))
    # exactly 16666666649999999833.3333335 (999999999999.99999 * 999999999 / 60)
    assert cost(dear, 1) == D("16666666649999999833.33333")
    assert max_duration(dear, D("999999999999.99999"), 10**12) == 0
    cheap = Rate("1", D("0.00001"))
    assert max_duration(cheap, D("999999999999"), 10**12) == 10**9 - 1
    # 89 s cost 0.0000148.., rounded 0.00001; 90 s cost 0.000015, rounded half up to 0.00002
    assert max_duration(cheap, D("0.00001"), 10**12) == 89


def test_unanswered_calls_are_free_whatever_the_fees() -> None:
    rate = per_min("1", 60, 60, connect_fee=D(1), disconnect_fee=D(1), minimal_cost=D(5))
    assert cost(rate, 0) == 0
    assert buy_cost(rate, 0) == 0


def test_disconnect_fee_applies_from_disconnect_after() -> None:
    always = per_min("0.60", 1, 1, disconnect_fee=D("0.20"))
    assert cost(always, 1) == D("0.21")
    late = Rate("1", D("0.60"), disconnect_fee=D("0.20"), disconnect_after=30)
    assert cost(late, 29) == D("0.29")
    assert cost(late, 30) == D("0.50")


def test_minimal_cost_floors_the_whole_charge_fees_included() -> None:
    rate = per_min("0.60", 1, 1, connect_fee=D("0.10"), minimal_cost=D("0.50"))
    assert cost(rate, 10) == D("0.50")  # 0.10 + 0.10 < 0.50
    assert cost(rate, 40) == D("0.50")  # 0.10 + 0.40 == 0.50
    assert cost(rate, 41) == D("0.51")


def test_cost_rounds_once_at_the_end_half_up() -> None:
    # 0.00015/min for 2 s = 0.000005 exactly: half up to 0.00001, never 0 by truncation.
    assert cost(per_min("0.00015", 1, 1), 2) == D("0.00001")
    # 1 s at 0.00059/min = 0.00000983...: one rounding, not one per second.
    assert cost(per_min("0.00059", 1, 1), 1) == D("0.00001")
    assert cost(per_min("0.00059", 1, 1), 60) == D("0.00059")


def test_buy_cost_uses_buy_blocks_without_fees_or_floor() -> None:
    rate = Rate(
        "1",
        D("5"),
        connect_fee=D(1),
        disconnect_fee=D(1),
        minimal_cost=D(9),
        buy_rate=D("0.06"),
        buy_initial_block=30,
        buy_increment=10,
        initial_block=60,
        increment=60,
    )
    assert buy_cost(rate, 1) == D("0.03")
    assert buy_cost(rate, 31) == D("0.04")
    assert buy_cost(Rate("1", D(1), buy_rate=D("0.06")), 7) == D("0.007")


# ---- max_duration ---------------------------------------------------------------------------


def test_a2billing_float_truncation_is_not_ours() -> None:
    # A2Billing: 0.08 / 0.2 * 60 gives 23 s through binary floats; the exact answer is 24.
    assert max_duration(per_min("0.2"), D("0.08"), MAX_CALL) == 24


def test_max_duration_counts_the_first_block_and_the_floor() -> None:
    rate = per_min("1.99", 60, 60, connect_fee=D("0.05"), minimal_cost=D("1.00"))
    assert max_duration(rate, D("2.03999"), MAX_CALL) == 0  # cannot pay the first block
    assert max_duration(rate, D("2.04"), MAX_CALL) == 60
    assert max_duration(rate, D("4.02"), MAX_CALL) == 60  # 120 s cost 0.05 + 2 * 1.99
    assert max_duration(rate, D("4.03"), MAX_CALL) == 120


def test_max_duration_edges() -> None:
    rate = per_min("0.10", 60, 6)
    assert max_duration(rate, D("-0.01"), MAX_CALL) == 0
    assert max_duration(rate, D(0), MAX_CALL) == 0
    assert max_duration(rate, D(100), 0) == 0
    assert max_duration(rate, D(100), -3) == 0
    assert max_duration(rate, D(100), MAX_CALL) == MAX_CALL
    assert max_duration(rate, D(100), 61) == 61  # the cap may cut a step
    assert max_duration(rate, D("0.10"), 70) == 60


def test_free_rates_get_the_cap_when_the_fees_are_payable() -> None:
    free = per_min("0")
    assert max_duration(free, D(0), MAX_CALL) == MAX_CALL
    fee_only = per_min("0", 60, 60, connect_fee=D("0.50"))
    assert max_duration(fee_only, D("0.49"), MAX_CALL) == 0
    assert max_duration(fee_only, D("0.50"), MAX_CALL) == MAX_CALL


def test_disconnect_fee_threshold_stops_the_grant_before_it() -> None:
    free_talk = Rate("1", D(0), disconnect_fee=D(1), disconnect_after=120)
    assert max_duration(free_talk, D("0.99"), MAX_CALL) == 119
    assert max_duration(free_talk, D(1), MAX_CALL) == MAX_CALL
    paid = Rate("1", D("0.60"), disconnect_fee=D("0.50"), disconnect_after=60)
    # 59 s cost 0.59; 60 s would cost 1.10; 0.80 buys 80 s of talk but not the fee.
    assert max_duration(paid, D("0.80"), MAX_CALL) == 59
    assert max_duration(paid, D("1.10"), MAX_CALL) == 60
    assert max_duration(paid, D("1.30"), MAX_CALL) == 80
    # fee payable before the threshold, never after: the grant stops at threshold - 1
    assert max_duration(paid, D("0.10"), MAX_CALL) == 10
    # with the fee not even the first block is affordable; without it, 30 s + 3 steps of 6 s
    blocks = Rate(
        "1", D("0.60"), initial_block=30, increment=6, disconnect_fee=D(1), disconnect_after=60
    )
    assert max_duration(blocks, D("0.50"), MAX_CALL) == 48


def test_max_duration_absorbs_the_final_rounding() -> None:
    # Each step costs 0.0000101667 before rounding: the first rounds down to 0.00001.
    assert max_duration(per_min("0.00061"), D("0.00001"), MAX_CALL) == 1
    # More places in `available` than money has: the guess overshoots and steps back.
    # 3 s cost 0.0000295 exactly, which rounds up to 0.00003 > 0.0000296: 2 s.
    assert max_duration(per_min("0.00059"), D("0.0000296"), MAX_CALL) == 2
    assert max_duration(per_min("0.6"), D("0.0149999"), MAX_CALL) == 1


def reference_max_duration(rate: Rate, available: Decimal, cap: int) -> int:
    best = 0
    for seconds in range(cap + 1):
        if cost(rate, seconds) <= available:
            best = seconds
    return best


@settings(max_examples=300, deadline=None)
@given(rates(), availables, st.integers(0, MAX_CALL))
@example(per_min("0.10", 60, 6), D("0.11"), MAX_CALL)
@example(per_min("0.00061"), D("0.00001"), MAX_CALL)
def test_max_duration_never_overspends_and_is_maximal(
    rate: Rate, available: Decimal, cap: int
) -> None:
    seconds = max_duration(rate, available, cap)
    assert 0 <= seconds <= max(cap, 0)
    assert seconds == 0 or cost(rate, seconds) <= available
    assert seconds == cap or cost(rate, seconds + 1) > available


@settings(max_examples=150, deadline=None)
@given(rates(), availables, st.integers(0, 300))
def test_max_duration_equals_a_brute_force_scan(rate: Rate, available: Decimal, cap: int) -> None:
    assert max_duration(rate, available, cap) == reference_max_duration(rate, available, cap)


@settings(deadline=None)  # a loaded CI box must not fail on timing
@given(rates(), st.integers(0, MAX_CALL), st.integers(0, 600))
def test_cost_never_decreases_as_seconds_grow(rate: Rate, seconds: int, more: int) -> None:
    assert cost(rate, seconds) <= cost(rate, seconds + more)
    assert buy_cost(rate, seconds) <= buy_cost(rate, seconds + more)
    assert cost(rate, seconds) >= 0


@settings(deadline=None)  # a loaded CI box must not fail on timing
@given(rates(), st.integers(1, MAX_CALL))
def test_cost_follows_the_formula(rate: Rate, seconds: int) -> None:
    x, y = rate.initial_block, rate.increment or 1
    billed = x if seconds <= x else x + -(-(seconds - x) // y) * y
    assert billed_seconds(seconds, rate.initial_block, rate.increment) == billed
    assert billed >= seconds
    fee = rate.connect_fee
    if rate.disconnect_after == 0 or seconds >= rate.disconnect_after:
        fee += rate.disconnect_fee
    exact = max(rate.minimal_cost, fee + rate.rate * billed / 60)
    assert abs(cost(rate, seconds) - exact) <= D("0.000005")


@settings(deadline=None)  # a loaded CI box must not fail on timing
@given(rates(), availables, st.integers(1, MAX_CALL))
def test_grant_is_max_duration_and_its_cost(rate: Rate, available: Decimal, cap: int) -> None:
    seconds, reserve = grant(Route(rate, "t", 1, "trunk"), available, cap)
    assert seconds == max_duration(rate, available, cap)
    assert reserve == cost(rate, seconds)
    assert reserve <= max(available, D(0))


@settings(deadline=None)  # a loaded CI box must not fail on timing
@given(st.integers(0, 5000), st.data())
def test_the_step_search_is_exact_whatever_the_hints(top: int, data: st.DataObject) -> None:
    last = data.draw(st.integers(-1, top), label="last affordable step")
    low = data.draw(st.integers(-10, top + 10), label="low hint")
    high = data.draw(st.integers(-10, top + 10), label="high hint")
    calls: list[int] = []

    def ok(step: int) -> bool:
        assert -1 < step <= top
        calls.append(step)
        return step <= last

    assert _last_true(ok, top, low, high) == last
    assert len(calls) <= 2 + top.bit_length() + 1
    if low == last and high == last + 1:
        assert len(calls) <= 2
