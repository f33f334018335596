"""The migrations build the schema on both backends, match the tables, and the constraints hold."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, func, insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SAWarning
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.schema.migrate import current_revisions, head_revisions, pending_revisions, upgrade
from callgate.schema.tables import (
    accounts,
    call_plans,
    calls,
    contacts,
    currencies,
    metadata,
    payments,
    period_charges,
    rate_tables,
    rates,
    reservations,
)
from callgate.store.db import create_engine


@pytest.mark.parametrize(
    "empty_db_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)
async def test_upgrade_builds_schema_from_empty_database(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url)
    try:
        assert await current_revisions(engine) == ()
        pending = await pending_revisions(engine)
        assert pending[0] == "0001" and pending[-1:] == list(head_revisions())
        await upgrade(engine)
        assert await current_revisions(engine) == head_revisions()
        assert await pending_revisions(engine) == []
        async with engine.connect() as conn:
            base = (await conn.execute(select(currencies).where(currencies.c.is_base))).one()
        assert base.code == "USD"
        assert base.value == Decimal("1.00000")
    finally:
        await engine.dispose()


def _expression_indexes() -> dict[str, tuple[str, bool, str]]:
    """The expression indexes of the tables: name -> (table, unique, expression text)."""
    out: dict[str, tuple[str, bool, str]] = {}
    for table in metadata.tables.values():
        for index in table.indexes:
            if not all(isinstance(e, Column) for e in index.expressions):
                text_of = ", ".join(str(e) for e in index.expressions)
                out[str(index.name)] = (table.name, bool(index.unique), text_of)
    return out


async def test_migrations_and_tables_do_not_drift(engine: AsyncEngine) -> None:
    def _diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        with warnings.catch_warnings():
            # SQLite's reflection cannot read expression indexes: compared below instead
            warnings.filterwarnings(
                "ignore", "Skipped unsupported reflection of expression-based index", SAWarning
            )
            warnings.filterwarnings(
                "ignore", "autogenerate skipping metadata-specified expression-based index"
            )
            return list(compare_metadata(context, metadata))

    async with engine.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == []
    expected = _expression_indexes()
    assert set(expected) == {
        "ux_accounts_alias_lower",
        "ux_contacts_email_lower",
        "ux_operators_login_lower",
    }
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            found = {
                r.name: (r.tbl_name, "UNIQUE" in r.sql.upper(), r.sql.split("(", 1)[1])
                for r in await conn.execute(
                    text("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index'")
                )
                if r.name in expected
            }
        else:
            found = {
                r.indexname: (r.tablename, "UNIQUE" in r.indexdef, r.indexdef.split("(", 1)[1])
                for r in await conn.execute(
                    text("SELECT indexname, tablename, indexdef FROM pg_indexes")
                )
                if r.indexname in expected
            }
    for name, (table, unique, expression) in expected.items():
        got_table, got_unique, got_expression = found[name]
        column = expression.split(".")[-1].rstrip(")")
        assert (got_table, got_unique) == (table, unique), name
        bare = got_expression.lower().replace("::text", "")
        assert "".join(c for c in bare if c not in " ()") == f"lower{column}", name


async def _plan(engine: AsyncEngine) -> int:
    async with engine.begin() as conn:
        plan_id = await conn.scalar(
            insert(call_plans).values(name="retail").returning(call_plans.c.id)
        )
    assert plan_id is not None
    return int(plan_id)


def _account(plan_id: int, number: str, alias: str, **extra: Any) -> dict[str, Any]:
    return {"number": number, "alias": alias, "call_plan_id": plan_id, "currency": "USD", **extra}


async def _refused(engine: AsyncEngine, statement: Any) -> None:
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(statement)


async def test_duplicate_account_number_or_alias_is_refused(engine: AsyncEngine) -> None:
    plan_id = await _plan(engine)
    async with engine.begin() as conn:
        await conn.execute(insert(accounts).values(**_account(plan_id, "1000001", "alice")))
    await _refused(engine, insert(accounts).values(**_account(plan_id, "1000001", "bob")))
    await _refused(engine, insert(accounts).values(**_account(plan_id, "1000002", "alice")))
    async with engine.connect() as conn:
        assert await conn.scalar(select(text("count(*)")).select_from(accounts)) == 1


async def test_logins_are_unique_whatever_their_case(engine: AsyncEngine) -> None:
    plan_id = await _plan(engine)
    async with engine.begin() as conn:
        account_id = await conn.scalar(
            insert(accounts)
            .values(**_account(plan_id, "1000001", "alice@example.com"))
            .returning(accounts.c.id)
        )
        await conn.execute(
            insert(contacts).values(account_id=account_id, name="A", email="ann@example.com")
        )
    await _refused(
        engine, insert(accounts).values(**_account(plan_id, "1000002", "ALICE@Example.com"))
    )
    await _refused(
        engine, insert(contacts).values(account_id=account_id, name="B", email="Ann@EXAMPLE.com")
    )
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(accounts)) == 1
        assert await conn.scalar(select(func.count()).select_from(contacts)) == 1


@pytest.mark.parametrize(
    "empty_db_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)
async def test_upgrade_to_0003_names_logins_that_differ_only_in_case(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url)
    try:
        await upgrade(engine, "0002")
        plan_id = await _plan(engine)
        async with engine.begin() as conn:
            for number, alias in (("1000001", "Bob"), ("1000002", "bob"), ("1000003", "carol")):
                await conn.execute(insert(accounts).values(**_account(plan_id, number, alias)))
        with pytest.raises(RuntimeError, match="differ only in case: 'bob' \\(2 times\\)"):
            await upgrade(engine)
        assert await current_revisions(engine) == ("0002",)
        async with engine.begin() as conn:
            await conn.execute(
                accounts.update().where(accounts.c.number == "1000002").values(alias="bob2")
            )
        await upgrade(engine)
        assert await current_revisions(engine) == head_revisions()
    finally:
        await engine.dispose()


async def test_unknown_status_and_missing_plan_are_refused(engine: AsyncEngine) -> None:
    plan_id = await _plan(engine)
    await _refused(engine, insert(accounts).values(**_account(plan_id, "1", "a", status="frozen")))
    await _refused(engine, insert(accounts).values(**_account(plan_id + 99, "2", "b")))
    await _refused(
        engine,
        insert(accounts).values(number="3", alias="c", currency="USD"),  # no call plan
    )
    await _refused(engine, insert(accounts).values(**_account(plan_id, "4", "d", currency="XXX")))


async def test_rates_need_a_table_and_non_negative_prices(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        table_id = await conn.scalar(
            insert(rate_tables).values(name="t1").returning(rate_tables.c.id)
        )
    assert table_id is not None
    await _refused(engine, insert(rates).values(rate_table_id=table_id + 99, prefix="1", rate=1))
    await _refused(
        engine, insert(rates).values(rate_table_id=table_id, prefix="1", rate=Decimal("-0.01"))
    )
    await _refused(
        engine,
        insert(rates).values(
            rate_table_id=table_id, prefix="1", rate=Decimal("0.1"), week_start=0, week_end=10080
        ),
    )
    await _refused(
        engine,
        insert(rates).values(
            rate_table_id=table_id,
            prefix="1",
            rate=Decimal("0.1"),
            valid_from=datetime(2026, 2, 1, tzinfo=UTC),
            valid_to=datetime(2026, 1, 1, tzinfo=UTC),
        ),
    )
    async with engine.begin() as conn:
        await conn.execute(
            insert(rates).values(rate_table_id=table_id, prefix="44", rate=Decimal("0.01234"))
        )
        stored = await conn.scalar(select(rates.c.rate))
    assert stored == Decimal("0.01234")


async def test_money_is_exact_on_both_backends(engine: AsyncEngine) -> None:
    plan_id = await _plan(engine)
    async with engine.begin() as conn:
        acct = await conn.scalar(
            insert(accounts)
            .values(**_account(plan_id, "9", "z", balance=Decimal("0.1")))
            .returning(accounts.c.id)
        )
        for _ in range(3):
            await conn.execute(
                insert(payments).values(
                    account_id=acct,
                    kind="refill",
                    status="completed",
                    amount=Decimal("0.10001"),
                    credit=Decimal("0.10001"),
                    currency="USD",
                )
            )
        total = await conn.scalar(select(func.sum(payments.c.credit)))
        balance = await conn.scalar(select(accounts.c.balance))
    assert balance == Decimal("0.10000")
    assert total == Decimal("0.30003")


async def test_call_and_reservation_keys_are_unique(engine: AsyncEngine) -> None:
    plan_id = await _plan(engine)
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        acct = await conn.scalar(
            insert(accounts).values(**_account(plan_id, "7", "y")).returning(accounts.c.id)
        )
        await conn.execute(insert(calls).values(uniqueid="u1", status="OK", started_at=now))
        await conn.execute(
            insert(reservations).values(
                uniqueid="u1", account_id=acct, amount=1, granted_seconds=60, expires_at=now
            )
        )
    await _refused(engine, insert(calls).values(uniqueid="u1", status="OK", started_at=now))
    await _refused(engine, insert(calls).values(uniqueid="u2", status="MAYBE", started_at=now))
    await _refused(
        engine,
        insert(reservations).values(
            uniqueid="u1", account_id=acct, amount=1, granted_seconds=60, expires_at=now
        ),
    )
    await _refused(
        engine,
        insert(reservations).values(
            uniqueid="u3", account_id=acct, amount=Decimal(-1), granted_seconds=60, expires_at=now
        ),
    )


@pytest.mark.parametrize(
    "empty_db_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)
async def test_upgrade_gives_earlier_did_and_package_charges_their_payment_rows(
    empty_db_url: str,
) -> None:
    """Issue 12.8: charges made before payments had the charge kinds become payment rows."""
    engine = create_engine(empty_db_url)
    try:
        await upgrade(engine, "0005")
        plan_id = await _plan(engine)
        when = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)
        async with engine.begin() as conn:
            account_id = await conn.scalar(
                insert(accounts)
                .values(**_account(plan_id, "1000001", "a"))
                .returning(accounts.c.id)
            )
            await conn.execute(
                insert(period_charges),
                [
                    {"account_id": account_id, "kind": "did", "ref_id": 7, "period": "2026-11",
                     "amount": Decimal("2.5"), "description": "DID 15551230000 2026-11",
                     "created_at": when},
                    {"account_id": account_id, "kind": "package", "ref_id": 3,
                     "period": "2026-11", "amount": Decimal("1.25"),
                     "description": "package uk100 x1 2026-11", "created_at": when},
                ],
            )  # fmt: skip
        await upgrade(engine)
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        payments.c.kind,
                        payments.c.status,
                        payments.c.amount,
                        payments.c.credit,
                        payments.c.currency,
                        payments.c.description,
                        payments.c.completed_at,
                    ).order_by(payments.c.id)
                )
            ).all()
        assert [tuple(r) for r in rows] == [
            ("did_charge", "completed", Decimal("2.5"), Decimal("-2.5"), "USD",
             "DID 15551230000 2026-11", when),
            ("package_charge", "completed", Decimal("1.25"), Decimal("-1.25"), "USD",
             "package uk100 x1 2026-11", when),
        ]  # fmt: skip
        await _refused(
            engine,
            insert(payments).values(
                account_id=account_id, kind="fee", status="completed", amount=1, credit=1,
                currency="USD",
            ),
        )  # fmt: skip
    finally:
        await engine.dispose()
