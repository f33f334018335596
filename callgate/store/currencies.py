"""Currencies: the base currency every balance and price is kept in, and the others accounts
may be shown in (``value`` = what one unit is worth in the base currency)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.rating import MONEY_PLACES
from callgate.schema.tables import accounts, currencies
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import ConflictError, InvalidDataError, NotFoundError

# A rate is kept with the 5 places of money: 1 EUR = 1.08000 USD.
_RATE_LIMIT = Decimal(10) ** 12


@dataclass(frozen=True, slots=True)
class Currency:
    code: str
    name: str
    value: Decimal  # one unit in the base currency
    decimals: int
    is_base: bool
    accounts: int = 0
    updated_at: datetime | None = None


def check_code(code: str) -> str:
    """An ISO 4217 style code: three ASCII letters, stored in capitals."""
    text = code.strip().upper()
    if len(text) != 3 or not (text.isascii() and text.isalpha()):
        raise InvalidDataError(f"a currency code is three letters (ISO 4217): {code!r}")
    return text


def check_rate(rate: Decimal) -> Decimal:
    if not rate.is_finite() or rate <= 0:
        raise InvalidDataError(f"a currency's rate to the base currency must be positive: {rate}")
    if rate >= _RATE_LIMIT:
        raise InvalidDataError(f"a currency's rate is too large: {rate}")
    if rate != rate.quantize(Decimal(1).scaleb(-MONEY_PLACES)):
        raise InvalidDataError(f"a currency's rate has at most {MONEY_PLACES} decimals: {rate}")
    return rate


def check_decimals(decimals: int) -> int:
    if not 0 <= decimals <= MONEY_PLACES:
        raise InvalidDataError(f"a currency's decimals are 0..{MONEY_PLACES}: {decimals}")
    return decimals


async def add_currency(
    conn: AsyncConnection, code: str, *, name: str, rate: Decimal, decimals: int = 2
) -> Currency:
    """Add a currency accounts can be created in; runs in the caller's transaction."""
    code = check_code(code)
    name = name.strip()
    if not name or len(name) > 64:
        raise InvalidDataError("a currency needs a name of 1..64 characters")
    async with mapped_errors(f"currency {code}"):
        existing = await conn.scalar(select(currencies.c.name).where(currencies.c.code == code))
        if existing is not None:
            raise ConflictError(f"currency {code} ({existing}) already exists")
        await conn.execute(
            insert(currencies).values(
                code=code,
                name=name,
                value=check_rate(rate),
                decimals=check_decimals(decimals),
                is_base=False,
            )
        )
    return await fetch_currency(conn, code)


async def set_rate(conn: AsyncConnection, code: str, rate: Decimal) -> Currency:
    """Change what one unit of ``code`` is worth in the base currency (not the base's own)."""
    code = check_code(code)
    current = await fetch_currency(conn, code)
    if current.is_base:
        raise InvalidDataError(f"{code} is the base currency: its rate is 1 by definition")
    async with mapped_errors(f"currency {code}"):
        await conn.execute(
            update(currencies)
            .where(currencies.c.code == code)
            .values(value=check_rate(rate), updated_at=func.now())
        )
    return await fetch_currency(conn, code)


async def fetch_currency(conn: AsyncConnection, code: str) -> Currency:
    found = [c for c in await list_currencies(conn) if c.code == code.strip().upper()]
    if not found:
        raise NotFoundError(f"no currency {code.strip().upper()!r} (callgate currencies add)")
    return found[0]


async def list_currencies(conn: AsyncConnection) -> list[Currency]:
    """Every currency, the base first, with how many accounts use it."""
    used = (
        select(accounts.c.currency, func.count().label("n"))
        .group_by(accounts.c.currency)
        .subquery()
    )
    query = (
        select(currencies, func.coalesce(used.c.n, 0).label("n"))
        .select_from(currencies.outerjoin(used, used.c.currency == currencies.c.code))
        .order_by(currencies.c.is_base.desc(), currencies.c.code)
    )
    async with mapped_errors("currencies"):
        rows = (await conn.execute(query)).all()
    return [
        Currency(
            code=r.code,
            name=r.name,
            value=r.value,
            decimals=int(r.decimals),
            is_base=bool(r.is_base),
            accounts=int(r.n),
            updated_at=r.updated_at,
        )
        for r in rows
    ]
