"""``callgate cdr``: the billing records (list, streaming export, recalc) and Asterisk's own CDRs.

Dates (``--since``, ``--until``, ``--day``) are in the operator's zone (``billing.timezone``):
``--since 2026-11-21`` is local midnight. ``cdr export`` streams: rows go out as the database
cursor yields them, never all in memory.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TextIO

import click

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.cli.calls import parse_when, zone_of
from callgate.config import Settings
from callgate.schema.tables import CallStatus
from callgate.store import calls as call_store
from callgate.store.accounts import require_account
from callgate.store.cdrs import list_cdrs

_STATUSES = click.Choice([s.value for s in CallStatus], case_sensitive=False)
LIST_COLUMNS = (
    "started_at",
    "uniqueid",
    "account",
    "number",
    "destination",
    "trunk",
    "billsec",
    "cost",
    "dial_status",
    "status",
)


def _filters(func: Any) -> Any:
    options = [
        click.option("--account", help="Account number, alias or #id."),
        click.option("--since", help="Calls started at or after (YYYY-MM-DD or ISO time)."),
        click.option("--until", help="Calls started before (YYYY-MM-DD or ISO time)."),
        click.option("--status", type=_STATUSES, help="CALLGATE_STATUS of the call."),
        click.option("--destination", help="A number prefix, or part of the destination name."),
        click.option("--trunk", help="Only calls through this trunk."),
        click.option("--dial-status", help="DIALSTATUS (ANSWER, BUSY, NOANSWER...)."),
        click.option("--answered/--unanswered", default=None, help="Only (un)answered calls."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


async def _build_filter(conn: Any, settings: Settings, opts: dict[str, Any]) -> Any:
    zone = zone_of(settings)
    account_id = None
    if opts.get("account"):
        account_id = (await require_account(conn, opts["account"])).id
    status = opts.get("status")
    return call_store.CallFilter(
        account_id=account_id,
        since=parse_when(opts.get("since"), zone, "--since"),
        until=parse_when(opts.get("until"), zone, "--until"),
        status=CallStatus(status.upper()) if status else None,
        destination=opts.get("destination") or "",
        trunk=opts.get("trunk") or "",
        dial_status=opts.get("dial_status") or "",
        answered=opts.get("answered"),
    )


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


@click.group()
def cdr() -> None:
    """Call detail records: list, export, recalc; Asterisk's own CDRs."""


@cdr.command("list")
@_filters
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def list_command(limit: int, as_json: bool, **opts: Any) -> None:
    """The latest billing records matching the filters, newest first."""
    settings = app().settings
    parse_when(opts.get("since"), zone_of(settings), "--since")  # usage errors before any I/O
    parse_when(opts.get("until"), zone_of(settings), "--until")

    async def main() -> list[dict[str, Any]]:
        async with engine_for(settings) as engine, engine.connect() as conn:
            flt = await _build_filter(conn, settings, opts)
            return await call_store.list_calls(conn, flt, limit=limit)

    rows = run(main())
    if as_json:
        echo_json(rows)
        return
    echo_table(
        [c.upper() for c in LIST_COLUMNS], [[_text(r[c]) for c in LIST_COLUMNS] for r in rows]
    )


@cdr.command("export")
@_filters
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    default="csv",
    show_default=True,
    help="CSV with a header line, or one JSON object per line.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File (default: stdout).")
