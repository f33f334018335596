"""``callgate channels``: the calls up on Asterisk now, as the AMI listener sees them.

The view is written by ``callgate serve`` (with ``[ami] enabled``) and rebuilt from
``CoreShowChannels`` on every AMI login; this command only reads it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.store.accounts import find_account
from callgate.store.channels import LiveChannel, list_channels


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


@click.command()
@click.option("--account", help="Only this account's channels (account code, alias or #id).")
@click.option("--json", "as_json", is_flag=True, help="Print the channels as JSON.")
def channels(account: str | None, as_json: bool) -> None:
    """Live channels: channel, account, caller, destination, state, duration."""
    settings = app().settings

    async def main() -> list[LiveChannel]:
        async with engine_for(settings) as engine, engine.connect() as conn:
            codes: list[str] = []
            if account:
                codes.append(account)
                found = await find_account(conn, account)
                if found is not None and found.number != account:
                    codes.append(found.number)
            return await list_channels(conn, accountcodes=codes)

    found = run(main())
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {
            "uniqueid": c.uniqueid,
            "channel": c.channel,
            "account": c.accountcode,
            "caller": c.callerid,
            "destination": c.destination,
            "state": c.state,
            "application": c.application,
            "bridged_to": c.bridged_to,
            "server": c.server,
            "started_at": c.started_at,
            "answered_at": c.answered_at,
            "duration_seconds": c.duration_seconds(now),
        }
        for c in found
    ]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no live channels", err=True)
        return
    echo_table(
        ["CHANNEL", "ACCOUNT", "CALLER", "DESTINATION", "STATE", "DURATION"],
        [
            [
                r["channel"],
                r["account"],
                r["caller"],
                r["destination"],
                r["state"],
                _duration(r["duration_seconds"]),
            ]
            for r in rows
        ],
    )
