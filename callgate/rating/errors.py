"""Errors of the rating core.

The tree::

    RatingError                     base of everything `callgate.rating` raises on purpose
    ├── InvalidRateError(field, message)
    │                               a rate, or a money value parsed for one, is invalid;
    │                               `field` names the offending field
    ├── InvalidPlanError(field, message)
    │                               a call plan (or one of its rate tables) is invalid
    ├── NoRateError(number)         no rate of the call plan applies to the number at that time
    ├── InsufficientCreditError(number, available, required)
    │                               the credit cannot pay the first block of the first route
    └── InvalidNumberError          a dialled number holds nothing that can be rated

Programming errors (a negative number of seconds, a naive datetime) raise `ValueError`.
"""

from __future__ import annotations

from decimal import Decimal

__all__ = [
    "InsufficientCreditError",
    "InvalidNumberError",
    "InvalidPlanError",
    "InvalidRateError",
    "NoRateError",
    "RatingError",
]


class RatingError(Exception):
    """Base class of the rating errors."""


class InvalidRateError(RatingError):
    """A rate field (or a money value) is invalid; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidPlanError(RatingError):
    """A call plan field is invalid; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NoRateError(RatingError):
    """No rate of the call plan applies to `number` at the call's start time."""

    def __init__(self, number: str) -> None:
        super().__init__(f"no rate for {number!r}")
        self.number = number


class InsufficientCreditError(RatingError):
    """`available` cannot pay `required`, the cost of the first second of the first route."""

    def __init__(self, number: str, available: Decimal, required: Decimal) -> None:
        super().__init__(
            f"insufficient credit for {number!r}: available {available}, first block {required}"
        )
        self.number = number
        self.available = available
        self.required = required


class InvalidNumberError(RatingError):
    """The dialled number holds nothing that can be rated."""
