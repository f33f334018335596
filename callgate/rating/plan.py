"""Choosing the routes of a call and quoting it (RATING.md "Choosing the rate").

A call plan lists rate tables with a priority. The longest prefix that applies anywhere in the
plan wins; the rates of that same prefix in the plan's tables are the routes, ordered by the
plan's `RoutingMode`. Ties keep the plan's table order, then each table's build order, so the
order is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from callgate.rating.cost import cost, grant
from callgate.rating.errors import InsufficientCreditError, InvalidPlanError, NoRateError
from callgate.rating.model import Quote, Route, RoutingMode
from callgate.rating.prefix import PrefixIndex

__all__ = ["CallPlan", "PlanTable", "find_routes", "quote"]


@dataclass(frozen=True, slots=True)
class PlanTable:
    """A rate table in a call plan: its name, its priority (lower first) and its index."""

    name: str
    priority: int
    index: PrefixIndex

    def __post_init__(self) -> None:
        if type(self.priority) is not int:
            raise InvalidPlanError("priority", f"must be an integer: {self.priority!r}")
        if not isinstance(self.index, PrefixIndex):
            raise InvalidPlanError("index", f"must be a PrefixIndex: {self.index!r}")


@dataclass(frozen=True, slots=True)
class CallPlan:
    """What an account may call and how routes are chosen.

    `max_call_seconds` caps every grant (DESIGN.md section 6).
    """

    name: str
    mode: RoutingMode
    max_call_seconds: int
    tables: tuple[PlanTable, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.mode, RoutingMode):
            raise InvalidPlanError("mode", f"must be a RoutingMode: {self.mode!r}")
        seconds = self.max_call_seconds
        if type(seconds) is not int or seconds <= 0:
            raise InvalidPlanError("max_call_seconds", f"must be a positive integer: {seconds!r}")
        if type(self.tables) is not tuple:
            raise InvalidPlanError("tables", "must be a tuple of PlanTable")
        names = [table.name for table in self.tables]
        if len(set(names)) != len(names):
            raise InvalidPlanError("tables", f"a rate table appears twice: {names}")


_SortKey = Callable[[tuple[int, Route]], tuple[Decimal | int, Decimal | int, int]]

_ORDER: dict[RoutingMode, _SortKey] = {
    RoutingMode.LCR: lambda item: (item[1].rate.buy_rate, item[1].priority, item[0]),
    RoutingMode.PRIORITY: lambda item: (item[1].priority, item[1].rate.buy_rate, item[0]),
    RoutingMode.LCD: lambda item: (item[1].rate.rate, item[1].priority, item[0]),
}


def find_routes(plan: CallPlan, number: str, at: datetime) -> tuple[Route, ...]:
    """The routes for `number` at `at`, best first; ``()`` when no rate applies.

    `at` is the call's start time, aware, on the operator's wall clock.
    """
    best = 0
    found: list[tuple[int, Route]] = []
    for position, table in enumerate(plan.tables):
        rates = table.index.lookup(number, at)
        if not rates:
            continue
        length = len(rates[0].prefix)
        if length < best:
            continue
        if length > best:
            best = length
            found.clear()
        default_trunk = table.index.default_trunk
        found.extend(
            (
                position,
                Route(rate, table.name, table.priority, rate.trunk or default_trunk),
            )
            for rate in rates
        )
    if len(found) == 1:
        return (found[0][1],)
    found.sort(key=_ORDER[plan.mode])  # stable: build order breaks the last ties
    return tuple(route for _, route in found)


def quote(plan: CallPlan, number: str, available: Decimal, cap: int, at: datetime) -> Quote:
    """Rate a call: its routes, the seconds granted on the first and the reservation for them.

    `available` is balance + debit limit - the account's other open reservations; `cap` the
    caller's limit in seconds, further capped by ``plan.max_call_seconds``. Raises `NoRateError`
    when no rate applies, `InsufficientCreditError` when the first route's first block cannot
    be paid (never dial without time), `ValueError` when `cap` < 1.
    """
    if cap < 1:
        raise ValueError(f"cap must be at least 1 second: {cap}")
    routes = find_routes(plan, number, at)
    if not routes:
        raise NoRateError(number)
    cap_seconds = min(cap, plan.max_call_seconds)
    granted, reserve = grant(routes[0], available, cap_seconds)
    if granted == 0:
        raise InsufficientCreditError(number, available, cost(routes[0].rate, 1))
    return Quote(number, routes, granted, reserve, cap_seconds)
