"""The shared search criteria on both databases: list (paging, every sort column, combined
criteria), batch update, delete-all and export choose the same accounts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.schema.tables import (
    AccountStatus,
    PaymentKind,
    ReservationStatus,
    account_ips,
    accounts,
    calls,
    currencies,
    iax_friends,
    payments,
    reservations,
    sip_friends,
)
from callgate.store import accounts as acc
from callgate.store import groups, plans
from callgate.store.db import write_transaction
from callgate.store.errors import ConflictError, InvalidDataError
from callgate.store.search import AccountCriteria

NOW = datetime.now(UTC)


async def _world(engine: AsyncEngine) -> dict[str, acc.Account]:
    """Five accounts that differ in every searchable way."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(currencies).values(code="EUR", name="Euro", value=Decimal("2"), is_base=False)
        )
        retail = await plans.create_call_plan(conn, name="retail")
        wholesale = await plans.create_call_plan(conn, name="wholesale")
        vip = await groups.create_group(conn, "vip")
        made = {
            "alice": await acc.create_account(
                conn,
                call_plan_id=retail.id,
                number="1000000001",
                alias="alice@example.com",
                first_name="Alice",
                last_name="Martin",
                company="Acme Ltd",
                balance=Decimal("50"),
                group_id=vip.id,
                language="fr",
            ),
            "bob": await acc.create_account(
                conn,
                call_plan_id=retail.id,
                number="1000000002",
                alias="bob",
                first_name="Bob",
                last_name="Dupont",
                balance=Decimal("5"),
                status="suspended",
                currency="EUR",
            ),
            "carol": await acc.create_account(
                conn,
                call_plan_id=wholesale.id,
                number="2000000003",
                alias="carol",
                last_name="Zed",
                email="carol@corp.example",
                balance=Decimal("500"),
                group_id=vip.id,
            ),
            "dan": await acc.create_account(
                conn,
                call_plan_id=wholesale.id,
                number="2000000004",
                alias="dan",
                last_name="Abel",
                balance=Decimal("-3"),
                status="inactive",
            ),
            "erin": await acc.create_account(
                conn,
                call_plan_id=retail.id,
                number="3000000005",
                alias="erin_100%",
                last_name="Martin",
                balance=Decimal("0"),
            ),
        }
        await acc.add_callerid(conn, made["bob"].id, "33123456789")
        await acc.add_callerid(conn, made["carol"].id, "4420000000")
        await conn.execute(
            insert(account_ips),
            [
                {"account_id": made["carol"].id, "address": "10.1.2.0/24"},
                {"account_id": made["dan"].id, "address": "192.0.2.7"},
                {"account_id": made["dan"].id, "address": "2001:db8::/32"},
                {"account_id": made["erin"].id, "address": "pbx.example.net"},
            ],
        )
        await conn.execute(
            insert(sip_friends).values(account_id=made["alice"].id, name="alice", secret="s")
        )
        await conn.execute(
            insert(iax_friends).values(account_id=made["carol"].id, name="carol", secret="s")
        )
        await conn.execute(
            insert(reservations),
            [
                {
                    "uniqueid": f"u{i}",
                    "account_id": made["carol"].id,
                    "amount": Decimal("1"),
                    "granted_seconds": 60,
                    "status": status,
                    "expires_at": NOW + timedelta(minutes=5),
                }
                for i, status in enumerate(["open", "open", "settled"])
            ],
        )
        await conn.execute(
            update(accounts).where(accounts.c.id == made["dan"].id).values(call_count=7)
        )
        await conn.execute(
            update(accounts)
            .where(accounts.c.id == made["erin"].id)
            .values(created_at=NOW - timedelta(days=40))
        )
    return made


async def _ids(engine: AsyncEngine, criteria: AccountCriteria, **kw: object) -> list[int]:
    async with engine.connect() as conn:
        page = await acc.list_accounts(conn, criteria, per_page=100, **kw)  # type: ignore[arg-type]
        return [r.id for r in page.rows]


