"""Billing records on both databases: listing and filters, streaming, recalc, statistics."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.rating import Rate, cost
from callgate.schema.tables import CallStatus, accounts, calls, payments, rates
from callgate.store import accounts as account_store
from callgate.store import calls as call_store
from callgate.store import ledger, plans

RATE = Rate(prefix="44", rate=Decimal("0.60"), initial_block=30, increment=6, destination="UK")
DAY1 = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
DAY2 = datetime(2026, 11, 21, 9, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Spec:
    uniqueid: str
    started: datetime
    billsec: int
    dial_status: str
    pdd_ms: int | None
    cause: int | None
    status: CallStatus = CallStatus.OK
    number: str = "442079460000"


# a known set: 6 attempts, 3 answered, 3 in one second
SPECS = (
    Spec("c1", DAY1 + timedelta(milliseconds=100), 60, "ANSWER", 1000, 16),
    Spec("c2", DAY1 + timedelta(milliseconds=500), 30, "ANSWER", 3000, 16),
    Spec("c3", DAY1 + timedelta(milliseconds=900), 0, "BUSY", 500, 17),
    Spec("c4", DAY1 + timedelta(seconds=5), 0, "NOANSWER", None, 19, number="15551230000"),
    Spec("c5", DAY2, 120, "ANSWER", 2000, 16),
    Spec("c6", DAY2 + timedelta(seconds=1), 0, "", None, None, CallStatus.NO_CREDIT),
)


async def seed(engine: AsyncEngine, specs: tuple[Spec, ...] = SPECS) -> tuple[int, int]:
    async with engine.begin() as conn:
        await plans.create_rate_table(conn, name="std")
        await plans.add_rates(
            conn,
            "std",
            [
                {
                    "prefix": "44",
                    "destination": "UK",
                    "rate": RATE.rate,
                    "initial_block": 30,
                    "increment": 6,
                }
            ],
        )
        rate_id = int(await conn.scalar(select(rates.c.id)) or 0)
        plan = await plans.create_call_plan(conn, name="p")
        account = await account_store.create_account(
            conn, call_plan_id=plan.id, number="8000000001", balance=Decimal("10.00")
        )
    for spec in specs:
        await ledger.record_attempt(
            engine,
            ledger.CallRecord(
                uniqueid=spec.uniqueid,
                status=spec.status,
                started_at=spec.started,
                account_id=account.id,
                number=spec.number,
                prefix="44" if spec.number.startswith("44") else "1",
                destination="UK" if spec.number.startswith("44") else "USA",
                rate_id=rate_id,
                trunk="carrier-a" if spec.number.startswith("44") else "carrier-b",
                billsec=spec.billsec,
                dial_status=spec.dial_status,
                pdd_ms=spec.pdd_ms,
                hangup_cause=spec.cause,
                cost=cost(RATE, spec.billsec),
            ),
        )
    return account.id, rate_id


async def test_stats_of_a_known_set(engine: AsyncEngine) -> None:
    await seed(engine)
    async with engine.connect() as conn:
        (overall,) = await call_store.call_stats(conn)
        by_day = await call_store.call_stats(conn, by=call_store.StatsPeriod.DAY)
        by_month = await call_store.call_stats(conn, by=call_store.StatsPeriod.MONTH)
        since = await call_store.call_stats(conn, call_store.CallFilter(since=DAY2))
        empty = await call_store.call_stats(conn, call_store.CallFilter(account_id=999))
    assert overall.as_dict() == {
        "period": "all",
        "attempts": 6,
        "answered": 3,
        "asr_percent": Decimal("50.00"),
        "acd_seconds": Decimal("70.0"),  # (60 + 30 + 120) / 3
        "billsec": 210,
        "cost": cost(RATE, 60) + cost(RATE, 30) + cost(RATE, 120),
        "pdd_ms": 1625,  # (1000 + 3000 + 500 + 2000) / 4
        "peak_cps": 3,
        "hangup_causes": {"16": 3, "17": 1, "19": 1, "none": 1},
        "statuses": {"NO_CREDIT": 1, "OK": 5},
    }
    assert [(d.period, d.attempts, d.answered, d.acd, d.peak_cps) for d in by_day] == [
        ("2026-11-20", 4, 2, Decimal("45.0"), 3),
        ("2026-11-21", 2, 1, Decimal("120.0"), 1),
    ]
    assert [(m.period, m.attempts) for m in by_month] == [("2026-11", 6)]
    assert since[0].attempts == 2 and since[0].asr == Decimal("50.00")
    assert empty[0].attempts == 0 and empty[0].asr == 0 and empty[0].pdd_ms is None


async def test_days_are_the_operators_local_days(engine: AsyncEngine) -> None:
    await seed(engine)
    tokyo = ZoneInfo("Asia/Tokyo")  # 10:00 UTC is 19:00 there, 09:00 UTC is 18:00
    async with engine.connect() as conn:
        by_day = await call_store.call_stats(conn, by=call_store.StatsPeriod.DAY, zone=tokyo)
    assert [d.period for d in by_day] == ["2026-11-20", "2026-11-21"]
    start, end = call_store.day_bounds(date(2026, 11, 21), tokyo)
    assert start == datetime(2026, 11, 20, 15, 0, tzinfo=UTC) and end - start == timedelta(days=1)


async def test_listing_filters_and_streaming(engine: AsyncEngine) -> None:
    account_id, _ = await seed(engine)
    async with engine.connect() as conn:
        latest = await call_store.list_calls(conn, limit=2)
        uk = await call_store.list_calls(conn, call_store.CallFilter(destination="44"))
        usa = await call_store.list_calls(conn, call_store.CallFilter(destination="us"))
        refused = await call_store.list_calls(
            conn, call_store.CallFilter(status=CallStatus.NO_CREDIT)
        )
        answered = await call_store.list_calls(conn, call_store.CallFilter(answered=True))
        window = await call_store.list_calls(
            conn, call_store.CallFilter(since=DAY1, until=DAY1 + timedelta(seconds=1))
        )
        busy = await call_store.list_calls(conn, call_store.CallFilter(dial_status="busy"))
        trunk_b = await call_store.list_calls(conn, call_store.CallFilter(trunk="carrier-b"))
        streamed = [
            row["uniqueid"]
            async for batch in call_store.iter_calls(
                conn, call_store.CallFilter(account_id=account_id), batch=2
            )
            for row in batch
        ]
    assert [r["uniqueid"] for r in latest] == ["c6", "c5"]
    assert latest[0]["account"] == "8000000001"
    assert {r["uniqueid"] for r in uk} == {"c1", "c2", "c3", "c5", "c6"}
    assert [r["uniqueid"] for r in usa] == ["c4"]  # "us" is part of "USA"
    assert [r["uniqueid"] for r in refused] == ["c6"]
    assert {r["uniqueid"] for r in answered} == {"c1", "c2", "c5"}
    assert {r["uniqueid"] for r in window} == {"c1", "c2", "c3"}
    assert [r["uniqueid"] for r in busy] == ["c3"] and [r["uniqueid"] for r in trunk_b] == ["c4"]
    assert streamed == ["c1", "c2", "c3", "c4", "c5", "c6"]
    assert set(latest[0]) == set(call_store.EXPORT_COLUMNS)


async def _balance(engine: AsyncEngine) -> Decimal:
    async with engine.connect() as conn:
        value = await conn.scalar(select(accounts.c.balance))
    assert isinstance(value, Decimal)
    return value


async def test_recalc_refunds_once_and_is_idempotent(engine: AsyncEngine) -> None:
    long_calls = (
        Spec("t1", DAY1, 3600, "ANSWER", 900, 16),  # ran into a one-hour timeout
        Spec("t2", DAY1 + timedelta(minutes=5), 100, "ANSWER", 900, 16),
        Spec("t3", DAY2, 3600, "ANSWER", 900, 16),  # another day
    )
    await seed(engine, long_calls)
    since, until = call_store.day_bounds(date(2026, 11, 20), UTC)
    dry = await call_store.recalc(
        engine, since=since, until=until, longer_than=600, new_duration=600, dry_run=True
    )
    assert [(c.uniqueid, c.old_cost, c.new_cost) for c in dry.calls] == [
        ("t1", Decimal("36.00000"), Decimal("6.00000"))
    ]
    assert dry.refunded == Decimal("30.00000") and await _balance(engine) == Decimal("10.00")
    done = await call_store.recalc(
        engine, since=since, until=until, longer_than=600, new_duration=600
    )
    assert done.refunded == Decimal("30.00000")
    assert await _balance(engine) == Decimal("40.00")
    again = await call_store.recalc(
        engine, since=since, until=until, longer_than=600, new_duration=600
    )
    assert again.calls == () and await _balance(engine) == Decimal("40.00")
    async with engine.connect() as conn:
        row = (await conn.execute(select(calls).where(calls.c.uniqueid == "t1"))).one()
        other = (await conn.execute(select(calls).where(calls.c.uniqueid == "t3"))).one()
        adjustments = (await conn.execute(select(payments))).all()
        count = await conn.scalar(select(func.count()).select_from(payments))
    assert row.billsec == 600 and row.cost == Decimal("6.00000")
    assert "recalc: billsec 3600 -> 600" in row.note
    assert other.billsec == 3600  # another day is untouched
    assert count == 1 and adjustments[0].kind == "adjustment"
    assert adjustments[0].credit == Decimal("30.00000") and "t1" in adjustments[0].description
