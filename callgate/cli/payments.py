"""``callgate payments``: refills, payments and adjustments; the balance moves only when completed.

``payments list`` also shows the DID and package charges (kinds ``did_charge`` and
``package_charge``, written by ``dids charge`` / ``packages charge``): every balance movement that
is not a call is listed.

The amount is gross, in the base currency; the account's tax % is taken out of refills and
payments (credit = amount / (1 + tax/100), as A2Billing does with VAT). A negative adjustment
takes credit away: write it after ``--`` (``callgate payments add ACC --kind adjustment -- -5``).
"""

from __future__ import annotations

import dataclasses

import click

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.schema.tables import PaymentKind, PaymentStatus
from callgate.store import payments as store_payments
from callgate.store.accounts import account_numbers, parse_amount, require_account
from callgate.store.db import write_transaction
from callgate.store.errors import InvalidDataError
from callgate.store.payments import Payment

_KINDS = click.Choice([k.value for k in store_payments.OPERATOR_KINDS])
_ALL_KINDS = click.Choice([k.value for k in PaymentKind])
_STATUSES = click.Choice([s.value for s in PaymentStatus])


@click.group()
def payments() -> None:
    """Payments, refills and adjustments of accounts."""


def _echo_payments(found: list[Payment], account_numbers: dict[int, str] | None = None) -> None:
    numbers = account_numbers or {}
    echo_table(
        [
            "ID",
            "ACCOUNT",
            "KIND",
            "STATUS",
            "AMOUNT",
            "TAX%",
            "TAX",
            "CREDIT",
            "CUR",
            "CREATED",
            "DESCRIPTION",
        ],
        [
            [
                p.id,
                numbers.get(p.account_id, f"#{p.account_id}"),
                p.kind.value,
                p.status.value,
                p.amount,
                p.tax_percent,
                p.tax_amount,
                p.credit,
                p.currency,
                p.created_at.isoformat(timespec="seconds") if p.created_at else "",
                p.description,
            ]
            for p in found
        ],
    )


@payments.command("add")
@click.argument("account")
@click.argument("amount")
@click.option(
    "--kind", type=_KINDS, default=PaymentKind.REFILL.value, show_default=True, help="What it is."
)
@click.option(
    "--status",
    type=_STATUSES,
    default=PaymentStatus.COMPLETED.value,
    show_default=True,
    help="Only a completed payment moves the balance.",
)
@click.option("--description", default="", help="A note kept with the payment.")
@click.option("--json", "as_json", is_flag=True, help="Print the payment as JSON.")
def add_cmd(
    account: str, amount: str, kind: str, status: str, description: str, as_json: bool
) -> None:
    """Add a payment of AMOUNT (gross, base currency) to ACCOUNT (number, alias or #id).

    The account's tax % is taken out of refills and payments, and its minimum payment applies to
    them; adjustments have neither and may be negative (after `--`).
    """
    try:
        value = parse_amount(amount, "amount")
    except InvalidDataError as exc:
        raise click.BadParameter(str(exc), param_hint="AMOUNT") from exc

    async def _go() -> Payment:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            target = await require_account(conn, account)
            return await store_payments.add_payment(
                conn, target.id, value, kind=kind, status=status, description=description
            )

    payment = run(_go())
    if as_json:
        echo_json(dataclasses.asdict(payment))
    else:
        _echo_payments([payment], {payment.account_id: account})
    if payment.status is PaymentStatus.COMPLETED:
        click.echo(f"payment {payment.id} completed: balance moved by {payment.credit}", err=True)
    else:
        click.echo(f"payment {payment.id} {payment.status}: balance unchanged", err=True)


@payments.command("list")
@click.option("--account", default=None, help="Only this account (number, alias or #id).")
@click.option("--status", type=_STATUSES, default=None, help="Only this status.")
@click.option(
    "--kind",
    type=_ALL_KINDS,
    default=None,
    help="Only this kind (did_charge and package_charge are what `dids charge` and "
    "`packages charge` took).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 100000),
    default=50,
    show_default=True,
    help="How many, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(
    account: str | None, status: str | None, kind: str | None, limit: int, as_json: bool
) -> None:
    """List payments, newest first: every balance movement that is not a call, DID and
    package charges included (their CREDIT is negative)."""

    async def _go() -> tuple[list[Payment], dict[int, str]]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            account_id = None
            if account is not None:
                account_id = (await require_account(conn, account)).id
            found = await store_payments.list_payments(
                conn,
                account_id=account_id,
                status=PaymentStatus(status) if status else None,
                kind=PaymentKind(kind) if kind else None,
                limit=limit,
            )
            return found, await account_numbers(conn, {p.account_id for p in found})

    found, numbers = run(_go())
    if as_json:
        echo_json([dict(dataclasses.asdict(p), account=numbers.get(p.account_id)) for p in found])
    else:
        _echo_payments(found, numbers)


@payments.command("set-status")
@click.argument("payment_id", type=int)
@click.argument("status", type=_STATUSES)
@click.option("--json", "as_json", is_flag=True, help="Print the payment as JSON.")
def set_status_cmd(payment_id: int, status: str, as_json: bool) -> None:
    """Change a payment's STATUS: pending->completed credits the balance, completed->cancelled
    takes the credit back, pending->cancelled moves nothing; other changes are refused."""

    async def _go() -> Payment:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            return await store_payments.set_payment_status(conn, payment_id, status)

    payment = run(_go())
    if as_json:
        echo_json(dataclasses.asdict(payment))
    else:
        _echo_payments([payment])
    click.echo(f"payment {payment.id} is {payment.status}", err=True)