async def test_list_columns_paging_and_every_sort(engine: AsyncEngine) -> None:
    w = await _world(engine)
    async with engine.connect() as conn:
        first = await acc.list_accounts(conn)
        assert first.total == 5 and first.pages == 1 and first.per_page == 10
        by_name = {r.alias: r for r in first.rows}
        carol, bob, alice = by_name["carol"], by_name["bob"], by_name["alice@example.com"]
        assert (carol.in_use, carol.iax, carol.sip, carol.group, carol.plan) == (
            2,
            True,
            False,
            "vip",
            "wholesale",
        )
        assert alice.sip and not alice.iax and alice.language == "fr" and alice.in_use == 0
        assert bob.currency == "EUR" and bob.balance == Decimal("5")
        assert bob.balance_currency == Decimal("2.5")  # one EUR is worth 2 base units
        assert by_name["dan"].calls == 7 and by_name["dan"].status is AccountStatus.INACTIVE
        page2 = await acc.list_accounts(conn, page=2, per_page=2)
        assert [r.id for r in page2.rows] == [w["carol"].id, w["dan"].id]
        assert page2.pages == 3
        page3 = await acc.list_accounts(conn, page=3, per_page=2)
        assert [r.id for r in page3.rows] == [w["erin"].id]
        with pytest.raises(InvalidDataError, match=r"page 4 is past the last page \(3\)"):
            await acc.list_accounts(conn, page=4, per_page=2)
        nobody = AccountCriteria(text="nobody-has-this-name")
        empty = await acc.list_accounts(conn, nobody)  # page 1 of nothing is fine
        assert (empty.rows, empty.total, empty.pages) == ((), 0, 1)
        with pytest.raises(InvalidDataError, match=r"page 2 is past the last page \(1\)"):
            await acc.list_accounts(conn, nobody, page=2)
        for bad in ({"page": 0}, {"per_page": 0}, {"per_page": 5000}, {"sort": "colour"}):
            with pytest.raises(InvalidDataError):
                await acc.list_accounts(conn, **bad)
    everyone = AccountCriteria()
    for key in acc.SortKey:  # every column sorts, both ways, ties broken by id
        asc = await _ids(engine, everyone, sort=key)
        desc = await _ids(engine, everyone, sort=key, descending=True)
        assert sorted(asc) == sorted(desc) == sorted(a.id for a in w.values()), key
    ids = {a.id: name for name, a in w.items()}
    order = await _ids(engine, everyone, sort="balance")
    assert [ids[i] for i in order] == ["dan", "erin", "bob", "alice", "carol"]
    order = await _ids(engine, everyone, sort="balance_currency", descending=True)
    assert [ids[i] for i in order] == ["carol", "alice", "bob", "erin", "dan"]
    order = await _ids(engine, everyone, sort="last_name")
    assert [ids[i] for i in order] == ["dan", "bob", "alice", "erin", "carol"]
    order = await _ids(engine, everyone, sort="in_use", descending=True)
    assert ids[order[0]] == "carol"
    order = await _ids(engine, everyone, sort="group")
    assert {ids[i] for i in order[-2:]} == {"alice", "carol"} or {ids[i] for i in order[:2]} == {
        "alice",
        "carol",
    }  # NULLs sort first or last depending on the database


