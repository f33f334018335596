"""``callgate calls``: the latest calls of an account, and reconciliation of dead sessions.

``calls reconcile`` lists the reservations the reaper could not settle (no Asterisk CDR) and the
open ones past their expiry; ``--settle UNIQUEID --seconds N`` charges such a call as N seconds
(capped at its grant), ``--release UNIQUEID`` closes it without a charge. ``calls reap`` runs one
reaper pass now (``callgate serve`` runs it every ``billing.reaper_interval_seconds``).
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import click

from callgate.ami.reaper import reap_once
from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.config import Settings
from callgate.store import calls as call_store
from callgate.store import reconcile
from callgate.store.accounts import require_account
from callgate.store.errors import InvalidDataError

LIST_COLUMNS = ("started_at", "uniqueid", "number", "destination", "billsec", "cost", "status")


def zone_of(settings: Settings) -> tzinfo:
    return ZoneInfo(settings.billing.timezone)


def parse_when(text: str | None, zone: tzinfo, option: str) -> datetime | None:
    """``YYYY-MM-DD`` (local midnight in the operator's zone) or ISO-8601 (local if no zone)."""
    try:
        return call_store.parse_when(text, zone, option)
    except InvalidDataError as exc:
        raise click.BadParameter(f"not a date or ISO time: {text!r}", param_hint=option) from exc


def _iso(value: Any) -> Any:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else value


@click.group()
def calls() -> None:
    """Billing records of calls, and reconciliation of calls whose session died."""


@calls.command("list")
@click.option("--account", required=True, help="Account number, alias or #id.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the calls as JSON.")
def list_command(account: str, limit: int, as_json: bool) -> None:
    """The latest calls of an account, newest first."""
    settings = app().settings

    async def main() -> list[dict[str, Any]]:
        async with engine_for(settings) as engine, engine.connect() as conn:
            found = await require_account(conn, account)
            flt = call_store.CallFilter(account_id=found.id)
            return await call_store.list_calls(conn, flt, limit=limit)

    rows = run(main())
    if as_json:
        echo_json(rows)
        return
    echo_table(
        [c.upper() for c in LIST_COLUMNS],
        [[_iso(row[c]) for c in LIST_COLUMNS] for row in rows],
    )


def _pending_dict(item: reconcile.PendingReservation) -> dict[str, Any]:
    return {
        "uniqueid": item.uniqueid,
        "account": item.account,
        "status": item.status.value,
        "amount": item.amount,
        "granted_seconds": item.granted_seconds,
        "trunk": item.trunk,
        "rate_id": item.rate_id,
        "server": item.server,
        "created_at": item.created_at,
        "expires_at": item.expires_at,
        "note": item.note,
    }


@calls.command("reconcile")
@click.option("--settle", "settle_id", metavar="UNIQUEID", help="Charge this call (--seconds).")
@click.option("--seconds", type=click.IntRange(0), help="Billed seconds for --settle.")
@click.option("--release", "release_id", metavar="UNIQUEID", help="Close it without a charge.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def reconcile_command(
    settle_id: str | None, seconds: int | None, release_id: str | None, as_json: bool
) -> None:
    """List the unresolved reservations, or settle / release one of them."""
    settings = app().settings
    if settle_id and release_id:
        raise click.UsageError("give --settle or --release, not both")
    if settle_id and seconds is None:
        raise click.UsageError("--settle needs --seconds N")
    if seconds is not None and not settle_id:
        raise click.UsageError("--seconds goes with --settle")
    now = datetime.now(UTC)
    if settle_id or release_id:

        async def resolve() -> reconcile.Resolution:
            async with engine_for(settings) as engine:
                if settle_id:
                    assert seconds is not None
                    return await reconcile.settle_reservation(engine, settle_id, seconds, now=now)
                assert release_id is not None
                return await reconcile.release_reservation(engine, release_id, now=now)

        done = run(resolve())
        data = {
            "uniqueid": done.uniqueid,
            "status": done.status.value,
            "billsec": done.billsec,
            "charged": done.charged,
            "balance": done.balance,
            "note": done.note,
        }
        if as_json:
            echo_json(data)
        else:
            click.echo(
                f"{done.uniqueid}: {done.status.value}, {done.billsec} s, charged {done.charged},"
                f" balance {done.balance}"
            )
        return

    async def listing() -> list[reconcile.PendingReservation]:
        async with engine_for(settings) as engine, engine.connect() as conn:
            return await reconcile.list_unresolved(conn, now=now)

    items = run(listing())
    if as_json:
        echo_json([_pending_dict(i) for i in items])
        return
    if not items:
        click.echo("nothing to reconcile", err=True)
        return
    echo_table(
        ["UNIQUEID", "ACCOUNT", "STATUS", "RESERVED", "GRANTED", "TRUNK", "CREATED", "NOTE"],
        [
            [
                i.uniqueid,
                i.account,
                i.status.value,
                i.amount,
                i.granted_seconds,
                i.trunk,
                _iso(i.created_at),
                i.note,
            ]
            for i in items
        ],
    )


@calls.command("reap")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def reap_command(as_json: bool) -> None:
    """Run one reaper pass now: settle expired reservations from the Asterisk CDRs."""
    settings = app().settings

    async def main() -> list[reconcile.ReapOutcome]:
        async with engine_for(settings) as engine:
            return await reap_once(engine, zone=zone_of(settings))

    outcomes = run(main())
    rows = [
        {
            "uniqueid": o.uniqueid,
            "result": o.result.value,
            "billsec": o.billsec,
            "charged": o.charged,
            "note": o.note,
        }
        for o in outcomes
    ]
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{len(rows)} reservation(s) reaped", err=True)
    if rows:
        echo_table(
            ["UNIQUEID", "RESULT", "BILLSEC", "CHARGED"],
            [[r["uniqueid"], r["result"], r["billsec"], r["charged"]] for r in rows],
        )
