"""``callgate accounts group``: customer groups (calling-card customers, wholesale customers...)."""

from __future__ import annotations

import dataclasses

import click

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.store import groups as store_groups
from callgate.store.groups import CustomerGroup


@click.group("group")
def group() -> None:
    """Customer groups: divide customers for easier management."""


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@group.command("add")
@click.argument("name")
@click.option("--description", default="", help="What the group is for.")
@_json_option
def add_cmd(name: str, description: str, as_json: bool) -> None:
    """Create a customer group NAME. With --json, prints it as `group list --json` does."""

    async def _go() -> CustomerGroup:
        async with engine_for(app().settings) as engine, engine.begin() as conn:
            return await store_groups.create_group(conn, name, description)

    created = run(_go())
    if as_json:
        echo_json(dataclasses.asdict(created))
    click.echo(f"group {created.name!r} created (id {created.id})", err=True)


@group.command("list")
@_json_option
def list_cmd(as_json: bool) -> None:
    """List the customer groups with how many accounts each holds."""

    async def _go() -> list[CustomerGroup]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            return await store_groups.list_groups(conn)

    found = run(_go())
    if as_json:
        echo_json([dataclasses.asdict(g) for g in found])
        return
    echo_table(
        ["ID", "NAME", "ACCOUNTS", "DESCRIPTION"],
        [[g.id, g.name, g.accounts, g.description] for g in found],
    )


@group.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove it even if accounts are in it (ungroups them).")
@_json_option
def remove_cmd(name: str, force: bool, as_json: bool) -> None:
    """Remove the customer group NAME (refused while it holds accounts, unless --force).

    With --json, prints {"removed": <the group as it was>} (its "accounts" were ungrouped)."""

    async def _go() -> CustomerGroup:
        async with engine_for(app().settings) as engine, engine.begin() as conn:
            return await store_groups.remove_group(conn, name, force=force)

    removed = run(_go())
    if as_json:
        echo_json({"removed": dataclasses.asdict(removed)})
    ungrouped = removed.accounts
    tail = f"; {ungrouped} account(s) ungrouped" if ungrouped else ""
    click.echo(f"group {name!r} removed{tail}", err=True)