async def test_each_criterion_and_combinations(engine: AsyncEngine) -> None:
    w = await _world(engine)
    ids = {a.id: name for name, a in w.items()}

    async def names(**criteria: object) -> set[str]:
        found = await _ids(engine, AccountCriteria(**criteria))  # type: ignore[arg-type]
        return {ids[i] for i in found}

    assert await names(number="1000000002") == {"bob"}
    assert await names(number="2*") == {"carol", "dan"}
    assert await names(alias="ALICE@example.com") == {"alice"}
    assert await names(alias="erin_100%") == {"erin"}
    assert await names(alias="erin*") == {"erin"}
    assert await names(alias="er_n*") == set()  # LIKE wildcards are escaped
    assert await names(name="martin") == {"alice", "erin"}
    assert await names(name="alice martin") == {"alice"}
    assert await names(name="mar*") == {"alice", "erin"}
    assert await names(group="vip") == {"alice", "carol"}
    assert await names(group="nobody") == set()
    assert await names(plan="wholesale") == {"carol", "dan"}
    assert await names(statuses=(AccountStatus.SUSPENDED, AccountStatus.INACTIVE)) == {
        "bob",
        "dan",
    }
    assert await names(balance_min=Decimal("5"), balance_max=Decimal("50")) == {"alice", "bob"}
    assert await names(balance_max=Decimal("-0.00001")) == {"dan"}
    assert await names(created_before=NOW - timedelta(days=30)) == {"erin"}
    assert await names(created_from=NOW - timedelta(days=1)) == {"alice", "bob", "carol", "dan"}
    assert await names(language="fr") == {"alice"}
    assert await names(currency="eur") == {"bob"}
    assert await names(callerid="33123456789") == {"bob"}
    assert await names(callerid="44*") == {"carol"}
    assert await names(ip="10.1.2.99") == {"carol"}  # inside carol's block
    assert await names(ip="10.1.0.0/16") == {"carol"}  # her block lies within
    assert await names(ip="192.0.2.0/24") == {"dan"}
    assert await names(ip="192.0.2.8") == set()
    assert await names(ip="2001:db8::1") == {"dan"}
    assert await names(ip="PBX.example.net") == {"erin"}
    assert await names(text="acme") == {"alice"}
    assert await names(text="corp.example") == {"carol"}
    assert await names(text="00000") == set(w)
    assert await names(text="100%") == {"erin"}
    # several at once: all must hold
    assert await names(plan="retail", name="martin", balance_min=Decimal("1")) == {"alice"}
    assert await names(group="vip", ip="10.1.2.3", statuses=(AccountStatus.ACTIVE,)) == {"carol"}
    assert await names(group="vip", plan="retail", currency="EUR") == set()
    criteria = AccountCriteria(plan="retail", text="martin")
    assert not criteria.is_empty() and AccountCriteria().is_empty()
    assert criteria.describe() == "plan=retail, text=martin"
    async with engine.connect() as conn:
        assert await acc.count_accounts(conn, criteria) == 2


async def test_batch_update_fields_and_balance_adjustments(engine: AsyncEngine) -> None:
    w = await _world(engine)
    retail = AccountCriteria(plan="retail")
    async with write_transaction(engine) as conn:
        raw, balance = acc.parse_assignments(
            ["status=suspended", "group=vip", "channel_limit=3", "balance+=10"]
        )
        changes = await acc.parse_account_fields(conn, raw)
        changed = await acc.batch_update(conn, retail, changes, balance=balance)
    assert changed == 3
    async with engine.connect() as conn:
        rows = {a: await acc.fetch_account(conn, w[a].id) for a in w}
        adjustments = (
            await conn.execute(select(payments.c.account_id, payments.c.amount, payments.c.kind))
        ).all()
    for name in ("alice", "bob", "erin"):
        assert rows[name].status is AccountStatus.SUSPENDED
        assert rows[name].channel_limit == 3
        assert rows[name].balance == w[name].balance + 10
    assert rows["carol"].balance == Decimal("500") and rows["carol"].channel_limit is None
    assert sorted(a for a, _, _ in adjustments) == sorted(w[n].id for n in ("alice", "bob", "erin"))
    assert {(amount, kind) for _, amount, kind in adjustments} == {
        (Decimal("10"), PaymentKind.ADJUSTMENT.value)
    }
    # "=" records only the difference, and only where the balance differs
    async with write_transaction(engine) as conn:
        _, balance = acc.parse_assignments(["balance=60"])
        assert await acc.batch_update(conn, retail, {}, balance=balance) == 3
    async with engine.connect() as conn:
        for name in ("alice", "bob", "erin"):
            assert (await acc.fetch_account(conn, w[name].id)).balance == Decimal("60")
        alice_moves = (
            await conn.scalars(
                select(payments.c.amount)
                .where(payments.c.account_id == w["alice"].id)
                .order_by(payments.c.id)
            )
        ).all()
        total = await conn.scalar(
            select(func.sum(payments.c.amount)).where(payments.c.account_id == w["alice"].id)
        )
    assert alice_moves == [Decimal("10")]  # 50 + 10 is already 60: no second adjustment
    assert total == Decimal("10")


