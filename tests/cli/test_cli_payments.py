"""`callgate payments ...` on both databases: tax, minimum payment, the balance moves only when a
payment is completed and back when it is cancelled; bad input changes nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from click.testing import CliRunner, Result
from sqlalchemy import select

from callgate.cli.main import cli
from callgate.schema.tables import accounts, payments
from callgate.store.db import create_engine


def invoke(db_url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"CALLGATE_DATABASE_URL": db_url})


def ok(db_url: str, *args: str) -> Result:
    result = invoke(db_url, *args)
    assert result.exit_code == 0, (args, result.output)
    return result


def state(db_url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    async def _go() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        engine = create_engine(db_url)
        try:
            async with engine.connect() as conn:
                a = [tuple(r) for r in await conn.execute(select(accounts).order_by(accounts.c.id))]
                p = [tuple(r) for r in await conn.execute(select(payments).order_by(payments.c.id))]
                return a, p
        finally:
            await engine.dispose()

    return asyncio.run(_go())


def fails(db_url: str, *args: str, match: str, code: int = 1) -> None:
    before = state(db_url)
    result = invoke(db_url, *args)
    assert result.exit_code == code, (args, result.output)
    assert match.lower() in result.output.lower(), (args, result.output)
    assert state(db_url) == before, args


def balance(db_url: str, account: str) -> str:
    shown = json.loads(ok(db_url, "accounts", "show", account, "--json").stdout)
    return str(shown["balance"])


def test_payments_add_list_and_status_changes(db_url: str) -> None:
    ok(db_url, "plans", "add", "retail")
    ok(
        db_url,
        *("accounts", "add", "--plan", "retail", "--alias", "ann", "--tax", "20"),
        *("--minimum-payment", "10"),
    )
    # tax: the amount is gross, the credit net (A2Billing's VAT: amount / (1 + tax/100))
    refill = json.loads(ok(db_url, "payments", "add", "ann", "120", "--json").stdout)
    assert (refill["kind"], refill["status"], refill["amount"], refill["tax_amount"]) == (
        "refill",
        "completed",
        "120.00000",
        "20.00000",
    )
    assert refill["credit"] == "100.00000" and balance(db_url, "ann") == "100.00000"
    # refusals change nothing
    fails(db_url, "payments", "add", "ann", "9.99", match="minimum payment")
    fails(db_url, "payments", "add", "ann", "1,5", match="not a decimal amount", code=2)
    fails(db_url, "payments", "add", "ann", "1e3", match="not a decimal amount", code=2)
    fails(db_url, "payments", "add", "ann", "0.000001", match="decimal places", code=2)
    fails(db_url, "payments", "add", "nobody", "50", match="no account")
    fails(db_url, "payments", "add", "ann", "50", "--kind", "gift", match="gift", code=2)
    fails(db_url, "payments", "add", "ann", "--", "-50", match="must be positive")
    # pending: nothing moves until completed
    pending = json.loads(
        ok(
            db_url,
            *("payments", "add", "ann", "60", "--kind", "payment", "--status", "pending"),
            *("--description", "bank transfer", "--json"),
        ).stdout
    )
    assert pending["credit"] == "50.00000" and balance(db_url, "ann") == "100.00000"
    ok(db_url, "payments", "set-status", str(pending["id"]), "completed")
    assert balance(db_url, "ann") == "150.00000"
    cancelled = ok(db_url, "payments", "set-status", str(pending["id"]), "cancelled", "--json")
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    assert balance(db_url, "ann") == "100.00000"
    fails(db_url, "payments", "set-status", str(pending["id"]), "completed", match="cannot go")
    fails(db_url, "payments", "set-status", str(refill["id"]), "pending", match="cannot go")
    fails(db_url, "payments", "set-status", "999", "cancelled", match="no payment")
    fails(db_url, "payments", "set-status", "x", "cancelled", match="x", code=2)
    # a cancelled-at-once payment moves nothing; adjustments: no tax, no minimum, may be negative
    ok(db_url, "payments", "add", "ann", "20", "--status", "cancelled")
    ok(db_url, "payments", "add", "ann", "--kind", "adjustment", "--", "-0.5")
    assert balance(db_url, "ann") == "99.50000"
    listed = json.loads(ok(db_url, "payments", "list", "--account", "ann", "--json").stdout)
    assert [(p["kind"], p["status"], p["credit"]) for p in listed] == [
        ("adjustment", "completed", "-0.50000"),
        ("refill", "cancelled", "16.66667"),
        ("payment", "cancelled", "50.00000"),
        ("refill", "completed", "100.00000"),
    ]
    assert {p["account"] for p in listed} == {
        json.loads(ok(db_url, "accounts", "show", "ann", "--json").stdout)["number"]
    }
    table = ok(db_url, "payments", "list", "--status", "cancelled").stdout
    assert table.splitlines()[0].startswith("ID") and len(table.splitlines()) == 3
    assert "bank transfer" in table
    fails(db_url, "payments", "list", "--account", "nobody", match="no account")
