"""``callgate plans|tables|trunks|rates``: routing and pricing data.

- ``plans add|list|show|update|remove|attach|detach``: call plans, their rate tables (with
  priorities), the routing mode (lcr, priority, lcd) and the maximum call length.
- ``tables add|list|show|update|remove``: rate tables (a default trunk, a version bumped on
  every change of their routes).
- ``trunks add|list|update|remove``: the carriers' trunks.
- ``rates import|export|lookup``: CSV decks in and out (RATING.md column names, A2Billing's
  accepted on import), and what a number costs in a plan.

Thin commands over `callgate.store.plans` and `callgate.store.rates`; data to stdout, messages to
stderr, ``--json`` wherever data is printed and on every command that changes something (one JSON
document on stdout: the object as ``show``/``list --json`` print it, ``{"removed": ...}`` for a
removal, the counts for an import). A removal is refused, with what still uses the object,
while anything does; nothing is changed then.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.config import Settings
from callgate.rating import (
    CallPlan,
    InsufficientCreditError,
    InvalidRateError,
    NoRateError,
    Rate,
    Route,
    find_routes,
    parse_money,
    quote,
)
from callgate.schema.tables import EnabledStatus, RoutingMode, TrunkTechnology
from callgate.store import plans as store
from callgate.store import rates as store_rates
from callgate.store.db import write_transaction
from callgate.store.errors import NotFoundError

PROGRESS_MIN_BYTES = 1_000_000  # show a progress bar for decks larger than this

_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout."
)


def _zone(settings: Settings) -> tzinfo:
    try:
        return ZoneInfo(settings.billing.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise click.UsageError(f"unknown time zone {settings.billing.timezone!r}") from exc


# --- plans ---------------------------------------------------------------------------------------


@click.group()
def plans() -> None:
    """Call plans: which rate tables price an account's calls, and how routes are chosen."""


def _plan_data(plan: store.CallPlanRow, links: list[store.PlanTableLink]) -> dict[str, Any]:
    return {
        "name": plan.name,
        "routing_mode": plan.routing_mode.value,
        "max_call_seconds": plan.max_call_seconds,
        "remove_international_prefix": plan.remove_international_prefix,
        "description": plan.description,
        "tables": [{"table": link.rate_table, "priority": link.priority} for link in links],
    }


@plans.command("add")
@click.argument("name")
@click.option(
    "--mode",
    type=click.Choice([m.value for m in RoutingMode]),
    default=RoutingMode.LCR.value,
    show_default=True,
    help="Route order: lcr (buy rate), priority (table priority), lcd (sell rate).",
)
@click.option(
    "--max-call-seconds",
    type=click.IntRange(min=1),
    default=36000,
    show_default=True,
    help="Longest call allowed on this plan, whatever the credit.",
)
@click.option(
    "--keep-international-prefix",
    is_flag=True,
    help="Do not strip the international prefix (00, 011...) before rating.",
)
@click.option("--description", default="", help="Free text.")
@_json_option
def plans_add(
    name: str,
    mode: str,
    max_call_seconds: int,
    keep_international_prefix: bool,
    description: str,
    as_json: bool,
) -> None:
    """Create a call plan NAME."""

    async def _go() -> dict[str, Any]:
        async with engine_for(app().settings) as engine, engine.begin() as conn:
            plan = await store.create_call_plan(
                conn,
                name=name,
                routing_mode=mode,
                max_call_seconds=max_call_seconds,
                remove_international_prefix=not keep_international_prefix,
                description=description,
            )
            return _plan_data(plan, [])

    data = run(_go())
    if as_json:
        echo_json(data)
    click.echo(f"call plan {data['name']} created ({data['routing_mode']})", err=True)


@plans.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plans_list(as_json: bool) -> None:
    """List the call plans with their rate tables."""

    async def _go() -> list[dict[str, Any]]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            return [
                _plan_data(plan, await store.plan_tables(conn, plan.id))
                for plan in await store.list_call_plans(conn)
            ]

    data = run(_go())
    if as_json:
        echo_json(data)
        return
    echo_table(
        ["name", "mode", "max_call_seconds", "tables"],
        [
            [
                p["name"],
                p["routing_mode"],
                p["max_call_seconds"],
                ", ".join(f"{t['table']}:{t['priority']}" for t in p["tables"]),
            ]
            for p in data
        ],
    )


