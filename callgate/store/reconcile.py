"""Reconciliation: reservations whose FastAGI session died before it settled (DESIGN.md §6).

A reservation expires at created + granted + grace. Past that, still ``open``, its session is
gone (a crash, a lost database during settle, a killed process). :func:`reap` then, for each:

* finds the **billing CDR** AMI recorded for that call (:func:`callgate.store.cdrs.billing_cdr`:
  the caller's leg with ``LastApplication: Dial`` and the reservation's uniqueid, or a LinkedID
  match) and settles from it: ``cost(rate, min(BillableSeconds, granted))`` with the
  reservation's rate (``rate_id``), capped at the amount reserved. If that rate row is gone, the
  charge is the reserved amount pro rata of the seconds (a note says so). The reservation
  becomes ``expired``, the balance moves and a ``calls`` row is written ("settled by the reaper
  from the Asterisk CDR"), all in one transaction under the account lock;
* else marks it ``unresolved`` for an operator (``callgate calls reconcile``), who settles it with
  a number of seconds (:func:`settle_reservation`) or releases it (:func:`release_reservation`),
  each one transaction too.

Lock order is the ledger's: the account row first, then the reservation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callgate.rating import Rate, buy_cost, cost, quantize_money
from callgate.schema.tables import (
    CallStatus,
    ReservationStatus,
    accounts,
    calls,
    rate_tables,
    rates,
    reservations,
)
from callgate.store._errors_map import mapped_errors
from callgate.store.cdrs import AsteriskCdr, billing_cdr, parse_local_time
from callgate.store.db import write_transaction
from callgate.store.errors import InvalidDataError, NotFoundError
from callgate.store.ledger import CallRecord

log = logging.getLogger(__name__)

ZERO = Decimal(0)
REAPER_NOTE = "settled by the reaper from the Asterisk CDR"
NO_CDR_NOTE = "session ended without settling and AMI recorded no CDR for this call"
FAILED_DIAL_STATUSES = frozenset({"CHANUNAVAIL", "CONGESTION"})


class ReapResult(StrEnum):
    SETTLED = "settled"  # from the Asterisk CDR: the reservation is now `expired`
    UNRESOLVED = "unresolved"


@dataclass(frozen=True, slots=True)
class ReapOutcome:
    uniqueid: str
    account_id: int
    result: ReapResult
    billsec: int = 0
    charged: Decimal = ZERO
    note: str = ""


@dataclass(frozen=True, slots=True)
class PendingReservation:
    """A reservation an operator must resolve (or an open one past its expiry)."""

    uniqueid: str
    account_id: int
    account: str  # the account number
    status: ReservationStatus
    amount: Decimal
    granted_seconds: int
    trunk: str
    rate_id: int | None
    server: str
    created_at: datetime
    expires_at: datetime
    note: str


@dataclass(frozen=True, slots=True)
class Resolution:
    uniqueid: str
    status: ReservationStatus
    billsec: int
    charged: Decimal
    balance: Decimal
    note: str


@dataclass(frozen=True, slots=True)
class _Priced:
    rate: Rate | None
    rate_table: str
    billsec: int
    cost: Decimal
    buy_cost: Decimal
    note: str


async def _rate(conn: AsyncConnection, rate_id: int | None) -> tuple[Rate | None, str]:
    if rate_id is None:
        return None, ""
    row = (
        await conn.execute(
            select(rates, rate_tables.c.name.label("table_name"))
            .join(rate_tables, rate_tables.c.id == rates.c.rate_table_id)
            .where(rates.c.id == rate_id)
        )
    ).first()
    if row is None:
        return None, ""
    m = row._mapping
    rate = Rate(
        m["prefix"],
        m["rate"],
        connect_fee=m["connect_fee"],
        disconnect_fee=m["disconnect_fee"],
        disconnect_after=m["disconnect_after"],
        initial_block=m["initial_block"],
        increment=m["increment"],
        minimal_cost=m["minimal_cost"],
        buy_rate=m["buy_rate"],
        buy_initial_block=m["buy_initial_block"],
        buy_increment=m["buy_increment"],
        valid_from=m["valid_from"],
        valid_to=m["valid_to"],
        week_start=m["week_start"],
        week_end=m["week_end"],
        destination=m["destination"],
        id=m["id"],
    )
    return rate, str(m["table_name"])


async def _price(conn: AsyncConnection, res: Any, billsec: int) -> _Priced:
    """The charge of ``billsec`` seconds under reservation ``res`` (capped at what it holds)."""
    seconds = max(0, min(billsec, int(res.granted_seconds)))
    amount: Decimal = res.amount
    rate, table = await _rate(conn, res.rate_id)
    if rate is None:
        granted = int(res.granted_seconds)
        charge = quantize_money(amount * seconds / granted) if granted > 0 else ZERO
        note = (
            f"rate {res.rate_id} no longer exists: charged the reservation pro rata "
            f"({seconds}/{granted} s of {amount})"
        )
        return _Priced(None, "", seconds, min(charge, amount), ZERO, note)
    charge = cost(rate, seconds)
    note = ""
    if charge > amount:
        note = f"cost {charge} capped at the {amount} reserved"
        charge = amount
    return _Priced(rate, table, seconds, charge, buy_cost(rate, seconds), note)


async def _lock_account(conn: AsyncConnection, account_id: int) -> Any:
    row = (
        await conn.execute(
            select(accounts.c.id, accounts.c.number, accounts.c.first_use_at)
            .where(accounts.c.id == account_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        raise NotFoundError(f"no account with id {account_id}")
    return row


async def _lock_reservation(conn: AsyncConnection, uniqueid: str, asterisk: str) -> Any:
    return (
        await conn.execute(
            select(reservations)
            .where(reservations.c.uniqueid == uniqueid, reservations.c.asterisk == asterisk)
            .with_for_update()
        )
    ).first()


async def _charge(
    conn: AsyncConnection, account: Any, amount: Decimal, started_at: datetime, billsec: int
) -> Decimal:
    values: dict[str, Any] = {"balance": accounts.c.balance - amount, "last_use_at": started_at}
    if billsec > 0:
        values["call_count"] = accounts.c.call_count + 1
        if account.first_use_at is None:
            values["first_use_at"] = started_at
    await conn.execute(update(accounts).where(accounts.c.id == account.id).values(**values))
    balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account.id))
    assert balance is not None
    return Decimal(balance)


async def _call_exists(conn: AsyncConnection, uniqueid: str, asterisk: str) -> bool:
    found = await conn.scalar(
        select(calls.c.id).where(calls.c.uniqueid == uniqueid, calls.c.asterisk == asterisk)
    )
    return found is not None


def _record(
    res: Any,
    priced: _Priced,
    *,
    status: CallStatus,
    note: str,
    cdr: AsteriskCdr | None = None,
    zone: tzinfo | None = None,
) -> CallRecord:
    rate = priced.rate
    answered_at = ended_at = None
    dial_status = ""
    channel = callerid = number = ""
    if cdr is not None and zone is not None:
        if cdr.disposition.upper() == "ANSWERED":
            answered_at = parse_local_time(cdr.answer_time, zone)
        ended_at = parse_local_time(cdr.end_time, zone)
        dial_status = cdr.dial_status
        channel, callerid, number = cdr.channel, cdr.source, cdr.destination
    return CallRecord(
        uniqueid=res.uniqueid,
        status=status,
        started_at=res.created_at,
        account_id=res.account_id,
        channel=channel[:128],
        callerid=callerid[:64],
        dialed_number=number[:64],
        number=number[:64],
        prefix=rate.prefix if rate else "",
        destination=rate.destination if rate else "",
        rate_table=priced.rate_table,
        rate_id=res.rate_id,
        sell_rate=rate.rate if rate else None,
        buy_rate=rate.buy_rate if rate else None,
        trunk=res.trunk,
        answered_at=answered_at,
        ended_at=ended_at,
        billsec=priced.billsec,
        granted_seconds=int(res.granted_seconds),
        dial_status=dial_status,
        cost=priced.cost,
        buy_cost=priced.buy_cost,
        server=res.server,
        note=note,
        asterisk=res.asterisk,
    )


# -- the reaper ---------------------------------------------------------------------------------


async def expired_open(
    conn: AsyncConnection, now: datetime, *, limit: int = 500
) -> list[tuple[str, str]]:
    """(uniqueid, asterisk) of the open reservations past their expiry, oldest first."""
    query = (
        select(reservations.c.uniqueid, reservations.c.asterisk)
        .where(
            reservations.c.status == ReservationStatus.OPEN.value,
            reservations.c.expires_at < now,
        )
        .order_by(reservations.c.expires_at)
        .limit(limit)
    )
    async with mapped_errors("expired reservations"):
        return [(row.uniqueid, row.asterisk) for row in (await conn.execute(query)).all()]


async def reap_one(
    engine: AsyncEngine, uniqueid: str, *, now: datetime, zone: tzinfo, asterisk: str = ""
) -> ReapOutcome | None:
    """Settle one expired open reservation from its CDR, or mark it unresolved (one
    transaction). None when it is not (or no longer) open and past its expiry."""
    async with mapped_errors("reap"), write_transaction(engine) as conn:
        first = (
            await conn.execute(
                select(reservations.c.account_id).where(
                    reservations.c.uniqueid == uniqueid, reservations.c.asterisk == asterisk
                )
            )
        ).first()
        if first is None:
            return None
        account = await _lock_account(conn, first.account_id)
        res = await _lock_reservation(conn, uniqueid, asterisk)
        if res is None or res.status != ReservationStatus.OPEN.value or res.expires_at >= now:
            return None  # settled meanwhile by its session, or regranted
        cdr = await billing_cdr(conn, uniqueid, asterisk=asterisk)
        if cdr is None:
            await conn.execute(
                update(reservations)
                .where(reservations.c.id == res.id)
                .values(status=ReservationStatus.UNRESOLVED.value, note=NO_CDR_NOTE)
            )
            return ReapOutcome(uniqueid, res.account_id, ReapResult.UNRESOLVED, note=NO_CDR_NOTE)
        if await _call_exists(conn, uniqueid, asterisk):
            note = "a billing record of this call exists already: nothing charged"
            await _close(conn, res.id, ReservationStatus.EXPIRED, ZERO, now, note)
            return ReapOutcome(uniqueid, res.account_id, ReapResult.SETTLED, note=note)
        priced = await _price(conn, res, cdr.billsec)
        note = REAPER_NOTE if not priced.note else f"{REAPER_NOTE}; {priced.note}"
        failed = cdr.dial_status in FAILED_DIAL_STATUSES
        status = CallStatus.ROUTE_FAILED if failed else CallStatus.OK
        record = _record(res, priced, status=status, note=note, cdr=cdr, zone=zone)
        await _close(conn, res.id, ReservationStatus.EXPIRED, priced.cost, now, note)
        await _charge(conn, account, priced.cost, res.created_at, priced.billsec)
        await conn.execute(insert(calls).values(**record.values()))
        log.info(
            "reaper: %s settled from the Asterisk CDR: billsec=%d (CDR %d, granted %d) cost=%s",
            uniqueid,
            priced.billsec,
            cdr.billsec,
            res.granted_seconds,
            priced.cost,
        )
        return ReapOutcome(
            uniqueid, res.account_id, ReapResult.SETTLED, priced.billsec, priced.cost, note
        )


async def _close(
    conn: AsyncConnection,
    reservation_id: int,
    status: ReservationStatus,
    charged: Decimal,
    now: datetime,
    note: str,
) -> None:
    await conn.execute(
        update(reservations)
        .where(reservations.c.id == reservation_id)
        .values(status=status.value, charged=charged, closed_at=now, note=note[:2000])
    )


async def reap(
    engine: AsyncEngine, *, now: datetime, zone: tzinfo, limit: int = 500
) -> list[ReapOutcome]:
    """One pass of the reaper over the open reservations past their expiry."""
    async with mapped_errors("reaper"), engine.connect() as conn:
        due = await expired_open(conn, now, limit=limit)
    outcomes: list[ReapOutcome] = []
    for uniqueid, asterisk in due:
        outcome = await reap_one(engine, uniqueid, now=now, zone=zone, asterisk=asterisk)
        if outcome is not None:
            outcomes.append(outcome)
    return outcomes


# -- operators ----------------------------------------------------------------------------------


def _pending_from(row: Any) -> PendingReservation:
    m = row._mapping
    return PendingReservation(
        uniqueid=m["uniqueid"],
        account_id=m["account_id"],
        account=m["number"],
        status=ReservationStatus(m["status"]),
        amount=m["amount"],
        granted_seconds=m["granted_seconds"],
        trunk=m["trunk"],
        rate_id=m["rate_id"],
        server=m["server"],
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        note=m["note"],
    )


async def list_unresolved(
    conn: AsyncConnection, *, now: datetime | None = None, limit: int = 1000
) -> list[PendingReservation]:
    """The unresolved reservations (and, given ``now``, the open ones past their expiry that
    the reaper has not seen yet), oldest first."""
    r = reservations.c
    where = r.status == ReservationStatus.UNRESOLVED.value
    if now is not None:
        where = or_(where, (r.status == ReservationStatus.OPEN.value) & (r.expires_at < now))
    query = (
        select(reservations, accounts.c.number)
        .join(accounts, accounts.c.id == r.account_id)
        .where(where)
        .order_by(r.created_at, r.id)
        .limit(limit)
    )
    async with mapped_errors("unresolved reservations"):
        rows = (await conn.execute(query)).all()
    return [_pending_from(row) for row in rows]


async def _resolvable(conn: AsyncConnection, key: str, now: datetime) -> tuple[Any, Any]:
    """The reservation of ``key`` (``uniqueid``, or ``asterisk/uniqueid`` when two Asterisk
    servers used that uniqueid), locked with its account."""
    asterisk, _, uniqueid = key.rpartition("/")
    query = select(reservations.c.account_id, reservations.c.asterisk).where(
        reservations.c.uniqueid == uniqueid
    )
    if asterisk:
        query = query.where(reservations.c.asterisk == asterisk)
    found = (await conn.execute(query.limit(2))).all()
    if not found:
        raise NotFoundError(f"no reservation for call {key!r}")
    if len(found) > 1:
        raise InvalidDataError(
            f"call {uniqueid!r} came from several Asterisk servers: name it as"
            f" ASTERISK/{uniqueid} (e.g. {found[0].asterisk or '<none>'}/{uniqueid})"
        )
    first = found[0]
    account = await _lock_account(conn, first.account_id)
    res = await _lock_reservation(conn, uniqueid, first.asterisk)
    assert res is not None
    open_expired = res.status == ReservationStatus.OPEN.value and res.expires_at < now
    if res.status != ReservationStatus.UNRESOLVED.value and not open_expired:
        raise InvalidDataError(
            f"reservation {uniqueid} is {res.status}"
            + (" and not expired yet" if res.status == ReservationStatus.OPEN.value else "")
            + ": only unresolved (or expired open) reservations can be resolved"
        )
    return account, res


async def settle_reservation(
    engine: AsyncEngine, uniqueid: str, seconds: int, *, now: datetime, who: str = "an operator"
) -> Resolution:
    """Settle an unresolved reservation as a call of ``seconds`` (capped at the grant)."""
    if seconds < 0:
        raise InvalidDataError("seconds must be >= 0")
    async with mapped_errors("settle reservation"), write_transaction(engine) as conn:
        account, res = await _resolvable(conn, uniqueid, now)
        if await _call_exists(conn, res.uniqueid, res.asterisk):
            raise InvalidDataError(f"call {uniqueid} has a billing record already")
        priced = await _price(conn, res, seconds)
        note = f"settled by {who} for {seconds} s"
        if priced.note:
            note += f"; {priced.note}"
        record = _record(res, priced, status=CallStatus.OK, note=note)
        if priced.billsec > 0:
            record = _answered(record)
        await _close(conn, res.id, ReservationStatus.SETTLED, priced.cost, now, note)
        balance = await _charge(conn, account, priced.cost, res.created_at, priced.billsec)
        await conn.execute(insert(calls).values(**record.values()))
        return Resolution(
            uniqueid, ReservationStatus.SETTLED, priced.billsec, priced.cost, balance, note
        )


def _answered(record: CallRecord) -> CallRecord:
    return replace(record, dial_status="ANSWER")


async def release_reservation(
    engine: AsyncEngine, uniqueid: str, *, now: datetime, who: str = "an operator"
) -> Resolution:
    """Close an unresolved reservation without a charge (a call record of 0 is written)."""
    async with mapped_errors("release reservation"), write_transaction(engine) as conn:
        account, res = await _resolvable(conn, uniqueid, now)
        note = f"released by {who}: not charged"
        await _close(conn, res.id, ReservationStatus.RELEASED, ZERO, now, note)
        if not await _call_exists(conn, res.uniqueid, res.asterisk):
            priced = _Priced(None, "", 0, ZERO, ZERO, "")
            record = _record(res, priced, status=CallStatus.ERROR, note=note)
            await conn.execute(insert(calls).values(**record.values()))
        balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account.id))
        return Resolution(
            uniqueid, ReservationStatus.RELEASED, 0, ZERO, Decimal(balance or 0), note
        )


# -- gauges -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveCounts:
    by_trunk: tuple[tuple[str, int], ...]
    open_total: int
    unresolved: int


async def live_counts(conn: AsyncConnection) -> LiveCounts:
    """Open reservations by trunk (the calls in progress), and the unresolved ones."""
    r = reservations.c
    async with mapped_errors("live call counts"):
        rows = (
            await conn.execute(
                select(r.trunk, func.count())
                .where(r.status == ReservationStatus.OPEN.value)
                .group_by(r.trunk)
            )
        ).all()
        unresolved = await conn.scalar(
            select(func.count())
            .select_from(reservations)
            .where(r.status == ReservationStatus.UNRESOLVED.value)
        )
    by_trunk = tuple(sorted((str(t), int(n)) for t, n in rows))
    return LiveCounts(by_trunk, sum(n for _, n in by_trunk), int(unresolved or 0))