def export_command(fmt: str, output: str | None, **opts: Any) -> None:
    """Stream every billing record matching the filters, oldest first."""
    settings = app().settings
    parse_when(opts.get("since"), zone_of(settings), "--since")
    parse_when(opts.get("until"), zone_of(settings), "--until")
    columns = list(call_store.EXPORT_COLUMNS)

    async def main(stream: TextIO) -> int:
        count = 0
        writer = csv.writer(stream, lineterminator="\n")
        if fmt == "csv":
            writer.writerow(columns)
        async with engine_for(settings) as engine, engine.connect() as conn:
            flt = await _build_filter(conn, settings, opts)
            async for batch in call_store.iter_calls(conn, flt):
                for row in batch:
                    if fmt == "csv":
                        writer.writerow([_text(row[c]) for c in columns])
                    else:
                        line = json.dumps({c: _text(row[c]) for c in columns}, sort_keys=True)
                        stream.write(line + "\n")
                count += len(batch)
                stream.flush()
        return count

    with contextlib.ExitStack() as stack:
        stream: TextIO = sys.stdout
        if output:
            stream = stack.enter_context(open(output, "w", newline="", encoding="utf-8"))
        count = run(main(stream))
    click.echo(f"{count} record(s) exported", err=True)


@cdr.command("recalc")
@click.option("--day", required=True, help="The local day (YYYY-MM-DD) of the calls.")
@click.option(
    "--longer-than", type=click.IntRange(0), required=True, help="Calls billed more seconds."
)
@click.option(
    "--new-duration", type=click.IntRange(0), required=True, help="Their new billed seconds."
)
@click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def recalc_command(
    day: str, longer_than: int, new_duration: int, dry_run: bool, as_json: bool
) -> None:
    """Re-rate calls that ran into a timeout and refund the difference (ConnexCS's Recalc CDR).

    The calls of DAY billed more than --longer-than seconds are re-rated to --new-duration
    seconds; each refund is a completed adjustment payment and a note on the call. Running it
    twice changes nothing.
    """
    settings = app().settings
    try:
        the_day = date.fromisoformat(day)
    except ValueError as exc:
        raise click.BadParameter(f"not a date: {day!r}", param_hint="--day") from exc
    since, until = call_store.day_bounds(the_day, zone_of(settings))

    async def main() -> call_store.RecalcResult:
        async with engine_for(settings) as engine:
            return await call_store.recalc(
                engine,
                since=since,
                until=until,
                longer_than=longer_than,
                new_duration=new_duration,
                dry_run=dry_run,
            )

    result = run(main())
    rows = [
        {
            "uniqueid": c.uniqueid,
            "old_billsec": c.old_billsec,
            "new_billsec": c.new_billsec,
            "old_cost": c.old_cost,
            "new_cost": c.new_cost,
            "refund": c.refund,
        }
        for c in result.calls
    ]
    if as_json:
        echo_json({"dry_run": dry_run, "refunded": result.refunded, "calls": rows})
        return
    verb = "would be" if dry_run else "were"
    click.echo(f"{len(rows)} call(s) {verb} re-rated, refund {result.refunded}", err=True)
    if rows:
        keys = ["uniqueid", "old_billsec", "new_billsec", "old_cost", "new_cost", "refund"]
        echo_table([k.upper() for k in keys], [[r[k] for k in keys] for r in rows])


@cdr.command("asterisk")
@click.option("--uniqueid", help="Only the CDRs of this call (UniqueID or LinkedID).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def asterisk_command(uniqueid: str | None, limit: int, as_json: bool) -> None:
    """Asterisk's own CDRs as AMI delivered them (times are Asterisk's local time)."""
    settings = app().settings

    async def main() -> list[Any]:
        async with engine_for(settings) as engine, engine.connect() as conn:
            return await list_cdrs(conn, uniqueid=uniqueid, limit=limit)

    found = run(main())
    keys = [
        "uniqueid",
        "linkedid",
        "accountcode",
        "source",
        "destination",
        "channel",
        "last_application",
        "start_time",
        "answer_time",
        "end_time",
        "duration",
        "billsec",
        "disposition",
    ]
    if as_json:
        echo_json([{k: getattr(c, k) for k in keys} for c in found])
        return
    short = ["uniqueid", "source", "destination", "last_application", "start_time", "billsec",
             "disposition"]  # fmt: skip
    echo_table([k.upper() for k in short], [[getattr(c, k) for k in short] for c in found])