@plans.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plans_show(name: str, as_json: bool) -> None:
    """Show call plan NAME and its rate tables by priority."""

    async def _go() -> dict[str, Any]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            plan = await store.fetch_call_plan(conn, name)
            return _plan_data(plan, await store.plan_tables(conn, plan.id))

    data = run(_go())
    if as_json:
        echo_json(data)
        return
    for key in ("name", "routing_mode", "max_call_seconds", "remove_international_prefix"):
        click.echo(f"{key}: {data[key]}")
    if data["description"]:
        click.echo(f"description: {data['description']}")
    click.echo("")
    echo_table(["priority", "table"], [[t["priority"], t["table"]] for t in data["tables"]])


@plans.command("attach")
@click.argument("plan")
@click.argument("table")
@click.option(
    "--priority",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Lower is preferred (orders routes in priority mode, breaks ties in lcr/lcd).",
)
@_json_option
def plans_attach(plan: str, table: str, priority: int, as_json: bool) -> None:
    """Add rate table TABLE to call plan PLAN (or change its priority there).

    With --json, prints the plan as `plans show --json` does."""

    async def _go() -> dict[str, Any]:
        async with engine_for(app().settings) as engine, engine.begin() as conn:
            await store_rates.attach_table(conn, plan, table, priority=priority)
            return await _plan_json(conn, plan)

    data = run(_go())
    if as_json:
        echo_json(data)
    click.echo(f"rate table {table} in call plan {plan} at priority {priority}", err=True)


@plans.command("detach")
@click.argument("plan")
@click.argument("table")
@_json_option
def plans_detach(plan: str, table: str, as_json: bool) -> None:
    """Remove rate table TABLE from call plan PLAN (the table itself stays).

    With --json, prints the plan as `plans show --json` does."""

    async def _go() -> dict[str, Any]:
        async with engine_for(app().settings) as engine, engine.begin() as conn:
            await store_rates.detach_table(conn, plan, table)
            return await _plan_json(conn, plan)

    data = run(_go())
    if as_json:
        echo_json(data)
    click.echo(f"rate table {table} removed from call plan {plan}", err=True)


async def _plan_json(conn: AsyncConnection, name: str) -> dict[str, Any]:
    plan = await store.fetch_call_plan(conn, name)
    return _plan_data(plan, await store.plan_tables(conn, plan.id))


@plans.command("update")
@click.argument("name")
@click.option("--name", "new_name", default=None, help="New name of the call plan.")
@click.option(
    "--mode",
    type=click.Choice([m.value for m in RoutingMode]),
    default=None,
    help="Route order: lcr (buy rate), priority (table priority), lcd (sell rate).",
)
@click.option(
    "--max-call-seconds",
    type=click.IntRange(min=1),
    default=None,
    help="Longest call allowed on this plan, whatever the credit.",
)
@click.option(
    "--keep-international-prefix/--remove-international-prefix",
    "keep_international_prefix",
    default=None,
    help="Keep (or strip, as `plans add` does by default) the international prefix.",
)
@click.option("--description", default=None, help="Free text.")
@_json_option
def plans_update(
    name: str,
    new_name: str | None,
    mode: str | None,
    max_call_seconds: int | None,
    keep_international_prefix: bool | None,
    description: str | None,
    as_json: bool,
) -> None:
    """Change call plan NAME (only the options given); --name renames it.

    Accounts, rate tables and their priorities stay with the plan. Running servers see the
    change at once on PostgreSQL, within their poll interval on SQLite."""
    remove_prefix = None if keep_international_prefix is None else not keep_international_prefix

    async def _go() -> dict[str, Any]:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            plan = await store.update_call_plan(
                conn,
                name,
                new_name=new_name,
                routing_mode=mode,
                max_call_seconds=max_call_seconds,
                remove_international_prefix=remove_prefix,
                description=description,
            )
            return _plan_data(plan, await store.plan_tables(conn, plan.id))

    data = run(_go())
    if as_json:
        echo_json(data)
    renamed = f" (now {data['name']})" if data["name"] != name else ""
    click.echo(f"call plan {name} updated{renamed}", err=True)


