"""Normalising dialled numbers before rating."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callgate.rating.numbers import InvalidNumberError, NumberRules, normalise_number


@pytest.mark.parametrize(
    ("dialled", "rules", "expected"),
    [
        ("+44 20 7946 0000", NumberRules(), "442079460000"),
        ("00442079460000", NumberRules(), "442079460000"),
        ("011442079460000", NumberRules(), "442079460000"),
        ("00442079460000", NumberRules(remove_international_prefix=False), "00442079460000"),
        ("(212) 555-0100", NumberRules(international_prefixes=()), "2125550100"),
        ("+0012", NumberRules(), "0012"),  # a + number keeps its digits as they are
        ("9900442079460000", NumberRules(tech_prefix="99"), "442079460000"),
        ("1#00442079460000", NumberRules(), None),
        ("500442079460000", NumberRules(strip_digits=1), "442079460000"),
        ("2079460000", NumberRules(add_prefix="44"), "442079460000"),
        ("00", NumberRules(), "00"),  # nothing after the prefix: left as dialled
    ],
)
def test_normalise(dialled: str, rules: NumberRules, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(InvalidNumberError):
            normalise_number(dialled, rules)
    else:
        assert normalise_number(dialled, rules) == expected


@pytest.mark.parametrize("dialled", ["", "s", "abc", "+", "  "])
def test_nothing_to_rate_is_refused(dialled: str) -> None:
    with pytest.raises(InvalidNumberError):
        normalise_number(dialled)


def test_wrong_tech_prefix_is_refused() -> None:
    with pytest.raises(InvalidNumberError, match="tech prefix"):
        normalise_number("1234", NumberRules(tech_prefix="99"))
    with pytest.raises(InvalidNumberError, match="nothing left"):
        normalise_number("12", NumberRules(strip_digits=5))


def test_longest_international_prefix_wins() -> None:
    rules = NumberRules(international_prefixes=("0", "00"))
    assert normalise_number("0044123", rules) == "44123"


@given(st.text(alphabet="0123456789", min_size=1, max_size=20))
def test_output_is_digits_and_a_suffix_of_the_input(digits: str) -> None:
    out = normalise_number(digits)
    assert out.isdigit() and digits.endswith(out)
