"""``callgate simulate``: the whole decision of a call, without Asterisk (ConnexCS's Simulate).

It runs the live flow's :class:`~callgate.agi.flows.call.CallDecision` (identification with IP
authentication and tech prefix, caller ID rules, rating, free package seconds, the ledger's
checks and grant, the Dial string) over read-only ports: nothing is reserved, held or charged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.simulation import simulate_call


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

    async def _go() -> dict[str, Any]:
        async with engine_for(settings) as engine:
            return await simulate_call(
                settings,
                engine,
                number=number,
                account_key=account_key,
                callerid=callerid,
                accountcode=accountcode,
                source_ip=source_ip,
                at=at,
            )

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
