"""Rate deck import/export and one-off lookups through the store, on both databases."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.rating import Rate, find_routes, quote
from callgate.schema.tables import rates
from callgate.store import plans
from callgate.store import rates as store_rates
from callgate.store.db import write_transaction
from callgate.store.errors import NotFoundError
from callgate.store.rates import RateImportError, format_csv_row, import_rates, iter_rates

UTC_ZONE = ZoneInfo("UTC")
AT = datetime(2026, 11, 18, 14, 30, tzinfo=UTC)

RATING_DECK = """\
prefix,destination,rate,connect_fee,disconnect_fee,disconnect_after,initial_block,increment,\
minimal_cost,buy_rate,buy_initial_block,buy_increment,valid_from,valid_to,week_start,week_end,trunk
44,UK,0.10,0,0,0,60,6,0,0.05,60,6,,,,,
447,UK mobile,0.25,0.05,0.01,30,30,6,0.02,0.12,1,1,2026-01-01T00:00:00+01:00,,,,carrier-b
4420,London off-peak,0.04,,,,,,,0.02,,,,,7200,1439,
"""

A2BILLING_DECK = """\
dialprefix,destination,rateinitial,initblock,billingblock,connectcharge,disconnectcharge,\
minimal_cost,buyrate,buyrateinitblock,buyrateincrement,startdate,stopdate
33,France,0.06,60,6,0.01,0,0,0.03,60,60,2025-06-01 00:00:00,0000-00-00 00:00:00
336,France mobile,0.20,30,6,0,0,0.10,0.09,1,1,,2030-01-01 12:00:00
"""


async def _setup(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await plans.create_trunk(conn, name="carrier-a", technology="PJSIP", peer="a")
        await plans.create_trunk(conn, name="carrier-b", technology="SIP", peer="b")
        await plans.create_call_plan(conn, name="retail", routing_mode="lcr", max_call_seconds=600)
        await plans.create_rate_table(conn, name="std", trunk="carrier-a")
        await plans.create_rate_table(conn, name="copy")
        await plans.attach_rate_table(conn, "retail", "std", priority=1)


async def _import(
    engine: AsyncEngine,
    deck: str,
    table: str = "std",
    *,
    replace: bool = False,
    zone: ZoneInfo = UTC_ZONE,
    batch_size: int | None = None,
) -> store_rates.ImportResult:
    async with write_transaction(engine) as conn:
        return await import_rates(
            conn,
            table,
            io.StringIO(deck),
            zone=zone,
            replace=replace,
            source="deck.csv",
            batch_size=batch_size,
        )


async def _rates_of(engine: AsyncEngine, table: str) -> list[Rate]:
    async with engine.connect() as conn:
        found = await plans.fetch_rate_table(conn, table)
        out: list[Rate] = []
        async for batch in iter_rates(conn, found.id, ordered=True, batch=2):
            out.extend(batch)
        return out


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(rates)) or 0)


async def _version(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return (await plans.fetch_rate_table(conn, table)).version


async def test_import_with_rating_md_names(engine: AsyncEngine) -> None:
    await _setup(engine)
    before = await _version(engine, "std")
    result = await _import(engine, RATING_DECK)
    assert (result.table, result.imported, result.deleted) == ("std", 3, 0)
    assert result.version == before + 1 == await _version(engine, "std")
    uk, mobile, offpeak = await _rates_of(engine, "std")
    assert uk == Rate(
        "44",
        Decimal("0.10"),
        initial_block=60,
        increment=6,
        buy_rate=Decimal("0.05"),
        buy_initial_block=60,
        buy_increment=6,
        destination="UK",
        id=uk.id,
    )
    assert mobile.rate == Decimal("0.25") and mobile.connect_fee == Decimal("0.05")
    assert (mobile.disconnect_fee, mobile.disconnect_after) == (Decimal("0.01"), 30)
    assert (mobile.initial_block, mobile.increment, mobile.minimal_cost) == (30, 6, Decimal("0.02"))
    assert mobile.valid_from == datetime(2025, 12, 31, 23, 0, tzinfo=UTC)  # stored in UTC
    assert mobile.valid_to is None
    assert mobile.trunk == "carrier-b"
    assert uk.trunk is None  # the table's default trunk applies
    assert (offpeak.week_start, offpeak.week_end) == (7200, 1439)
    assert offpeak.connect_fee == 0 and offpeak.initial_block == 0


async def test_import_with_a2billing_names_and_naive_times_in_the_operator_zone(
    engine: AsyncEngine,
) -> None:
    await _setup(engine)
    result = await _import(engine, A2BILLING_DECK, zone=ZoneInfo("Europe/Paris"))
    assert result.imported == 2
    france, mobile = await _rates_of(engine, "std")
    assert (france.prefix, france.destination, france.rate) == ("33", "France", Decimal("0.06"))
    assert (france.initial_block, france.increment, france.connect_fee) == (60, 6, Decimal("0.01"))
    assert (france.buy_rate, france.buy_initial_block, france.buy_increment) == (
        Decimal("0.03"),
        60,
        60,
    )
    assert france.valid_from == datetime(2025, 5, 31, 22, 0, tzinfo=UTC)  # Paris summer time
    assert france.valid_to is None  # MySQL's zero date: open
    assert mobile.valid_to == datetime(2030, 1, 1, 11, 0, tzinfo=UTC)  # Paris winter time
    assert mobile.minimal_cost == Decimal("0.10")


BAD_DECKS: list[tuple[str, int, str | None, str]] = [
    ("prefix,rate\n44,0.1\n45,-0.1\n", 3, "rate", "must not be negative"),
    ("dialprefix,rateinitial\n44,0.1\n\n45,-0.1\n", 4, "rateinitial", "must not be negative"),
    ("prefix,rate,initblock\n44,0.1,x\n", 2, "initblock", "not a whole number"),
    ("prefix,rate,buyrate\n44,0.1,-1\n", 2, "buyrate", "must not be negative"),
    ("prefix,rate\n4a4,0.1\n", 2, "prefix", "digits"),
    ("prefix,rate\n44,1e-3\n", 2, "rate", "not a decimal amount"),
    ("prefix,rate,trunk\n44,0.1,nowhere\n", 2, "trunk", "no trunk named 'nowhere'"),
    ("prefix,rate,valid_from\n44,0.1,yesterday\n", 2, "valid_from", "ISO-8601"),
    ("prefix,rate,week_start\n44,0.1,10\n", 2, "week_end", "set together"),
    ("prefix,rate,startdate,stopdate\n44,0.1,2026-02-01,2026-01-01\n", 2, "stopdate", "after"),
    ("prefix,rate,colour\n44,0.1,red\n", 1, "colour", "unknown column 'colour'"),
    ("prefix,rate,dialprefix\n", 1, "dialprefix", "given twice"),
    ("destination,rate\nUK,0.1\n", 1, None, "no 'prefix' column"),
    ("prefix,rate\n44,0.1,7\n", 2, None, "3 fields, the header has 2"),
    ("", 1, None, "empty file"),
]


async def test_bad_line_is_reported_with_its_number_and_nothing_is_imported(
    engine: AsyncEngine,
) -> None:
    await _setup(engine)
    before = await _version(engine, "std")
    for deck, line, column, message in BAD_DECKS:
        with pytest.raises(RateImportError) as caught:
            await _import(engine, deck)
        problem = caught.value.problems[0]
        assert (problem.line, problem.column, deck) == (line, column, deck)
        assert message in problem.message
        assert f"line {line}" in str(caught.value) and "nothing imported" in str(caught.value)
    assert await _count(engine) == 0
    assert await _version(engine, "std") == before


async def test_all_bad_lines_are_listed_even_after_batches_went_in(engine: AsyncEngine) -> None:
    await _setup(engine)
    good = "".join(f"{4400 + n},0.1\n" for n in range(10))
    more = "".join(f"{4500 + n},0.1\n" for n in range(10))
    deck = "prefix,rate\n" + good + "1,-1\n" + more + "2,x\n"
    with pytest.raises(RateImportError) as caught:
        await _import(engine, deck, batch_size=3)  # several batches loaded before the error
    assert [(p.line, p.column) for p in caught.value.problems] == [(12, "rate"), (23, "rate")]
    assert await _count(engine) == 0  # the loaded batches were rolled back with the rest


async def test_duplicate_prefixes_in_the_deck_or_the_table_are_refused(
    engine: AsyncEngine,
) -> None:
    await _setup(engine)
    await _import(engine, RATING_DECK)
    before = await _rates_of(engine, "std")
    version = await _version(engine, "std")
    # the same deck twice without replace would give every prefix two prices
    with pytest.raises(RateImportError) as caught:
        await _import(engine, RATING_DECK)
    assert [(p.line, p.column) for p in caught.value.problems] == [
        (2, "prefix"),
        (3, "prefix"),
        (4, "prefix"),
    ]
    assert "prefix '44' (always valid) is already in rate table 'std'" in str(caught.value)
    assert "--replace" in str(caught.value)
    # one prefix twice in a deck (same validity), found across batches, with both lines
    deck = (
        "prefix,rate,valid_from,week_start,week_end\n"
        "331,0.1,,,\n"
        "332,0.1,2027-01-01T00:00:00+00:00,,\n"
        "333,0.1,,0,7199\n"
        "331,0.2,,,\n"  # line 5 repeats line 2
        "332,0.3,2027-01-01T01:00:00+01:00,,\n"  # the same instant as line 3
        "333,0.3,,7200,10079\n"  # another week window: a different price point
        "332,0.3,2027-02-01T00:00:00+00:00,,\n"  # another start: a price change, fine
    )
    with pytest.raises(RateImportError) as caught:
        await _import(engine, deck, table="copy", batch_size=2)
    assert [(p.line, p.message) for p in caught.value.problems] == [
        (5, "prefix '331' (always valid) repeats line 2"),
        (6, "prefix '332' (from 2027-01-01T00:00:00+00:00) repeats line 3"),
    ]
    assert await _rates_of(engine, "std") == before and await _count(engine) == len(before)
    assert await _version(engine, "std") == version
    # a window already in the table is refused too; replace loads the deck again
    clean = deck.replace("331,0.2,,,\n", "").replace("332,0.3,2027-01-01T01:00:00+01:00,,\n", "")
    assert (await _import(engine, clean, table="copy")).imported == 5
    with pytest.raises(RateImportError, match="line 3, column prefix: prefix '332'"):
        await _import(engine, "prefix,rate,valid_from\n999,1,\n332,1,2027-01-01\n", table="copy")
    assert (await _import(engine, clean, table="copy", replace=True)).deleted == 5
    assert (await _import(engine, RATING_DECK, replace=True)).imported == 3


async def test_import_into_missing_table_is_not_found(engine: AsyncEngine) -> None:
    await _setup(engine)
    with pytest.raises(NotFoundError):
        await _import(engine, RATING_DECK, table="nope")


async def test_replace_is_atomic(engine: AsyncEngine) -> None:
    await _setup(engine)
    await _import(engine, RATING_DECK)
    old = await _rates_of(engine, "std")
    version = await _version(engine, "std")
    with pytest.raises(RateImportError):
        await _import(engine, "prefix,rate\n1,0.01\n2,-5\n", replace=True)
    assert await _rates_of(engine, "std") == old  # a failed replace leaves the table alone
    assert await _version(engine, "std") == version

    # while a replace is in flight, readers see the whole old table
    async with write_transaction(engine) as conn:
        result = await import_rates(
            conn, "std", io.StringIO("prefix,rate\n1,0.01\n"), zone=UTC_ZONE, replace=True
        )
        assert (result.imported, result.deleted) == (1, 3)
        assert [r.prefix for r in await _rates_of(engine, "std")] == ["44", "447", "4420"]
    assert [(r.prefix, r.rate) for r in await _rates_of(engine, "std")] == [("1", Decimal("0.01"))]
    assert await _version(engine, "std") == version + 1


async def test_export_then_import_gives_the_same_table(engine: AsyncEngine) -> None:
    await _setup(engine)
    await _import(engine, RATING_DECK)
    await _import(engine, A2BILLING_DECK, zone=ZoneInfo("America/New_York"))
    exported = [format_csv_row(rate) for rate in await _rates_of(engine, "std")]
    lines = [",".join(store_rates.CSV_COLUMNS)] + [",".join(row) for row in exported]
    result = await _import(engine, "\n".join(lines) + "\n", table="copy")
    assert result.imported == 5
    again = [format_csv_row(rate) for rate in await _rates_of(engine, "copy")]
    assert again == exported
    original = await _rates_of(engine, "std")
    copied = await _rates_of(engine, "copy")
    assert [_without_id(r) for r in copied] == [_without_id(r) for r in original]


def _without_id(rate: Rate) -> tuple[object, ...]:
    return tuple(getattr(rate, name) for name in Rate.__slots__ if name != "id")


async def test_fetch_plan_for_number_rates_like_the_full_index(engine: AsyncEngine) -> None:
    await _setup(engine)
    await _import(engine, RATING_DECK)
    async with engine.begin() as conn:
        await plans.create_rate_table(conn, name="cheap", trunk="carrier-b")
        await plans.attach_rate_table(conn, "retail", "cheap", priority=2)
    await _import(engine, "prefix,rate,buy_rate\n447,0.30,0.08\n44,0.01,0.01\n", table="cheap")
    async with engine.connect() as conn:
        plan = await store_rates.fetch_plan_for_number(conn, "retail", "447911123456")
    assert plan.max_call_seconds == 600
    routes = find_routes(plan, "447911123456", AT)
    # longest prefix 447 in both tables; lcr orders by buy rate
    assert [(r.table, r.rate.prefix, r.rate.buy_rate, r.trunk) for r in routes] == [
        ("cheap", "447", Decimal("0.08000"), "carrier-b"),
        ("std", "447", Decimal("0.12000"), "carrier-b"),
    ]
    answer = quote(plan, "447911123456", Decimal("1.00"), 3600, AT)
    assert answer.cap_seconds == 600
    # 0.30/min, no blocks: 1.00 pays 200 s
    assert (answer.granted_seconds, answer.reserve) == (200, Decimal("1.00000"))
    async with engine.connect() as conn:
        other = await store_rates.fetch_plan_for_number(conn, "retail", "4420555")
    # 4420 is a weekend rate: on a Wednesday 44 is the longest prefix that applies
    assert [(r.table, r.rate.prefix) for r in find_routes(other, "4420555", AT)] == [
        ("cheap", "44"),
        ("std", "44"),
    ]


async def test_notify_is_sent_with_the_import_on_postgresql(engine: AsyncEngine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    await _setup(engine)
    received: asyncio.Queue[str] = asyncio.Queue()

    def on_notice(connection: object, pid: int, channel: str, payload: str) -> None:
        received.put_nowait(payload)

    async with engine.connect() as listener:
        raw = await listener.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        await driver.add_listener(store_rates.NOTIFY_CHANNEL, on_notice)
        with pytest.raises(RateImportError):
            await _import(engine, "prefix,rate\n1,-1\n")
        result = await _import(engine, RATING_DECK)
        async with asyncio.timeout(5):
            payload = await received.get()
        assert payload == str(result.table_id)
        assert received.empty()  # the failed import's notice was never delivered
        await driver.remove_listener(store_rates.NOTIFY_CHANNEL, on_notice)


async def test_awkward_text_survives_the_load(engine: AsyncEngine) -> None:
    await _setup(engine)
    deck = 'prefix,destination,rate\n82,"Korea, South ""mobile""",0.1\n83,,0.2\n84,Zürich,0.3\n'
    await _import(engine, deck)
    assert [(r.prefix, r.destination) for r in await _rates_of(engine, "std")] == [
        ("82", 'Korea, South "mobile"'),
        ("83", ""),
        ("84", "Zürich"),
    ]
