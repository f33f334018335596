"""``callgate dids``: inbound numbers, their destination, provider and customer prices."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import click

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.store import accounts as account_store
from callgate.store import dids as did_store
from callgate.store.db import write_transaction
from callgate.store.packages import PeriodCharge

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group("dids")
def dids() -> None:
    """DIDs: inbound numbers routed by the `did` FastAGI script and billed at retail."""


@dids.command("add")
@click.argument("number")
@click.argument("destination")
@click.option("--account", required=True, help="The customer billed for the DID's calls.")
@click.option("--provider", default=None, help="The trunk the number comes in on.")
@click.option("--cost", default="0", show_default=True, help="Provider cost per minute.")
@click.option("--retail", default="0", show_default=True, help="Retail price per minute.")
@click.option("--monthly", default="0", show_default=True, help="Retail price per month.")
@click.option("--description", default="", help="A note.")
@_json_option
def dids_add(
    number: str,
    destination: str,
    account: str,
    provider: str | None,
    cost: str,
    retail: str,
    monthly: str,
    description: str,
    as_json: bool,
) -> None:
    """Add DID NUMBER routed to DESTINATION: PJSIP/<alias>, SIP/<alias>, IAX2/<alias>,
    Local/<exten>@<context>, or a number dialled out through the customer's call plan.
    With --json, prints the DID as `dids list --json` does."""

    async def _go() -> did_store.Did:
        async with engine_for(app().settings) as engine, engine.begin() as conn:
            found = await account_store.require_account(conn, account)
            return await did_store.add_did(
                conn,
                number,
                destination,
                account_id=found.id,
                provider_trunk=provider,
                provider_cost=account_store.parse_amount(cost, "cost"),
                retail_rate=account_store.parse_amount(retail, "retail"),
                retail_monthly=account_store.parse_amount(monthly, "monthly"),
                description=description,
            )

    did = run(_go())
    if as_json:
        echo_json(dataclasses.asdict(did))
    click.echo(f"DID {did.number} -> {did.destination} added", err=True)


@dids.command("list")
@click.option("--account", default=None, help="Only this customer's DIDs.")
@_json_option
def dids_list(account: str | None, as_json: bool) -> None:
    """List the DIDs."""

    async def _go() -> list[did_store.Did]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            account_id = None
            if account:
                account_id = (await account_store.require_account(conn, account)).id
            return await did_store.list_dids(conn, account_id)

    found = run(_go())
    if as_json:
        echo_json([dataclasses.asdict(d) for d in found])
        return
    echo_table(
        [
            "NUMBER",
            "DESTINATION",
            "ACCOUNT",
            "PROVIDER",
            "COST/MIN",
            "RETAIL/MIN",
            "MONTHLY",
            "STATUS",
        ],
        [
            [
                d.number,
                d.destination,
                d.account,
                d.provider_trunk,
                d.provider_cost,
                d.retail_rate,
                d.retail_monthly,
                d.status.value,
            ]
            for d in found
        ],
    )


@dids.command("remove")
@click.argument("number")
@_json_option
def dids_remove(number: str, as_json: bool) -> None:
    """Remove DID NUMBER. With --json, prints {"removed": <the DID as it was>}."""

    async def _go() -> did_store.Did:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            return await did_store.remove_did(conn, number)

    removed = run(_go())
    if as_json:
        echo_json({"removed": dataclasses.asdict(removed)})
    click.echo(f"DID {removed.number} removed", err=True)


@dids.command("charge")
@_json_option
def dids_charge(as_json: bool) -> None:
    """Charge every assigned DID's monthly retail price for this month (once per month)."""
    settings = app().settings

    async def _go() -> list[PeriodCharge]:
        async with engine_for(settings) as engine:
            return await did_store.charge_monthly(
                engine, now=datetime.now(UTC), zone=ZoneInfo(settings.billing.timezone)
            )

    charges = run(_go())
    if as_json:
        echo_json([dataclasses.asdict(c) for c in charges])
        return
    done = [c for c in charges if c.charged]
    click.echo(f"{len(done)} DID(s) charged, {len(charges) - len(done)} already charged", err=True)
