"""Operator-side account rules through the store, on both databases: numbers and aliases share
one space, text fields are parsed with named errors, generate/update/import refuse bad input."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.schema.tables import AccountStatus, ExpiryMode, accounts, payments
from callgate.store import accounts as acc
from callgate.store import plans
from callgate.store.errors import ConflictError, InvalidDataError, NotFoundError


async def _count(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        a = await conn.scalar(select(func.count()).select_from(accounts))
        p = await conn.scalar(select(func.count()).select_from(payments))
    return int(a or 0), int(p or 0)


async def test_numbers_and_aliases_share_one_space(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        plan = await plans.create_call_plan(conn, name="retail")
        first = await acc.create_account(
            conn, call_plan_id=plan.id, number="111111", alias="222222"
        )
    async with engine.begin() as conn:
        # an alias (shown to its customer) must never be another account's secret number
        with pytest.raises(ConflictError, match="is an account number"):
            await acc.create_account(conn, call_plan_id=plan.id, alias="111111")
        with pytest.raises(ConflictError, match="is an alias"):
            await acc.create_account(conn, call_plan_id=plan.id, number="222222")
        with pytest.raises(ConflictError, match="must differ"):
            await acc.create_account(conn, call_plan_id=plan.id, number="333333", alias="333333")
        second = await acc.create_account(conn, call_plan_id=plan.id, alias="bob")
        with pytest.raises(ConflictError, match="is an account number"):
            await acc.update_account(conn, second.id, alias="111111")
        with pytest.raises(ConflictError, match="taken"):
            await acc.update_account(conn, second.id, alias="222222")
        renamed = await acc.update_account(conn, second.id, alias="bobby", number="4444444")
        assert (renamed.alias, renamed.number) == ("bobby", "4444444")
        with pytest.raises(acc.AccountImportError) as caught:
            await acc.import_accounts(
                conn,
                [(2, {"alias": "111111"}), (3, {"number": "555555"}), (4, {"alias": "555555"})],
                default_plan_id=plan.id,
            )
        assert caught.value.errors == [
            "line 2: alias '111111' is taken: it is an account number",
            "line 4: alias '555555' repeats line 3",
        ]
        made = await acc.generate_accounts(conn, 50, call_plan_id=plan.id, number_length=6)
        values = [v for _, n, a in made for v in (n, a)]
        assert len(set(values)) == 100 and {first.number, first.alias}.isdisjoint(values)


async def test_field_parsing_and_refusals_write_nothing(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        plan = await plans.create_call_plan(conn, name="retail")
        account = await acc.open_account(conn, call_plan_id=plan.id)
    async with engine.begin() as conn:
        parsed = await acc.parse_account_fields(
            conn,
            {
                "tax": "7.5",
                "status": "Suspended",
                "portal_access": "no",
                "channel_limit": "unlimited",
                "cps_limit": "3",
                "expiry_mode": "days_after_creation",
                "expiry_days": "30",
                "expires_at": "2030-01-02T03:04:05",
                "plan": "retail",
                "group": "none",
                "public_notes": "  kept as typed ",
            },
        )
        assert parsed["tax_percent"] == Decimal("7.5")
        assert parsed["status"] is AccountStatus.SUSPENDED
        assert parsed["portal_access"] is False and parsed["channel_limit"] is None
        assert parsed["expiry_mode"] is ExpiryMode.DAYS_AFTER_CREATION
        assert parsed["expires_at"].isoformat() == "2030-01-02T03:04:05+00:00"
        assert parsed["call_plan_id"] == plan.id and parsed["group_id"] is None
        assert parsed["public_notes"] == "  kept as typed "
        bad = [
            ({"colour": "red"}, "unknown account field"),
            ({"debit_limit": "-1"}, "debit_limit"),
            ({"tax_percent": "150"}, "tax_percent"),
            ({"minimum_payment": "1.000001"}, "decimal places"),
            ({"channel_limit": "two"}, "channel_limit"),
            ({"expiry_days": "0"}, "expiry_days"),
            ({"expires_at": "soon"}, "expires_at"),
            ({"portal_access": "maybe"}, "portal_access"),
            ({"email": "nope"}, "email"),
            ({"alias": "has space"}, "alias"),
            ({"last_name": "x" * 65}, "last_name"),
            ({"currency": "XXX"}, "currency"),
        ]
        for raw, word in bad:
            with pytest.raises(InvalidDataError, match=word):
                await acc.parse_account_fields(conn, raw)
        with pytest.raises(NotFoundError, match="configure the call plan first"):
            await acc.parse_account_fields(conn, {"plan": "gold"})
        with pytest.raises(InvalidDataError, match="balance moves only through payments"):
            await acc.update_account(conn, account.id, balance=Decimal(5))
        with pytest.raises(InvalidDataError, match="cannot change after creation"):
            await acc.update_account(conn, account.id, currency="EUR")
        with pytest.raises(InvalidDataError, match="needs expiry_days"):
            await acc.update_account(conn, account.id, expiry_mode=ExpiryMode.DAYS_AFTER_FIRST_USE)
        with pytest.raises(NotFoundError, match="configure the call plan first"):
            await acc.update_account(conn, account.id, call_plan_id=999)
        attempts: list[tuple[int, dict[str, Any]]] = [
            (0, {}),
            (2, {"alias": "x"}),
            (2, {"colour": "red"}),
        ]
        for count, fields in attempts:
            with pytest.raises(InvalidDataError):
                await acc.generate_accounts(conn, count, call_plan_id=plan.id, **fields)
        with pytest.raises(InvalidDataError, match="configure the call plan first"):
            await acc.generate_accounts(conn, 2, call_plan_id=None)
        with pytest.raises(InvalidDataError, match="length"):
            await acc.generate_accounts(conn, 2, call_plan_id=plan.id, number_length=40)
        with pytest.raises(InvalidDataError, match="needs expires_at"):
            await acc.open_account(conn, call_plan_id=plan.id, expiry_mode="at_date")
    assert await _count(engine) == (1, 0)
    async with engine.connect() as conn:
        assert (await acc.fetch_account(conn, account.id)).updated_at == account.updated_at