@plans.command("remove")
@click.argument("name")
@_json_option
def plans_remove(name: str, as_json: bool) -> None:
    """Remove call plan NAME and its links to rate tables (the tables stay).

    Refused while accounts use the plan (move them first: `callgate accounts batch-update
    --plan NAME --set plan=OTHER`). With --json, prints {"removed": <the plan as it was>}."""

    async def _go() -> dict[str, Any]:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            plan, links = await store.remove_call_plan(conn, name)
            return _plan_data(plan, links)

    data = run(_go())
    if as_json:
        echo_json({"removed": data})
    detached = f" ({len(data['tables'])} rate table(s) detached)" if data["tables"] else ""
    click.echo(f"call plan {name} removed{detached}", err=True)


# --- tables --------------------------------------------------------------------------------------


@click.group()
def tables() -> None:
    """Rate tables: sets of rates by prefix, each with an optional default trunk."""


def _table_data(
    table: store.RateTableRow, trunk_names: dict[int, str], count: int
) -> dict[str, Any]:
    return {
        "name": table.name,
        "trunk": None if table.trunk_id is None else trunk_names.get(table.trunk_id),
        "record_calls": table.record_calls,
        "description": table.description,
        "version": table.version,
        "updated_at": table.updated_at,
        "rates": count,
    }


@tables.command("add")
@click.argument("name")
@click.option("--trunk", default=None, help="Default trunk of the table's rates.")
@click.option("--record-calls", is_flag=True, help="Record the calls priced by this table.")
@click.option("--description", default="", help="Free text.")
@_json_option
def tables_add(
    name: str, trunk: str | None, record_calls: bool, description: str, as_json: bool
) -> None:
    """Create an empty rate table NAME (fill it with `callgate rates import`).

    With --json, prints the table as `tables show --json` does."""

    async def _go() -> dict[str, Any]:
        async with engine_for(app().settings) as engine, engine.begin() as conn:
            table = await store.create_rate_table(
                conn, name=name, trunk=trunk, record_calls=record_calls, description=description
            )
            return await _table_json(conn, table)

    data = run(_go())
    if as_json:
        echo_json(data)
    click.echo(f"rate table {name} created", err=True)


async def _table_json(conn: AsyncConnection, table: store.RateTableRow) -> dict[str, Any]:
    """A rate table as `tables show --json` prints it."""
    names = {t.id: t.name for t in await store.list_trunks(conn)}
    counts = await store_rates.rate_counts(conn)
    data = _table_data(table, names, counts.get(table.id, 0))
    data["plans"] = [
        {"plan": plan, "priority": priority}
        for plan, priority in await store_rates.plans_of_table(conn, table.id)
    ]
    return data


@tables.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tables_list(as_json: bool) -> None:
    """List the rate tables with their trunk, size and version."""

    async def _go() -> list[dict[str, Any]]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            names = {t.id: t.name for t in await store.list_trunks(conn)}
            counts = await store_rates.rate_counts(conn)
            return [
                _table_data(table, names, counts.get(table.id, 0))
                for table in await store.list_rate_tables(conn)
            ]

    data = run(_go())
    if as_json:
        echo_json(data)
        return
    echo_table(
        ["name", "trunk", "rates", "version", "updated_at"],
        [[t["name"], t["trunk"], t["rates"], t["version"], _when(t["updated_at"])] for t in data],
    )


def _when(value: datetime | None) -> str:
    return "" if value is None else value.isoformat(timespec="seconds")


@tables.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tables_show(name: str, as_json: bool) -> None:
    """Show rate table NAME: trunk, size, version and the call plans it is in."""

    async def _go() -> dict[str, Any]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            return await _table_json(conn, await store.fetch_rate_table(conn, name))

    data = run(_go())
    if as_json:
        echo_json(data)
        return
    for key in ("name", "trunk", "rates", "version", "record_calls"):
        click.echo(f"{key}: {'' if data[key] is None else data[key]}")
    click.echo(f"updated_at: {_when(data['updated_at'])}")
    if data["description"]:
        click.echo(f"description: {data['description']}")
    plans_text = ", ".join(f"{p['plan']}:{p['priority']}" for p in data["plans"])
    click.echo(f"plans: {plans_text}")


