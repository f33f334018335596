"""Normalising a dialled number before rating (pure).

The order: keep the digits a customer may dial (``0-9``, a leading ``+``), drop a tech prefix the
customer sends first (wholesale IP authentication), strip a number of leading digits, then turn
an international form (``+``, ``00``, ``011``...) into the bare country code and number that rate
decks use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from callgate.rating.errors import InvalidNumberError

__all__ = ["InvalidNumberError", "NumberRules", "normalise_number"]


@dataclass(frozen=True, slots=True)
class NumberRules:
    """How to normalise a number; every field is optional."""

    international_prefixes: tuple[str, ...] = ("011", "00")
    remove_international_prefix: bool = True
    tech_prefix: str = ""
    strip_digits: int = 0
    add_prefix: str = ""


def normalise_number(dialled: str, rules: NumberRules = NumberRules()) -> str:
    """The digits to rate for ``dialled`` under ``rules``.

    >>> normalise_number("+44 20 7946 0000")
    '442079460000'
    >>> normalise_number("0114420", NumberRules(international_prefixes=("011",)))
    '4420'
    """
    text = dialled.strip()
    plus = text.startswith("+")
    digits = "".join(ch for ch in text if ch.isdigit())
    if not digits or any(not (ch.isdigit() or ch in "+-() .") for ch in text):
        raise InvalidNumberError(f"not a dialable number: {dialled!r}")
    if rules.tech_prefix:
        if not digits.startswith(rules.tech_prefix):
            raise InvalidNumberError(
                f"number {dialled!r} does not start with the tech prefix {rules.tech_prefix!r}"
            )
        digits = digits[len(rules.tech_prefix) :]
    if rules.strip_digits:
        digits = digits[rules.strip_digits :]
    if not plus and rules.remove_international_prefix:
        digits = _drop_international(digits, rules.international_prefixes)
    digits = rules.add_prefix + digits
    if not digits:
        raise InvalidNumberError(f"nothing left to dial in {dialled!r}")
    return digits


def _drop_international(digits: str, prefixes: Sequence[str]) -> str:
    for prefix in sorted(prefixes, key=len, reverse=True):
        if prefix and digits.startswith(prefix) and len(digits) > len(prefix):
            return digits[len(prefix) :]
    return digits
