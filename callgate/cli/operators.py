"""``callgate operators add|list|remove|passwd``: who may log in to the web console."""

from __future__ import annotations

import sys
from typing import Any

import click

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.store import operators as store
from callgate.store.db import write_transaction
from callgate.web.security import PasswordHasher

MIN_PASSWORD = 8


@click.group()
def operators() -> None:
    """Operators: the logins of the web console (passwords kept as argon2 hashes)."""


def _data(operator: store.Operator) -> dict[str, Any]:
    return {
        "id": operator.id,
        "login": operator.login,
        "created_at": operator.created_at,
        "disabled": operator.disabled,
    }


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    if len(password) < MIN_PASSWORD:
        raise click.UsageError(f"the password must have {MIN_PASSWORD} characters or more")
    return password


_STDIN = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)


@operators.command("add")
@click.argument("login")
@_STDIN
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def operators_add(login: str, password_stdin: bool, as_json: bool) -> None:
    """Add operator LOGIN; the password is prompted for (or read with --password-stdin)."""
    settings = app().settings
    password_hash = PasswordHasher().hash(_password(password_stdin))

    async def _go() -> store.Operator:
        async with engine_for(settings) as engine, write_transaction(engine) as conn:
            return await store.add_operator(conn, login, password_hash)

    operator = run(_go())
    if as_json:
        echo_json(_data(operator))
    else:
        click.echo(f"added operator {operator.login}")


@operators.command("passwd")
@click.argument("login")
@_STDIN
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def operators_passwd(login: str, password_stdin: bool, as_json: bool) -> None:
    """Set the password of operator LOGIN (their open sessions end). With --json, prints the
    operator as `operators list --json` does."""
    settings = app().settings
    password_hash = PasswordHasher().hash(_password(password_stdin))

    async def _go() -> store.Operator:
        async with engine_for(settings) as engine, write_transaction(engine) as conn:
            return await store.set_password_hash(conn, login, password_hash)

    operator = run(_go())
    if as_json:
        echo_json(_data(operator))
    click.echo(f"password of operator {operator.login} changed", err=as_json)


@operators.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def operators_list(as_json: bool) -> None:
    """The operators."""
    settings = app().settings

    async def _go() -> list[store.Operator]:
        async with engine_for(settings) as engine, engine.connect() as conn:
            return await store.list_operators(conn)

    found = run(_go())
    if as_json:
        echo_json([_data(o) for o in found])
        return
    echo_table(
        ["LOGIN", "CREATED", "DISABLED"],
        [[o.login, o.created_at.isoformat(), "yes" if o.disabled else ""] for o in found],
    )


@operators.command("remove")
@click.argument("login")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def operators_remove(login: str, as_json: bool) -> None:
    """Remove operator LOGIN (their sessions and API tokens end). With --json, prints
    {"removed": <the operator as it was>}."""
    settings = app().settings

    async def _go() -> store.Operator:
        async with engine_for(settings) as engine, write_transaction(engine) as conn:
            return await store.remove_operator(conn, login)

    removed = run(_go())
    if as_json:
        echo_json({"removed": _data(removed)})
    click.echo(f"removed operator {removed.login}", err=as_json)
