from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.rating import (
    CallPlan,
    InsufficientCreditError,
    InvalidPlanError,
    NoRateError,
    PlanTable,
    PrefixIndex,
    Quote,
    Rate,
    RatingError,
    Route,
    RoutingMode,
    cost,
    find_routes,
    max_duration,
    quote,
)

D = Decimal
AT = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
JAN = datetime(2026, 1, 1, tzinfo=UTC)


def rate(prefix: str, sell: str, buy: str, trunk: str | None = None, **more: Any) -> Rate:
    return Rate(prefix, D(sell), buy_rate=D(buy), trunk=trunk, **more)


def table(name: str, priority: int, *rates: Rate, trunk: str | None = None) -> PlanTable:
    return PlanTable(name, priority, PrefixIndex(name, rates, default_trunk=trunk))


# Three carriers for 4420: cheap to buy but dear to sell in "b", best priority in "c".
A = table("a", 2, rate("4420", "0.05", "0.03"), rate("44", "0.09", "0.01"), trunk="ta")
B = table("b", 3, rate("4420", "0.08", "0.01", trunk="own"), trunk="tb")
C = table("c", 1, rate("4420", "0.06", "0.02"), trunk="tc")


def plan(mode: RoutingMode, *tables: PlanTable, max_call: int = 3600) -> CallPlan:
    return CallPlan("retail", mode, max_call, tables or (A, B, C))


def summary(routes: tuple[Route, ...]) -> list[tuple[str, str | None]]:
    return [(route.table, route.trunk) for route in routes]


def test_lcr_orders_by_buy_rate_then_priority() -> None:
    routes = find_routes(plan(RoutingMode.LCR), "442079460000", AT)
    assert summary(routes) == [("b", "own"), ("c", "tc"), ("a", "ta")]
    assert [route.priority for route in routes] == [3, 1, 2]
    assert routes[0].rate == rate("4420", "0.08", "0.01", trunk="own")


def test_priority_orders_by_table_priority_then_buy_rate() -> None:
    routes = find_routes(plan(RoutingMode.PRIORITY), "442079460000", AT)
    assert summary(routes) == [("c", "tc"), ("a", "ta"), ("b", "own")]


def test_lcd_orders_by_sell_rate_then_priority() -> None:
    routes = find_routes(plan(RoutingMode.LCD), "442079460000", AT)
    assert summary(routes) == [("a", "ta"), ("c", "tc"), ("b", "own")]


def test_ties_fall_back_to_priority_then_plan_order_then_build_order() -> None:
    x = table("x", 5, rate("33", "0.1", "0.05"), trunk="tx")
    y = table("y", 5, rate("33", "0.1", "0.05"), trunk="ty")
    z = table("z", 4, rate("33", "0.1", "0.05"), trunk="tz")
    twins = table(
        "w",
        4,
        rate("33", "0.1", "0.05", valid_from=JAN),
        rate("33", "0.1", "0.05", trunk="late"),
        trunk="tw",
    )
    for mode in RoutingMode:
        routes = find_routes(plan(mode, x, y, z, twins), "331", AT)
        assert summary(routes) == [
            ("z", "tz"),
            ("w", "tw"),
            ("w", "late"),
            ("x", "tx"),
            ("y", "ty"),
        ]
        again = find_routes(plan(mode, x, y, z, twins), "331", AT)
        assert again == routes


def test_the_longest_prefix_across_the_plan_wins() -> None:
    short = table("short", 1, rate("44", "0.01", "0.001"), trunk="s")
    routes = find_routes(plan(RoutingMode.LCR, short, A, B), "442079460000", AT)
    assert summary(routes) == [("b", "own"), ("a", "ta")]  # 4420 beats the cheaper 44
    routes = find_routes(plan(RoutingMode.LCR, short, A, B), "441619460000", AT)
    assert summary(routes) == [("short", "s"), ("a", "ta")]  # both have 44: buy 0.001 < 0.01
    assert find_routes(plan(RoutingMode.LCR, short, A, B), "33", AT) == ()


def test_a_rate_without_trunk_in_a_table_without_default_has_no_trunk() -> None:
    bare = table("bare", 1, rate("1", "0.1", "0.1"))
    assert find_routes(plan(RoutingMode.LCR, bare), "1555", AT)[0].trunk is None


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["4", "44", "442"]), st.integers(1, 9), st.integers(0, 99)),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from(list(RoutingMode)),
)
def test_routes_are_the_longest_prefix_sorted_by_mode(
    specs: list[tuple[str, int, int]], mode: RoutingMode
) -> None:
    tables = tuple(
        table(f"t{n}", priority, rate(prefix, str(D(cents) / 100), str(D(99 - cents) / 100)))
        for n, (prefix, priority, cents) in enumerate(specs)
    )
    routes = find_routes(plan(mode, *tables), "4420", AT)
    longest = max(len(prefix) for prefix, _, _ in specs)
    assert len(routes) == sum(len(prefix) == longest for prefix, _, _ in specs)
    assert all(len(route.rate.prefix) == longest for route in routes)
    keys = {
        RoutingMode.LCR: lambda r: (r.rate.buy_rate, r.priority),
        RoutingMode.PRIORITY: lambda r: (r.priority, r.rate.buy_rate),
        RoutingMode.LCD: lambda r: (r.rate.rate, r.priority),
    }
    order = [keys[mode](route) for route in routes]
    assert order == sorted(order)