@tables.command("update")
@click.argument("name")
@click.option("--name", "new_name", default=None, help="New name of the rate table.")
@click.option("--trunk", default=None, help="Default trunk of the table's rates.")
@click.option("--no-trunk", is_flag=True, help="Clear the default trunk.")
@click.option(
    "--record-calls/--no-record-calls",
    "record_calls",
    default=None,
    help="Record (or stop recording) the calls priced by this table.",
)
@click.option("--description", default=None, help="Free text.")
@_json_option
def tables_update(
    name: str,
    new_name: str | None,
    trunk: str | None,
    no_trunk: bool,
    record_calls: bool | None,
    description: str | None,
    as_json: bool,
) -> None:
    """Change rate table NAME (only the options given); --name renames it.

    A new name or default trunk bumps the table's version, so running servers rebuild its
    routes (at once on PostgreSQL). Its rates and call plans stay. Call records keep the name
    the table had when they were priced."""
    if trunk is not None and no_trunk:
        raise click.UsageError("give either --trunk or --no-trunk, not both")
    if trunk == "":
        raise click.BadParameter(
            "empty: use --no-trunk to clear the default trunk", param_hint="--trunk"
        )
    new_trunk = "" if no_trunk else trunk

    async def _go() -> dict[str, Any]:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            table = await store.update_rate_table(
                conn,
                name,
                new_name=new_name,
                trunk=new_trunk,
                record_calls=record_calls,
                description=description,
            )
            return await _table_json(conn, table)

    data = run(_go())
    if as_json:
        echo_json(data)
    renamed = f" (now {data['name']})" if data["name"] != name else ""
    click.echo(f"rate table {name} updated{renamed}; version {data['version']}", err=True)


@tables.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Remove it even though it holds rates (they go too).")
@_json_option
def tables_remove(name: str, yes: bool, as_json: bool) -> None:
    """Remove rate table NAME and its rates.

    Refused while the table is in a call plan (`callgate plans detach PLAN NAME` first) or
    prices calls not settled yet; a table holding rates needs --yes. Call records keep what
    they were charged (the table's name, the prefix, prices and cost are copied into each).
    With --json, prints {"removed": <the table as it was>}."""

    async def _go() -> dict[str, Any]:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            names = {t.id: t.name for t in await store.list_trunks(conn)}
            removed = await store.remove_rate_table(conn, name, with_rates=yes)
            # as `tables show --json` printed it just before (in no plan, or it would stay)
            return {**_table_data(removed.table, names, removed.rates), "plans": []}

    data = run(_go())
    if as_json:
        echo_json({"removed": data})
    click.echo(f"rate table {name} removed with its {data['rates']} rate(s)", err=True)


# --- trunks --------------------------------------------------------------------------------------


@click.group()
def trunks() -> None:
    """Trunks: where calls go out (technology, peer, dial prefix, failover)."""


def _trunk_data(trunk: store.Trunk, names: dict[int, str]) -> dict[str, Any]:
    return {
        "name": trunk.name,
        "technology": trunk.technology.value,
        "peer": trunk.peer,
        "dial_prefix": trunk.dial_prefix,
        "strip_digits": trunk.strip_digits,
        "dial_options": trunk.dial_options,
        "failover": None if trunk.failover_trunk_id is None else names[trunk.failover_trunk_id],
        "channel_limit": trunk.channel_limit,
        "status": trunk.status.value,
    }


_TECHNOLOGY = click.Choice([t.value for t in TrunkTechnology])
_STATUS = click.Choice([s.value for s in EnabledStatus])


