"""Column types that behave the same on SQLite and PostgreSQL.

- :class:`Money`: ``NUMERIC(20, 5)`` on PostgreSQL; on SQLite, which has no decimal type and would
  store a float, an INTEGER count of 10^-5 units. Both read back as an exact ``Decimal`` with five
  places, and ``SUM`` stays exact on both. Because of that scaling, SQL written by hand (CHECK
  constraints, server defaults) may compare money only with 0 and add or subtract money columns;
  any other literal goes through a bound parameter, which this type scales.
- :class:`UtcDateTime`: timezone-aware UTC datetimes in and out on both backends (SQLite keeps no
  zone, so values are stored as naive UTC there and given back their zone when read).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import BigInteger, DateTime, Dialect, Numeric
from sqlalchemy.types import TypeDecorator, TypeEngine

MONEY_PLACES = 5
_QUANTUM = Decimal(1).scaleb(-MONEY_PLACES)


class Money(TypeDecorator[Decimal]):
    """An exact amount of money with five decimals."""

    impl = Numeric(20, MONEY_PLACES)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(20, MONEY_PLACES, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return money_to_sqlite(value)
        return quantize_money(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return money_from_sqlite(value)
        return Decimal(value).quantize(_QUANTUM)


def quantize_money(value: Decimal | int | str) -> Decimal:
    """``value`` with five decimals, ROUND_HALF_UP; a float (or bool) is refused."""
    if isinstance(value, float) or isinstance(value, bool):
        raise TypeError(f"money must be Decimal or int, not {type(value).__name__}")
    return Decimal(value).quantize(_QUANTUM, rounding=ROUND_HALF_UP)


def money_to_sqlite(value: Decimal | int | str) -> int:
    """What SQLite stores for an amount: an integer count of 10^-5 units. The one conversion,
    used by :class:`Money` and by the call path's stdlib driver (``store/lean_sqlite.py``)."""
    return int(quantize_money(value).scaleb(MONEY_PLACES))


def money_from_sqlite(value: int) -> Decimal:
    """The exact amount a stored count of 10^-5 units is (a float is refused)."""
    if isinstance(value, float):  # pragma: no cover - only if a float was stored by hand
        raise TypeError("a float is stored in a money column")
    return Decimal(int(value)).scaleb(-MONEY_PLACES).quantize(_QUANTUM)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None:
            raise ValueError("naive datetime: give timestamps a time zone")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stamp: datetime = value
        if stamp.tzinfo is None:
            return stamp.replace(tzinfo=UTC)
        return stamp.astimezone(UTC)


def utc_to_sqlite(value: datetime) -> str:
    """What :class:`UtcDateTime` stores on SQLite (SQLAlchemy's DATETIME text of the naive UTC
    time, ``YYYY-MM-DD HH:MM:SS.ffffff``): the call path's stdlib driver writes the same text, so
    the two sort and compare alike."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: give timestamps a time zone")
    v = value.astimezone(UTC)
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d} "
        f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}"
    )


def utc_from_sqlite(value: str) -> datetime:
    """A stored SQLite timestamp (with or without microseconds: server defaults have none) as
    an aware UTC datetime."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC)
