"""callgate.rating: the pure rating core (RATING.md, exactly). Standard library only.

No I/O, no asyncio, no clock reads: the call's start time is passed in as an aware datetime on
the operator's wall clock.

The entry point of a call::

    quote(plan: CallPlan, number: str, available: Decimal, cap: int, at: datetime) -> Quote

`number` is the normalised dialled number (ASCII digits); `available` is balance + debit limit
- the account's other open reservations; `cap` (>= 1) the caller's limit in seconds, further
capped by ``plan.max_call_seconds``; `at` the start of the call. It returns a `Quote` with the
ordered `routes`, `granted_seconds` (the exact dial limit for ``routes[0]``), `reserve`
(``cost(routes[0].rate, granted_seconds)``) and `cap_seconds`. It raises `NoRateError` when no
rate applies and `InsufficientCreditError` when the first block cannot be paid. On failover,
``quote.grant_for(position, available)`` (or ``grant(route, available, cap)``) recomputes the
grant and the reservation for the next route. After the call, charge
``cost(route.rate, min(billsec, granted))``.

Bulk loading: build `Rate` values (passing repeated values through an `Interner` saves memory),
then one `PrefixIndex(name, rates, default_trunk=..., version=...)` per rate table, then a
`CallPlan` of `PlanTable(name, priority, index)`.
"""

from __future__ import annotations

from callgate.rating.cost import SECONDS_LIMIT, billed_seconds, buy_cost, cost, grant, max_duration
from callgate.rating.errors import (
    InsufficientCreditError,
    InvalidPlanError,
    InvalidRateError,
    NoRateError,
    RatingError,
)
from callgate.rating.model import Interner, Quote, Rate, Route, RoutingMode
from callgate.rating.money import (
    MONEY_LIMIT,
    MONEY_PLACES,
    in_currency,
    parse_money,
    quantize_money,
)
from callgate.rating.plan import CallPlan, PlanTable, find_routes, quote
from callgate.rating.prefix import PrefixIndex, rate_applies
from callgate.rating.windows import in_validity, in_week_window, week_minute

__all__ = [
    "MONEY_LIMIT",
    "MONEY_PLACES",
    "SECONDS_LIMIT",
    "CallPlan",
    "InsufficientCreditError",
    "Interner",
    "InvalidPlanError",
    "InvalidRateError",
    "NoRateError",
    "PlanTable",
    "PrefixIndex",
    "Quote",
    "Rate",
    "RatingError",
    "Route",
    "RoutingMode",
    "billed_seconds",
    "buy_cost",
    "cost",
    "find_routes",
    "grant",
    "in_validity",
    "in_week_window",
    "max_duration",
    "in_currency",
    "parse_money",
    "quantize_money",
    "quote",
    "rate_applies",
    "week_minute",
]
