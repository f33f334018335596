"""Money: `Decimal` with 5 places, rounded in one place (RATING.md "Units").

`quantize_money` is the only function of callgate that rounds money. `parse_money` turns text
from the edges (CSV rows, CLI arguments, database strings) into an exact `Decimal`.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

from callgate.rating.errors import InvalidRateError

__all__ = [
    "MONEY_LIMIT",
    "MONEY_PLACES",
    "MONEY_QUANTUM",
    "in_currency",
    "parse_money",
    "quantize_money",
]

MONEY_PLACES = 5
MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_PLACES)  # Decimal("0.00001")
# Amounts are below 10**12 in absolute value: prices and balances fit NUMERIC(17, 5), and every
# intermediate of a cost fits the default 28-digit decimal context with room to spare.
MONEY_LIMIT = Decimal(10) ** 12

# Plain decimal notation only: no exponent, no NaN/Infinity, no thousands separators.
_MONEY_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def quantize_money(value: Decimal) -> Decimal:
    """Round `value` to `MONEY_PLACES` decimals, ROUND_HALF_UP. The only rounding of money."""
    return value.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_UP)


def in_currency(amount: Decimal, value: Decimal, decimals: int = MONEY_PLACES) -> Decimal:
    """``amount`` (base currency) shown in a currency worth ``value`` base units, with that
    currency's ``decimals`` (at most 5), ROUND_HALF_UP. For display: balances are kept in the
    base currency, so this never feeds back into a charge."""
    places = max(0, min(decimals, MONEY_PLACES))
    return (amount / value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def parse_money(text: str, field: str) -> Decimal:
    """Parse `text` (e.g. ``"0.10"``, ``"-3"``, ``" 1.5 "``) as an exact amount of money.

    Rejects anything that is not plain decimal notation (exponents such as ``"1e-3"``, ``"NaN"``,
    ``"Infinity"``, ``"1,5"``, empty text), amounts with more than `MONEY_PLACES` significant
    decimals (callgate could not store them without rounding; trailing zeros are fine) and
    amounts of `MONEY_LIMIT` or more. The sign is allowed here (balances can be negative); `Rate`
    rejects negative prices. Raises `InvalidRateError` naming `field`.
    """
    stripped = text.strip()
    if not _MONEY_RE.fullmatch(stripped):
        raise InvalidRateError(field, f"not a decimal amount: {text!r}")
    _, _, fraction = stripped.partition(".")
    if len(fraction.rstrip("0")) > MONEY_PLACES:
        raise InvalidRateError(
            field, f"more than {MONEY_PLACES} decimal places: {text!r} (callgate stores 5)"
        )
    value = Decimal(stripped)
    if abs(value) >= MONEY_LIMIT:
        raise InvalidRateError(field, f"amount too large: {text!r} (limit {MONEY_LIMIT})")
    return value
