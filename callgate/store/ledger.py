"""The ledger: reservations make overdraft impossible (DESIGN.md §6).

- available = balance + debit_limit - the open reservations of the account's other calls.
- :func:`reserve` is ONE transaction that locks the account row (``SELECT ... FOR UPDATE`` on
  PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), checks the account (status, expiry), its channel
  and calls-per-second limits, computes the grant from the available credit with a pure pricing
  function, and inserts the reservation. Nothing is read and written across an await outside
  that lock, so two calls of one account, on one callgate or on several sharing PostgreSQL, can
  never both spend the same credit.
- :func:`settle` is ONE transaction too: it charges the call, closes the reservation and writes
  the billing record (``calls``). It is idempotent by ``uniqueid`` and shielded from
  cancellation: once started it completes even if the session task is cancelled.
- An account's "in use" is its number of open reservations.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callgate.rating import InsufficientCreditError
from callgate.schema.tables import (
    AccountStatus,
    CallStatus,
    ExpiryMode,
    ReservationStatus,
    accounts,
    calls,
    reservations,
)
from callgate.schema.types import Money, UtcDateTime
from callgate.store._errors_map import mapped_errors, rolled_back_by_conflict
from callgate.store.accounts import Account, account_from_row
from callgate.store.db import write_transaction
from callgate.store.errors import NotFoundError, StoreError

log = logging.getLogger(__name__)

ZERO = Decimal(0)

# (granted_seconds, amount to reserve) from the available credit; raises when nothing can be paid
Pricer = Callable[[Decimal], tuple[int, Decimal]]


class LedgerRefusal(StoreError):
    """The ledger refused a reservation; ``status`` is the CALLGATE_STATUS to report."""

    status: CallStatus = CallStatus.ERROR

    def __init__(self, message: str, *, status: CallStatus | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class AccountUnusableError(LedgerRefusal):
    """The account is not active, or it has expired."""


class ChannelLimitError(LedgerRefusal):
    status = CallStatus.CHANNEL_LIMIT


class CpsLimitError(LedgerRefusal):
    status = CallStatus.CPS_LIMIT


class NoCreditError(LedgerRefusal):
    status = CallStatus.NO_CREDIT


@dataclass(frozen=True, slots=True)
class Reservation:
    id: int
    uniqueid: str
    account_id: int
    amount: Decimal
    granted_seconds: int
    status: ReservationStatus
    created_at: datetime
    expires_at: datetime
    available: Decimal  # what the account could spend when this was granted (for the log)


@dataclass(frozen=True, slots=True)
class Limits:
    """Extra limits checked under the account lock (IP authentication adds its own)."""

    source_address: str = ""
    address_channel_limit: int | None = None
    address_cps_limit: int | None = None


@dataclass(frozen=True, slots=True)
class CallRecord:
    """The billing record of one attempt, answered or not (one row of ``calls``)."""

    uniqueid: str
    status: CallStatus
    started_at: datetime
    account_id: int | None = None
    script: str = "call"
    channel: str = ""
    callerid: str = ""
    dialed_number: str = ""
    number: str = ""
    prefix: str = ""
    destination: str = ""
    rate_table: str = ""
    rate_id: int | None = None
    sell_rate: Decimal | None = None
    buy_rate: Decimal | None = None
    trunk: str = ""
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    billsec: int = 0
    granted_seconds: int = 0
    pdd_ms: int | None = None
    dial_status: str = ""
    hangup_cause: int | None = None
    cost: Decimal = ZERO
    buy_cost: Decimal = ZERO
    server: str = ""
    note: str = ""
    asterisk: str = ""  # the Asterisk that sent the call: the key is (asterisk, uniqueid)

    def values(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data


@dataclass(frozen=True, slots=True)
class SettleResult:
    charged: Decimal
    balance: Decimal
    already_settled: bool = False
    reservation_found: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def expiry_time(account: Account) -> datetime | None:
    """When the account expires under its expiry rule (None: never, or not yet started)."""
    mode = account.expiry_mode
    if mode is ExpiryMode.AT_DATE:
        return account.expires_at
    if mode is ExpiryMode.DAYS_AFTER_FIRST_USE and account.expiry_days:
        if account.first_use_at is None:
            return None
        return account.first_use_at + timedelta(days=account.expiry_days)
    if mode is ExpiryMode.DAYS_AFTER_CREATION and account.expiry_days and account.created_at:
        return account.created_at + timedelta(days=account.expiry_days)
    return None


def check_usable(account: Account, now: datetime) -> None:
    """Raise :class:`AccountUnusableError` unless the account may place a call at ``now``."""
    if account.status is AccountStatus.EXPIRED:
        raise AccountUnusableError("account expired", status=CallStatus.EXPIRED)
    if account.status is not AccountStatus.ACTIVE:
        raise AccountUnusableError(f"account is {account.status.value}", status=CallStatus.INACTIVE)
    ends = expiry_time(account)
    if ends is not None and now >= ends:
        raise AccountUnusableError(
            f"account expired at {ends.isoformat()}", status=CallStatus.EXPIRED
        )


# The hot path's statements are built once: constructing a SQLAlchemy statement per call cost
# more CPU than running it (measured: 640 us a query constructed each time, 370 us prebuilt).
_OPEN = ReservationStatus.OPEN.value
_LOCK_ACCOUNT = select(accounts).where(accounts.c.id == bindparam("account_id")).with_for_update()
# Two statements, not one: in READ COMMITTED a statement that waited for the row lock keeps the
# snapshot it started with, so a sum in the same statement could miss a reservation committed
# while it waited. The sum runs after the lock, with a fresh snapshot.
_RESERVED = select(func.coalesce(func.sum(reservations.c.amount), 0)).where(
    reservations.c.account_id == bindparam("account_id"), reservations.c.status == _OPEN
)
_RESERVED_EXCLUDING = _RESERVED.where(reservations.c.id != bindparam("exclude"))
_INSERT_RESERVATION = insert(reservations).returning(reservations.c.id)
# the settle's lock: FOR NO KEY UPDATE excludes reserves and settles of the account but not the
# foreign-key checks of its other calls' inserts
_LOCK_FOR_SETTLE = (
    select(accounts.c.id)
    .where(accounts.c.id == bindparam("account_id"))
    .with_for_update(key_share=True)
)
_CLOSE_RESERVATION = (
    update(reservations)
    .where(
        reservations.c.uniqueid == bindparam("r_uniqueid"),
        reservations.c.asterisk == bindparam("r_asterisk"),
        reservations.c.status == _OPEN,
    )
    .values(
        status=ReservationStatus.SETTLED.value,
        charged=bindparam("r_charged", type_=Money()),
        closed_at=bindparam("r_closed", type_=UtcDateTime()),
    )
    .returning(reservations.c.id)
)
_CALL_EXISTS = select(calls.c.id).where(
    calls.c.uniqueid == bindparam("c_uniqueid"), calls.c.asterisk == bindparam("c_asterisk")
)
_CHARGE = (
    update(accounts)
    .where(accounts.c.id == bindparam("a_id"))
    .values(
        balance=accounts.c.balance - bindparam("a_charge", type_=Money()),
        last_use_at=bindparam("a_last", type_=UtcDateTime()),
    )
    .returning(accounts.c.balance)
)
_CHARGE_ANSWERED = _CHARGE.values(
    call_count=accounts.c.call_count + 1,
    first_use_at=func.coalesce(accounts.c.first_use_at, bindparam("a_first", type_=UtcDateTime())),
)
_INSERT_CALL = insert(calls)


async def _lock_account(conn: AsyncConnection, account_id: int) -> Account:
    row = (await conn.execute(_LOCK_ACCOUNT, {"account_id": account_id})).first()
    if row is None:
        raise NotFoundError(f"no account with id {account_id}")
    return account_from_row(row)


async def _reserved(conn: AsyncConnection, account_id: int, exclude_id: int | None) -> Decimal:
    if exclude_id is None:
        total = await conn.scalar(_RESERVED, {"account_id": account_id})
    else:
        total = await conn.scalar(
            _RESERVED_EXCLUDING, {"account_id": account_id, "exclude": exclude_id}
        )
    return Decimal(total) if total is not None else ZERO


async def available_credit(
    conn: AsyncConnection, account: Account, *, exclude_reservation: int | None = None
) -> Decimal:
    """balance + debit_limit - the open reservations of the account's other calls
    (``exclude_reservation``: the id of the call's own reservation, for a regrant)."""
    reserved = await _reserved(conn, account.id, exclude_reservation)
    return account.balance + account.debit_limit - reserved


async def open_reservations(conn: AsyncConnection, account_id: int) -> int:
    """The account's "in use": its number of open reservations."""
    count = await conn.scalar(
        select(func.count())
        .select_from(reservations)
        .where(
            reservations.c.account_id == account_id,
            reservations.c.status == ReservationStatus.OPEN.value,
        )
    )
    return int(count or 0)


async def _count_recent(conn: AsyncConnection, where: Any, since: datetime) -> int:
    count = await conn.scalar(
        select(func.count())
        .select_from(reservations)
        .where(where, reservations.c.created_at > since)
    )
    return int(count or 0)


async def _check_limits(
    conn: AsyncConnection, account: Account, limits: Limits, now: datetime
) -> None:
    is_open = reservations.c.status == ReservationStatus.OPEN.value
    mine = reservations.c.account_id == account.id
    if account.channel_limit is not None:
        in_use = await conn.scalar(
            select(func.count()).select_from(reservations).where(mine, is_open)
        )
        if int(in_use or 0) >= account.channel_limit:
            raise ChannelLimitError(
                f"account channel limit {account.channel_limit} reached ({in_use} in use)"
            )
    one_second_ago = now - timedelta(seconds=1)
    if account.cps_limit is not None:
        recent = await _count_recent(conn, mine, one_second_ago)
        if recent >= account.cps_limit:
            raise CpsLimitError(f"account CPS limit {account.cps_limit} reached")
    if limits.source_address:
        from_address = reservations.c.source_address == limits.source_address
        if limits.address_channel_limit is not None:
            in_use = await conn.scalar(
                select(func.count()).select_from(reservations).where(from_address, is_open)
            )
            if int(in_use or 0) >= limits.address_channel_limit:
                raise ChannelLimitError(
                    f"IP {limits.source_address} channel limit {limits.address_channel_limit}"
                    " reached"
                )
        if limits.address_cps_limit is not None:
            recent = await _count_recent(conn, from_address, one_second_ago)
            if recent >= limits.address_cps_limit:
                raise CpsLimitError(
                    f"IP {limits.source_address} CPS limit {limits.address_cps_limit} reached"
                )


async def reserve(
    engine: AsyncEngine,
    *,
    account_id: int,
    uniqueid: str,
    price: Pricer,
    now: datetime,
    grace_seconds: int,
    limits: Limits = Limits(),
    trunk: str = "",
    rate_id: int | None = None,
    server: str = "",
    asterisk: str = "",
) -> Reservation:
    """Reserve the credit of one call, in one transaction under the account's lock.

    ``price(available)`` is pure: it returns ``(granted_seconds, amount)`` or raises (the rating
    core's InsufficientCreditError is turned into :class:`NoCreditError`). The reservation
    expires at ``now + granted + grace`` (the reaper's deadline if the session dies).
    """
    async with mapped_errors("reserve"), write_transaction(engine) as conn:
        account = await _lock_account(conn, account_id)
        available, granted, amount = await _authorise(conn, account, price, now, limits)
        expires = now + timedelta(seconds=granted + grace_seconds)
        new_id = await conn.scalar(
            _INSERT_RESERVATION,
            {
                "uniqueid": uniqueid,
                "account_id": account_id,
                "amount": amount,
                "granted_seconds": granted,
                "status": _OPEN,
                "source_address": limits.source_address,
                "rate_id": rate_id,
                "trunk": trunk,
                "server": server,
                "asterisk": asterisk,
                "created_at": now,
                "expires_at": expires,
            },
        )
        assert new_id is not None
        return Reservation(
            id=int(new_id),
            uniqueid=uniqueid,
            account_id=account_id,
            amount=amount,
            granted_seconds=granted,
            status=ReservationStatus.OPEN,
            created_at=now,
            expires_at=expires,
            available=available,
        )


async def _authorise(
    conn: AsyncConnection, account: Account, price: Pricer, now: datetime, limits: Limits
) -> tuple[Decimal, int, Decimal]:
    """The checks and the price of a new call: (available, granted seconds, amount to hold).
    Raises a :class:`LedgerRefusal`. :func:`reserve` runs it under the lock, :func:`quote`
    without one."""
    check_usable(account, now)
    await _check_limits(conn, account, limits, now)
    available = await available_credit(conn, account)
    granted, amount = _priced(price, available)
    return available, granted, amount


async def quote(
    engine: AsyncEngine,
    *,
    account_id: int,
    price: Pricer,
    now: datetime,
    limits: Limits = Limits(),
) -> tuple[Decimal, int, Decimal]:
    """What :func:`reserve` would grant now, with the same checks, reserving nothing
    (``callgate simulate``): (available, granted seconds, amount). Raises a LedgerRefusal."""
    async with mapped_errors("quote"), engine.connect() as conn:
        row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
        if row is None:
            raise NotFoundError(f"no account with id {account_id}")
        return await _authorise(conn, account_from_row(row), price, now, limits)


def _priced(price: Pricer, available: Decimal) -> tuple[int, Decimal]:
    """Run the pricer; the ledger's own guard is that nothing paid exceeds what is available.

    ``available`` may be 0 or less: a call paid by a package's free seconds reserves nothing,
    so the pricer, not this function, decides whether a call with no credit may go.
    """
    try:
        granted, amount = price(available)
    except InsufficientCreditError as exc:
        raise NoCreditError(str(exc) or "credit cannot pay the first block") from exc
    if granted <= 0:
        raise NoCreditError(f"credit cannot pay the first block (available {available})")
    if amount < ZERO or (amount > ZERO and amount > available):
        raise NoCreditError(f"pricing reserved {amount} > available {available}")
    return granted, amount


async def regrant(
    engine: AsyncEngine,
    *,
    uniqueid: str,
    price: Pricer,
    now: datetime,
    grace_seconds: int,
    trunk: str = "",
    rate_id: int | None = None,
    asterisk: str = "",
) -> Reservation:
    """Recompute an open reservation for another route (failover), under the account lock."""
    async with mapped_errors("regrant"), write_transaction(engine) as conn:
        row = (
            await conn.execute(
                select(reservations).where(
                    reservations.c.uniqueid == uniqueid, reservations.c.asterisk == asterisk
                )
            )
        ).first()
        if row is None or row.status != ReservationStatus.OPEN.value:
            raise NotFoundError(f"no open reservation for {uniqueid}")
        account = await _lock_account(conn, row.account_id)
        available = await available_credit(conn, account, exclude_reservation=row.id)
        granted, amount = _priced(price, available)
        expires = now + timedelta(seconds=granted + grace_seconds)
        await conn.execute(
            update(reservations)
            .where(reservations.c.id == row.id)
            .values(
                amount=amount,
                granted_seconds=granted,
                expires_at=expires,
                trunk=trunk,
                rate_id=rate_id,
            )
        )
        return Reservation(
            id=row.id,
            uniqueid=uniqueid,
            account_id=row.account_id,
            amount=amount,
            granted_seconds=granted,
            status=ReservationStatus.OPEN,
            created_at=row.created_at,
            expires_at=expires,
            available=available,
        )


async def settle(engine: AsyncEngine, record: CallRecord) -> SettleResult:
    """Charge ``record.cost``, close the reservation, write the call row: one transaction.

    Idempotent by uniqueid (a second settle of the same call charges nothing and reports
    ``already_settled``) and shielded: cancelling the caller does not cancel the settle.
    """
    return await asyncio.shield(_settle_retrying(engine, record))


# a settle PostgreSQL rolled back for a lock conflict (a deadlock with a writer outside the lock
# order, a serialization failure) runs again: it wrote nothing, and it is idempotent
SETTLE_ATTEMPTS = 4


async def _settle_retrying(engine: AsyncEngine, record: CallRecord) -> SettleResult:
    for attempt in range(1, SETTLE_ATTEMPTS + 1):
        try:
            return await _settle(engine, record)
        except StoreError as exc:
            if attempt == SETTLE_ATTEMPTS or not rolled_back_by_conflict(exc):
                raise
            log.warning("settle %s: %s; retrying (%d)", record.uniqueid, exc, attempt)
            await asyncio.sleep(0.01 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


async def _settle(engine: AsyncEngine, record: CallRecord) -> SettleResult:
    """Statements under the account's lock: close the reservation, charge, record.

    The account row is locked first on PostgreSQL (SQLite's writers are serial), the lock order
    of every ledger path (reserve, regrant, the lean settle, the reconciler): a settle of the
    same call by another server, core or lean, waits here rather than deadlocking on the
    reservation and the billing record. Closing the reservation first after it (``UPDATE ...
    WHERE status = 'open'``) is what makes a second settle of the same call a no-op: it finds
    the reservation settled and charges nothing.
    """
    if record.account_id is None:
        raise NotFoundError("settle needs an account; use record_attempt for unknown callers")
    charge = record.cost
    async with mapped_errors("settle"), write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(_LOCK_FOR_SETTLE, {"account_id": record.account_id})
        closed = (
            await conn.execute(
                _CLOSE_RESERVATION,
                {
                    "r_uniqueid": record.uniqueid,
                    "r_asterisk": record.asterisk,
                    "r_charged": charge,
                    "r_closed": record.ended_at or record.started_at,
                },
            )
        ).first()
        found = closed is not None
        if not found:
            if await conn.scalar(
                _CALL_EXISTS, {"c_uniqueid": record.uniqueid, "c_asterisk": record.asterisk}
            ):
                balance = await conn.scalar(
                    select(accounts.c.balance).where(accounts.c.id == record.account_id)
                )
                return SettleResult(charged=ZERO, balance=balance or ZERO, already_settled=True)
            log.warning("settle %s: no open reservation; charging the call anyway", record.uniqueid)
        params: dict[str, Any] = {
            "a_id": record.account_id,
            "a_charge": charge,
            "a_last": record.started_at,
        }
        if record.billsec > 0:
            params["a_first"] = record.started_at
            balance = await conn.scalar(_CHARGE_ANSWERED, params)
        else:
            balance = await conn.scalar(_CHARGE, params)
        if balance is None:
            raise NotFoundError(f"no account with id {record.account_id}")
        await conn.execute(_INSERT_CALL, record.values())
        return SettleResult(charged=charge, balance=balance, reservation_found=found)


async def release(
    engine: AsyncEngine, uniqueid: str, *, note: str = "", asterisk: str = ""
) -> bool:
    """Close an open reservation without a charge (a call that never went out)."""
    async with mapped_errors("release"), write_transaction(engine) as conn:
        result = await conn.execute(
            update(reservations)
            .where(
                reservations.c.uniqueid == uniqueid,
                reservations.c.asterisk == asterisk,
                reservations.c.status == ReservationStatus.OPEN.value,
            )
            .values(status=ReservationStatus.RELEASED.value, charged=ZERO, note=note)
        )
        return bool(result.rowcount)


async def record_attempt(engine: AsyncEngine, record: CallRecord) -> bool:
    """Write the billing record of an attempt that was never reserved (idempotent).

    Returns False when a record with that uniqueid already exists.
    """
    try:
        async with mapped_errors("record attempt"), write_transaction(engine) as conn:
            await conn.execute(insert(calls).values(**record.values()))
    except StoreError as exc:
        if isinstance(exc.__cause__, IntegrityError):
            existing = await _call_exists(engine, record.uniqueid, record.asterisk)
            if existing:
                return False
        raise
    return True


async def _call_exists(engine: AsyncEngine, uniqueid: str, asterisk: str) -> bool:
    async with engine.connect() as conn:
        found = await conn.scalar(_CALL_EXISTS, {"c_uniqueid": uniqueid, "c_asterisk": asterisk})
    return found is not None


async def fetch_reservation(
    conn: AsyncConnection, uniqueid: str, asterisk: str = ""
) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            select(reservations).where(
                reservations.c.uniqueid == uniqueid, reservations.c.asterisk == asterisk
            )
        )
    ).first()
    return None if row is None else dict(row._mapping)
