"""What the customer portal reads and writes: always one account's own rows.

Every function takes the account id of the logged-in contact and filters by it in SQL, so a
call or payment id of another account is simply not found (the portal answers 404, never
"forbidden": it does not even say the row exists).

- Login: a contact's e-mail (any case) and password (scrypt, :mod:`callgate.store.contacts`);
  only when the contact's account has ``portal_access``.
- A top-up request is a ``pending`` ``refill`` payment (:func:`request_topup`): the balance moves
  when an operator completes it (``callgate payments set-status ID completed``). It must reach
  the account's minimum payment (``accounts.minimum_payment``, ConnexCS's "minimum topup").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import (
    PaymentKind,
    PaymentStatus,
    accounts,
    calls,
    contacts,
    currencies,
    payments,
)
from callgate.store.contacts import hash_password, verify_password
from callgate.store.errors import InvalidDataError, NotFoundError
from callgate.store.payments import Payment, add_payment, list_payments, payment_from_row

CALL_COLUMNS = (
    "id",
    "uniqueid",
    "started_at",
    "answered_at",
    "ended_at",
    "callerid",
    "number",
    "destination",
    "billsec",
    "dial_status",
    "status",
    "cost",
)


@dataclass(frozen=True, slots=True)
class PortalContact:
    """A contact who may log in to the portal, with its account."""

    contact_id: int
    account_id: int
    name: str
    email: str
    password_hash: str
    public_notes: str
    portal_access: bool


@dataclass(frozen=True, slots=True)
class Money:
    """How the account's currency shows an amount kept in the base currency."""

    code: str
    value: Decimal  # what one unit is worth in the base currency
    decimals: int


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(hash_password("not a password of anyone"))
    return _DUMMY[0]


def _contact_query() -> Any:
    return select(
        contacts.c.id,
        contacts.c.account_id,
        contacts.c.name,
        contacts.c.email,
        contacts.c.password_hash,
        contacts.c.public_notes,
        accounts.c.portal_access,
    ).join(accounts, accounts.c.id == contacts.c.account_id)


def _portal_contact(row: Any) -> PortalContact:
    return PortalContact(
        contact_id=int(row.id),
        account_id=int(row.account_id),
        name=str(row.name),
        email=str(row.email),
        password_hash=str(row.password_hash or ""),
        public_notes=str(row.public_notes),
        portal_access=bool(row.portal_access),
    )


async def check_login(conn: AsyncConnection, email: str, password: str) -> PortalContact | None:
    """The contact whose e-mail and password these are, if its account has portal access.

    An unknown e-mail costs one scrypt as a wrong password does (no enumeration by timing);
    the hash runs in a thread, off the event loop.
    """
    row = (
        await conn.execute(
            _contact_query().where(
                contacts.c.email == email.strip().lower(), contacts.c.password_hash.is_not(None)
            )
        )
    ).first()
    found = None if row is None else _portal_contact(row)
    stored = found.password_hash if found is not None else _dummy_hash()
    ok = await asyncio.to_thread(verify_password, password, stored)
    if not ok or found is None or not found.portal_access:
        return None
    return found


async def fetch_contact(conn: AsyncConnection, contact_id: int) -> PortalContact | None:
    row = (await conn.execute(_contact_query().where(contacts.c.id == contact_id))).first()
    return None if row is None else _portal_contact(row)


async def money_of(conn: AsyncConnection, account_id: int) -> Money:
    row = (
        await conn.execute(
            select(currencies.c.code, currencies.c.value, currencies.c.decimals)
            .join(accounts, accounts.c.currency == currencies.c.code)
            .where(accounts.c.id == account_id)
        )
    ).first()
    if row is None:
        raise NotFoundError(f"no account with id {account_id}")
    return Money(str(row.code), row.value, int(row.decimals))


async def account_calls(
    conn: AsyncConnection, account_id: int, *, limit: int = 100
) -> list[dict[str, Any]]:
    """The account's billing records, newest first."""
    query = (
        select(*(calls.c[name] for name in CALL_COLUMNS))
        .where(calls.c.account_id == account_id)
        .order_by(calls.c.started_at.desc(), calls.c.id.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in await conn.execute(query)]


async def account_call(conn: AsyncConnection, account_id: int, call_id: int) -> dict[str, Any]:
    """One billing record of the account; another account's is not found."""
    row = (
        await conn.execute(
            select(calls).where(calls.c.id == call_id, calls.c.account_id == account_id)
        )
    ).first()
    if row is None:
        raise NotFoundError(f"no call {call_id}")
    return dict(row._mapping)


async def account_payments(
    conn: AsyncConnection, account_id: int, *, limit: int = 100
) -> list[Payment]:
    return await list_payments(conn, account_id=account_id, limit=limit)


async def account_payment(conn: AsyncConnection, account_id: int, payment_id: int) -> Payment:
    """One payment of the account; another account's is not found."""
    row = (
        await conn.execute(
            select(payments).where(payments.c.id == payment_id, payments.c.account_id == account_id)
        )
    ).first()
    if row is None:
        raise NotFoundError(f"no payment {payment_id}")
    return payment_from_row(row)


async def minimum_topup(conn: AsyncConnection, account_id: int) -> Decimal:
    value = await conn.scalar(select(accounts.c.minimum_payment).where(accounts.c.id == account_id))
    if value is None:
        raise NotFoundError(f"no account with id {account_id}")
    return Decimal(value)


def plain_amount(amount: Decimal) -> str:
    """An exact amount without the stored trailing zeros, at least 2 places: ``10.00``,
    ``10.125`` (never rounded, so a minimum shown is the minimum applied)."""
    text = f"{amount:f}"
    whole, _, places = text.partition(".")
    places = places.rstrip("0")
    return f"{whole}.{places.ljust(2, '0')}"


async def request_topup(
    conn: AsyncConnection, account_id: int, amount: Decimal, *, requested_by: str
) -> Payment:
    """Record a top-up request: a pending refill of ``amount`` (gross, base currency).

    Refused below the account's minimum payment, or when not positive. Run it inside
    :func:`~callgate.store.db.write_transaction`.
    """
    minimum = await minimum_topup(conn, account_id)
    if amount <= 0:
        raise InvalidDataError(f"a top-up must be positive, not {plain_amount(amount)}")
    if amount < minimum:
        raise InvalidDataError(
            f"the minimum top-up is {plain_amount(minimum)}; {plain_amount(amount)} is below it"
        )
    return await add_payment(
        conn,
        account_id,
        amount,
        kind=PaymentKind.REFILL,
        status=PaymentStatus.PENDING,
        description=f"top-up requested on the portal by {requested_by}",
    )
