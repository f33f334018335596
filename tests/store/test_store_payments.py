"""Payments through the store on both databases: tax, minimum payment, balance moves only when
completed and back when cancelled, refused transitions change nothing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.schema.tables import PaymentKind, PaymentStatus, accounts, payments
from callgate.store import accounts as acc
from callgate.store import payments as pay
from callgate.store import plans
from callgate.store.db import write_transaction
from callgate.store.errors import InvalidDataError, NotFoundError


async def _account(engine: AsyncEngine, **fields: Any) -> acc.Account:
    async with engine.begin() as conn:
        plan = await plans.create_call_plan(conn, name="retail")
        return await acc.open_account(conn, call_plan_id=plan.id, **fields)


async def _balance(engine: AsyncEngine, account_id: int) -> Decimal:
    async with engine.connect() as conn:
        return (await acc.fetch_account(conn, account_id)).balance


async def _payment_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(payments)) or 0)


def test_split_tax_takes_vat_out_of_the_gross_amount() -> None:
    assert pay.split_tax(Decimal("120"), Decimal("20")) == (Decimal("20"), Decimal("100"))
    assert pay.split_tax(Decimal("50"), Decimal("20")) == (Decimal("8.33333"), Decimal("41.66667"))
    assert pay.split_tax(Decimal("10"), Decimal("0")) == (Decimal("0"), Decimal("10"))
    tax, credit = pay.split_tax(Decimal("99.99"), Decimal("7.5"))
    assert tax + credit == Decimal("99.99")
    with pytest.raises(InvalidDataError):
        pay.split_tax(Decimal("1"), Decimal("-1"))


async def test_completed_payment_credits_net_of_tax(engine: AsyncEngine) -> None:
    account = await _account(engine, tax_percent=Decimal("20"))
    async with write_transaction(engine) as conn:
        payment = await pay.add_payment(conn, account.id, Decimal("120"))
    assert payment.kind is PaymentKind.REFILL and payment.status is PaymentStatus.COMPLETED
    assert (payment.amount, payment.tax_amount, payment.credit) == (
        Decimal("120"),
        Decimal("20"),
        Decimal("100"),
    )
    assert payment.currency == "USD" and payment.completed_at is not None
    assert await _balance(engine, account.id) == Decimal("100")


async def test_pending_moves_nothing_until_completed_and_cancel_takes_it_back(
    engine: AsyncEngine,
) -> None:
    account = await _account(engine)
    async with write_transaction(engine) as conn:
        pending = await pay.add_payment(
            conn, account.id, Decimal("30"), kind="payment", status="pending", description="wire"
        )
    assert await _balance(engine, account.id) == 0
    async with write_transaction(engine) as conn:
        done = await pay.set_payment_status(conn, pending.id, PaymentStatus.COMPLETED)
    assert done.status is PaymentStatus.COMPLETED and done.completed_at is not None
    assert await _balance(engine, account.id) == Decimal("30")
    async with write_transaction(engine) as conn:
        cancelled = await pay.set_payment_status(conn, pending.id, "cancelled")
    assert cancelled.cancelled_at is not None
    assert await _balance(engine, account.id) == 0
    # a cancelled payment stays cancelled; nothing moves on a refused change
    for status in ("completed", "pending", "cancelled"):
        with pytest.raises(InvalidDataError, match="cannot go from|already"):
            async with write_transaction(engine) as conn:
                await pay.set_payment_status(conn, pending.id, status)
    assert await _balance(engine, account.id) == 0
    async with write_transaction(engine) as conn:
        other = await pay.add_payment(conn, account.id, Decimal("5"), status="pending")
        await pay.set_payment_status(conn, other.id, "cancelled")
    assert await _balance(engine, account.id) == 0
    async with engine.connect() as conn:
        listed = await pay.list_payments(conn, account_id=account.id)
        assert [p.id for p in listed] == [other.id, pending.id]
        only_cancelled = await pay.list_payments(conn, status=PaymentStatus.CANCELLED)
        assert len(only_cancelled) == 2


async def test_completed_cannot_go_back_to_pending(engine: AsyncEngine) -> None:
    account = await _account(engine)
    async with write_transaction(engine) as conn:
        payment = await pay.add_payment(conn, account.id, Decimal("10"))
    with pytest.raises(InvalidDataError, match="completed to pending"):
        async with write_transaction(engine) as conn:
            await pay.set_payment_status(conn, payment.id, "pending")
    assert await _balance(engine, account.id) == Decimal("10")
    with pytest.raises(NotFoundError):
        async with write_transaction(engine) as conn:
            await pay.set_payment_status(conn, 9999, "cancelled")


async def test_minimum_payment_and_bad_amounts_are_refused(engine: AsyncEngine) -> None:
    account = await _account(engine, minimum_payment=Decimal("10"), tax_percent=Decimal("10"))
    bad: list[tuple[Decimal, str]] = [
        (Decimal("9.99"), "refill"),
        (Decimal("0"), "payment"),
        (Decimal("-5"), "refill"),
        (Decimal("0"), "adjustment"),
    ]
    for amount, kind in bad:
        with pytest.raises(InvalidDataError):
            async with write_transaction(engine) as conn:
                await pay.add_payment(conn, account.id, amount, kind=kind)
    with pytest.raises(InvalidDataError):
        async with write_transaction(engine) as conn:
            await pay.add_payment(conn, account.id, Decimal("20"), kind="gift")
    with pytest.raises(NotFoundError):
        async with write_transaction(engine) as conn:
            await pay.add_payment(conn, 424242, Decimal("20"))
    assert await _payment_count(engine) == 0
    assert await _balance(engine, account.id) == 0
    # the minimum is gross; adjustments have no minimum and no tax, and may be negative
    async with write_transaction(engine) as conn:
        await pay.add_payment(conn, account.id, Decimal("11"))
        adjustment = await pay.add_payment(conn, account.id, Decimal("-2.5"), kind="adjustment")
        small = await pay.add_payment(conn, account.id, Decimal("1"), kind="adjustment")
    assert adjustment.credit == Decimal("-2.5") and adjustment.tax_amount == 0
    assert small.credit == Decimal("1")
    assert await _balance(engine, account.id) == Decimal("10") - Decimal("2.5") + 1


async def test_opening_balance_is_recorded_as_a_refill(engine: AsyncEngine) -> None:
    account = await _account(engine, balance=Decimal("7.25"))
    async with engine.connect() as conn:
        (opening,) = await pay.list_payments(conn, account_id=account.id)
        total = await conn.scalar(
            select(func.sum(payments.c.credit)).where(payments.c.account_id == account.id)
        )
        balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account.id))
    assert opening.kind is PaymentKind.REFILL and opening.description == "opening balance"
    assert total == balance == Decimal("7.25")