@trunks.command("add")
@click.argument("name")
@click.option("--technology", type=_TECHNOLOGY, required=True, help="Channel technology.")
@click.option("--peer", required=True, help="Endpoint/peer name or host.")
@click.option("--dial-prefix", default="", help="Digits put before the number.")
@click.option("--strip-digits", type=click.IntRange(min=0), default=0, help="Digits removed first.")
@click.option("--dial-options", default="", help="Extra Dial() options.")
@click.option("--failover", default=None, help="Trunk to try when this one fails.")
@click.option("--channel-limit", type=click.IntRange(min=0), default=None, help="Max channels.")
@click.option("--status", type=_STATUS, default=EnabledStatus.ACTIVE.value, show_default=True)
@_json_option
def trunks_add(
    name: str,
    technology: str,
    peer: str,
    dial_prefix: str,
    strip_digits: int,
    dial_options: str,
    failover: str | None,
    channel_limit: int | None,
    status: str,
    as_json: bool,
) -> None:
    """Create a trunk NAME.

    With --json, prints the trunk as an item of `trunks list --json`."""

    async def _go() -> dict[str, Any]:
        async with engine_for(app().settings) as engine, engine.begin() as conn:
            trunk = await store.create_trunk(
                conn,
                name=name,
                technology=technology,
                peer=peer,
                dial_prefix=dial_prefix,
                strip_digits=strip_digits,
                dial_options=dial_options,
                failover=failover,
                channel_limit=channel_limit,
                status=status,
            )
            return await _trunk_json(conn, trunk)

    data = run(_go())
    if as_json:
        echo_json(data)
    click.echo(f"trunk {name} created", err=True)


async def _trunk_json(conn: AsyncConnection, trunk: store.Trunk) -> dict[str, Any]:
    """A trunk as an item of `trunks list --json`."""
    return _trunk_data(trunk, {t.id: t.name for t in await store.list_trunks(conn)})


@trunks.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def trunks_list(as_json: bool) -> None:
    """List the trunks."""

    async def _go() -> list[dict[str, Any]]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            found = await store.list_trunks(conn)
            names = {t.id: t.name for t in found}
            return [_trunk_data(trunk, names) for trunk in found]

    data = run(_go())
    if as_json:
        echo_json(data)
        return
    headers = ["name", "technology", "peer", "dial_prefix", "strip_digits", "failover"]
    echo_table(
        [*headers, "channel_limit", "status"],
        [[t[h] for h in [*headers, "channel_limit", "status"]] for t in data],
    )


@trunks.command("update")
@click.argument("name")
@click.option("--technology", type=_TECHNOLOGY, default=None, help="Channel technology.")
@click.option("--peer", default=None, help="Endpoint/peer name or host.")
@click.option("--dial-prefix", default=None, help="Digits put before the number.")
@click.option("--strip-digits", type=click.IntRange(min=0), default=None, help="Digits removed.")
@click.option("--dial-options", default=None, help="Extra Dial() options.")
@click.option("--failover", default=None, help='Failover trunk ("" to clear).')
@click.option("--channel-limit", type=click.IntRange(min=0), default=None, help="Max channels.")
@click.option("--status", type=_STATUS, default=None, help="active or inactive.")
@_json_option
def trunks_update(name: str, as_json: bool, **changes: Any) -> None:
    """Change trunk NAME (only the options given).

    An unknown trunk (NAME or --failover) is an error and changes nothing. With --json,
    prints the trunk as an item of `trunks list --json`."""
    if changes.get("failover") == name:
        raise click.BadParameter(
            f"trunk {name} cannot fail over to itself", param_hint="--failover"
        )

    async def _go() -> dict[str, Any]:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            trunk = await store.fetch_trunk(conn, name)
            failover = changes.get("failover")
            if failover:
                try:
                    await store.fetch_trunk(conn, failover)
                except NotFoundError as exc:
                    raise NotFoundError(f"no trunk named {failover!r} (--failover)") from exc
            trunk = await store.update_trunk(conn, trunk.name, **changes)
            return await _trunk_json(conn, trunk)

    data = run(_go())
    if as_json:
        echo_json(data)
    click.echo(f"trunk {name} updated", err=True)


