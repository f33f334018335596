"""Driver errors become store errors an operator can read, on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.schema.tables import account_ips, trunks
from callgate.store import accounts as account_store
from callgate.store import plans
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import ConflictError


async def test_an_unforeseen_duplicate_says_what_repeats_without_sql(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(trunks).values(name="a", technology="SIP", peer="a"))
    with pytest.raises(ConflictError) as caught:
        async with engine.begin() as conn, mapped_errors("trunk a"):
            await conn.execute(insert(trunks).values(name="a", technology="SIP", peer="b"))
    assert str(caught.value) == "trunk a: a trunk with the same name already exists"


async def test_a_duplicate_ip_entry_names_both_columns(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        plan = await plans.create_call_plan(conn, name="p")
        account = await account_store.create_account(conn, call_plan_id=plan.id)
        row = {"account_id": account.id, "address": "10.0.0.1/32", "tech_prefix": "7"}
        await conn.execute(insert(account_ips).values(**row))
    with pytest.raises(ConflictError) as caught:
        async with engine.begin() as conn, mapped_errors():
            await conn.execute(insert(account_ips).values(**row))
    assert str(caught.value) == "an IP entry with the same address and tech prefix already exists"
