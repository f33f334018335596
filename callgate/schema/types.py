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
        if isinstance(value, float) or isinstance(value, bool):
            raise TypeError(f"money must be Decimal or int, not {type(value).__name__}")
        amount = Decimal(value).quantize(_QUANTUM, rounding=ROUND_HALF_UP)
        if dialect.name == "sqlite":
            return int(amount.scaleb(MONEY_PLACES))
        return amount

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            if isinstance(value, float):  # pragma: no cover - only if a float was stored by hand
                raise TypeError("a float is stored in a money column")
            return Decimal(int(value)).scaleb(-MONEY_PLACES).quantize(_QUANTUM)
        return Decimal(value).quantize(_QUANTUM)


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
