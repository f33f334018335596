from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callgate.rating import MONEY_LIMIT, InvalidRateError, parse_money, quantize_money


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.000005", "0.00001"),  # half up
        ("0.0000049999", "0.00000"),
        ("-0.000005", "-0.00001"),  # half up is away from zero
        ("0.375", "0.37500"),
        ("2.04", "2.04000"),
        ("1.234565", "1.23457"),
    ],
)
def test_quantize_money_rounds_half_up_to_five_places(value: str, expected: str) -> None:
    result = quantize_money(Decimal(value))
    assert result == Decimal(expected)
    assert str(result) == expected


@given(st.decimals(min_value=-(10**11), max_value=10**11, allow_nan=False, places=9))
def test_quantize_money_is_within_half_a_unit(value: Decimal) -> None:
    result = quantize_money(value)
    assert result.as_tuple().exponent == -5
    assert abs(result - value) <= Decimal("0.000005")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.10", Decimal("0.10")),
        (" 1.5 ", Decimal("1.5")),
        ("-3", Decimal(-3)),
        ("+2.", Decimal(2)),
        (".5", Decimal("0.5")),
        ("0.12345", Decimal("0.12345")),
        ("0.1234500", Decimal("0.12345")),  # trailing zeros are not precision
        ("999999999999.99999", Decimal("999999999999.99999")),
    ],
)
def test_parse_money_accepts_plain_decimals(text: str, expected: Decimal) -> None:
    assert parse_money(text, "rate") == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not a decimal amount"),
        ("abc", "not a decimal amount"),
        ("NaN", "not a decimal amount"),
        ("nan", "not a decimal amount"),
        ("Infinity", "not a decimal amount"),
        ("-inf", "not a decimal amount"),
        ("1e-3", "not a decimal amount"),
        ("1E5", "not a decimal amount"),
        ("1,5", "not a decimal amount"),
        ("0x10", "not a decimal amount"),
        ("1.2.3", "not a decimal amount"),
        ("١٢", "not a decimal amount"),  # Arabic-Indic digits
        ("0.123456", "more than 5 decimal places"),
        ("1000000000000", "amount too large"),
        ("-1000000000000.5", "amount too large"),
    ],
)
def test_parse_money_rejects_garbage_naming_the_field(text: str, reason: str) -> None:
    with pytest.raises(InvalidRateError) as caught:
        parse_money(text, "connect_fee")
    assert caught.value.field == "connect_fee"
    assert reason in caught.value.message
    assert str(caught.value).startswith("connect_fee: ")


@given(st.decimals(min_value=-MONEY_LIMIT + 1, max_value=MONEY_LIMIT - 1, places=5))
def test_parse_money_round_trips_its_own_text(value: Decimal) -> None:
    assert parse_money(str(value) if "E" not in str(value) else f"{value:f}", "x") == value