async def test_batch_update_refusals_change_nothing(engine: AsyncEngine) -> None:
    await _world(engine)
    bad_sets = [
        ["currency=EUR"],
        ["number=1"],
        ["status=sleepy"],
        ["colour=red"],
        ["balance+=abc"],
        ["balance+=-3"],
        ["status"],
        ["plan=nope"],
        ["expiry_mode=at_date"],
        ["status=active", "status=inactive"],
    ]
    for items in bad_sets:
        with pytest.raises((InvalidDataError, Exception)) as caught:
            async with write_transaction(engine) as conn:
                raw, balance = acc.parse_assignments(items)
                changes = await acc.parse_account_fields(conn, raw)
                await acc.batch_update(conn, AccountCriteria(), changes, balance=balance)
        assert str(caught.value), items
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(payments)) == 0
        statuses = set(await conn.scalars(select(accounts.c.status)))
    assert statuses == {"active", "suspended", "inactive"}


async def test_delete_all_by_criteria_with_dependants(engine: AsyncEngine) -> None:
    w = await _world(engine)
    async with write_transaction(engine) as conn:
        with pytest.raises(ConflictError, match="in progress"):
            await acc.delete_accounts(conn, AccountCriteria(group="vip"))
    async with engine.begin() as conn:
        await conn.execute(update(reservations).values(status=ReservationStatus.SETTLED.value))
        await conn.execute(
            insert(calls).values(
                uniqueid="c1", account_id=w["carol"].id, started_at=NOW, status="OK"
            )
        )
    async with write_transaction(engine) as conn:
        assert await acc.delete_accounts(conn, AccountCriteria(group="vip")) == 2
    async with engine.connect() as conn:
        left = set(await conn.scalars(select(accounts.c.alias)))
        assert left == {"bob", "dan", "erin_100%"}
        for table in (reservations, calls, iax_friends, sip_friends):
            assert await conn.scalar(select(func.count()).select_from(table)) == 0
        assert await conn.scalar(select(func.count()).select_from(account_ips)) == 3
    async with write_transaction(engine) as conn:
        assert await acc.delete_accounts(conn, account_id=w["bob"].id) == 1
        assert await acc.delete_accounts(conn, AccountCriteria(alias="nobody")) == 0
        with pytest.raises(InvalidDataError):
            await acc.delete_accounts(conn)


async def test_export_rows_follow_the_criteria_in_id_order(engine: AsyncEngine) -> None:
    w = await _world(engine)
    async with engine.connect() as conn:
        rows = [r async for r in acc.iter_export_rows(conn, AccountCriteria(), chunk=2)]
        assert [r["id"] for r in rows] == sorted(a.id for a in w.values())
        assert set(rows[0]) == set(acc.EXPORT_COLUMNS)
        carol = next(r for r in rows if r["alias"] == "carol")
        assert (carol["group"], carol["plan"], carol["in_use"], carol["iax"]) == (
            "vip",
            "wholesale",
            2,
            True,
        )
        chosen = [
            r
            async for r in acc.iter_export_rows(
                conn, AccountCriteria(plan="retail"), ["number", "balance"]
            )
        ]
        assert chosen == [
            {"number": "1000000001", "balance": Decimal("50")},
            {"number": "1000000002", "balance": Decimal("5")},
            {"number": "3000000005", "balance": Decimal("0")},
        ]
        with pytest.raises(InvalidDataError, match="unknown column"):
            acc.check_columns(["number", "secret"])
