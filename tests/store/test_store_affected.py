"""What the store's changes report back, on both databases: the numbers a batch update changed,
a delete removed and an import created (exactly the rows written, in id or file order), and the
object a removal removed (caller ID, DID, customer group), as it was, with the row then gone.
These feed the CLI's ``--json`` output."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.schema.tables import AccountStatus, accounts, customer_groups, payments
from callgate.store import accounts as acc
from callgate.store import dids, groups, plans
from callgate.store.db import write_transaction
from callgate.store.errors import NotFoundError
from callgate.store.search import AccountCriteria


async def _three(engine: AsyncEngine) -> dict[str, acc.Account]:
    """Two accounts on "retail" (one in group "vip"), one on "wholesale"; ids in name order."""
    async with engine.begin() as conn:
        retail = await plans.create_call_plan(conn, name="retail")
        wholesale = await plans.create_call_plan(conn, name="wholesale")
        vip = await groups.create_group(conn, "vip")
        return {
            "ann": await acc.create_account(
                conn, call_plan_id=retail.id, number="3000000001", alias="ann", group_id=vip.id
            ),
            "ben": await acc.create_account(
                conn,
                call_plan_id=retail.id,
                number="1000000002",
                alias="ben",
                balance=Decimal("7"),
            ),
            "cy": await acc.create_account(
                conn, call_plan_id=wholesale.id, number="2000000003", alias="cy"
            ),
        }


async def _numbers_where(engine: AsyncEngine, **column_values: object) -> list[str]:
    async with engine.connect() as conn:
        query = select(accounts.c.number).order_by(accounts.c.id)
        for name, value in column_values.items():
            query = query.where(accounts.c[name] == value)
        return list(await conn.scalars(query))


async def test_batch_update_numbers_are_the_rows_changed_in_id_order(engine: AsyncEngine) -> None:
    w = await _three(engine)
    async with write_transaction(engine) as conn:
        raw, balance = acc.parse_assignments(["status=suspended", "balance=7"])
        changes = await acc.parse_account_fields(conn, raw)
        numbers = await acc.batch_update_numbers(
            conn, AccountCriteria(plan="retail"), changes, balance=balance
        )
    # id order, not number order: ann (3000000001) was made first
    assert numbers == [w["ann"].number, w["ben"].number]
    assert numbers == await _numbers_where(engine, status=AccountStatus.SUSPENDED.value)
    async with engine.connect() as conn:
        moved = (await conn.execute(select(payments.c.account_id, payments.c.amount))).all()
    # ben was already at 7: changed (status) and listed, but only ann's balance moved
    assert moved == [(w["ann"].id, Decimal("7"))]
    async with write_transaction(engine) as conn:
        assert await acc.batch_update_numbers(conn, AccountCriteria(alias="nobody"), changes) == []
        # the counting form agrees
        assert await acc.batch_update(conn, AccountCriteria(plan="wholesale"), changes) == 1


async def test_delete_account_numbers_are_the_rows_removed(engine: AsyncEngine) -> None:
    w = await _three(engine)
    async with write_transaction(engine) as conn:
        assert await acc.delete_account_numbers(conn, AccountCriteria(group="vip")) == [
            w["ann"].number
        ]
        assert await acc.delete_account_numbers(conn, account_id=w["cy"].id) == [w["cy"].number]
        assert await acc.delete_account_numbers(conn, AccountCriteria(alias="nobody")) == []
    assert await _numbers_where(engine) == [w["ben"].number]


async def test_import_account_numbers_in_file_order_with_generated_ones(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        plan = await plans.create_call_plan(conn, name="retail")
    read = acc.read_import_csv(["number,alias,last_name\n", "5000000009,zed,Z\n", ",amy,A\n"])
    async with write_transaction(engine) as conn:
        numbers = await acc.import_account_numbers(conn, read.rows, default_plan_id=plan.id)
    assert len(numbers) == 2 and numbers[0] == "5000000009"
    assert numbers[1].isdigit() and numbers[1] != numbers[0]
    assert sorted(numbers) == sorted(await _numbers_where(engine))
    assert await _numbers_where(engine, alias="amy") == [numbers[1]]


async def test_removals_return_what_they_removed(engine: AsyncEngine) -> None:
    w = await _three(engine)
    async with engine.begin() as conn:
        cid_id = await acc.add_callerid(conn, w["ann"].id, "5551234")
        await acc.add_callerid(conn, w["ann"].id, "5559999")
        await dids.add_did(
            conn, "15551230000", "Local/100@internal", account_id=w["ben"].id, description="x"
        )
    async with write_transaction(engine) as conn:
        removed = await acc.remove_callerid(conn, w["ann"].id, " 5551234 ")
        assert removed == acc.CallerId(cid_id, "5551234", True)
        assert [c.callerid for c in await acc.list_callerids(conn, w["ann"].id)] == ["5559999"]
        with pytest.raises(NotFoundError):
            await acc.remove_callerid(conn, w["ann"].id, "5551234")

        before = await dids.fetch_did(conn, "15551230000")
        gone = await dids.remove_did(conn, "+1 555 123 0000")
        assert gone == before and gone.account == w["ben"].number and gone.description == "x"
        assert await dids.fetch_did(conn, "15551230000") is None
        with pytest.raises(NotFoundError):
            await dids.remove_did(conn, "15551230000")

        group = await groups.remove_group(conn, "vip", force=True)
        assert (group.name, group.accounts) == ("vip", 1)
        assert list(await conn.scalars(select(customer_groups.c.name))) == []
        assert (await acc.fetch_account(conn, w["ann"].id)).group_id is None
        empty = await groups.create_group(conn, "empty", "nobody here")
        assert await groups.remove_group(conn, "empty") == empty
