"""The in-memory rate cache: loads, swaps on version change and on attach/detach, wakes on NOTIFY.

Also the golden tariff cases: tests/data/tariffs/*_deck.csv imported through the store, loaded by
the cache and priced by the rating core must give the costs and grants in *_expected.csv, which
were computed by hand from RATING.md.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.rating import InsufficientCreditError, cost, find_routes, quote
from callgate.store import plans
from callgate.store import rates as store_rates
from callgate.store.db import write_transaction
from callgate.store.errors import InvalidDataError
from callgate.store.ratecache import RateCache

TARIFFS = Path(__file__).parent.parent / "data" / "tariffs"
UTC = ZoneInfo("UTC")
AT = datetime(2026, 11, 18, 14, 30, tzinfo=UTC)
DEADLINE = 5.0  # seconds a NOTIFY may take to reach the cache


async def _import(engine: AsyncEngine, table: str, deck: str, *, replace: bool = False) -> None:
    async with write_transaction(engine) as conn:
        await store_rates.import_rates(conn, table, io.StringIO(deck), zone=UTC, replace=replace)


async def _setup(engine: AsyncEngine) -> int:
    async with engine.begin() as conn:
        await plans.create_trunk(conn, name="carrier-a", technology="PJSIP", peer="a")
        await plans.create_trunk(conn, name="carrier-b", technology="PJSIP", peer="b")
        plan = await plans.create_call_plan(conn, name="retail", max_call_seconds=3600)
        await plans.create_rate_table(conn, name="std", trunk="carrier-a")
        await plans.create_rate_table(conn, name="cheap", trunk="carrier-b")
        await plans.create_rate_table(conn, name="unused")
        await plans.attach_rate_table(conn, "retail", "std", priority=1)
    await _import(engine, "std", "prefix,rate,buy_rate\n44,0.10,0.05\n447,0.20,0.10\n")
    await _import(engine, "cheap", "prefix,rate,buy_rate\n447,0.15,0.04\n")
    await _import(engine, "unused", "prefix,rate\n1,0.01\n")
    return plan.id


@pytest.fixture
async def cache(engine: AsyncEngine) -> AsyncIterator[RateCache]:
    """A started cache that only an explicit refresh updates (no LISTEN, no poll in time)."""
    await _setup(engine)
    rate_cache = RateCache(engine, poll_seconds=3600, listen=False)
    await rate_cache.start()
    try:
        yield rate_cache
    finally:
        await rate_cache.close()


@pytest.fixture
async def listening(engine: AsyncEngine) -> AsyncIterator[RateCache]:
    """A started cache that LISTENs (PostgreSQL) and would poll only after an hour."""
    if engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite relies on the version poll")
    await _setup(engine)
    rate_cache = RateCache(engine, poll_seconds=3600)
    await rate_cache.start()
    try:
        async with asyncio.timeout(DEADLINE):
            await rate_cache.wait_listening()
        yield rate_cache
    finally:
        await rate_cache.close()


def _routes(cache: RateCache, plan: str, number: str) -> list[tuple[str, str, Decimal]]:
    call_plan = cache.plan_named(plan)
    assert call_plan is not None
    return [(r.table, r.rate.prefix, r.rate.rate) for r in find_routes(call_plan, number, AT)]


async def _eventually(check: Callable[[], bool]) -> None:
    """Wait until `check()` holds, at most `DEADLINE` seconds (the cache works in background)."""
    async with asyncio.timeout(DEADLINE):
        while not check():  # noqa: ASYNC110 - polls a condition set by another connection
            await asyncio.sleep(0.01)


async def test_start_loads_the_plans_and_only_their_tables(
    engine: AsyncEngine, cache: RateCache
) -> None:
    async with engine.connect() as conn:
        plan_row = await plans.fetch_call_plan(conn, "retail")
        std = await plans.fetch_rate_table(conn, "std")
        unused = await plans.fetch_rate_table(conn, "unused")
    plan = cache.plan(plan_row.id)
    assert plan is not None and plan is cache.plan_named("retail")
    assert (plan.name, plan.mode.value, plan.max_call_seconds) == ("retail", "lcr", 3600)
    assert [(t.name, t.priority, len(t.index)) for t in plan.tables] == [("std", 1, 2)]
    assert cache.plan(plan_row.id + 100) is None and cache.plan_named("nope") is None
    assert cache.versions == {std.id: std.version}
    assert cache.index(unused.id) is None  # in no plan: not in memory
    route = find_routes(plan, "447700900123", AT)[0]
    assert (route.rate.prefix, route.rate.rate, route.trunk) == ("447", Decimal("0.2"), "carrier-a")


async def test_refresh_without_changes_is_one_query_and_no_rebuild(cache: RateCache) -> None:
    generation, rebuilds = cache.generation, cache.rebuilds
    assert await cache.refresh() is False
    assert (cache.generation, cache.rebuilds) == (generation, rebuilds)


async def test_import_swaps_the_index_and_old_readers_keep_theirs(
    engine: AsyncEngine, cache: RateCache
) -> None:
    before = cache.plan_named("retail")
    assert before is not None
    old_index = before.tables[0].index
    await _import(engine, "std", "prefix,rate\n447,0.30\n", replace=True)
    assert await cache.refresh() is True
    after = cache.plan_named("retail")
    assert after is not None and after is not before
    assert after.tables[0].index is not old_index
    assert after.tables[0].index.version == old_index.version + 1
    assert _routes(cache, "retail", "447700900123") == [("std", "447", Decimal("0.3"))]
    assert _routes(cache, "retail", "4420") == []  # 44 went with the replace
    # a call rated on the old snapshot still sees the whole old table
    assert [r.rate.rate for r in find_routes(before, "447700900123", AT)] == [Decimal("0.2")]
    assert len(old_index) == 2


async def test_attach_and_detach_are_picked_up_without_rebuilding_loaded_tables(
    engine: AsyncEngine, cache: RateCache
) -> None:
    async with engine.begin() as conn:
        await store_rates.attach_table(conn, "retail", "cheap", priority=2)
    rebuilds = cache.rebuilds
    assert await cache.refresh() is True
    assert cache.rebuilds == rebuilds + 1  # cheap is new; std is reused
    assert _routes(cache, "retail", "447700900123") == [
        ("cheap", "447", Decimal("0.15")),  # lcr: buy 0.04 before 0.10
        ("std", "447", Decimal("0.2")),
    ]
    async with engine.begin() as conn:
        await store_rates.detach_table(conn, "retail", "std")
    assert await cache.refresh() is True
    assert cache.rebuilds == rebuilds + 1
    assert _routes(cache, "retail", "447700900123") == [("cheap", "447", Decimal("0.15"))]
    async with engine.connect() as conn:
        std = await plans.fetch_rate_table(conn, "std")
    assert cache.index(std.id) is None  # no longer in any plan: memory given back


async def test_new_plan_appears(engine: AsyncEngine, cache: RateCache) -> None:
    async with engine.begin() as conn:
        await plans.create_call_plan(conn, name="wholesale", routing_mode="lcd")
    assert cache.plan_named("wholesale") is None
    assert await cache.refresh() is True
    plan = cache.plan_named("wholesale")
    assert plan is not None and plan.tables == () and plan.mode.value == "lcd"


async def test_background_poll_picks_up_a_change(engine: AsyncEngine) -> None:
    await _setup(engine)
    rate_cache = RateCache(engine, poll_seconds=0.05, listen=False)
    await rate_cache.start()
    try:
        await _import(engine, "std", "prefix,rate\n33,0.5\n")
        await _eventually(lambda: bool(_routes(rate_cache, "retail", "331")))
        assert _routes(rate_cache, "retail", "331") == [("std", "33", Decimal("0.5"))]
    finally:
        await rate_cache.close()


async def test_notify_wakes_the_cache_without_waiting_for_the_poll(
    engine: AsyncEngine, listening: RateCache
) -> None:
    cache = listening
    await _import(engine, "std", "prefix,rate\n33,0.5\n")
    await _eventually(lambda: bool(_routes(cache, "retail", "331")))
    async with engine.begin() as conn:
        await store_rates.attach_table(conn, "retail", "cheap", priority=0)
    await _eventually(lambda: len(_routes(cache, "retail", "447700900123")) == 2)
    plan = cache.plan_named("retail")
    assert plan is not None and [t.name for t in plan.tables] == ["cheap", "std"]


async def test_listener_reconnects_after_its_connection_is_killed(
    engine: AsyncEngine, listening: RateCache
) -> None:
    cache = listening
    async with engine.connect() as conn:
        killed = await conn.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
        )
    assert killed == 1
    await _eventually(lambda: not cache.listening)
    await _eventually(lambda: cache.listening)
    await _import(engine, "std", "prefix,rate\n33,0.5\n")
    await _eventually(lambda: bool(_routes(cache, "retail", "331")))


async def test_a_failed_refresh_keeps_the_current_rates(engine: AsyncEngine) -> None:
    await _setup(engine)
    rate_cache = RateCache(engine, poll_seconds=3600, listen=False)
    await rate_cache.start()
    try:
        async with engine.begin() as conn:  # a rate no import would accept, written by hand
            table = await plans.fetch_rate_table(conn, "std")
            await plans.add_rates(conn, "std", [{"prefix": "44x", "rate": Decimal("0.1")}])
        with pytest.raises(InvalidDataError, match="prefix '44x'"):
            await rate_cache.refresh()
        assert _routes(rate_cache, "retail", "447700900123") == [("std", "447", Decimal("0.2"))]
        assert rate_cache.versions[table.id] == table.version
    finally:
        await rate_cache.close()


# --- golden tariffs ----------------------------------------------------------------------------


def _golden_pairs() -> list[tuple[Path, Path]]:
    decks = sorted(TARIFFS.glob("*_deck.csv"))
    assert decks, f"no decks in {TARIFFS}"
    return [(deck, deck.with_name(deck.name.replace("_deck", "_expected"))) for deck in decks]


@pytest.mark.parametrize("pair", _golden_pairs(), ids=lambda pair: pair[0].stem)
async def test_golden_tariffs(engine: AsyncEngine, pair: tuple[Path, Path]) -> None:
    deck, expected = pair
    async with engine.begin() as conn:
        await plans.create_call_plan(conn, name="golden", max_call_seconds=3600)
        await plans.create_rate_table(conn, name="deck")
        await plans.attach_rate_table(conn, "golden", "deck")
    await _import(engine, "deck", deck.read_text(encoding="utf-8"))
    rate_cache = RateCache(engine, listen=False)
    await rate_cache.start()
    await rate_cache.close()
    plan = rate_cache.plan_named("golden")
    assert plan is not None
    with expected.open(encoding="utf-8", newline="") as handle:
        cases = list(csv.DictReader(handle))
    assert cases
    for case in cases:
        at = datetime.fromisoformat(case["at"])
        routes = find_routes(plan, case["number"], at)
        assert routes, case
        rate = routes[0].rate
        assert (rate.prefix, rate.destination) == (case["prefix"], case["destination"]), case
        if case["billsec"]:
            assert cost(rate, int(case["billsec"])) == Decimal(case["cost"]), case
        if case["available"]:
            available = Decimal(case["available"])
            try:
                granted = quote(plan, case["number"], available, 36000, at).granted_seconds
            except InsufficientCreditError:
                granted = 0
            assert granted == int(case["granted"]), case
