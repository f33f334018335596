"""``callgate recordings``: calls recorded with MixMonitor (rate tables with record_calls)."""

from __future__ import annotations

import dataclasses

import click

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.store import accounts as account_store
from callgate.store import recordings as recording_store


@click.group("recordings")
def recordings() -> None:
    """Call recordings (files written by Asterisk's MixMonitor on the Asterisk host)."""


@recordings.command("list")
@click.option("--account", default=None, help="Only this account's recordings.")
@click.option("--limit", type=int, default=100, show_default=True, help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def recordings_list(account: str | None, limit: int, as_json: bool) -> None:
    """List recorded calls, newest first."""

    async def _go() -> list[recording_store.Recording]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            account_id = None
            if account:
                account_id = (await account_store.require_account(conn, account)).id
            return await recording_store.list_recordings(conn, account_id, limit=limit)

    found = run(_go())
    if as_json:
        echo_json([dataclasses.asdict(r) for r in found])
        return
    echo_table(
        ["UNIQUEID", "ACCOUNT", "STARTED", "NUMBER", "BILLSEC", "FILE"],
        [[r.uniqueid, r.account, r.started_at, r.number, r.billsec, r.path] for r in found],
    )


@recordings.command("path")
@click.argument("uniqueid")
def recordings_path(uniqueid: str) -> None:
    """Print the recording file of call UNIQUEID."""

    async def _go() -> str:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            return await recording_store.recording_path(conn, uniqueid)

    click.echo(run(_go()))
