"""The cost of a call and the longest call a credit pays for (RATING.md, exactly).

    billed(d) = 0 if d == 0; x if 0 < d <= x; x + ceil((d - x) / y) * y if d > x
    cost(d)   = 0 if d == 0, else max(minimal_cost,
                connect_fee + disconnect fee (if disconnect_after == 0 or d >= disconnect_after)
                + rate * billed(d) / 60)

rounded once, at the end, by `quantize_money`. `max_duration` is exact: the largest d in
[0, cap] with cost(d) <= available, found arithmetically on billing-step boundaries and checked
with the same `cost` function, so it can never disagree with what the call is charged.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

from callgate.rating.money import MONEY_QUANTUM, quantize_money

if TYPE_CHECKING:
    from callgate.rating.model import Rate, Route

__all__ = ["SECONDS_LIMIT", "billed_seconds", "buy_cost", "cost", "grant", "max_duration"]

# Durations and blocks are below 10**9 s (31 years): with prices below MONEY_LIMIT, every
# intermediate of a cost then fits the default 28-digit decimal context exactly.
SECONDS_LIMIT = 10**9

_ZERO = Decimal(0)
_SIXTY = Decimal(60)
_HALF_UNIT = MONEY_QUANTUM / 2  # 0.000005


def billed_seconds(billsec: int, initial_block: int, increment: int) -> int:
    """Seconds billed for `billsec` seconds of talk with blocks x=`initial_block`, y=`increment`.

    `increment` 0 means 1. Steps after the first block count from the end of that block.
    """
    if billsec <= 0 or billsec >= SECONDS_LIMIT:
        if billsec == 0:
            return 0
        raise ValueError(f"billsec must be in [0, {SECONDS_LIMIT}): {billsec}")
    if billsec <= initial_block:
        return initial_block
    step = increment or 1
    return initial_block - (initial_block - billsec) // step * step


def _price(rate: Rate, billed: int, fee: Decimal) -> Decimal:
    """The rounded cost of an answered call billed `billed` seconds (> 0) with fees `fee`."""
    charge = fee + rate.rate * billed / _SIXTY
    minimal = rate.minimal_cost
    return quantize_money(minimal if minimal > charge else charge)


def _fee(rate: Rate, billsec: int) -> Decimal:
    after = rate.disconnect_after
    if after == 0 or billsec >= after:
        return rate.connect_fee + rate.disconnect_fee
    return rate.connect_fee


def cost(rate: Rate, billsec: int) -> Decimal:
    """What the customer pays for an answered call of `billsec` seconds (0 s is free)."""
    billed = billed_seconds(billsec, rate.initial_block, rate.increment)
    if billed == 0:
        return _ZERO
    return _price(rate, billed, _fee(rate, billsec))


def buy_cost(rate: Rate, billsec: int) -> Decimal:
    """What the carrier charges: `buy_rate` with the buy blocks, no fees, no minimal cost."""
    billed = billed_seconds(billsec, rate.buy_initial_block, rate.buy_increment)
    if billed == 0:
        return _ZERO
    return quantize_money(rate.buy_rate * billed / _SIXTY)


def max_duration(rate: Rate, available: Decimal, cap: int) -> int:
    """The largest integer d in [0, cap] with ``cost(rate, d) <= available``.

    0 when `available` is negative or cannot pay the first block (refuse the call). Lands on the
    end of a billing step unless `cap` (or the disconnect-fee threshold) comes first. A `cap`
    beyond `SECONDS_LIMIT` counts as ``SECONDS_LIMIT - 1``.
    """
    if available < 0 or cap <= 0:
        return 0
    cap = min(cap, SECONDS_LIMIT - 1)
    # Within one fee regime cost depends on d only through the billing step; the disconnect
    # fee switches regime at disconnect_after.
    after = rate.disconnect_after
    longest = _longest_at_fee(rate, available, cap, rate.connect_fee + rate.disconnect_fee)
    if after == 0 or longest >= after:
        return longest
    # No call of disconnect_after seconds or more is affordable: the answer is before it.
    before = _longest_at_fee(rate, available, cap, rate.connect_fee)
    return min(before, after - 1)


def _longest_at_fee(rate: Rate, available: Decimal, cap: int, fee: Decimal) -> int:
    """Largest d in [0, cap] with ``_price(billed(d), fee) <= available``, the fee held fixed.

    `available` >= 0, `cap` >= 1. Step k >= 0 ends at ``x + k * y`` (k = 0 is the first block;
    with x = 0 it is d = 0, which is free), and every second of a step costs the same, so the
    answer is the end of the last affordable step, or `cap`.
    """
    x = rate.initial_block
    y = rate.increment or 1
    top = 0 if cap <= x else -((x - cap) // y)  # the step that holds cap

    def affordable(step: int) -> bool:
        end = x + step * y
        return end == 0 or _price(rate, end, fee) <= available

    per_minute = rate.rate
    if per_minute == 0:
        return cap if affordable(top) else 0
    # Hints from decimal arithmetic. A charge of at most available - 1/2 unit rounds to at
    # most `available`; one of at least available + 1/2 unit rounds above it. The search
    # checks the hints with `_price` itself, so only speed depends on them.
    low = (available - _HALF_UNIT - fee) * _SIXTY / per_minute - x
    high = (available + _HALF_UNIT - fee) * _SIXTY / per_minute - x
    step = _last_true(
        affordable,
        top,
        -1 if low < 0 else int(low / y),
        0 if high < 0 else int(high / y) + 1,
    )
    return 0 if step < 0 else min(x + step * y, cap)


def _last_true(ok: Callable[[int], bool], top: int, low: int, high: int) -> int:
    """The largest k in [-1, top] with ``ok(k)``, for `ok` true then false (``ok(-1)`` is true).

    `low` and `high` are hints: ``ok(low)`` and ``not ok(high)`` expected. Good hints make it
    two calls of `ok`; wrong ones cost a binary search, never a wrong answer.
    """
    low = max(-1, min(low, top))
    high = max(low + 1, min(high, top + 1))
    if low >= 0 and not ok(low):
        low, high = -1, low
    if high <= top and ok(high):
        low, high = high, top + 1
    while high - low > 1:
        middle = (low + high) // 2
        if ok(middle):
            low = middle
        else:
            high = middle
    return low


def grant(route: Route, available: Decimal, cap: int) -> tuple[int, Decimal]:
    """Seconds granted on `route` and the reservation for them: ``(d, cost(rate, d))``.

    d is `max_duration` under `cap`; 0 (and a reservation of 0) means do not dial this route.
    """
    seconds = max_duration(route.rate, available, cap)
    return seconds, cost(route.rate, seconds)