def test_quote_grants_the_first_route_and_reserves_its_cost() -> None:
    first = table("a", 1, Rate("44", D("0.10"), initial_block=60, increment=6), trunk="ta")
    second = table("b", 2, Rate("44", D("0.30"), initial_block=1, increment=1), trunk="tb")
    call = quote(plan(RoutingMode.PRIORITY, first, second), "4412", D("0.11"), 36000, AT)
    assert call == Quote("4412", call.routes, 66, D("0.11"), 3600)
    assert call.route is call.routes[0]
    assert summary(call.routes) == [("a", "ta"), ("b", "tb")]
    # failover to the second route: 0.11 buys 22 s at 0.30/min
    assert call.grant_for(1, D("0.11")) == (22, D("0.11"))
    assert call.grant_for(1, D("0.001")) == (0, D(0))


def test_quote_is_capped_by_the_plan_and_by_the_caller() -> None:
    rich = D(1000)
    assert (
        quote(plan(RoutingMode.LCR, max_call=600), "4420", rich, 36000, AT).granted_seconds == 600
    )
    capped = quote(plan(RoutingMode.LCR, max_call=600), "4420", rich, 90, AT)
    assert (capped.granted_seconds, capped.cap_seconds) == (90, 90)
    assert capped.reserve == cost(capped.route.rate, 90)


def test_quote_without_a_rate_raises_no_rate() -> None:
    with pytest.raises(NoRateError) as caught:
        quote(plan(RoutingMode.LCR), "3312", D(10), 3600, AT)
    assert caught.value.number == "3312"
    assert isinstance(caught.value, RatingError)


def test_quote_that_cannot_pay_the_first_block_raises_insufficient_credit() -> None:
    dear = table("d", 1, Rate("1", D("1.99"), initial_block=60, connect_fee=D("0.05")))
    for available in (D("2.03999"), D(0), D(-5)):
        with pytest.raises(InsufficientCreditError) as caught:
            quote(plan(RoutingMode.LCR, dear), "1555", available, 3600, AT)
        assert caught.value.available == available
        assert caught.value.required == D("2.04")
        assert caught.value.number == "1555"
    assert quote(plan(RoutingMode.LCR, dear), "1555", D("2.04"), 3600, AT).granted_seconds == 60


def test_quote_needs_a_cap() -> None:
    with pytest.raises(ValueError, match="cap"):
        quote(plan(RoutingMode.LCR), "4420", D(1), 0, AT)


@settings(max_examples=100, deadline=None)
@given(st.decimals("-1", "50", places=5), st.integers(1, 36000))
def test_quote_never_overspends(available: Decimal, cap: int) -> None:
    call_plan = plan(RoutingMode.LCD, max_call=7200)
    try:
        call = quote(call_plan, "44207", available, cap, AT)
    except InsufficientCreditError:
        assert max_duration(A.index.get("4420")[0], available, cap) == 0
        return
    assert 1 <= call.granted_seconds <= min(cap, 7200)
    assert call.reserve == cost(call.route.rate, call.granted_seconds) <= available


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "lcr"}, "mode"),
        ({"max_call_seconds": 0}, "max_call_seconds"),
        ({"max_call_seconds": True}, "max_call_seconds"),
        ({"tables": [A]}, "tables"),
        ({"tables": (A, A)}, "tables"),
    ],
)
def test_invalid_plans_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {
        "name": "p",
        "mode": RoutingMode.LCR,
        "max_call_seconds": 60,
        "tables": (A,),
        **kwargs,
    }
    with pytest.raises(InvalidPlanError) as caught:
        CallPlan(**values)
    assert caught.value.field == field


def test_invalid_plan_tables_name_the_field() -> None:
    with pytest.raises(InvalidPlanError) as caught:
        PlanTable("a", "1", A.index)  # type: ignore[arg-type]
    assert caught.value.field == "priority"
    with pytest.raises(InvalidPlanError) as caught:
        PlanTable("a", 1, [rate("1", "0", "0")])  # type: ignore[arg-type]
    assert caught.value.field == "index"
