"""``callgate accounts contact``: an account's contacts (portal logins) — add, list, update,
reset-password, remove.

A contact's password exists only as a hash. It is generated (printed once, or e-mailed with
``--send-password`` through the ``[smtp]`` relay, refused before any change when none is
configured) or typed with ``--ask-password``. A new password ends the contact's portal sessions:
the portal checks every request's session against a fingerprint of the stored hash.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.cli._mail import SEND_PASSWORD_HELP, require_relay
from callgate.cli._mail import send_password as mail_password
from callgate.config import Settings
from callgate.store import accounts as account_store
from callgate.store import contacts as store
from callgate.store.db import write_transaction

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_ASK_HELP = "Type the password instead of generating one."


def _contact_data(contact: store.Contact) -> dict[str, Any]:
    """A contact as `contact list --json` prints it (never its password or hash)."""
    return dataclasses.asdict(contact)


def _password_source(settings: Settings, *, ask_password: bool, send_password: bool) -> str | None:
    """The typed password (--ask-password) or None (generate one); --send-password is refused
    here, before anything changes, when no relay is configured."""
    if send_password:
        if ask_password:
            raise click.UsageError(
                "--send-password e-mails a generated password: leave out --ask-password"
            )
        require_relay(settings)
    if ask_password:
        typed: str = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
        return typed
    return None


def _hand_over(
    settings: Settings,
    contact: store.Contact,
    generated: str | None,
    number: str,
    *,
    send_password: bool,
    as_json: bool,
) -> None:
    """Give out a generated password (mail it, or print it once) and print the JSON."""
    data = _contact_data(contact)
    if generated is not None and send_password:
        mail_password(
            settings, email=contact.email, name=contact.name, account_number=number,
            password=generated,
        )  # fmt: skip
    elif generated is not None:
        if as_json:
            data["password"] = generated
        else:
            click.echo("generated password (shown once, only its hash is stored):", err=True)
            click.echo(generated)
    if as_json:
        echo_json(data)


@click.group("contact")
def contact() -> None:
    """Contacts of an account: portal logins with public and private notes."""


@contact.command("add")
@click.argument("account")
@click.option("--name", required=True, help="Contact name.")
@click.option("--email", required=True, help="E-mail address (the portal login; unique).")
@click.option("--ask-password", is_flag=True, help=_ASK_HELP)
@click.option("--public-notes", default="", help="Shown on the customer portal.")
@click.option("--private-notes", default="", help="Shown to operators only.")
@click.option("--send-password", is_flag=True, help=SEND_PASSWORD_HELP)
@_json_option
def contact_add(
    account: str,
    name: str,
    email: str,
    ask_password: bool,
    public_notes: str,
    private_notes: str,
    send_password: bool,
    as_json: bool,
) -> None:
    """Add a contact to ACCOUNT. The generated password is printed once (or e-mailed to the
    contact with --send-password); only its hash is kept. With --json, the contact as `contact
    list --json` shows it, and a generated password not e-mailed as "password"."""
    settings = app().settings
    password = _password_source(settings, ask_password=ask_password, send_password=send_password)

    async def _go() -> tuple[store.Contact, str | None, str]:
        async with engine_for(settings) as engine, write_transaction(engine) as conn:
            found = await account_store.require_account(conn, account)
            created, generated = await store.add_contact(
                conn,
                found.id,
                name=name,
                email=email,
                password=password,
                public_notes=public_notes,
                private_notes=private_notes,
            )
            return created, generated, found.number

    created, generated, number = run(_go())
    click.echo(f"contact {created.email} added (id {created.id})", err=True)
    _hand_over(settings, created, generated, number, send_password=send_password, as_json=as_json)


@contact.command("list")
@click.argument("account")
@_json_option
def contact_list(account: str, as_json: bool) -> None:
    """List ACCOUNT's contacts (never their passwords)."""

    async def _go() -> list[store.Contact]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            found = await account_store.require_account(conn, account)
            return await store.list_contacts(conn, found.id)

    found = run(_go())
    if as_json:
        echo_json([_contact_data(c) for c in found])
    else:
        echo_table(
            ["ID", "NAME", "EMAIL", "PUBLIC NOTES", "PRIVATE NOTES"],
            [[c.id, c.name, c.email, c.public_notes, c.private_notes] for c in found],
        )


@contact.command("update")
@click.argument("account")
@click.argument("contact_key", metavar="EMAIL_OR_ID")
@click.option("--name", default=None, help="Contact name.")
@click.option("--email", default=None, help="E-mail address (the portal login; unique).")
@click.option("--public-notes", default=None, help="Shown on the customer portal.")
@click.option("--private-notes", default=None, help="Shown to operators only.")
@_json_option
def contact_update(
    account: str,
    contact_key: str,
    name: str | None,
    email: str | None,
    public_notes: str | None,
    private_notes: str | None,
    as_json: bool,
) -> None:
    """Change ACCOUNT's contact (by e-mail or id): only the options given.

    The e-mail is the portal login, unique whatever its case: one another contact has is
    refused, naming its account. The password stays (`contact reset-password`)."""
    changes = {
        field: value
        for field, value in (
            ("name", name),
            ("email", email),
            ("public_notes", public_notes),
            ("private_notes", private_notes),
        )
        if value is not None
    }
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")

    async def _go() -> store.Contact:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            found = await account_store.require_account(conn, account)
            return await store.update_contact(conn, found.id, contact_key, changes)

    changed = run(_go())
    if as_json:
        echo_json(_contact_data(changed))
    click.echo(f"contact {changed.email} updated (id {changed.id})", err=True)


@contact.command("reset-password")
@click.argument("account")
@click.argument("contact_key", metavar="EMAIL_OR_ID")
@click.option("--ask-password", is_flag=True, help=_ASK_HELP)
@click.option("--send-password", is_flag=True, help=SEND_PASSWORD_HELP)
@_json_option
def contact_reset_password(
    account: str, contact_key: str, ask_password: bool, send_password: bool, as_json: bool
) -> None:
    """Give ACCOUNT's contact (by e-mail or id) a new password: generated and printed once (or
    e-mailed with --send-password), or typed with --ask-password. The contact's portal sessions
    end at their next request. With --json, the contact, and a generated password not
    e-mailed as "password"."""
    settings = app().settings
    password = _password_source(settings, ask_password=ask_password, send_password=send_password)

    async def _go() -> tuple[store.Contact, str | None, str]:
        async with engine_for(settings) as engine, write_transaction(engine) as conn:
            found = await account_store.require_account(conn, account)
            changed, generated = await store.set_password(conn, found.id, contact_key, password)
            return changed, generated, found.number

    changed, generated, number = run(_go())
    click.echo(
        f"password of contact {changed.email} reset; its portal sessions are ended", err=True
    )
    _hand_over(settings, changed, generated, number, send_password=send_password, as_json=as_json)


@contact.command("remove")
@click.argument("account")
@click.argument("contact_key", metavar="EMAIL_OR_ID")
@_json_option
def contact_remove(account: str, contact_key: str, as_json: bool) -> None:
    """Remove a contact (by e-mail or id) from ACCOUNT. With --json, prints
    {"removed": <the contact>}."""

    async def _go() -> store.Contact:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            found = await account_store.require_account(conn, account)
            return await store.remove_contact(conn, found.id, contact_key)

    removed = run(_go())
    if as_json:
        echo_json({"removed": _contact_data(removed)})
    click.echo(f"contact {contact_key} removed", err=True)
