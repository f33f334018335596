"""Accounts (the seeds' customers or cards): create and fetch.

An account number is secret: it comes from a CSPRNG (:mod:`secrets`), is unique, and its length
comes from the settings or the caller. The alias (login) is random and unique too, or an e-mail
address the operator gives.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import (
    AccountStatus,
    ExpiryMode,
    account_callerids,
    accounts,
    call_plans,
    currencies,
)
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import ConflictError, InvalidDataError, NotFoundError

DEFAULT_NUMBER_LENGTH = 10
ALIAS_LENGTH = 10
MIN_NUMBER_LENGTH = 6
MAX_NUMBER_LENGTH = 20
_GENERATE_TRIES = 20


@dataclass(frozen=True, slots=True)
class Account:
    """One paying account, as stored."""

    id: int
    number: str
    alias: str
    call_plan_id: int
    status: AccountStatus
    currency: str
    balance: Decimal
    debit_limit: Decimal
    language: str
    first_name: str = ""
    last_name: str = ""
    company: str = ""
    email: str = ""
    phone: str = ""
    address: str = ""
    city: str = ""
    state: str = ""
    country: str = ""
    zipcode: str = ""
    website: str = ""
    paypal_email: str = ""
    group_id: int | None = None
    minimum_payment: Decimal = Decimal(0)
    tax_percent: Decimal = Decimal(0)
    portal_access: bool = True
    channel_limit: int | None = None
    cps_limit: int | None = None
    expiry_mode: ExpiryMode = ExpiryMode.NEVER
    expires_at: datetime | None = None
    expiry_days: int | None = None
    first_use_at: datetime | None = None
    last_use_at: datetime | None = None
    call_count: int = 0
    public_notes: str = ""
    private_notes: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def credit_limit_total(self) -> Decimal:
        """Balance plus debit limit: what the account may spend before reservations."""
        return self.balance + self.debit_limit


_ACCOUNT_FIELDS = {f.name for f in dataclasses.fields(Account)}
# columns an operator may set at creation (the rest are kept by callgate)
CREATE_FIELDS = frozenset(
    {
        "number",
        "alias",
        "first_name",
        "last_name",
        "company",
        "email",
        "phone",
        "address",
        "city",
        "state",
        "country",
        "zipcode",
        "website",
        "paypal_email",
        "group_id",
        "status",
        "language",
        "currency",
        "balance",
        "debit_limit",
        "minimum_payment",
        "tax_percent",
        "portal_access",
        "channel_limit",
        "cps_limit",
        "expiry_mode",
        "expires_at",
        "expiry_days",
        "public_notes",
        "private_notes",
        "password_hash",
    }
)


def account_from_row(row: Row[Any] | Mapping[str, Any]) -> Account:
    """An :class:`Account` from a row of ``accounts``."""
    data = dict(row._mapping) if isinstance(row, Row) else dict(row)
    values = {k: v for k, v in data.items() if k in _ACCOUNT_FIELDS}
    values["status"] = AccountStatus(values["status"])
    values["expiry_mode"] = ExpiryMode(values["expiry_mode"])
    values["portal_access"] = bool(values["portal_access"])
    return Account(**values)


def generate_number(length: int = DEFAULT_NUMBER_LENGTH) -> str:
    """A random account number of ``length`` digits, not starting with 0 (CSPRNG)."""
    if not MIN_NUMBER_LENGTH <= length <= MAX_NUMBER_LENGTH:
        raise InvalidDataError(
            f"account number length must be {MIN_NUMBER_LENGTH}..{MAX_NUMBER_LENGTH}, not {length}"
        )
    first = str(secrets.randbelow(9) + 1)
    return first + "".join(str(secrets.randbelow(10)) for _ in range(length - 1))


def generate_alias(length: int = ALIAS_LENGTH) -> str:
    """A random login of digits (A2Billing's alias), distinct in form from nothing else."""
    return generate_number(length)


async def _exists(conn: AsyncConnection, column: Any, value: str) -> bool:
    found = await conn.scalar(select(accounts.c.id).where(column == value).limit(1))
    return found is not None


async def _unique_random(
    conn: AsyncConnection, column: Any, length: int, taken: set[str] | None = None
) -> str:
    for _ in range(_GENERATE_TRIES):
        candidate = generate_number(length)
        if taken is not None and candidate in taken:
            continue
        if not await _exists(conn, column, candidate):
            return candidate
    raise ConflictError(
        f"could not find a free {column.name} of {length} digits after {_GENERATE_TRIES} tries; "
        "use a longer length"
    )


async def create_account(
    conn: AsyncConnection,
    *,
    call_plan_id: int | None,
    number_length: int = DEFAULT_NUMBER_LENGTH,
    taken: set[str] | None = None,
    **fields: Any,
) -> Account:
    """Create an account; random number and alias unless given. Runs in the caller's transaction.

    Refuses an account without a call plan ("configure the call plan first"), unknown fields, a
    currency the system does not know, and a number or alias already taken.
    """
    if call_plan_id is None:
        raise InvalidDataError("an account needs a call plan: configure the call plan first")
    unknown = set(fields) - CREATE_FIELDS
    if unknown:
        raise InvalidDataError(f"unknown account field(s): {', '.join(sorted(unknown))}")
    async with mapped_errors("create account"):
        plan = await conn.scalar(select(call_plans.c.id).where(call_plans.c.id == call_plan_id))
        if plan is None:
            raise NotFoundError(f"no call plan with id {call_plan_id}")
        values = dict(fields)
        if "currency" not in values:
            values["currency"] = await base_currency(conn)
        else:
            code = str(values["currency"]).upper()
            known = await conn.scalar(select(currencies.c.code).where(currencies.c.code == code))
            if known is None:
                raise InvalidDataError(f"unknown currency {code!r}")
            values["currency"] = code
        if values.get("number"):
            if await _exists(conn, accounts.c.number, values["number"]):
                raise ConflictError(f"account number {values['number']!r} is taken")
        else:
            values["number"] = await _unique_random(conn, accounts.c.number, number_length, taken)
        if values.get("alias"):
            if await _exists(conn, accounts.c.alias, values["alias"]):
                raise ConflictError(f"alias {values['alias']!r} is taken")
        else:
            values["alias"] = await _unique_random(conn, accounts.c.alias, ALIAS_LENGTH, taken)
        if taken is not None:
            taken.update((values["number"], values["alias"]))
        for key in ("status", "expiry_mode"):
            if key in values:
                values[key] = str(values[key])
        values["call_plan_id"] = call_plan_id
        row = (await conn.execute(insert(accounts).values(**values).returning(accounts))).one()
        return account_from_row(row)


async def base_currency(conn: AsyncConnection) -> str:
    """The code of the base currency (the one whose ``is_base`` is set)."""
    code = await conn.scalar(select(currencies.c.code).where(currencies.c.is_base.is_(True)))
    if code is None:
        raise NotFoundError("no base currency is configured")
    return str(code)


async def fetch_account(conn: AsyncConnection, account_id: int) -> Account:
    row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
    if row is None:
        raise NotFoundError(f"no account with id {account_id}")
    return account_from_row(row)


async def fetch_account_by_number(conn: AsyncConnection, number: str) -> Account | None:
    row = (await conn.execute(select(accounts).where(accounts.c.number == number))).first()
    return None if row is None else account_from_row(row)


async def fetch_account_by_alias(conn: AsyncConnection, alias: str) -> Account | None:
    row = (await conn.execute(select(accounts).where(accounts.c.alias == alias))).first()
    return None if row is None else account_from_row(row)


async def fetch_account_by_callerid(conn: AsyncConnection, callerid: str) -> Account | None:
    """The account owning an active caller ID (exact match on the digits Asterisk sends)."""
    query = (
        select(accounts)
        .join(account_callerids, account_callerids.c.account_id == accounts.c.id)
        .where(account_callerids.c.callerid == callerid, account_callerids.c.active.is_(True))
    )
    row = (await conn.execute(query)).first()
    return None if row is None else account_from_row(row)


async def find_account(conn: AsyncConnection, key: str) -> Account | None:
    """An account by number, else by alias, else by id (``#12`` or a bare id for the CLI)."""
    account = await fetch_account_by_number(conn, key)
    if account is None:
        account = await fetch_account_by_alias(conn, key)
    if account is None and key.startswith("#") and key[1:].isdigit():
        row = (await conn.execute(select(accounts).where(accounts.c.id == int(key[1:])))).first()
        account = None if row is None else account_from_row(row)
    return account


async def add_callerid(conn: AsyncConnection, account_id: int, callerid: str) -> int:
    """Attach a caller ID to an account; it identifies the account when nothing else does."""
    cid = callerid.strip()
    if not cid:
        raise InvalidDataError("a caller ID cannot be empty")
    async with mapped_errors(f"caller ID {cid}"):
        taken = await conn.scalar(
            select(account_callerids.c.id).where(account_callerids.c.callerid == cid)
        )
        if taken is not None:
            raise ConflictError(f"caller ID {cid!r} belongs to another account")
        new_id = await conn.scalar(
            insert(account_callerids)
            .values(account_id=account_id, callerid=cid)
            .returning(account_callerids.c.id)
        )
        return int(new_id)
