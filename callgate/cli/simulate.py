"""``callgate simulate``: the whole decision of a call, without Asterisk (ConnexCS's Simulate).

It runs the live flow's :class:`~callgate.agi.flows.call.CallDecision` (identification with IP
authentication and tech prefix, caller ID rules, rating, free package seconds, the ledger's
checks and grant, the Dial string) over read-only ports: nothing is reserved, held or charged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import click

from callgate.agi.flows.call import CallDecision, CallState, flow_settings, route_grant
from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.store import ledger
from callgate.store.accounts import fetch_account
from callgate.store.callstore import QuoteLedger, SimulatedRouting, SimulatedWholesale, SqlAccounts

SIMULATED_UNIQUEID = "simulated"


@click.command()
@click.option("--account", "account_key", default="", help="Account number or alias.")
@click.option("--number", required=True, help="The dialled number.")
@click.option("--callerid", default="", help="Caller ID (identifies the account if no --account).")
@click.option("--accountcode", default="", help="The channel's accountcode (a friend's).")
@click.option(
    "--source-ip",
    default="",
    help="The SIP source address of the call (ConnexCS's Switch IP): IP authentication.",
)
@click.option("--at", "at_text", default=None, help="Start time, ISO-8601 (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def simulate(
    account_key: str,
    number: str,
    callerid: str,
    accountcode: str,
    source_ip: str,
    at_text: str | None,
    as_json: bool,
) -> None:
    """Run the call decision for NUMBER and print it; nothing is reserved.

    The same code as the server's ``call`` flow: the account (by --source-ip's IP entry, else
    --accountcode, --account, --callerid), the checks (status, caller ID rules, channel and CPS
    limits), the normalised number, the routes in dialling order with the seconds each would
    grant, the free package seconds, and the Dial string callgate would send.
    """
    settings = app().settings
    try:
        at = datetime.fromisoformat(at_text) if at_text else datetime.now(UTC)
    except ValueError as exc:
        raise click.UsageError(f"--at: not an ISO-8601 time: {at_text!r}") from exc
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    policy = flow_settings(settings)

    async def _go() -> dict[str, Any]:
        async with engine_for(settings) as engine:
            routing = SimulatedRouting(engine)
            wholesale = SimulatedWholesale(engine, zone=ZoneInfo(settings.billing.timezone))
            await routing.refresh()
            await wholesale.refresh()
            decision = CallDecision(
                accounts=SqlAccounts(engine),
                plans=routing,
                credit=QuoteLedger(engine),
                settings=policy,
                ips=wholesale,
                cli_rules=wholesale,
                packages=wholesale,
            )
            state = CallState(
                uniqueid=SIMULATED_UNIQUEID,
                script="call",
                started_at=at,
                channel="",
                callerid=callerid,
                dialled=number,
                source_address=source_ip,
            )
            verdict = await decision.decide(state, accountcode=accountcode, argument=account_key)
            result: dict[str, Any] = {
                "status": verdict.status,
                "reason": verdict.reason,
                "checks": [],
                "number": state.number,
                "routes": [],
                "granted_seconds": state.granted if verdict.status == "OK" else 0,
                "free_seconds": state.free.seconds if state.free is not None else 0,
                "reserve": "0",
                "callerid": state.presented_callerid or state.callerid,
                "dial": verdict.dial if verdict.status == "OK" else "",
            }
            checks: list[str] = result["checks"]
            if state.ip is not None:
                checks.append(
                    f"identified by IP entry {state.ip.id} ({state.ip.address}, tech prefix "
                    f"{state.ip.tech_prefix or '-'})"
                )
            if state.account is None:
                checks.append(verdict.reason)
                return result
            async with engine.connect() as conn:
                account = await fetch_account(conn, state.account.id)
                available = await ledger.available_credit(conn, account)
                in_use = await ledger.open_reservations(conn, account.id)
            result["account"] = {
                "id": account.id,
                "number": account.number,
                "alias": account.alias,
                "status": account.status.value,
                "balance": account.balance,
                "debit_limit": account.debit_limit,
                "in_use": in_use,
                "available": available,
            }
            if account.channel_limit is not None:
                checks.append(f"channels {in_use}/{account.channel_limit}")
            checks.append(f"available credit {available}")
            if state.free is not None:
                checks.append(f"package {state.free.package}: {state.free.seconds} free seconds")
            if state.presented_callerid:
                checks.append(f"caller ID presented as {state.presented_callerid}")
            if verdict.reason:
                checks.append(verdict.reason)
            if verdict.status == "OK" and not verdict.dial:
                checks.append("the first route has no active trunk: the server fails over")
            routes = []
            for position, route in enumerate(verdict.routes):
                if position == 0 and verdict.status == "OK":
                    seconds, amount = state.granted, verdict.amount
                else:
                    seconds, amount = route_grant(route, available, verdict.cap, state.free)
                routes.append(
                    {
                        "table": route.table,
                        "priority": route.priority,
                        "prefix": route.rate.prefix,
                        "destination": route.rate.destination,
                        "rate": route.rate.rate,
                        "buy_rate": route.rate.buy_rate,
                        "trunk": route.trunk or "",
                        "granted_seconds": seconds,
                        "reserve": amount,
                    }
                )
            result["routes"] = routes
            if routes and verdict.status == "OK":
                result["reserve"] = routes[0]["reserve"]
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
    click.echo(
        f"granted   {result['granted_seconds']} s ({result['free_seconds']} free), "
        f"reserve {result['reserve']}"
    )
    if result.get("dial"):
        click.echo(f"dial      Dial({result['dial']})")
    click.echo(f"status    {result['status']}")