@trunks.command("remove")
@click.argument("name")
@_json_option
def trunks_remove(name: str, as_json: bool) -> None:
    """Remove trunk NAME.

    Refused while another trunk fails over to it, a rate table has it as default trunk, a
    rate names it or a DID comes in on it (the message says which). Call records keep the
    trunk's name. With --json, prints {"removed": <the trunk as it was>}."""

    async def _go() -> dict[str, Any]:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            names = {t.id: t.name for t in await store.list_trunks(conn)}
            return _trunk_data(await store.remove_trunk(conn, name), names)

    data = run(_go())
    if as_json:
        echo_json({"removed": data})
    click.echo(f"trunk {name} removed", err=True)


# --- rates ---------------------------------------------------------------------------------------


@click.group()
def rates() -> None:
    """Rate decks: import and export CSV, look up what a number costs."""


def _progress_lines(lines: Iterable[str], bar: Any, every: int = 5000) -> Iterator[str]:
    pending = 0
    for count, line in enumerate(lines, 1):
        pending += len(line)
        if count % every == 0:
            bar.update(pending)
            pending = 0
        yield line
    bar.update(pending)


@rates.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--table", "table", required=True, help="Rate table to fill.")
@click.option("--replace", is_flag=True, help="Replace the table's rates (atomically).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"table", "imported", "replaced", "version"} as JSON on stdout.',
)
def rates_import(file: str, table: str, replace: bool, quiet: bool, as_json: bool) -> None:
    """Import a CSV deck FILE into a rate table, all or nothing.

    One header row; columns named as in RATING.md (prefix, destination, rate, connect_fee,
    disconnect_fee, disconnect_after, initial_block, increment, minimal_cost, buy_rate,
    buy_initial_block, buy_increment, valid_from, valid_to, week_start, week_end, trunk) or as
    A2Billing exports them (dialprefix, rateinitial, initblock, billingblock, connectcharge,
    disconnectcharge, buyrate, buyrateinitblock, buyrateincrement, startdate, stopdate). Times
    are ISO-8601; without a zone they are in billing.timezone. A bad line is reported with its
    line number and nothing is imported.
    """
    settings = app().settings
    zone = _zone(settings)
    source = "<stdin>" if file == "-" else file

    async def _go(lines: Iterable[str]) -> store_rates.ImportResult:
        async with engine_for(settings) as engine, write_transaction(engine) as conn:
            return await store_rates.import_rates(
                conn, table, lines, zone=zone, replace=replace, source=source
            )

    if file == "-":
        result = run(_go(sys.stdin))
    else:
        size = os.path.getsize(file)
        with open(file, encoding="utf-8", newline="") as handle:
            if quiet or size < PROGRESS_MIN_BYTES:
                result = run(_go(handle))
            else:
                stderr = sys.stderr
                label = f"importing {source}"
                with click.progressbar(length=size, label=label, file=stderr) as bar:
                    result = run(_go(_progress_lines(handle, bar)))
    if as_json:
        echo_json(
            {
                "table": result.table,
                "imported": result.imported,
                "replaced": result.deleted,
                "version": result.version,
            }
        )
    replaced = f", {result.deleted} replaced" if replace else ""
    click.echo(
        f"imported {result.imported} rate(s) into {result.table}{replaced}; "
        f"version {result.version}",
        err=True,
    )


@rates.command("export")
@click.option("--table", "table", required=True, help="Rate table to export.")
@click.argument("file", required=False, type=click.Path(dir_okay=False, writable=True))
def rates_export(table: str, file: str | None) -> None:
    """Write a rate table as CSV (RATING.md columns) to FILE, or to stdout.

    Times are written in UTC; `rates import` of the file gives the same table back.
    """

    async def _go(out: TextIO) -> int:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(store_rates.CSV_COLUMNS)
        count = 0
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            found = await store.fetch_rate_table(conn, table)
            async for batch in store_rates.iter_rates(conn, found.id, ordered=True):
                writer.writerows(store_rates.format_csv_row(rate) for rate in batch)
                count += len(batch)
        return count

    if file is None:
        count = run(_go(sys.stdout))
    else:
        with open(file, "w", encoding="utf-8", newline="") as out:
            count = run(_go(out))
    click.echo(f"exported {count} rate(s) from {table}", err=True)


