"""Payments through the store on both databases: tax, minimum payment, balance moves only when
completed and back when cancelled, refused transitions change nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.schema.tables import (
    CallStatus,
    ChargeKind,
    PaymentKind,
    PaymentStatus,
    accounts,
    payments,
)
from callgate.store import accounts as acc
from callgate.store import ledger, plans
from callgate.store import payments as pay
from callgate.store.db import write_transaction
from callgate.store.errors import InvalidDataError, NotFoundError
from callgate.store.packages import charge_once


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


async def test_every_balance_movement_is_a_row_and_they_sum_to_the_balance(
    engine: AsyncEngine,
) -> None:
    """Issue 12.8: refill, adjustment, a DID charge, a package charge and a call: the payments
    (by kind) minus the call costs add up to the balance; charges keep their status."""
    account = await _account(engine, balance=Decimal("10"))
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    async with write_transaction(engine) as conn:
        await pay.add_payment(conn, account.id, Decimal("-1.5"), kind=PaymentKind.ADJUSTMENT)
    for kind, amount in ((ChargeKind.DID, Decimal("2.5")), (ChargeKind.PACKAGE, Decimal("3"))):
        for _ in range(2):  # the second run of a period charges nothing and writes nothing
            await charge_once(
                engine, account_id=account.id, kind=kind, ref_id=1, period="2026-12",
                amount=amount, description=f"{kind} 2026-12", now=now,
            )  # fmt: skip
    await ledger.settle(
        engine,
        ledger.CallRecord(
            uniqueid="m1", status=CallStatus.OK, started_at=now, account_id=account.id,
            billsec=60, granted_seconds=60, dial_status="ANSWER", cost=Decimal("0.6"),
        ),
    )  # fmt: skip
    balance = await _balance(engine, account.id)
    assert balance == Decimal("2.40000")  # 10 - 1.5 - 2.5 - 3 - 0.6
    async with engine.connect() as conn:
        listed = await pay.list_payments(conn, account_id=account.id)
        (did,) = await pay.list_payments(conn, kind=PaymentKind.DID_CHARGE)
        totals = await pay.movement_totals(conn, account.id)
        info = await acc.account_info(conn, account.id)
    assert sorted((p.kind.value, p.credit) for p in listed) == [
        ("adjustment", Decimal("-1.5")),
        ("did_charge", Decimal("-2.5")),
        ("package_charge", Decimal("-3")),
        ("refill", Decimal("10")),
    ]
    assert (did.status, did.amount, did.tax_amount, did.description) == (
        PaymentStatus.COMPLETED,
        Decimal("2.5"),
        Decimal("0"),
        "did 2026-12",
    )
    assert [(t.kind, t.count, t.total) for t in totals] == [
        ("refill", 1, Decimal("10")),
        ("adjustment", 1, Decimal("-1.5")),
        ("did_charge", 1, Decimal("-2.5")),
        ("package_charge", 1, Decimal("-3")),
        ("calls", 1, Decimal("-0.6")),
    ]
    assert sum(t.total for t in totals) == balance
    assert info.movements == totals and len(info.last_payments) == 4
    for status in (PaymentStatus.CANCELLED, PaymentStatus.PENDING):
        with pytest.raises(InvalidDataError, match="charges keep their status"):
            async with write_transaction(engine) as conn:
                await pay.set_payment_status(conn, did.id, status)
    with pytest.raises(InvalidDataError, match="written only by `callgate packages charge`"):
        async with write_transaction(engine) as conn:
            await pay.add_payment(conn, account.id, Decimal("1"), kind="package_charge")
    assert await _balance(engine, account.id) == balance
    assert await _payment_count(engine) == 4
