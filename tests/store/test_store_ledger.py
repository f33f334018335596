"""The ledger on both databases: reserve, regrant, settle, limits, concurrency, cancellation."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.rating import Rate, cost, max_duration
from callgate.schema.tables import CallStatus, ReservationStatus, accounts, calls, reservations
from callgate.store import accounts as acc
from callgate.store import ledger, plans
from callgate.store.errors import StoreError

RATE = Rate(prefix="1", rate=Decimal("0.60"), initial_block=30, increment=6)
CAP = 3600


def price(available: Decimal, cap: int = CAP) -> tuple[int, Decimal]:
    granted = max_duration(RATE, available, cap)
    return granted, cost(RATE, granted)


def price_short(available: Decimal) -> tuple[int, Decimal]:
    """At most 60 s a call: several calls of one account fit at once."""
    return price(available, 60)


async def _account(engine: AsyncEngine, balance: str, **extra: Any) -> acc.Account:
    async with engine.begin() as conn:
        plan = await plans.create_call_plan(conn, name=f"p{random.randrange(10**9)}")
        return await acc.create_account(
            conn, call_plan_id=plan.id, balance=Decimal(balance), **extra
        )


def _record(account: acc.Account, uniqueid: str, billsec: int, granted: int) -> ledger.CallRecord:
    now = datetime.now(UTC)
    return ledger.CallRecord(
        uniqueid=uniqueid,
        status=CallStatus.OK,
        started_at=now,
        account_id=account.id,
        billsec=billsec,
        granted_seconds=granted,
        dial_status="ANSWER" if billsec else "NOANSWER",
        cost=cost(RATE, min(billsec, granted)),
    )


async def _balance(engine: AsyncEngine, account_id: int) -> Decimal:
    async with engine.connect() as conn:
        value = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account_id))
    assert isinstance(value, Decimal)
    return value


async def test_reserve_then_settle_charges_exactly_once(engine: AsyncEngine) -> None:
    account = await _account(engine, "1.00")
    now = datetime.now(UTC)
    first = await ledger.reserve(
        engine, account_id=account.id, uniqueid="u1", price=price, now=now, grace_seconds=60
    )
    # 1.00 at 0.60/min, 30/6: 96 s cost 0.96; 102 s would cost 1.02
    assert (first.granted_seconds, first.amount) == (96, Decimal("0.96000"))
    assert first.expires_at == now + timedelta(seconds=96 + 60)
    with pytest.raises(ledger.NoCreditError):  # 0.04 left cannot pay the first 30 s block
        await ledger.reserve(
            engine, account_id=account.id, uniqueid="u2", price=price, now=now, grace_seconds=60
        )
    async with engine.connect() as conn:
        assert await ledger.open_reservations(conn, account.id) == 1
    result = await ledger.settle(engine, _record(account, "u1", billsec=61, granted=96))
    assert result.charged == Decimal("0.66000")  # 61 s bills 66 s
    assert result.balance == Decimal("0.34000")
    again = await ledger.settle(engine, _record(account, "u1", billsec=61, granted=96))
    assert again.already_settled and again.charged == 0
    assert await _balance(engine, account.id) == Decimal("0.34000")
    async with engine.connect() as conn:
        row = (await conn.execute(select(reservations))).one()
        assert row.status == ReservationStatus.SETTLED.value and row.charged == Decimal("0.66")
        assert await ledger.open_reservations(conn, account.id) == 0
        assert await conn.scalar(select(func.count()).select_from(calls)) == 1
        assert await conn.scalar(select(accounts.c.call_count)) == 1
        first_use = await conn.scalar(select(accounts.c.first_use_at))
        assert first_use is not None and first_use.tzinfo is not None


async def test_debit_limit_extends_the_available_credit(engine: AsyncEngine) -> None:
    account = await _account(engine, "0", debit_limit=Decimal("0.30"))
    res = await ledger.reserve(
        engine,
        account_id=account.id,
        uniqueid="u1",
        price=price,
        now=datetime.now(UTC),
        grace_seconds=0,
    )
    assert res.granted_seconds == 30 and res.available == Decimal("0.30000")
    await ledger.settle(engine, _record(account, "u1", billsec=25, granted=30))
    assert await _balance(engine, account.id) == Decimal("-0.30000")


async def test_regrant_for_failover_excludes_its_own_reservation(engine: AsyncEngine) -> None:
    account = await _account(engine, "1.00")
    now = datetime.now(UTC)
    await ledger.reserve(
        engine, account_id=account.id, uniqueid="u1", price=price, now=now, grace_seconds=0
    )
    dearer = Rate(prefix="1", rate=Decimal("1.20"), initial_block=30, increment=6)

    def price2(available: Decimal) -> tuple[int, Decimal]:
        granted = max_duration(dearer, available, CAP)
        return granted, cost(dearer, granted)

    again = await ledger.regrant(engine, uniqueid="u1", price=price2, now=now, grace_seconds=0)
    assert (again.granted_seconds, again.amount) == (48, Decimal("0.96000"))


async def test_status_expiry_and_limits_refuse(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    inactive = await _account(engine, "5", status="inactive")
    with pytest.raises(ledger.AccountUnusableError) as refused:
        await ledger.reserve(
            engine, account_id=inactive.id, uniqueid="a", price=price, now=now, grace_seconds=0
        )
    assert refused.value.status is CallStatus.INACTIVE
    expired = await _account(
        engine, "5", expiry_mode="at_date", expires_at=now - timedelta(seconds=1)
    )
    with pytest.raises(ledger.AccountUnusableError) as refused:
        await ledger.reserve(
            engine, account_id=expired.id, uniqueid="b", price=price, now=now, grace_seconds=0
        )
    assert refused.value.status is CallStatus.EXPIRED
    limited = await _account(engine, "500", channel_limit=2, cps_limit=3)
    for n in range(2):
        await ledger.reserve(
            engine, account_id=limited.id, uniqueid=f"c{n}", price=price, now=now, grace_seconds=0
        )
    with pytest.raises(ledger.ChannelLimitError):
        await ledger.reserve(
            engine, account_id=limited.id, uniqueid="c2", price=price, now=now, grace_seconds=0
        )
    async with engine.begin() as conn:
        await conn.execute(update(accounts).values(channel_limit=None))
    await ledger.reserve(
        engine, account_id=limited.id, uniqueid="c3", price=price, now=now, grace_seconds=0
    )
    with pytest.raises(ledger.CpsLimitError):
        await ledger.reserve(
            engine, account_id=limited.id, uniqueid="c4", price=price, now=now, grace_seconds=0
        )
    later = now + timedelta(seconds=2)
    await ledger.reserve(
        engine, account_id=limited.id, uniqueid="c5", price=price, now=later, grace_seconds=0
    )
    ip_limits = ledger.Limits(source_address="10.0.0.9", address_channel_limit=1)
    await ledger.reserve(
        engine,
        account_id=limited.id,
        uniqueid="c6",
        price=price,
        now=later + timedelta(seconds=2),
        grace_seconds=0,
        limits=ip_limits,
    )
    with pytest.raises(ledger.ChannelLimitError, match="10.0.0.9"):
        await ledger.reserve(
            engine,
            account_id=limited.id,
            uniqueid="c7",
            price=price,
            now=later + timedelta(seconds=4),
            grace_seconds=0,
            limits=ip_limits,
        )


async def test_concurrent_calls_of_one_account_never_overdraw(engine: AsyncEngine) -> None:
    account = await _account(engine, "3.00")
    rng = random.Random(7)
    durations = [rng.randrange(0, 90) for _ in range(40)]
    outcomes: list[str] = []

    async def one_call(n: int, billsec: int) -> None:
        await asyncio.sleep(rng.random() / 50)
        try:
            res = await ledger.reserve(
                engine,
                account_id=account.id,
                uniqueid=f"call-{n}",
                price=price_short,
                now=datetime.now(UTC),
                grace_seconds=30,
            )
        except ledger.NoCreditError:
            outcomes.append("refused")
            return
        await asyncio.sleep(rng.random() / 50)
        await ledger.settle(engine, _record(account, f"call-{n}", billsec, res.granted_seconds))
        outcomes.append("settled")

    await asyncio.gather(*(one_call(n, d) for n, d in enumerate(durations)))
    balance = await _balance(engine, account.id)
    async with engine.connect() as conn:
        charged = await conn.scalar(select(func.coalesce(func.sum(calls.c.cost), 0)))
        still_open = await ledger.open_reservations(conn, account.id)
    assert balance >= 0, balance
    assert charged == Decimal("3.00") - balance
    assert still_open == 0
    assert outcomes.count("settled") >= 5 and len(outcomes) == 40
    assert outcomes.count("refused") >= 1  # the credit ran out: later calls were refused


async def test_settle_completes_even_when_the_caller_is_cancelled(engine: AsyncEngine) -> None:
    account = await _account(engine, "1.00")
    await ledger.reserve(
        engine,
        account_id=account.id,
        uniqueid="u9",
        price=price,
        now=datetime.now(UTC),
        grace_seconds=0,
    )
    task = asyncio.create_task(ledger.settle(engine, _record(account, "u9", 40, 96)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if await _balance(engine, account.id) != Decimal("1.00"):
            break
        await asyncio.sleep(0.02)
    assert await _balance(engine, account.id) == Decimal("0.58000")  # 40 s bills 42 s


async def test_record_attempt_is_idempotent(engine: AsyncEngine) -> None:
    record = ledger.CallRecord(
        uniqueid="x1", status=CallStatus.NO_ACCOUNT, started_at=datetime.now(UTC)
    )
    assert await ledger.record_attempt(engine, record) is True
    assert await ledger.record_attempt(engine, record) is False
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(calls)) == 1


async def test_a_call_paid_by_free_seconds_needs_no_credit(engine: AsyncEngine) -> None:
    account = await _account(engine, "0")
    now = datetime.now(UTC)

    def free_minute(available: Decimal) -> tuple[int, Decimal]:
        return 60, Decimal(0)  # a package pays the first minute; the credit pays nothing more

    res = await ledger.reserve(
        engine, account_id=account.id, uniqueid="f1", price=free_minute, now=now, grace_seconds=0
    )
    assert (res.granted_seconds, res.amount, res.available) == (60, Decimal(0), Decimal("0.00000"))
    with pytest.raises(ledger.NoCreditError):  # without the package: nothing to pay with
        await ledger.reserve(
            engine, account_id=account.id, uniqueid="f2", price=price, now=now, grace_seconds=0
        )


async def test_the_same_uniqueid_from_two_asterisk_servers_is_two_calls(
    engine: AsyncEngine,
) -> None:
    account = await _account(engine, "10.00")
    now = datetime.now(UTC)
    for box in ("ast-a", "ast-b"):
        res = await ledger.reserve(
            engine,
            account_id=account.id,
            uniqueid="1763769600.7",
            price=price_short,
            now=now,
            grace_seconds=60,
            asterisk=box,
        )
        assert res.granted_seconds == 60
    with pytest.raises(StoreError):  # one box, one uniqueid: one reservation
        await ledger.reserve(
            engine,
            account_id=account.id,
            uniqueid="1763769600.7",
            price=price_short,
            now=now,
            grace_seconds=60,
            asterisk="ast-a",
        )
    regranted = await ledger.regrant(
        engine,
        uniqueid="1763769600.7",
        price=price_short,
        now=now,
        grace_seconds=0,
        asterisk="ast-b",
    )
    assert regranted.available == Decimal("10.00") - Decimal("0.60")  # only ast-a's is excluded
    record_a = replace(_record(account, "1763769600.7", billsec=30, granted=60), asterisk="ast-a")
    record_b = replace(record_a, asterisk="ast-b", billsec=40, cost=cost(RATE, 40))
    first = await ledger.settle(engine, record_a)
    second = await ledger.settle(engine, record_b)
    assert (first.charged, second.charged) == (Decimal("0.30000"), Decimal("0.42000"))
    again = await ledger.settle(engine, record_b)  # idempotent per (asterisk, uniqueid)
    assert again.already_settled and again.charged == 0
    assert await _balance(engine, account.id) == Decimal("10.00") - Decimal("0.72000")
    attempt = ledger.CallRecord(
        uniqueid="1763769600.9", status=CallStatus.NO_ACCOUNT, started_at=now, asterisk="ast-a"
    )
    assert await ledger.record_attempt(engine, attempt) is True
    assert await ledger.record_attempt(engine, replace(attempt, asterisk="ast-b")) is True
    assert await ledger.record_attempt(engine, attempt) is False
    async with engine.connect() as conn:
        keys = (
            await conn.execute(select(calls.c.asterisk).where(calls.c.uniqueid == "1763769600.7"))
        ).scalars()
        assert sorted(keys) == ["ast-a", "ast-b"]
