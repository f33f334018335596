"""Changing and removing plans, rate tables and trunks reaches a running server's rate cache:
at the next refresh everywhere, at once through NOTIFY on PostgreSQL. Both databases."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.rating import find_routes
from callgate.store import plans
from callgate.store import rates as store_rates
from callgate.store.db import write_transaction
from callgate.store.errors import ConflictError
from callgate.store.ratecache import RateCache

UTC = ZoneInfo("UTC")
AT = datetime(2026, 11, 18, 14, 30, tzinfo=UTC)
DEADLINE = 5.0  # seconds a NOTIFY may take to reach the cache


async def _setup(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await plans.create_trunk(conn, name="carrier-a", technology="PJSIP", peer="a")
        await plans.create_trunk(conn, name="carrier-b", technology="PJSIP", peer="b")
        await plans.create_call_plan(conn, name="retail", max_call_seconds=3600)
        await plans.create_rate_table(conn, name="std", trunk="carrier-a")
        await plans.attach_rate_table(conn, "retail", "std", priority=1)
    async with write_transaction(engine) as conn:
        deck = io.StringIO("prefix,rate,buy_rate\n44,0.10,0.05\n")
        await store_rates.import_rates(conn, "std", deck, zone=UTC)


def _route(cache: RateCache, plan: str) -> tuple[str, str, str | None] | None:
    call_plan = cache.plan_named(plan)
    if call_plan is None:
        return None
    routes = find_routes(call_plan, "442071234567", AT)
    return (call_plan.mode.value, routes[0].table, routes[0].trunk) if routes else None


async def _eventually(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE):
        while not check():  # noqa: ASYNC110 - polls a condition set by another connection
            await asyncio.sleep(0.01)


@pytest.fixture
async def cache(engine: AsyncEngine) -> AsyncIterator[RateCache]:
    """A started cache that only an explicit refresh updates."""
    await _setup(engine)
    rate_cache = RateCache(engine, poll_seconds=3600, listen=False)
    await rate_cache.start()
    try:
        yield rate_cache
    finally:
        await rate_cache.close()


async def test_table_and_plan_changes_reach_the_cache(
    engine: AsyncEngine, cache: RateCache
) -> None:
    assert _route(cache, "retail") == ("lcr", "std", "carrier-a")
    async with write_transaction(engine) as conn:
        before = await plans.fetch_rate_table(conn, "std")
        after = await plans.update_rate_table(conn, "std", new_name="uk", trunk="carrier-b")
    assert (after.id, after.version) == (before.id, before.version + 1)
    assert await cache.refresh() is True
    assert _route(cache, "retail") == ("lcr", "uk", "carrier-b")

    async with write_transaction(engine) as conn:
        await plans.update_rate_table(conn, "uk", trunk="")
        await plans.update_call_plan(conn, "retail", new_name="retail-2027", routing_mode="lcd")
    assert await cache.refresh() is True
    assert cache.plan_named("retail") is None
    assert _route(cache, "retail-2027") == ("lcd", "uk", None)

    # a description or the recording flag changes no route: nothing to rebuild
    async with write_transaction(engine) as conn:
        same = await plans.update_rate_table(conn, "uk", description="UK", record_calls=True)
        await plans.update_call_plan(conn, "retail-2027", description="from January")
    assert same.version == after.version + 1 and same.record_calls is True
    assert await cache.refresh() is False

    async with write_transaction(engine) as conn:
        removed, links = await plans.remove_call_plan(conn, "retail-2027")
    assert removed.name == "retail-2027" and [link.rate_table for link in links] == ["uk"]
    assert await cache.refresh() is True
    assert cache.plan_named("retail-2027") is None


async def test_refusals_roll_nothing_forward(engine: AsyncEngine, cache: RateCache) -> None:
    async with write_transaction(engine) as conn:
        with pytest.raises(ConflictError, match="is in call plan"):
            await plans.remove_rate_table(conn, "std", with_rates=True)
        with pytest.raises(ConflictError, match="default trunk of rate table"):
            await plans.remove_trunk(conn, "carrier-a")
    assert await cache.refresh() is False
    assert _route(cache, "retail") == ("lcr", "std", "carrier-a")


async def test_notify_carries_plan_and_table_changes(engine: AsyncEngine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite relies on the version poll")
    await _setup(engine)
    cache = RateCache(engine, poll_seconds=3600)
    await cache.start()
    try:
        async with asyncio.timeout(DEADLINE):
            await cache.wait_listening()
        async with write_transaction(engine) as conn:
            await plans.update_call_plan(conn, "retail", routing_mode="priority")
        await _eventually(lambda: _route(cache, "retail") == ("priority", "std", "carrier-a"))
        async with write_transaction(engine) as conn:
            await plans.update_rate_table(conn, "std", trunk="carrier-b")
        await _eventually(lambda: _route(cache, "retail") == ("priority", "std", "carrier-b"))
        async with write_transaction(engine) as conn:
            await plans.remove_call_plan(conn, "retail")
        await _eventually(lambda: cache.plan_named("retail") is None)
    finally:
        await cache.close()
