"""Accounts, plans, tables, rates and trunks through the store, on both databases."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.schema.tables import AccountStatus, RoutingMode, TrunkTechnology, accounts, rates
from callgate.store import accounts as acc
from callgate.store import plans
from callgate.store.errors import ConflictError, InvalidDataError, NotFoundError


async def _setup_plan(engine: AsyncEngine) -> int:
    async with engine.begin() as conn:
        trunk = await plans.create_trunk(
            conn, name="carrier-a", technology="PJSIP", peer="carrier-a", dial_prefix="9"
        )
        assert trunk.technology is TrunkTechnology.PJSIP
        plan = await plans.create_call_plan(conn, name="retail", routing_mode="priority")
        await plans.create_rate_table(conn, name="std", trunk="carrier-a")
        await plans.attach_rate_table(conn, "retail", "std", priority=2)
        return plan.id


async def test_create_and_fetch_account_by_number_alias_callerid(engine: AsyncEngine) -> None:
    plan_id = await _setup_plan(engine)
    async with engine.begin() as conn:
        account = await acc.create_account(
            conn, call_plan_id=plan_id, last_name="Doe", balance=Decimal("12.5")
        )
        await acc.add_callerid(conn, account.id, "5551001")
    assert len(account.number) == acc.DEFAULT_NUMBER_LENGTH
    assert account.number.isdigit() and account.number[0] != "0"
    assert account.balance == Decimal("12.50000")
    assert account.status is AccountStatus.ACTIVE
    assert account.currency == "USD"
    async with engine.connect() as conn:
        by_number = await acc.fetch_account_by_number(conn, account.number)
        by_alias = await acc.fetch_account_by_alias(conn, account.alias)
        by_cid = await acc.fetch_account_by_callerid(conn, "5551001")
        assert await acc.fetch_account_by_callerid(conn, "5559999") is None
        assert await acc.find_account(conn, account.alias) == account
    assert by_number == by_alias == by_cid == account


async def test_account_without_plan_is_refused_and_nothing_is_written(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        with pytest.raises(InvalidDataError, match="configure the call plan first"):
            await acc.create_account(conn, call_plan_id=None)
        with pytest.raises(NotFoundError):
            await acc.create_account(conn, call_plan_id=12345)
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(accounts)) == 0


async def test_duplicates_and_bad_values_are_clear_errors(engine: AsyncEngine) -> None:
    plan_id = await _setup_plan(engine)
    async with engine.begin() as conn:
        first = await acc.create_account(
            conn, call_plan_id=plan_id, alias="alice@example.com", number_length=12
        )
        assert len(first.number) == 12
        await acc.add_callerid(conn, first.id, "5551001")
    async with engine.begin() as conn:
        with pytest.raises(ConflictError, match="alias"):
            await acc.create_account(conn, call_plan_id=plan_id, alias="alice@example.com")
        with pytest.raises(ConflictError, match="number"):
            await acc.create_account(conn, call_plan_id=plan_id, number=first.number)
        with pytest.raises(ConflictError, match="caller ID"):
            await acc.add_callerid(conn, first.id, "5551001")
        with pytest.raises(InvalidDataError, match="currency"):
            await acc.create_account(conn, call_plan_id=plan_id, currency="ZZZ")
        with pytest.raises(InvalidDataError, match="unknown account field"):
            await acc.create_account(conn, call_plan_id=plan_id, colour="red")
        with pytest.raises(InvalidDataError, match="length"):
            await acc.create_account(conn, call_plan_id=plan_id, number_length=3)


async def test_plans_tables_rates_and_trunks(engine: AsyncEngine) -> None:
    plan_id = await _setup_plan(engine)
    async with engine.begin() as conn:
        backup = await plans.create_trunk(conn, name="carrier-b", technology="IAX2", peer="b")
        updated = await plans.update_trunk(conn, "carrier-a", failover="carrier-b", strip_digits=1)
        assert updated.failover_trunk_id == backup.id and updated.strip_digits == 1
        with pytest.raises(InvalidDataError, match="technology"):
            await plans.create_trunk(conn, name="x", technology="H323", peer="x")
        with pytest.raises(ConflictError):
            await plans.create_call_plan(conn, name="retail")
        before = (await plans.fetch_rate_table(conn, "std")).version
        added = await plans.add_rates(
            conn,
            "std",
            [
                {"prefix": "44", "destination": "UK", "rate": Decimal("0.02")},
                {"prefix": "4420", "destination": "London", "rate": Decimal("0.015")},
            ],
        )
        assert added == 2
        assert (await plans.fetch_rate_table(conn, "std")).version == before + 1
        links = await plans.plan_tables(conn, plan_id)
        assert [(link.rate_table, link.priority) for link in links] == [("std", 2)]
        plan = await plans.fetch_call_plan(conn, "retail")
        assert plan.routing_mode is RoutingMode.PRIORITY
        stored = sorted(
            (r.prefix, r.rate) for r in await conn.execute(select(rates.c.prefix, rates.c.rate))
        )
        assert stored == [("44", Decimal("0.02000")), ("4420", Decimal("0.01500"))]
        await plans.detach_rate_table(conn, "retail", "std")
        assert await plans.plan_tables(conn, plan_id) == []
        with pytest.raises(NotFoundError):
            await plans.detach_rate_table(conn, "retail", "std")
