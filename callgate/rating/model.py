"""Domain values of the rating core: `Rate`, `RoutingMode`, `Route`, `Quote`.

Field names and meanings are RATING.md's. Values are frozen slotted dataclasses validated on
construction, so a `Rate` that exists is a rate callgate can price with.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeVar, cast

from callgate.rating.cost import SECONDS_LIMIT, grant
from callgate.rating.errors import InvalidRateError
from callgate.rating.money import MONEY_LIMIT
from callgate.rating.windows import MINUTES_PER_WEEK

__all__ = ["Interner", "Quote", "Rate", "Route", "RoutingMode"]

_ZERO = Decimal(0)
_MONEY_FIELDS = (
    "rate",
    "connect_fee",
    "disconnect_fee",
    "minimal_cost",
    "buy_rate",
)
_SECONDS_FIELDS = (
    "disconnect_after",
    "initial_block",
    "increment",
    "buy_initial_block",
    "buy_increment",
)

_H = TypeVar("_H", bound=Hashable)


def _money_ok(value: object) -> bool:
    return type(value) is Decimal and value.is_finite() and _ZERO <= value < MONEY_LIMIT


@dataclass(frozen=True, slots=True, init=False)
class Rate:
    """One line of a rate table: the price of calls to numbers starting with `prefix`.

    Money is per minute (`rate`, `buy_rate`) or per call (fees, `minimal_cost`); blocks are
    seconds; `increment` 0 means 1. `trunk` None means the rate table's default trunk. `id` is
    the database id, informational only. See RATING.md for the cost formula. Construction
    validates every field and raises `InvalidRateError` naming the first bad one.
    """

    prefix: str
    rate: Decimal
    connect_fee: Decimal = _ZERO
    disconnect_fee: Decimal = _ZERO
    disconnect_after: int = 0
    initial_block: int = 0
    increment: int = 0
    minimal_cost: Decimal = _ZERO
    buy_rate: Decimal = _ZERO
    buy_initial_block: int = 0
    buy_increment: int = 0
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    week_start: int | None = None
    week_end: int | None = None
    destination: str = ""
    trunk: str | None = None
    id: int | None = None

    # Written by hand: the generated __init__ of a frozen dataclass goes through
    # object.__setattr__ for each of the 18 fields, and took twice as long, which a
    # million-rate deck feels. The test suite checks this signature against the fields.
    def __init__(
        self,
        prefix: str,
        rate: Decimal,
        connect_fee: Decimal = _ZERO,
        disconnect_fee: Decimal = _ZERO,
        disconnect_after: int = 0,
        initial_block: int = 0,
        increment: int = 0,
        minimal_cost: Decimal = _ZERO,
        buy_rate: Decimal = _ZERO,
        buy_initial_block: int = 0,
        buy_increment: int = 0,
        valid_from: datetime | None = None,
        valid_to: datetime | None = None,
        week_start: int | None = None,
        week_end: int | None = None,
        destination: str = "",
        trunk: str | None = None,
        id: int | None = None,
    ) -> None:
        (s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15, s16, s17) = _SETTERS
        s0(self, prefix)
        s1(self, rate)
        s2(self, connect_fee)
        s3(self, disconnect_fee)
        s4(self, disconnect_after)
        s5(self, initial_block)
        s6(self, increment)
        s7(self, minimal_cost)
        s8(self, buy_rate)
        s9(self, buy_initial_block)
        s10(self, buy_increment)
        s11(self, valid_from)
        s12(self, valid_to)
        s13(self, week_start)
        s14(self, week_end)
        s15(self, destination)
        s16(self, trunk)
        s17(self, id)
        # Fast path for the bulk of a deck: shared zero defaults, valid Decimals and ints, no
        # dates, no window. Anything else, and every error, goes through `_validate`.
        if (
            type(prefix) is str
            and prefix.isdigit()
            and prefix.isascii()
            and (rate is _ZERO or _money_ok(rate))
            and (buy_rate is _ZERO or _money_ok(buy_rate))
            and (connect_fee is _ZERO or _money_ok(connect_fee))
            and (disconnect_fee is _ZERO or _money_ok(disconnect_fee))
            and (minimal_cost is _ZERO or _money_ok(minimal_cost))
            and type(initial_block) is int
            and 0 <= initial_block < SECONDS_LIMIT
            and type(increment) is int
            and 0 <= increment < SECONDS_LIMIT
            and type(buy_initial_block) is int
            and 0 <= buy_initial_block < SECONDS_LIMIT
            and type(buy_increment) is int
            and 0 <= buy_increment < SECONDS_LIMIT
            and type(disconnect_after) is int
            and 0 <= disconnect_after < SECONDS_LIMIT
            and valid_from is None
            and valid_to is None
            and week_start is None
            and week_end is None
            and type(destination) is str
            and (trunk is None or (type(trunk) is str and trunk != ""))
            and (id is None or type(id) is int)
        ):
            return
        self._validate()

    def _validate(self) -> None:
        prefix = self.prefix
        if not (type(prefix) is str and prefix.isascii() and prefix.isdigit()):
            raise InvalidRateError("prefix", f"must be a non-empty string of digits: {prefix!r}")
        for name in _MONEY_FIELDS:
            _check_money(name, getattr(self, name))
        for name in _SECONDS_FIELDS:
            _check_seconds(name, getattr(self, name))
        self._check_validity()
        self._check_week()
        if type(self.destination) is not str:
            raise InvalidRateError("destination", f"must be a string: {self.destination!r}")
        trunk = self.trunk
        if trunk is not None and (type(trunk) is not str or not trunk):
            raise InvalidRateError("trunk", f"must be a non-empty string or None: {trunk!r}")
        rate_id = self.id
        if rate_id is not None and type(rate_id) is not int:
            raise InvalidRateError("id", f"must be an integer or None: {rate_id!r}")

    def _check_validity(self) -> None:
        valid_from, valid_to = self.valid_from, self.valid_to
        if valid_from is None and valid_to is None:
            return
        for name, value in (("valid_from", valid_from), ("valid_to", valid_to)):
            if value is None:
                continue
            if not isinstance(value, datetime):
                raise InvalidRateError(name, f"must be a datetime or None: {value!r}")
            if value.utcoffset() is None:
                raise InvalidRateError(name, f"must be timezone-aware: {value!r}")
        if valid_from is not None and valid_to is not None and valid_to <= valid_from:
            raise InvalidRateError("valid_to", f"must be after valid_from ({valid_from})")

    def _check_week(self) -> None:
        week_start, week_end = self.week_start, self.week_end
        if week_start is None and week_end is None:
            return
        if week_start is None or week_end is None:
            name = "week_start" if week_start is None else "week_end"
            raise InvalidRateError(name, "week_start and week_end are set together or not at all")
        for name, value in (("week_start", week_start), ("week_end", week_end)):
            if type(value) is not int or not 0 <= value < MINUTES_PER_WEEK:
                last = MINUTES_PER_WEEK - 1
                raise InvalidRateError(
                    name, f"must be minutes since Monday 00:00, 0..{last}: {value!r}"
                )

    @classmethod
    def from_store(
        cls,
        prefix: str,
        rate: Decimal,
        connect_fee: Decimal,
        disconnect_fee: Decimal,
        disconnect_after: int,
        initial_block: int,
        increment: int,
        minimal_cost: Decimal,
        buy_rate: Decimal,
        buy_initial_block: int,
        buy_increment: int,
        valid_from: datetime | None,
        valid_to: datetime | None,
        week_start: int | None,
        week_end: int | None,
        destination: str,
        trunk: str | None,
        id: int | None,
    ) -> Rate:
        """A rate read back from the database, whose constraints already hold what `__init__`
        checks (prices and blocks not negative, a week window in range, valid_to after
        valid_from, aware UTC times) and where every rate was validated on its way in: only the
        prefix is checked again. A million-rate table loads ~2 us a rate faster."""
        if not (type(prefix) is str and prefix.isdigit() and prefix.isascii()):
            raise InvalidRateError("prefix", f"must be ASCII digits: {prefix!r}")
        self = object.__new__(cls)
        (s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15, s16, s17) = _SETTERS
        s0(self, prefix)
        s1(self, rate)
        s2(self, connect_fee)
        s3(self, disconnect_fee)
        s4(self, disconnect_after)
        s5(self, initial_block)
        s6(self, increment)
        s7(self, minimal_cost)
        s8(self, buy_rate)
        s9(self, buy_initial_block)
        s10(self, buy_increment)
        s11(self, valid_from)
        s12(self, valid_to)
        s13(self, week_start)
        s14(self, week_end)
        s15(self, destination)
        s16(self, trunk)
        s17(self, id)
        return self

    @property
    def always_valid(self) -> bool:
        """True when the rate has no validity dates and no week window."""
        return self.valid_from is None and self.valid_to is None and self.week_start is None


# The slot descriptors' setters, in field order, for Rate.__init__ (they bypass the frozen
# __setattr__, as the generated __init__ of a frozen dataclass does).
_SETTERS: tuple[Callable[[Rate, Any], None], ...] = tuple(
    getattr(Rate, field.name).__set__ for field in fields(Rate)
)


def _check_money(name: str, value: object) -> None:
    if isinstance(value, Decimal) and value.is_finite() and _ZERO <= value < MONEY_LIMIT:
        return
    if isinstance(value, float):
        raise InvalidRateError(
            name, f"must be a Decimal, not a float: {value!r} (use Decimal(str))"
        )
    if not isinstance(value, Decimal):
        raise InvalidRateError(name, f"must be a Decimal: {value!r}")
    if not value.is_finite():
        raise InvalidRateError(name, f"must be finite: {value!r}")
    if value < 0:
        raise InvalidRateError(name, f"must not be negative: {value}")
    raise InvalidRateError(name, f"must be below {MONEY_LIMIT}: {value}")


def _check_seconds(name: str, value: object) -> None:
    if type(value) is int and 0 <= value < SECONDS_LIMIT:
        return
    if type(value) is not int:  # bool is an int subclass, and is refused too
        raise InvalidRateError(name, f"must be an integer number of seconds: {value!r}")
    if value < 0:
        raise InvalidRateError(name, f"must not be negative: {value}")
    raise InvalidRateError(name, f"must be below {SECONDS_LIMIT}: {value}")


class RoutingMode(StrEnum):
    """How the routes of a call are ordered (RATING.md "Choosing the rate")."""

    LCR = "lcr"  # least cost routing: buy rate, then table priority
    PRIORITY = "priority"  # table priority, then buy rate
    LCD = "lcd"  # least cost dialling for the customer: sell rate, then table priority


@dataclass(frozen=True, slots=True)
class Route:
    """A rate with where it came from and the trunk that carries it."""

    rate: Rate
    table: str  # the rate table's name
    priority: int  # the table's priority in the call plan; lower comes first
    trunk: str | None  # rate.trunk, else the table's default trunk; None: no trunk configured


@dataclass(frozen=True, slots=True)
class Quote:
    """The answer to "may this call go, where, for how long": see `callgate.rating.quote`.

    `granted_seconds` and `reserve` are for ``routes[0]``; `cap_seconds` is the cap they were
    computed under (min of the caller's cap and the plan's maximum call length).
    """

    number: str
    routes: tuple[Route, ...]
    granted_seconds: int
    reserve: Decimal
    cap_seconds: int

    @property
    def route(self) -> Route:
        """The first route, the one `granted_seconds` and `reserve` are for."""
        return self.routes[0]

    def grant_for(self, position: int, available: Decimal) -> tuple[int, Decimal]:
        """Grant and reservation for ``routes[position]`` on failover, under the same cap.

        Returns ``(seconds, cost(seconds))``; seconds is 0 when `available` cannot pay the first
        block of that route (do not dial it).
        """
        return grant(self.routes[position], available, self.cap_seconds)


class Interner:
    """Shares equal values between the rates of a bulk build, to save memory.

    A rate deck repeats a few prices, destination names and dates a million times; a parsed
    `Decimal` is ~100 bytes. Pass each value through an interner before building the `Rate`.
    Decimals are shared only with the same exponent, so ``0.1`` and ``0.10`` keep their text.
    """

    __slots__ = ("_money", "_money_text", "_values")

    def __init__(self) -> None:
        self._money: dict[Decimal, Decimal] = {}
        self._money_text: dict[str, Decimal] = {}  # equal to a shared value, another text
        self._values: dict[tuple[type, object], object] = {}

    def money(self, value: Decimal) -> Decimal:
        """The shared Decimal equal to `value` (same exponent)."""
        shared = self._money.setdefault(value, value)
        if shared is value or not shared.compare_total(value):  # the same text too
            return shared
        return self._money_text.setdefault(str(value), value)

    def share(self, value: _H) -> _H:
        """The shared object equal to `value` (strings, datetimes, ...)."""
        # keyed by type too: 1, 1.0 and True are equal but must not replace one another
        return cast(_H, self._values.setdefault((type(value), value), value))

    def __len__(self) -> int:
        return len(self._money) + len(self._money_text) + len(self._values)
