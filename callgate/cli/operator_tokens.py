"""``callgate operators token|tokens|revoke-token``: the JSON API's bearer tokens.

``token LOGIN`` issues a token for an operator and prints it once (only its SHA-256 is kept);
``tokens`` lists them (never the token itself); ``revoke-token ID`` refuses it from then on.
"""

from __future__ import annotations

from typing import Any

import click

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.cli.operators import operators
from callgate.store import api_tokens as store
from callgate.store.db import write_transaction


def _data(token: store.ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "operator": token.operator,
        "name": token.name,
        "created_at": token.created_at,
        "last_used_at": token.last_used_at,
        "revoked": token.revoked,
    }


@operators.command("token")
@click.argument("login")
@click.option("--name", default="", help="A label for the token (what uses it).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the token under 'token').")
def token_issue(login: str, name: str, as_json: bool) -> None:
    """Issue an API token for operator LOGIN and print it once (it cannot be shown again)."""
    settings = app().settings

    async def _go() -> tuple[store.ApiToken, str]:
        async with engine_for(settings) as engine, write_transaction(engine) as conn:
            return await store.issue_token(conn, login, name)

    token, text = run(_go())
    if as_json:
        echo_json(_data(token) | {"token": text})
    else:
        click.echo(text)
    click.echo(
        f"API token {token.id} issued for operator {token.operator}; it is shown only now",
        err=True,
    )


@operators.command("tokens")
@click.option("--operator", "login", default=None, help="Only this operator's tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def token_list(login: str | None, as_json: bool) -> None:
    """The API tokens (id, operator, name, last use, revoked); never the tokens themselves."""
    settings = app().settings

    async def _go() -> list[store.ApiToken]:
        async with engine_for(settings) as engine, engine.connect() as conn:
            return await store.list_tokens(conn, login)

    found = run(_go())
    if as_json:
        echo_json([_data(t) for t in found])
        return
    echo_table(
        ["ID", "OPERATOR", "NAME", "CREATED", "LAST_USED", "REVOKED"],
        [
            [
                t.id,
                t.operator,
                t.name,
                t.created_at.isoformat(timespec="seconds"),
                t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "",
                "yes" if t.revoked else "",
            ]
            for t in found
        ],
    )


@operators.command("revoke-token")
@click.argument("token_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def token_revoke(token_id: int, as_json: bool) -> None:
    """Revoke API token TOKEN_ID (see `operators tokens`): it is refused from now on. With
    --json, prints the token as `operators tokens --json` does (revoked: true)."""
    settings = app().settings

    async def _go() -> store.ApiToken:
        async with engine_for(settings) as engine, write_transaction(engine) as conn:
            return await store.revoke_token(conn, token_id)

    token = run(_go())
    if as_json:
        echo_json(_data(token))
    click.echo(f"API token {token.id} of operator {token.operator} revoked", err=as_json)
