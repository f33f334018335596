"""Payments, refills and adjustments: the only way an operator moves a balance.

Rules (DESIGN.md §4, the ConnexCS and A2Billing pages):

- ``amount`` is what the customer paid, gross, in the base currency. For a ``refill`` or a
  ``payment`` the account's tax % is taken out as A2Billing does with VAT: the credit is
  ``amount / (1 + tax/100)`` (rounded once, ROUND_HALF_UP, 5 places) and the tax is
  ``amount - credit``. An ``adjustment`` is an operator's correction: no tax, no minimum, and it
  may be negative.
- A refill or payment below the account's minimum payment is refused.
- The balance moves only when a payment is ``completed``, in the same transaction as the payment
  row, with the account row locked (open the transaction with
  :func:`callgate.store.db.write_transaction`; ``FOR UPDATE`` on PostgreSQL). A completed payment
  that is cancelled takes its credit back (the balance may go negative: the customer owes it).
- Status changes: pending -> completed (credits), pending -> cancelled (nothing moves),
  completed -> cancelled (debits the credit back). Every other change is refused.
- Every balance movement that is not a call is a row here, so ``payments list`` and
  ``accounts info`` show all of them: besides the operator's kinds, a DID's monthly price and a
  package's period price are ``did_charge`` / ``package_charge`` rows (completed, no tax, credit
  = -amount), written by :func:`record_charge` in the transaction that debits the balance. They
  are not added, cancelled or completed by hand (give an adjustment to refund one). Hence
  balance = sum of completed credits - sum of call costs (calls are CDRs, in ``calls``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.rating import quantize_money
from callgate.schema.tables import (
    PaymentKind,
    PaymentStatus,
    accounts,
    calls,
    currencies,
    payments,
)
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import InvalidDataError, NotFoundError

_HUNDRED = Decimal(100)
#: kinds an operator adds with ``payments add``; the charges come only from their commands
OPERATOR_KINDS = (PaymentKind.REFILL, PaymentKind.PAYMENT, PaymentKind.ADJUSTMENT)
CHARGE_KINDS = frozenset({PaymentKind.DID_CHARGE, PaymentKind.PACKAGE_CHARGE})
_CHARGED_BY = {
    PaymentKind.DID_CHARGE: "callgate dids charge",
    PaymentKind.PACKAGE_CHARGE: "callgate packages charge",
}
_ALLOWED = {
    (PaymentStatus.PENDING, PaymentStatus.COMPLETED),
    (PaymentStatus.PENDING, PaymentStatus.CANCELLED),
    (PaymentStatus.COMPLETED, PaymentStatus.CANCELLED),
}


@dataclass(frozen=True, slots=True)
class Payment:
    """One payment, refill or adjustment of an account."""

    id: int
    account_id: int
    kind: PaymentKind
    status: PaymentStatus
    amount: Decimal  # gross, base currency
    tax_percent: Decimal
    tax_amount: Decimal
    credit: Decimal  # what the balance moves by when completed
    currency: str
    description: str
    created_at: datetime | None = None
    completed_at: datetime | None = None
    cancelled_at: datetime | None = None


def payment_from_row(row: Any) -> Payment:
    m = row._mapping
    return Payment(
        id=m["id"],
        account_id=m["account_id"],
        kind=PaymentKind(m["kind"]),
        status=PaymentStatus(m["status"]),
        amount=m["amount"],
        tax_percent=m["tax_percent"],
        tax_amount=m["tax_amount"],
        credit=m["credit"],
        currency=m["currency"],
        description=m["description"],
        created_at=m["created_at"],
        completed_at=m["completed_at"],
        cancelled_at=m["cancelled_at"],
    )


def split_tax(amount: Decimal, tax_percent: Decimal) -> tuple[Decimal, Decimal]:
    """``(tax, credit)`` of a gross amount: credit = amount / (1 + tax/100), tax = the rest.

    >>> split_tax(Decimal("120"), Decimal("20"))
    (Decimal('20.00000'), Decimal('100.00000'))
    """
    if tax_percent < 0:
        raise InvalidDataError(f"a tax rate cannot be negative: {tax_percent}")
    credit = quantize_money(amount / (1 + tax_percent / _HUNDRED))
    return quantize_money(amount - credit), credit


async def _base_currency(conn: AsyncConnection) -> str:
    code = await conn.scalar(select(currencies.c.code).where(currencies.c.is_base.is_(True)))
    if code is None:
        raise NotFoundError("no base currency is configured")
    return str(code)


async def _lock_account(conn: AsyncConnection, account_id: int) -> Any:
    row = (
        await conn.execute(
            select(
                accounts.c.id,
                accounts.c.number,
                accounts.c.tax_percent,
                accounts.c.minimum_payment,
            )
            .where(accounts.c.id == account_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        raise NotFoundError(f"no account with id {account_id}")
    return row


async def _move_balance(conn: AsyncConnection, account_id: int, delta: Decimal) -> None:
    await conn.execute(
        update(accounts)
        .where(accounts.c.id == account_id)
        .values(balance=accounts.c.balance + delta, updated_at=datetime.now(UTC))
    )


async def add_payment(
    conn: AsyncConnection,
    account_id: int,
    amount: Decimal,
    *,
    kind: PaymentKind | str = PaymentKind.REFILL,
    status: PaymentStatus | str = PaymentStatus.COMPLETED,
    description: str = "",
) -> Payment:
    """Record a payment; when it is completed the balance moves by its credit, atomically.

    Run it inside :func:`~callgate.store.db.write_transaction` (the account row is locked).
    """
    try:
        kind = PaymentKind(kind)
        status = PaymentStatus(status)
    except ValueError as exc:
        raise InvalidDataError(str(exc)) from exc
    if kind in CHARGE_KINDS:
        raise InvalidDataError(
            f"a {kind} is written only by `{_CHARGED_BY[kind]}`; "
            "to give money back or take it, add an adjustment"
        )
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise InvalidDataError(f"not an amount of money: {amount!r}")
    account = await _lock_account(conn, account_id)
    if kind is PaymentKind.ADJUSTMENT:
        if amount == 0:
            raise InvalidDataError("an adjustment of 0 changes nothing")
        tax_percent, tax, credit = Decimal(0), Decimal(0), quantize_money(amount)
    else:
        if amount <= 0:
            raise InvalidDataError(
                f"a {kind} must be positive (got {amount}); use an adjustment to take credit away"
            )
        if amount < account.minimum_payment:
            raise InvalidDataError(
                f"{amount} is below the minimum payment of account {account.number} "
                f"({account.minimum_payment})"
            )
        tax_percent = account.tax_percent
        tax, credit = split_tax(amount, tax_percent)
    now = datetime.now(UTC)
    async with mapped_errors("payment"):
        row = (
            await conn.execute(
                insert(payments)
                .values(
                    account_id=account_id,
                    kind=kind.value,
                    status=status.value,
                    amount=amount,
                    tax_percent=tax_percent,
                    tax_amount=tax,
                    credit=credit,
                    currency=await _base_currency(conn),
                    description=description,
                    created_at=now,
                    completed_at=now if status is PaymentStatus.COMPLETED else None,
                    cancelled_at=now if status is PaymentStatus.CANCELLED else None,
                )
                .returning(payments)
            )
        ).one()
        if status is PaymentStatus.COMPLETED:
            await _move_balance(conn, account_id, credit)
    return payment_from_row(row)


async def record_charge(
    conn: AsyncConnection,
    account_id: int,
    amount: Decimal,
    *,
    kind: PaymentKind,
    description: str,
    now: datetime,
) -> Payment:
    """The payment row of a DID or package charge: completed, no tax, ``credit = -amount``.

    It does NOT move the balance: the caller (:func:`callgate.store.packages.charge_once`) does,
    in the same transaction, under the account row lock.
    """
    if kind not in CHARGE_KINDS:
        raise InvalidDataError(f"{kind} is not a charge")
    if amount < 0:
        raise InvalidDataError(f"a charge cannot be negative: {amount}")
    amount = quantize_money(amount)
    async with mapped_errors("charge"):
        row = (
            await conn.execute(
                insert(payments)
                .values(
                    account_id=account_id,
                    kind=kind.value,
                    status=PaymentStatus.COMPLETED.value,
                    amount=amount,
                    tax_percent=Decimal(0),
                    tax_amount=Decimal(0),
                    credit=-amount,
                    currency=await _base_currency(conn),
                    description=description,
                    created_at=now,
                    completed_at=now,
                )
                .returning(payments)
            )
        ).one()
    return payment_from_row(row)


@dataclass(frozen=True, slots=True)
class MovementTotal:
    """What one kind of movement did to a balance: completed payments of a kind, or ``calls``."""

    kind: str
    count: int
    total: Decimal  # signed: what the balance moved by


async def movement_totals(conn: AsyncConnection, account_id: int) -> tuple[MovementTotal, ...]:
    """Per kind, how many completed movements and their sum, then the calls (``-cost``).

    Their sum is the balance (every account starts at 0; an opening balance is a refill).
    """
    out: list[MovementTotal] = []
    rows = await conn.execute(
        select(payments.c.kind, func.count(), func.sum(payments.c.credit))
        .where(
            payments.c.account_id == account_id,
            payments.c.status == PaymentStatus.COMPLETED.value,
        )
        .group_by(payments.c.kind)
    )
    by_kind = {PaymentKind(r[0]): (int(r[1]), quantize_money(Decimal(r[2]))) for r in rows}
    for kind in PaymentKind:  # a stable order: the enum's
        if kind in by_kind:
            count, total = by_kind[kind]
            out.append(MovementTotal(kind.value, count, total))
    count, cost = (
        await conn.execute(
            select(func.count(), func.coalesce(func.sum(calls.c.cost), 0)).where(
                calls.c.account_id == account_id, calls.c.cost != 0
            )
        )
    ).one()
    if count:
        out.append(MovementTotal("calls", int(count), -quantize_money(Decimal(cost))))
    return tuple(out)


async def fetch_payment(conn: AsyncConnection, payment_id: int, *, lock: bool = False) -> Payment:
    query = select(payments).where(payments.c.id == payment_id)
    if lock:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        raise NotFoundError(f"no payment with id {payment_id}")
    return payment_from_row(row)


async def set_payment_status(
    conn: AsyncConnection, payment_id: int, status: PaymentStatus | str
) -> Payment:
    """Move a payment to ``status``; the balance follows (see the module docstring).

    Run it inside :func:`~callgate.store.db.write_transaction`.
    """
    try:
        new = PaymentStatus(status)
    except ValueError as exc:
        raise InvalidDataError(str(exc)) from exc
    current = await fetch_payment(conn, payment_id)
    if current.kind in CHARGE_KINDS:
        raise InvalidDataError(
            f"payment {payment_id} is a {current.kind} ({current.description}): charges keep "
            "their status; refund it with an adjustment"
        )
    await _lock_account(conn, current.account_id)  # the account first, as add_payment does
    current = await fetch_payment(conn, payment_id, lock=True)
    if (current.status, new) not in _ALLOWED:
        if current.status is new:
            raise InvalidDataError(f"payment {payment_id} is already {new}")
        raise InvalidDataError(
            f"payment {payment_id} cannot go from {current.status} to {new} "
            "(allowed: pending->completed, pending->cancelled, completed->cancelled)"
        )
    now = datetime.now(UTC)
    values: dict[str, Any] = {"status": new.value}
    if new is PaymentStatus.COMPLETED:
        values["completed_at"] = now
        await _move_balance(conn, current.account_id, current.credit)
    else:
        values["cancelled_at"] = now
        if current.status is PaymentStatus.COMPLETED:
            await _move_balance(conn, current.account_id, -current.credit)
    async with mapped_errors(f"payment {payment_id}"):
        await conn.execute(update(payments).where(payments.c.id == payment_id).values(**values))
    return await fetch_payment(conn, payment_id)


async def list_payments(
    conn: AsyncConnection,
    *,
    account_id: int | None = None,
    status: PaymentStatus | None = None,
    kind: PaymentKind | None = None,
    limit: int = 50,
) -> list[Payment]:
    """The newest payments first (of one account, or all)."""
    query = select(payments).order_by(payments.c.created_at.desc(), payments.c.id.desc())
    if account_id is not None:
        query = query.where(payments.c.account_id == account_id)
    if status is not None:
        query = query.where(payments.c.status == status.value)
    if kind is not None:
        query = query.where(payments.c.kind == kind.value)
    return [payment_from_row(r) for r in await conn.execute(query.limit(limit))]
