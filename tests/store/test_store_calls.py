"""Billing records on both databases: listing and filters, streaming, recalc, statistics."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from known_calls import DAY1, DAY2, RATE, Spec, seed
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.rating import cost
from callgate.schema.tables import CallStatus, accounts, calls, payments
from callgate.store import calls as call_store


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
        "peak_channels": 3,  # c1, c2 and c3 (then c4) are up at once on day 1
        "hangup_causes": {"16": 3, "17": 1, "19": 1, "none": 1},
        "statuses": {"NO_CREDIT": 1, "OK": 5},
    }
    assert [
        (d.period, d.attempts, d.answered, d.acd, d.peak_cps, d.peak_channels) for d in by_day
    ] == [
        ("2026-11-20", 4, 2, Decimal("45.0"), 3, 3),
        ("2026-11-21", 2, 1, Decimal("120.0"), 1, 2),  # c6 starts while c5 talks
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
