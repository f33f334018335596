"""``callgate packages``: free minutes, free calls or unlimited calls per period."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import click

from callgate.alerts import AlertService, SmtpSender
from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.schema.tables import PackageKind, PackagePeriod
from callgate.store import accounts as account_store
from callgate.store import packages as package_store
from callgate.store.db import write_transaction
from callgate.store.errors import InvalidDataError

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _package_dict(p: package_store.Package) -> dict[str, Any]:
    """A package as `packages list --json` prints it."""
    return dataclasses.asdict(p)


def _amount(text: str, flag: str) -> Decimal:
    try:
        return account_store.parse_amount(text, flag.lstrip("-"))
    except InvalidDataError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from exc


@click.group("packages")
def packages() -> None:
    """Packages: free minutes, free calls or unlimited calls to a set of prefixes."""


@packages.command("add")
@click.argument("name")
@click.option(
    "--kind",
    type=click.Choice([k.value for k in PackageKind]),
    required=True,
    help="What it gives.",
)
@click.option(
    "--period",
    type=click.Choice([p.value for p in PackagePeriod]),
    default=PackagePeriod.MONTHLY.value,
    show_default=True,
    help="How often the allowance renews (and the price is charged).",
)
@click.option("--quantity", type=int, default=0, help="Minutes or calls per period and unit.")
@click.option("--price", default="0", show_default=True, help="Price per period and unit.")
@click.option("--prefixes", default="", help="Comma-separated prefixes covered (default: all).")
@click.option("--description", default="", help="A note.")
@_json_option
def packages_add(
    name: str,
    kind: str,
    period: str,
    quantity: int,
    price: str,
    prefixes: str,
    description: str,
    as_json: bool,
) -> None:
    """Create package NAME."""

    async def _go() -> package_store.Package:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            return await package_store.add_package(
                conn,
                name,
                PackageKind(kind),
                period=PackagePeriod(period),
                quantity=quantity,
                price=account_store.parse_amount(price, "price"),
                prefixes=prefixes,
                description=description,
            )

    created = run(_go())
    if as_json:
        echo_json(_package_dict(created))
    click.echo(f"package {created.name!r} created", err=True)


@packages.command("update")
@click.argument("name")
@click.option("--name", "new_name", default=None, help="New name of the package.")
@click.option(
    "--kind",
    type=click.Choice([k.value for k in PackageKind]),
    default=None,
    help="What it gives (not while accounts hold it).",
)
@click.option(
    "--period",
    type=click.Choice([p.value for p in PackagePeriod]),
    default=None,
    help="How often it renews (not while accounts hold it).",
)
@click.option("--quantity", type=int, default=None, help="Minutes or calls per period and unit.")
@click.option("--price", default=None, help="Price per period and unit.")
@click.option("--prefixes", default=None, help="Comma-separated prefixes ('' for all).")
@click.option("--description", default=None, help="A note.")
@_json_option
def packages_update(
    name: str,
    new_name: str | None,
    kind: str | None,
    period: str | None,
    quantity: int | None,
    price: str | None,
    prefixes: str | None,
    description: str | None,
    as_json: bool,
) -> None:
    """Change package NAME: only the options given; --name renames it.

    The kind and the period cannot change while accounts hold the package (their charged
    periods and used free seconds count by them); the rest can. A new price is charged from the
    next period not yet charged; running servers see new prefixes within 30 s."""
    changes: dict[str, Any] = {
        field: value
        for field, value in (
            ("name", new_name),
            ("quantity", quantity),
            ("prefixes", prefixes),
            ("description", description),
        )
        if value is not None
    }
    if kind is not None:
        changes["kind"] = PackageKind(kind)
    if period is not None:
        changes["period"] = PackagePeriod(period)
    if price is not None:
        changes["price"] = _amount(price, "--price")
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")

    async def _go() -> package_store.Package:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            return await package_store.update_package(conn, name, changes)

    changed = run(_go())
    if as_json:
        echo_json(_package_dict(changed))
    renamed = f" (now {changed.name!r})" if changed.name != name else ""
    click.echo(f"package {name!r} updated{renamed}", err=True)


@packages.command("remove")
@click.argument("name")
@_json_option
def packages_remove(name: str, as_json: bool) -> None:
    """Remove package NAME. Refused while accounts hold it (`packages unassign` first); the
    charges already made and their payments stay. With --json, prints {"removed": <it>}."""

    async def _go() -> package_store.Package:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            return await package_store.remove_package(conn, name)

    removed = run(_go())
    if as_json:
        echo_json({"removed": _package_dict(removed)})
    click.echo(f"package {name!r} removed", err=True)


@packages.command("list")
@click.option("--account", default=None, help="The packages this account holds instead.")
@_json_option
def packages_list(account: str | None, as_json: bool) -> None:
    """List the packages (or an account's assignments)."""

    async def _go() -> list[package_store.Package] | list[package_store.Assignment]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            if account:
                found = await account_store.require_account(conn, account)
                return await package_store.list_assignments(conn, found.id)
            return await package_store.list_packages(conn)

    found = run(_go())
    if as_json:
        echo_json([dataclasses.asdict(x) for x in found])
        return
    rows: list[list[Any]] = []
    for item in found:
        held = item if isinstance(item, package_store.Assignment) else None
        p = held.package if held else item
        assert isinstance(p, package_store.Package)
        rows.append(
            [
                p.name,
                p.kind.value,
                p.period.value,
                p.quantity,
                p.price,
                ",".join(p.prefixes) or "*",
                held.quantity if held else "",
                ("yes" if held.auto_decrement else "no") if held else "",
            ]
        )
    echo_table(["NAME", "KIND", "PERIOD", "QUANTITY", "PRICE", "PREFIXES", "UNITS", "AUTO"], rows)


@packages.command("assign")
@click.argument("account")
@click.argument("name")
@click.option("--quantity", type=int, default=1, show_default=True, help="Units of the package.")
@click.option(
    "--auto-decrement",
    is_flag=True,
    help="Take price x units from the credit each period (`packages charge`).",
)
@_json_option
def packages_assign(
    account: str, name: str, quantity: int, auto_decrement: bool, as_json: bool
) -> None:
    """Give ACCOUNT the package NAME. With --json, the assignment as `packages list --account
    --json` shows it."""

    async def _go() -> package_store.Assignment:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            found = await account_store.require_account(conn, account)
            return await package_store.assign(
                conn, found.id, name, quantity=quantity, auto_decrement=auto_decrement
            )

    assigned = run(_go())
    if as_json:
        echo_json(dataclasses.asdict(assigned))
    click.echo(f"package {name!r} assigned to {account}", err=True)


@packages.command("unassign")
@click.argument("account")
@click.argument("name")
@_json_option
def packages_unassign(account: str, name: str, as_json: bool) -> None:
    """Take the package NAME from ACCOUNT (the charges made stay). With --json, prints
    {"removed": <the assignment>}."""

    async def _go() -> package_store.Assignment:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            found = await account_store.require_account(conn, account)
            return await package_store.unassign(conn, found.id, name)

    removed = run(_go())
    if as_json:
        echo_json({"removed": dataclasses.asdict(removed)})
    click.echo(f"package {name!r} taken from {account}", err=True)


@packages.command("charge")
@click.option(
    "--period",
    type=click.Choice([p.value for p in PackagePeriod]),
    default=None,
    help="Only packages of this period (default: all).",
)
@_json_option
def packages_charge(period: str | None, as_json: bool) -> None:
    """Run a period: charge every auto-decrement package for the current period, once per
    account, package and period (running it again charges nothing); then check alerts."""
    settings = app().settings

    async def _go() -> list[package_store.PeriodCharge]:
        zone = ZoneInfo(settings.billing.timezone)
        async with engine_for(settings) as engine:
            charges = await package_store.charge_packages(
                engine,
                now=datetime.now(UTC),
                zone=zone,
                period=PackagePeriod(period) if period else None,
            )
            alerts = AlertService(engine, SmtpSender(settings.smtp), zone=zone)
            for account_id in sorted({c.account_id for c in charges if c.charged}):
                await alerts.evaluate(account_id)
            return charges

    charges = run(_go())
    if as_json:
        echo_json([dataclasses.asdict(c) for c in charges])
        return
    done = [c for c in charges if c.charged]
    click.echo(
        f"{len(done)} package(s) charged, {len(charges) - len(done)} already charged", err=True
    )