def _parse_at(value: str | None, zone: tzinfo) -> datetime:
    if value is None:
        return datetime.now(zone)
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO-8601 time: {value!r}", param_hint="--at") from exc
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=zone)
    return stamp.astimezone(zone)  # week windows read the operator's wall clock


def _route_data(route: Route) -> dict[str, Any]:
    rate: Rate = route.rate
    return {
        "table": route.table,
        "priority": route.priority,
        "prefix": rate.prefix,
        "destination": rate.destination,
        "rate": rate.rate,
        "connect_fee": rate.connect_fee,
        "disconnect_fee": rate.disconnect_fee,
        "disconnect_after": rate.disconnect_after,
        "initial_block": rate.initial_block,
        "increment": rate.increment,
        "minimal_cost": rate.minimal_cost,
        "buy_rate": rate.buy_rate,
        "buy_initial_block": rate.buy_initial_block,
        "buy_increment": rate.buy_increment,
        "trunk": route.trunk,
        "rate_id": rate.id,
    }


@rates.command("lookup")
@click.argument("number")
@click.option("--plan", "plan", required=True, help="Call plan to rate in.")
@click.option("--at", "at", default=None, help="Call start, ISO-8601 (default: now).")
@click.option("--available", default=None, help="Credit available: show the grant and reserve.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def rates_lookup(
    number: str, plan: str, at: str | None, available: str | None, as_json: bool
) -> None:
    """Show the routes for NUMBER in call plan PLAN, best first, and their prices.

    NUMBER is rated as given (digits, already normalised). With --available, also the seconds
    granted on the first route and the amount reserved for them (as a call would get).
    """
    settings = app().settings
    zone = _zone(settings)
    start = _parse_at(at, zone)
    credit: Decimal | None = None
    if available is not None:
        try:
            credit = parse_money(available, "available")
        except InvalidRateError as exc:
            raise click.BadParameter(exc.message, param_hint="--available") from exc

    async def _go() -> CallPlan:
        async with engine_for(settings) as engine, engine.connect() as conn:
            return await store_rates.fetch_plan_for_number(conn, plan, number)

    call_plan = run(_go())
    routes = find_routes(call_plan, number, start)
    data: dict[str, Any] = {
        "number": number,
        "plan": call_plan.name,
        "routing_mode": call_plan.mode.value,
        "at": start,
        "routes": [_route_data(route) for route in routes],
    }
    if credit is not None and routes:
        data["available"] = credit
        try:
            answer = quote(call_plan, number, credit, call_plan.max_call_seconds, start)
            data["granted_seconds"], data["reserve"] = answer.granted_seconds, answer.reserve
        except InsufficientCreditError:
            data["granted_seconds"], data["reserve"] = 0, Decimal(0)
        except NoRateError:  # pragma: no cover - routes were found just above
            pass
    if as_json:
        echo_json(data)
    else:
        _print_lookup(data)
    if not routes:
        raise click.ClickException(f"no rate for {number} in call plan {call_plan.name}")


def _print_lookup(data: dict[str, Any]) -> None:
    click.echo(f"{data['number']} in {data['plan']} ({data['routing_mode']}) at {data['at']}")
    rows = []
    for route in data["routes"]:
        fees = f"{route['connect_fee']}+{route['disconnect_fee']}"
        if route["disconnect_after"]:
            fees += f"@{route['disconnect_after']}s"
        rows.append(
            [
                route["table"],
                route["priority"],
                route["prefix"],
                route["destination"],
                route["rate"],
                f"{route['initial_block']}/{route['increment']}",
                fees,
                route["minimal_cost"],
                route["buy_rate"],
                f"{route['buy_initial_block']}/{route['buy_increment']}",
                route["trunk"],
            ]
        )
    echo_table(
        [
            "table",
            "priority",
            "prefix",
            "destination",
            "sell",
            "blocks",
            "fees",
            "minimal",
            "buy",
            "buy_blocks",
            "trunk",
        ],
        rows,
    )
    if "granted_seconds" in data:
        click.echo(
            f"available {data['available']}: granted {data['granted_seconds']} s, "
            f"reserve {data['reserve']}"
        )
