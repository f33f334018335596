"""``callgate accounts friend``: an account's SIP, IAX and PJSIP friend (A2Billing's SIP and IAX
buttons). ``--pjsip`` is the SIP friend as PJSIP sees it: one row serves chan_sip and PJSIP.

Every change marks the generated Asterisk files stale (``callgate confgen status``); run
``callgate confgen write --reload`` (or ``callgate confgen realtime sync``) to apply it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import click

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.confgen.errors import ConfgenError
from callgate.confgen.render import render_iax, render_pjsip, render_sip
from callgate.store import friends as store
from callgate.store.accounts import find_account
from callgate.store.db import write_transaction
from callgate.store.errors import NotFoundError
from callgate.store.friends import Friend, FriendKind

F = TypeVar("F", bound=Callable[..., Any])

STALE_HINT = "generated Asterisk configuration is now stale: run `callgate confgen write --reload`"


def _flavor_options(func: F) -> F:
    for flag, help_text in reversed(
        [
            ("sip", "The SIP friend (chan_sip view)."),
            ("pjsip", "The SIP friend, as PJSIP endpoint/auth/aor (same row as --sip)."),
            ("iax", "The IAX friend."),
        ]
    ):
        func = click.option(f"--{flag}", "flavor", flag_value=flag, help=help_text)(func)
    return func


def _kind(flavor: str | None) -> FriendKind:
    if flavor is None:
        raise click.UsageError("give --sip, --pjsip or --iax")
    return FriendKind.IAX if flavor == "iax" else FriendKind.SIP


def _option_flags(func: F) -> F:
    options: list[Callable[[F], F]] = [
        click.option("--host", default=None, help="'dynamic' (registers; default) or an address."),
        click.option("--context", default=None, help="Dialplan context (default callgate)."),
        click.option("--allow", default=None, help="Codecs, comma-separated (default ulaw,alaw)."),
        click.option("--disallow", default=None, help="Codecs refused first (default all)."),
        click.option("--nat", default=None, help="SIP nat (default force_rport,comedia)."),
        click.option("--dtmfmode", default=None, help="SIP DTMF mode (default rfc2833)."),
        click.option("--callerid", default=None, help='Caller ID, e.g. "Alice" <5551001>.'),
        click.option("--call-limit", type=click.IntRange(0), default=None, help="SIP call limit."),
        click.option("--permit", default=None, help="SIP addresses/networks allowed (a,b...)."),
        click.option("--deny", default=None, help="SIP addresses/networks denied (a,b...)."),
        click.option("--language", default=None, help="Prompt language (en, fr, pt_BR...)."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


_OPTION_NAMES = store.OPTION_FIELDS


def _friend_data(friend: Friend) -> dict[str, Any]:
    data = dataclasses.asdict(friend)
    data["kind"] = friend.kind.value
    return data


def _echo_friend(friend: Friend, as_json: bool) -> None:
    data = _friend_data(friend)
    if as_json:
        echo_json(data)
        return
    for key in ("kind", "name", "accountcode", "secret", *_OPTION_NAMES, "created_at",
                "updated_at"):  # fmt: skip
        value = data[key]
        click.echo(f"{key}: {'' if value is None else value}")


async def _account_id(conn: Any, key: str) -> int:
    account = await find_account(conn, key)
    if account is None:
        raise NotFoundError(f"no account {key!r} (give its number, alias or #id)")
    return account.id


@click.group()
def friend() -> None:
    """An account's SIP/PJSIP and IAX friends: add, show, set, remove, list."""


@friend.command("add")
@click.argument("account")
@_flavor_options
@click.option("--name", default=None, help="Peer name (default: the account's alias).")
@_option_flags
def add_cmd(
    account: str, flavor: str | None, name: str | None, as_json: bool, **options: Any
) -> None:
    """Give ACCOUNT (number, alias or #id) a SIP or IAX friend with a generated secret.

    Its name is the account's alias and its accountcode the account number. Values Asterisk
    would misread (newline, ';', brackets, non-ASCII in a name...) are refused.
    """
    kind = _kind(flavor)

    async def _add() -> Friend:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            account_id = await _account_id(conn, account)
            return await store.create_friend(conn, kind, account_id, name=name, **options)

    created = run(_add())
    _echo_friend(created, as_json)
    click.echo(f"added {kind.value.upper()} friend {created.name}; {STALE_HINT}", err=True)


@friend.command("set")
@click.argument("account")
@_flavor_options
@click.option("--name", default=None, help="Rename the peer.")
@click.option("--new-secret", is_flag=True, help="Draw a new random secret.")
@_option_flags
def set_cmd(
    account: str,
    flavor: str | None,
    name: str | None,
    new_secret: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Change options of ACCOUNT's SIP or IAX friend (only the options given)."""
    kind = _kind(flavor)

    async def _set() -> tuple[Friend, Friend]:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            account_id = await _account_id(conn, account)
            before = await store.fetch_friend(conn, kind, account_id)
            after = await store.update_friend(
                conn, kind, account_id, name=name, new_secret=new_secret, **options
            )
            return before, after

    before, after = run(_set())
    _echo_friend(after, as_json)
    if before == after:
        click.echo("nothing changed", err=True)
    else:
        click.echo(f"changed {kind.value.upper()} friend {after.name}; {STALE_HINT}", err=True)


@friend.command("show")
@click.argument("account")
@_flavor_options
@click.option("--conf", is_flag=True, help="Print its sections of the generated file instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_cmd(account: str, flavor: str | None, conf: bool, as_json: bool) -> None:
    """Show ACCOUNT's SIP, PJSIP or IAX friend (with its secret), or its config sections."""
    kind = _kind(flavor)

    async def _show() -> tuple[Friend, dict[int, tuple[str, ...]]]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            account_id = await _account_id(conn, account)
            found = await store.fetch_friend(conn, kind, account_id)
            ips = await store.list_identify_addresses(conn)
            return found, ips

    found, ips = run(_show())
    if not conf:
        _echo_friend(found, as_json)
        return
    try:
        if flavor == "pjsip":
            text = render_pjsip([found], ips)
        elif flavor == "iax":
            text = render_iax([found])
        else:
            text = render_sip([found])
    except ConfgenError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(text, nl=False)


@friend.command("remove")
@click.argument("account")
@_flavor_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def remove_cmd(account: str, flavor: str | None, as_json: bool) -> None:
    """Remove ACCOUNT's SIP (and so PJSIP) or IAX friend. With --json, prints
    {"removed": <the friend as `friend show --json` printed it>}."""
    kind = _kind(flavor)

    async def _remove() -> Friend:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            return await store.delete_friend(conn, kind, await _account_id(conn, account))

    removed = run(_remove())
    if as_json:
        echo_json({"removed": _friend_data(removed)})
    click.echo(f"removed {kind.value.upper()} friend {removed.name}; {STALE_HINT}", err=True)


@friend.command("list")
@_flavor_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON (secrets included).")
def list_cmd(flavor: str | None, as_json: bool) -> None:
    """List friends (all kinds, or only --sip/--pjsip or --iax); secrets only in --json."""
    kinds = [FriendKind.SIP, FriendKind.IAX] if flavor is None else [_kind(flavor)]

    async def _list() -> list[Friend]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            out: list[Friend] = []
            for kind in kinds:
                out.extend(await store.list_friends(conn, kind))
            return out

    found = run(_list())
    if as_json:
        echo_json([_friend_data(f) for f in found])
        return
    echo_table(
        ["kind", "name", "accountcode", "host", "context", "allow"],
        [[f.kind.value, f.name, f.accountcode, f.host, f.context, f.allow] for f in found],
    )
