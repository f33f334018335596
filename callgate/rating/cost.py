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

from decimal import Decimal
from typing import TYPE_CHECKING

from callgate.rating.money import quantize_money

if TYPE_CHECKING:
    from callgate.rating.model import Rate, Route

__all__ = ["billed_seconds", "buy_cost", "cost", "grant", "max_duration"]

_ZERO = Decimal(0)
_SIXTY = Decimal(60)


def billed_seconds(billsec: int, initial_block: int, increment: int) -> int:
    """Seconds billed for `billsec` seconds of talk with blocks x=`initial_block`, y=`increment`.

    `increment` 0 means 1. Steps after the first block count from the end of that block.
    """
    if billsec <= 0:
        if billsec < 0:
            raise ValueError(f"billsec must not be negative: {billsec}")
        return 0
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
    end of a billing step unless `cap` (or the disconnect-fee threshold) comes first.
    """
    if available < 0 or cap <= 0:
        return 0
    if cost(rate, cap) <= available:
        return cap
    if cost(rate, 1) > available:
        return 0
    # Now 1 <= answer < cap. Within one fee regime cost depends on d only through the billing
    # step; the disconnect fee switches regime at disconnect_after.
    after = rate.disconnect_after
    with_fee = rate.connect_fee + rate.disconnect_fee
    longest = _longest_at_fee(rate, available, cap, with_fee)
    if after == 0 or longest >= after:
        return longest
    # No call of disconnect_after seconds or more is affordable: the answer is before it.
    before = _longest_at_fee(rate, available, cap, rate.connect_fee)
    return min(before, after - 1)


def _longest_at_fee(rate: Rate, available: Decimal, cap: int, fee: Decimal) -> int:
    """Largest d in [0, cap] with ``_price(billed(d), fee) <= available``, the fee held fixed.

    `available` >= 0 and the minimal cost is known to be payable. Step k >= 0 ends at
    ``x + k * y`` (k = 0 is the first block; with x = 0 it is d = 0, which is free).
    """
    x = rate.initial_block
    y = rate.increment or 1
    top = 0 if cap <= x else -((x - cap) // y)  # the step that holds cap
    per_minute = rate.rate
    if per_minute == 0:
        affordable = _price(rate, x or 1, fee) <= available
        return cap if affordable else 0
    # First guess from exact decimal arithmetic; the checks below absorb the final rounding.
    seconds = (available - fee) * _SIXTY / per_minute
    step = -1 if seconds < x else min(top, int((seconds - x) // y))

    def affordable_step(k: int) -> bool:
        end = x + k * y
        return end == 0 or _price(rate, end, fee) <= available

    while step >= 0 and not affordable_step(step):
        step -= 1
    while step < top and affordable_step(step + 1):
        step += 1
    if step < 0:
        return 0
    return min(x + step * y, cap)


def grant(route: Route, available: Decimal, cap: int) -> tuple[int, Decimal]:
    """Seconds granted on `route` and the reservation for them: ``(d, cost(rate, d))``.

    d is `max_duration` under `cap`; 0 (and a reservation of 0) means do not dial this route.
    """
    seconds = max_duration(route.rate, available, cap)
    return seconds, cost(route.rate, seconds)
