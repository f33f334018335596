from __future__ import annotations

import dataclasses
import inspect
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from callgate.rating import Interner, InvalidRateError, Rate, RoutingMode

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)


def test_rate_defaults_and_fields_are_ratings_md() -> None:
    rate = Rate("441", Decimal("0.10"))
    assert [field.name for field in dataclasses.fields(Rate)] == [
        "prefix",
        "rate",
        "connect_fee",
        "disconnect_fee",
        "disconnect_after",
        "initial_block",
        "increment",
        "minimal_cost",
        "buy_rate",
        "buy_initial_block",
        "buy_increment",
        "valid_from",
        "valid_to",
        "week_start",
        "week_end",
        "destination",
        "trunk",
        "id",
    ]
    assert rate.connect_fee == rate.disconnect_fee == rate.minimal_cost == rate.buy_rate == 0
    assert rate.initial_block == rate.increment == rate.disconnect_after == 0
    assert rate.valid_from is None and rate.valid_to is None
    assert rate.week_start is None and rate.week_end is None
    assert rate.destination == ""
    assert rate.trunk is None and rate.id is None
    assert rate.always_valid
    assert not hasattr(rate, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rate.rate = Decimal(1)  # type: ignore[misc]


def test_the_hand_written_init_matches_the_fields() -> None:
    parameters = list(inspect.signature(Rate.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in parameters] == [
        (f.name, inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(Rate)
    ]
    rate = Rate("44", Decimal("0.1"), trunk="a", id=3)
    assert dataclasses.replace(rate, rate=Decimal("0.2")) == Rate(
        "44", Decimal("0.2"), trunk="a", id=3
    )
    with pytest.raises(InvalidRateError):
        dataclasses.replace(rate, prefix="x")
    assert hash(rate) == hash(Rate("44", Decimal("0.10"), trunk="a", id=3))


def test_a_fully_specified_rate_is_accepted() -> None:
    rate = Rate(
        "4420",
        Decimal("0.12345"),
        connect_fee=Decimal("0.05"),
        disconnect_fee=Decimal("0.01"),
        disconnect_after=30,
        initial_block=60,
        increment=6,
        minimal_cost=Decimal("0.2"),
        buy_rate=Decimal("0.07"),
        buy_initial_block=1,
        buy_increment=1,
        valid_from=JAN,
        valid_to=FEB,
        week_start=7200,
        week_end=1439,
        destination="UK London",
        trunk="carrier-a",
        id=17,
    )
    assert not rate.always_valid
    assert Rate("1", Decimal(0), week_start=0, week_end=0).week_end == 0
    assert not Rate("1", Decimal(0), valid_to=FEB).always_valid

    class Money(Decimal):
        pass

    assert Rate("1", Money("0.1")).rate == Decimal("0.1")  # the slow path accepts subclasses


BAD_RATES: list[tuple[dict[str, Any], str, str]] = [
    ({"prefix": ""}, "prefix", "digits"),
    ({"prefix": "44a"}, "prefix", "digits"),
    ({"prefix": "+44"}, "prefix", "digits"),
    ({"prefix": "٤٤"}, "prefix", "digits"),
    ({"prefix": 44}, "prefix", "digits"),
    ({"rate": 0.1}, "rate", "not a float"),
    ({"rate": "0.1"}, "rate", "must be a Decimal"),
    ({"rate": 1}, "rate", "must be a Decimal"),
    ({"rate": Decimal("NaN")}, "rate", "finite"),
    ({"rate": Decimal("Infinity")}, "rate", "finite"),
    ({"rate": Decimal("-0.01")}, "rate", "negative"),
    ({"rate": Decimal(10) ** 12}, "rate", "below"),
    ({"connect_fee": Decimal("-1")}, "connect_fee", "negative"),
    ({"disconnect_fee": 0.5}, "disconnect_fee", "float"),
    ({"minimal_cost": Decimal("sNaN")}, "minimal_cost", "finite"),
    ({"buy_rate": Decimal("-0.001")}, "buy_rate", "negative"),
    ({"disconnect_after": -1}, "disconnect_after", "negative"),
    ({"initial_block": True}, "initial_block", "integer"),
    ({"initial_block": 1.0}, "initial_block", "integer"),
    ({"increment": -6}, "increment", "negative"),
    ({"buy_initial_block": None}, "buy_initial_block", "integer"),
    ({"buy_increment": -1}, "buy_increment", "negative"),
    ({"initial_block": 10**9}, "initial_block", "below"),
    ({"disconnect_after": 10**12}, "disconnect_after", "below"),
    ({"valid_from": datetime(2026, 1, 1)}, "valid_from", "timezone-aware"),
    ({"valid_to": datetime(2026, 1, 1)}, "valid_to", "timezone-aware"),
    ({"valid_from": "2026-01-01"}, "valid_from", "datetime"),
    ({"valid_from": FEB, "valid_to": JAN}, "valid_to", "after valid_from"),
    ({"valid_from": JAN, "valid_to": JAN}, "valid_to", "after valid_from"),
    ({"week_start": 10}, "week_end", "together"),
    ({"week_end": 10}, "week_start", "together"),
    ({"week_start": -1, "week_end": 10}, "week_start", "0..10079"),
    ({"week_start": 0, "week_end": 10080}, "week_end", "0..10079"),
    ({"week_start": False, "week_end": 10}, "week_start", "0..10079"),
    ({"destination": None}, "destination", "string"),
    ({"trunk": ""}, "trunk", "non-empty"),
    ({"trunk": 3}, "trunk", "non-empty"),
    ({"id": "7"}, "id", "integer"),
    ({"id": True}, "id", "integer"),
]


@pytest.mark.parametrize(("changes", "field", "reason"), BAD_RATES)
def test_invalid_rate_names_the_field(changes: dict[str, Any], field: str, reason: str) -> None:
    values: dict[str, Any] = {"prefix": "44", "rate": Decimal("0.1"), **changes}
    with pytest.raises(InvalidRateError) as caught:
        Rate(**values)
    assert caught.value.field == field
    assert reason in caught.value.message
    assert field in str(caught.value)


def test_routing_modes_are_the_three_of_ratings_md() -> None:
    assert [mode.value for mode in RoutingMode] == ["lcr", "priority", "lcd"]
    assert RoutingMode("lcd") is RoutingMode.LCD


def test_interner_shares_equal_values_and_keeps_their_text() -> None:
    interner = Interner()
    first = interner.money(Decimal("0.10"))
    assert interner.money(Decimal("0.10")) is first
    other = interner.money(Decimal("0.1"))  # equal, but another text: not merged
    assert other is not first and str(other) == "0.1"
    assert interner.money(Decimal("0.1")) is other
    assert interner.money(Decimal("0.10")) is first
    name = "".join(["United ", "Kingdom"])
    assert interner.share("United Kingdom") == name
    assert interner.share(name) is interner.share("United Kingdom")
    assert interner.share(JAN) is JAN
    assert interner.share(datetime(2026, 1, 1, tzinfo=UTC)) is JAN
    assert interner.share(1) == 1 and interner.share(True) is True  # types never mix
    assert len(interner) == 6


def test_from_store_builds_the_same_rate_and_checks_the_prefix() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    args = (
        "4420",
        Decimal("0.05"),
        Decimal("0.01"),
        Decimal(0),
        0,
        30,
        6,
        Decimal(0),
        Decimal("0.02"),
        0,
        0,
        when,
        None,
        0,
        10079,
        "London",
        "carrier",
        7,
    )
    assert Rate.from_store(*args) == Rate(*args)
    with pytest.raises(InvalidRateError, match="prefix"):
        Rate.from_store("44x", *args[1:])
