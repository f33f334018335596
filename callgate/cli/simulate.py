"""``callgate simulate``: the whole decision of a call, without Asterisk (ConnexCS's Simulate)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import click

from callgate.agi.flows.call import flow_settings, normalise_for_plan, simulate_routes
from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.rating import RatingError
from callgate.store import ledger
from callgate.store.accounts import fetch_account
from callgate.store.callstore import RoutingData, SqlAccounts
from callgate.store.rates import fetch_plan_for_number


@click.command()
@click.option("--account", "account_key", default="", help="Account number or alias.")
@click.option("--number", required=True, help="The dialled number.")
@click.option("--callerid", default="", help="Caller ID (identifies the account if no --account).")
@click.option("--accountcode", default="", help="The channel's accountcode (a friend's).")
@click.option("--at", "at_text", default=None, help="Start time, ISO-8601 (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def simulate(
    account_key: str,
    number: str,
    callerid: str,
    accountcode: str,
    at_text: str | None,
    as_json: bool,
) -> None:
    """Run the call decision for ACCOUNT and NUMBER and print it; nothing is reserved.

    Shows the account, the checks, the normalised number, the routes in dialling order with the
    granted seconds and the reservation for each, and the Dial strings callgate would send.
    """
    settings = app().settings
    try:
        at = datetime.fromisoformat(at_text) if at_text else datetime.now(UTC)
    except ValueError as exc:
        raise click.UsageError(f"--at: not an ISO-8601 time: {at_text!r}") from exc
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)

    async def _go() -> dict[str, Any]:
        async with engine_for(settings) as engine:
            found = await SqlAccounts(engine).find_for_call(
                accountcode=accountcode, argument=account_key, callerid=callerid
            )
            if found is None:
                return {"status": "NO_ACCOUNT", "checks": ["no account for these identifiers"]}
            async with engine.connect() as conn:
                account = await fetch_account(conn, found.id)
                available = await ledger.available_credit(conn, account)
                in_use = await ledger.open_reservations(conn, account.id)
                routing = RoutingData(engine, lambda _pid: None)
                await routing.refresh()
                policy = flow_settings(settings)
                try:
                    digits = normalise_for_plan(routing, policy, account.call_plan_id, number)
                except RatingError:
                    digits = "0"  # reported below, by simulate_routes
                plan = await fetch_plan_for_number(conn, account.call_plan_id, digits)
                routing = RoutingData(engine, lambda _pid: plan)
                await routing.refresh()
            checks: list[str] = []
            status = "OK"
            try:
                ledger.check_usable(account, at)
                checks.append(f"status {account.status.value}: ok")
            except ledger.AccountUnusableError as exc:
                status = exc.status.value
                checks.append(str(exc))
            if account.channel_limit is not None:
                checks.append(f"channels {in_use}/{account.channel_limit}")
                if in_use >= account.channel_limit and status == "OK":
                    status = "CHANNEL_LIMIT"
            checks.append(f"available credit {available}")
            result: dict[str, Any] = {
                "account": {
                    "id": account.id,
                    "number": account.number,
                    "alias": account.alias,
                    "status": account.status.value,
                    "balance": account.balance,
                    "debit_limit": account.debit_limit,
                    "in_use": in_use,
                    "available": available,
                },
                "checks": checks,
                "number": "",
                "routes": [],
                "granted_seconds": 0,
                "reserve": "0",
                "dial": "",
            }
            try:
                normalised, routes = simulate_routes(
                    routing,
                    policy,
                    plan_id=account.call_plan_id,
                    dialled=number,
                    available=available,
                    uniqueid="simulated",
                    at=at,
                )
            except RatingError as exc:
                result.update(status="NO_RATE", checks=[*checks, str(exc)])
                return result
            result["number"] = normalised
            result["routes"] = [asdict(route) for route in routes]
            if not routes:
                status = "NO_RATE" if status == "OK" else status
            elif routes[0].granted_seconds <= 0 and status == "OK":
                status = "NO_CREDIT"
            if routes and status == "OK":
                result["granted_seconds"] = routes[0].granted_seconds
                result["reserve"] = routes[0].reserve
                result["dial"] = routes[0].dial
            result["status"] = status
            return result

    result = run(_go())
    if as_json:
        echo_json(result)
        return
    account = result.get("account")
    if account:
        click.echo(
            f"account   {account['number']} ({account['alias']}) status {account['status']} "
            f"balance {account['balance']} available {account['available']}"
        )
    for check in result["checks"]:
        click.echo(f"check     {check}")
    click.echo(f"number    {result.get('number', '')}")
    if result.get("routes"):
        echo_table(
            ["table", "prio", "prefix", "destination", "rate", "buy", "trunk", "secs", "reserve"],
            [
                [
                    r["table"],
                    r["priority"],
                    r["prefix"],
                    r["destination"],
                    r["rate"],
                    r["buy_rate"],
                    r["trunk"],
                    r["granted_seconds"],
                    r["reserve"],
                ]
                for r in result["routes"]
            ],
        )
    click.echo(f"granted   {result.get('granted_seconds', 0)} s, reserve {result.get('reserve')}")
    if result.get("dial"):
        click.echo(f"dial      Dial({result['dial']})")
    click.echo(f"status    {result['status']}")
