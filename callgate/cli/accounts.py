"""``callgate accounts``: customers (cards), as A2Billing's List Customers and ConnexCS's Customer
Management pages describe them — add, generate, show, info, update, status, list with search
criteria, batch-update, delete (one, or Delete All), export, import, groups, caller IDs, contacts.

The search criteria (``--number``, ``--status``, ``--balance-min``...) are the same options on
``list``, ``batch-update``, ``delete`` and ``export``; they all mean
:class:`callgate.store.search.AccountCriteria`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import click

from callgate.cli import groups
from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.formats import XML_END, write_csv, write_xml
from callgate.formats import text as _fmt
from callgate.schema.tables import AccountStatus, ExpiryMode
from callgate.store import accounts as store
from callgate.store.accounts import AccountInfo, AccountPage, SortKey
from callgate.store.db import write_transaction
from callgate.store.errors import InvalidDataError
from callgate.store.search import AccountCriteria

F = TypeVar("F", bound=Callable[..., Any])

_STATUS = click.Choice([s.value for s in AccountStatus])
_EXPIRY = click.Choice([m.value for m in ExpiryMode])


@click.group()
def accounts() -> None:
    """Customers (accounts, cards): add, list, search, change, export, import, delete."""


accounts.add_command(groups.group)


# --- shared options ------------------------------------------------------------------------------

_CRITERIA_OPTIONS: list[tuple[str, str, str]] = [
    ("--number", "c_number", "Account number (exact; * is a wildcard)."),
    ("--alias", "c_alias", "Login/alias (exact; * is a wildcard)."),
    ("--name", "c_name", "First, last or full name (any case; * is a wildcard)."),
    ("--group", "c_group", "Customer group name."),
    ("--plan", "c_plan", "Call plan name."),
    ("--balance-min", "c_balance_min", "Balance at least this (base currency)."),
    ("--balance-max", "c_balance_max", "Balance at most this (base currency)."),
    ("--created-from", "c_created_from", "Created on or after this day (YYYY-MM-DD, UTC)."),
    ("--created-to", "c_created_to", "Created on or before this day (YYYY-MM-DD, UTC)."),
    ("--language", "c_language", "Language code."),
    ("--currency", "c_currency", "Currency code."),
    ("--callerid", "c_callerid", "Has this caller ID (exact; * is a wildcard)."),
    ("--ip", "c_ip", "Has an IP/CIDR overlapping this address or block."),
    ("--search", "c_text", "Free text in names, company, e-mail, number or alias."),
]


def criteria_options(func: F) -> F:
    """The account search criteria, shared by list, batch-update, delete and export."""
    for flag, dest, text in reversed(_CRITERIA_OPTIONS):
        func = click.option(flag, dest, default=None, help=text)(func)
    return click.option(
        "--status", "c_status", type=_STATUS, multiple=True, help="Status (repeat for several)."
    )(func)


def criteria_from(options: dict[str, Any]) -> AccountCriteria:
    """The criteria from the options' values; malformed values are usage errors."""
    try:
        return store.parse_criteria(
            {name: options.get(f"c_{name}") for name in store.CRITERIA_FIELDS},
            options.get("c_status") or (),
        )
    except InvalidDataError as exc:
        raise click.BadParameter(str(exc)) from exc


# (flag, field, help); values are text, parsed by store.parse_account_fields
_FIELD_OPTIONS: list[tuple[str, str, str]] = [
    ("--alias", "alias", "Login (unique); random digits by default, or an e-mail address."),
    ("--first-name", "first_name", "First name."),
    ("--last-name", "last_name", "Last name."),
    ("--company", "company", "Company name."),
    ("--email", "email", "E-mail address."),
    ("--phone", "phone", "Phone number."),
    ("--address", "address", "Street address."),
    ("--city", "city", "City."),
    ("--state", "state", "State or region."),
    ("--country", "country", "Country."),
    ("--zipcode", "zipcode", "Postal code."),
    ("--website", "website", "Web site."),
    ("--paypal-email", "paypal_email", "PayPal e-mail address."),
    ("--group", "group", "Customer group name ('none' for no group)."),
    ("--language", "language", "Language of the prompts (en, fr...)."),
    ("--currency", "currency", "Currency (fixed at creation; default: the base currency)."),
    ("--debit-limit", "debit_limit", "Credit allowed below zero (postpaid)."),
    ("--minimum-payment", "minimum_payment", "Smallest refill or payment accepted."),
    ("--tax", "tax_percent", "Tax in percent, taken out of payments."),
    ("--channel-limit", "channel_limit", "Simultaneous calls ('none' = unlimited)."),
    ("--cps-limit", "cps_limit", "Calls per second ('none' = unlimited)."),
    ("--expires-at", "expires_at", "Expiry date for --expiry-mode at_date (YYYY-MM-DD)."),
    ("--expiry-days", "expiry_days", "Days for the days_after_* expiry modes."),
    ("--public-notes", "public_notes", "Notes shown to the customer."),
    ("--private-notes", "private_notes", "Notes for operators only."),
]


def field_options(func: F) -> F:
    """The account fields an operator sets, shared by add, generate and update."""
    for flag, dest, text in reversed(_FIELD_OPTIONS):
        func = click.option(flag, f"f_{dest}", default=None, help=text)(func)
    func = click.option("--status", "f_status", type=_STATUS, default=None, help="Status.")(func)
    func = click.option(
        "--expiry-mode", "f_expiry_mode", type=_EXPIRY, default=None, help="Expiry rule."
    )(func)
    return click.option(
        "--portal-access/--no-portal-access",
        "f_portal_access",
        default=None,
        help="May the customer use the portal.",
    )(func)


def fields_from(options: dict[str, Any]) -> dict[str, str]:
    """The field options given, as ``field -> text``."""
    raw: dict[str, str] = {}
    for key, value in options.items():
        if not key.startswith("f_") or value is None:
            continue
        if isinstance(value, bool):
            value = "yes" if value else "no"
        raw[key[2:]] = str(value)
    return raw


def _json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


# --- add, generate, show, info -------------------------------------------------------------------


def _echo_info(info: AccountInfo, *, full: bool) -> None:
    a = info.account
    lines: list[tuple[str, Any]] = [
        ("id", a.id),
        ("number", a.number),
        ("alias", a.alias),
        ("name", f"{a.first_name} {a.last_name}".strip()),
        ("company", a.company),
        ("email", a.email),
        ("group", info.group),
        ("plan", info.plan),
        ("status", a.status),
        ("language", a.language),
        ("currency", a.currency),
        ("balance", a.balance),
        (f"balance ({a.currency})", info.balance_in_currency),
        ("debit limit", a.debit_limit),
        ("in use", info.in_use),
        ("reserved", info.reserved),
        ("available", info.available),
        ("minimum payment", a.minimum_payment),
        ("tax %", a.tax_percent),
        ("portal access", a.portal_access),
        ("channel limit", a.channel_limit if a.channel_limit is not None else "unlimited"),
        ("cps limit", a.cps_limit if a.cps_limit is not None else "unlimited"),
        ("expiry", _expiry_text(info)),
        ("calls", a.call_count),
        ("first use", a.first_use_at),
        ("last use", a.last_use_at),
        ("created", a.created_at),
    ]
    if full:
        lines += [
            ("phone", a.phone),
            (
                "address",
                ", ".join(p for p in (a.address, a.city, a.state, a.zipcode, a.country) if p),
            ),
            ("website", a.website),
            ("paypal email", a.paypal_email),
            ("public notes", a.public_notes),
            ("private notes", a.private_notes),
        ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key.ljust(width)}  {_fmt(value)}")


def _expiry_text(info: AccountInfo) -> str:
    a = info.account
    if a.expiry_mode is ExpiryMode.NEVER:
        return "never"
    if a.expiry_mode is ExpiryMode.AT_DATE:
        return f"at {_fmt(a.expires_at)}"
    return f"{a.expiry_days} days {a.expiry_mode.value.removeprefix('days_')}"


def _movement_sum(info: AccountInfo) -> Decimal:
    return sum((m.total for m in info.movements), Decimal(0))


def _info_json(info: AccountInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


def _show_json(info: AccountInfo) -> dict[str, Any]:
    """One account as ``accounts show --json`` prints it."""
    data = dataclasses.asdict(info.account)
    data.update(group=info.group, plan=info.plan, balance_currency=info.balance_in_currency)
    return data


@accounts.command("add")
@click.option("--plan", default=None, help="Call plan name (required: configure it first).")
@click.option(
    "--number",
    default=None,
    help="Account number: 6..20 digits, no leading 0 (default: random, CSPRNG).",
)
@click.option(
    "--length",
    type=int,
    default=None,
    help="Digits of the random account number (default: billing.account_number_length).",
)
@click.option("--balance", default=None, help="Opening balance (default 0), recorded as a refill.")
@click.option("--email-login", is_flag=True, help="Use the e-mail address as the login (alias).")
@field_options
@_json_option
def add_cmd(
    plan: str | None,
    number: str | None,
    length: int | None,
    balance: str | None,
    email_login: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Add one customer account (zero balance unless --balance)."""
    raw = fields_from(options)
    if plan is not None:
        raw["plan"] = plan
    if number is not None:
        raw["number"] = number
    if balance is not None:
        raw["balance"] = balance
    if email_login:
        if not raw.get("email"):
            raise click.UsageError("--email-login needs --email")
        raw["alias"] = raw["email"]
    settings = app().settings

    async def _go() -> AccountInfo:
        async with engine_for(settings) as engine, write_transaction(engine) as conn:
            fields = await store.parse_account_fields(conn, raw)
            plan_id = fields.pop("call_plan_id", None)
            account = await store.open_account(
                conn,
                call_plan_id=plan_id,
                number_length=length or settings.billing.account_number_length,
                **fields,
            )
            return await store.account_info(conn, account.id)

    info = run(_go())
    if as_json:
        echo_json(_info_json(info))
    else:
        _echo_info(info, full=False)
    click.echo(f"account {info.account.number} created", err=True)


@accounts.command("generate")
@click.argument("count", type=click.IntRange(1, 1_000_000))
@click.option("--plan", default=None, help="Call plan name (required).")
@click.option("--length", type=int, default=None, help="Digits of the account numbers.")
@click.option("--balance", default=None, help="Opening balance of each (default 0).")
@field_options
@_json_option
def generate_cmd(
    count: int,
    plan: str | None,
    length: int | None,
    balance: str | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Generate COUNT accounts in one transaction (random numbers and aliases).

    Prints each new account's id, number and alias (the numbers are secret).
    """
    raw = fields_from(options)
    if plan is not None:
        raw["plan"] = plan
    if balance is not None:
        raw["balance"] = balance
    for field in ("alias",):
        if field in raw:
            raise click.UsageError("generated accounts get random aliases: drop --alias")
    settings = app().settings

    async def _go() -> list[tuple[int, str, str]]:
        async with engine_for(settings) as engine, write_transaction(engine) as conn:
            fields = await store.parse_account_fields(conn, raw)
            plan_id = fields.pop("call_plan_id", None)
            with click.progressbar(
                length=count, label="generating accounts", file=sys.stderr
            ) as bar:
                return await store.generate_accounts(
                    conn,
                    count,
                    call_plan_id=plan_id,
                    number_length=length or settings.billing.account_number_length,
                    on_progress=bar.update,
                    **fields,
                )

    created = run(_go())
    if as_json:
        echo_json([{"id": i, "number": n, "alias": a} for i, n, a in created])
    else:
        echo_table(["ID", "NUMBER", "ALIAS"], [list(row) for row in created])
    click.echo(f"{len(created)} account(s) generated", err=True)


@accounts.command("show")
@click.argument("account")
@_json_option
def show_cmd(account: str, as_json: bool) -> None:
    """Show one account's fields (ACCOUNT: number, alias or #id)."""

    async def _go() -> AccountInfo:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            found = await store.require_account(conn, account)
            return await store.account_info(conn, found.id, last=0)

    info = run(_go())
    if as_json:
        echo_json(_show_json(info))
    else:
        _echo_info(info, full=True)


@accounts.command("info")
@click.argument("account")
@click.option(
    "--last",
    type=click.IntRange(0, 1000),
    default=10,
    show_default=True,
    help="How many recent calls and payments.",
)
@_json_option
def info_cmd(account: str, last: int, as_json: bool) -> None:
    """Everything about one customer on one screen: balance, plan, group, status, SIP/IAX
    friends, caller IDs, IPs, contacts, last calls and payments."""

    async def _go() -> AccountInfo:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            found = await store.require_account(conn, account)
            return await store.account_info(conn, found.id, last=last)

    info = run(_go())
    if as_json:
        echo_json(_info_json(info))
        return
    _echo_info(info, full=True)
    sections: list[tuple[str, list[str], list[list[Any]]]] = [
        (
            "friends",
            ["TECH", "NAME", "HOST", "CONTEXT"],
            [[f.technology, f.name, f.host, f.context] for f in info.friends],
        ),
        (
            "caller IDs",
            ["CALLERID", "ACTIVE"],
            [[c.callerid, _fmt(c.active)] for c in info.callerids],
        ),
        (
            "IPs",
            ["ADDRESS", "CHANNELS", "CPS", "TECH PREFIX", "DIRECTION"],
            [
                [i.address, i.channel_limit, i.cps_limit, i.tech_prefix, i.direction]
                for i in info.ips
            ],
        ),
        (
            "contacts",
            ["ID", "NAME", "EMAIL", "PUBLIC NOTES"],
            [[c.id, c.name, c.email, c.public_notes] for c in info.contacts],
        ),
        (
            "last calls",
            ["STARTED", "NUMBER", "DESTINATION", "BILLSEC", "COST", "STATUS"],
            [
                [_fmt(c.started_at), c.number, c.destination, c.billsec, c.cost, c.status]
                for c in info.last_calls
            ],
        ),
        (
            "last payments",
            ["ID", "KIND", "STATUS", "AMOUNT", "CREDIT", "CREATED", "DESCRIPTION"],
            [
                [
                    p.id,
                    p.kind.value,
                    p.status.value,
                    p.amount,
                    p.credit,
                    _fmt(p.created_at),
                    p.description,
                ]
                for p in info.last_payments
            ],
        ),
        (
            "balance movements",
            ["KIND", "COUNT", "TOTAL"],
            [[m.kind, m.count, m.total] for m in info.movements]
            + (
                [["sum", sum(m.count for m in info.movements), _movement_sum(info)]]
                if info.movements
                else []
            ),
        ),
    ]
    for title, headers, rows in sections:
        click.echo("")
        click.echo(f"{title}:" if rows else f"{title}: none")
        if rows:
            echo_table(headers, rows)


# --- update, status ------------------------------------------------------------------------------


@accounts.command("update")
@click.argument("account")
@click.option("--plan", default=None, help="Call plan name.")
@click.option(
    "--number", default=None, help="New account number (unique; 6..20 digits, no leading 0)."
)
@field_options
@_json_option
def update_cmd(
    account: str, plan: str | None, number: str | None, as_json: bool, **options: Any
) -> None:
    """Change an account's fields. The currency cannot change after creation; the balance moves
    only through `callgate payments add`."""
    raw = fields_from(options)
    if plan is not None:
        raw["plan"] = plan
    if number is not None:
        raw["number"] = number
    if not raw:
        raise click.UsageError("nothing to change: give at least one field option")

    async def _go() -> AccountInfo:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            found = await store.require_account(conn, account)
            fields = await store.parse_account_fields(conn, raw)
            await store.update_account(conn, found.id, **fields)
            return await store.account_info(conn, found.id, last=0)

    info = run(_go())
    if as_json:
        echo_json(_info_json(info))
    else:
        _echo_info(info, full=False)
    click.echo(f"account {info.account.number} updated", err=True)


@accounts.command("status")
@click.argument("account")
@click.argument("status", type=_STATUS)
@_json_option
def status_cmd(account: str, status: str, as_json: bool) -> None:
    """Set an account's STATUS (active, inactive, pending_approval, suspended, expired,
    cancelled). With --json, prints the account as `accounts show --json` does."""

    async def _go() -> AccountInfo:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            found = await store.require_account(conn, account)
            await store.set_status(conn, found.id, status)
            return await store.account_info(conn, found.id, last=0)

    info = run(_go())
    if as_json:
        echo_json(_show_json(info))
    click.echo(f"account {info.account.number} is {status}", err=True)


# --- list, batch update, delete ------------------------------------------------------------------

_LIST_HEADERS = [
    "ID",
    "NUMBER",
    "LOGIN",
    "LAST NAME",
    "GROUP",
    "BALANCE",
    "BAL (CUR)",
    "PLAN",
    "STATUS",
    "LG",
    "USE",
    "CUR",
    "SIP",
    "IAX",
    "CALLS",
]


@accounts.command("list")
@criteria_options
@click.option("--page", type=click.IntRange(1), default=1, show_default=True, help="Page number.")
@click.option(
    "--per-page",
    type=click.IntRange(1, store.MAX_PER_PAGE),
    default=10,
    show_default=True,
    help="Accounts per page.",
)
@click.option(
    "--sort",
    type=click.Choice([k.value for k in SortKey]),
    default=SortKey.ID.value,
    show_default=True,
    help="Column to sort by.",
)
@click.option("--desc", is_flag=True, help="Sort in descending order.")
@_json_option
def list_cmd(
    page: int, per_page: int, sort: str, desc: bool, as_json: bool, **options: Any
) -> None:
    """List accounts (the card list), paged, sorted by any column, filtered by the criteria."""
    criteria = criteria_from(options)

    async def _go() -> AccountPage:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            return await store.list_accounts(
                conn, criteria, sort=sort, descending=desc, page=page, per_page=per_page
            )

    result = run(_go())
    if as_json:
        echo_json(
            {
                "accounts": [dataclasses.asdict(r) for r in result.rows],
                "page": result.page,
                "pages": result.pages,
                "per_page": result.per_page,
                "total": result.total,
            }
        )
        return
    echo_table(
        _LIST_HEADERS,
        [
            [
                r.id,
                r.number,
                r.alias,
                r.last_name,
                r.group,
                r.balance,
                r.balance_currency,
                r.plan,
                r.status.value,
                r.language,
                r.in_use,
                r.currency,
                _fmt(r.sip),
                _fmt(r.iax),
                r.calls,
            ]
            for r in result.rows
        ],
    )
    click.echo(
        f"page {result.page} of {result.pages} ({result.total} account(s), {criteria.describe()})",
        err=True,
    )


@accounts.command("batch-update")
@criteria_options
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A change: status, group, plan, language, country, debit_limit, minimum_payment, "
    "tax_percent, portal_access, channel_limit, cps_limit, expiry_mode, expires_at, expiry_days, "
    "public_notes, private_notes; balance=X, balance+=X, balance-=X (recorded as adjustments).",
)
@click.option(
    "--description",
    default="batch update",
    show_default=True,
    help="Description of the balance adjustments.",
)
@click.option("--all", "all_", is_flag=True, help="Required when no criterion is given.")
@_json_option
def batch_update_cmd(
    assignments: tuple[str, ...], description: str, all_: bool, as_json: bool, **options: Any
) -> None:
    """Change every account the criteria choose, in one transaction; says how many. With
    --json, prints {"updated": N, "numbers": [the accounts changed]}."""
    criteria = criteria_from(options)
    if criteria.is_empty() and not all_:
        raise click.UsageError("no criteria: this would change every account; add --all to mean it")
    if not assignments:
        raise click.UsageError("nothing to change: give --set FIELD=VALUE")
    try:
        raw, balance = store.parse_assignments(assignments)
    except InvalidDataError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from exc

    async def _go() -> list[str]:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            changes = await store.parse_account_fields(conn, raw)
            return await store.batch_update_numbers(
                conn, criteria, changes, balance=balance, description=description
            )

    changed = run(_go())
    if as_json:
        echo_json({"updated": len(changed), "numbers": changed})
    click.echo(f"{len(changed)} account(s) updated ({criteria.describe()})", err=True)


@accounts.command("delete")
@click.argument("account", required=False)
@criteria_options
@click.option(
    "--all", "all_", is_flag=True, help="Delete every account the criteria choose (Delete All)."
)
@click.option(
    "--everything",
    is_flag=True,
    help="With --all and no criteria: really delete every account in the database.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_json_option
def delete_cmd(
    account: str | None, all_: bool, everything: bool, yes: bool, as_json: bool, **options: Any
) -> None:
    """Delete ACCOUNT, or with --all every account the criteria choose, with their dependants
    (caller IDs, friends, IPs, contacts, payments, calls). Refused while a call is in progress.
    With no criteria at all, --all needs --everything as well.

    With --json, prints {"removed": <the account as `show --json` printed it>} for ACCOUNT, and
    {"deleted": N, "numbers": [the accounts deleted]} for --all."""
    criteria = criteria_from(options)
    if account is not None and not criteria.is_empty():
        raise click.UsageError("give either an ACCOUNT or search criteria, not both")
    if account is not None and (all_ or everything):
        raise click.UsageError("give either an ACCOUNT or --all, not both")
    if account is None and not all_:
        raise click.UsageError(
            "to delete every account the criteria choose, add --all (with no criteria it also "
            "needs --everything)"
        )
    if account is None and criteria.is_empty() and not everything:
        raise click.UsageError(
            "no criteria: --all alone would delete every account in the database; add "
            "--everything to mean it, or give criteria (--plan, --group, --status...)"
        )
    if everything and not criteria.is_empty():
        raise click.UsageError("--everything means no criteria: drop it or the criteria")
    settings = app().settings

    async def _count() -> tuple[int | None, str, int]:
        async with engine_for(settings) as engine, engine.connect() as conn:
            if account is not None:
                found = await store.require_account(conn, account)
                return found.id, found.number, 1
            return None, criteria.describe(), await store.count_accounts(conn, criteria)

    account_id, what, count = run(_count())
    if count == 0:
        if as_json:
            echo_json({"deleted": 0, "numbers": []})
        click.echo(f"no account matches ({what}): nothing deleted", err=True)
        return
    if not yes:
        subject = f"account {what}" if account_id else f"{count} account(s) ({what})"
        click.confirm(
            f"Delete {subject} and their caller IDs, friends, contacts, payments and calls?",
            abort=True,
            err=True,
        )

    async def _delete() -> tuple[dict[str, Any] | None, list[str]]:
        async with engine_for(settings) as engine, write_transaction(engine) as conn:
            if account_id is None:
                return None, await store.delete_account_numbers(conn, criteria)
            # lock the row, then read it: what is printed is what is deleted
            await store.lock_account(conn, account_id)
            shown = _show_json(await store.account_info(conn, account_id, last=0))
            return shown, await store.delete_account_numbers(conn, account_id=account_id)

    shown, deleted = run(_delete())
    if as_json and shown is not None:
        echo_json({"removed": shown})
    elif as_json:
        echo_json({"deleted": len(deleted), "numbers": deleted})
    click.echo(f"{len(deleted)} account(s) deleted", err=True)


# --- export, import ------------------------------------------------------------------------------


@accounts.command("export")
@criteria_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "xml"]),
    default="csv",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--columns",
    default=None,
    help=f"Comma-separated columns (default all: {','.join(store.EXPORT_COLUMNS)}).",
)
@click.option("--output", "-o", default="-", show_default=True, help="File to write ('-': stdout).")
def export_cmd(fmt: str, columns: str | None, output: str, **options: Any) -> None:
    """Export the accounts the criteria choose as CSV (with a header) or XML."""
    criteria = criteria_from(options)
    try:
        chosen = store.check_columns(columns.split(",")) if columns else store.EXPORT_COLUMNS
    except InvalidDataError as exc:
        raise click.BadParameter(str(exc), param_hint="--columns") from exc

    async def _go() -> int:
        count = 0
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            with click.open_file(output, "w", encoding="utf-8") as out:
                write = (write_csv if fmt == "csv" else write_xml)(out, chosen)
                async for row in store.iter_export_rows(conn, criteria, chosen):
                    write(row)
                    count += 1
                if fmt == "xml":
                    out.write(XML_END)
        return count

    count = run(_go())
    click.echo(f"{count} account(s) exported", err=True)


@accounts.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--plan", default=None, help="Call plan for rows without a plan column.")
@click.option("--length", type=int, default=None, help="Digits of generated account numbers.")
@_json_option
def import_cmd(file: str, plan: str | None, length: int | None, as_json: bool) -> None:
    """Import accounts from a CSV file with a header row (the columns `export` writes; read-only
    ones are ignored). All or nothing: any bad line is reported with its number and nothing is
    imported. With --json, prints {"imported": N, "numbers": [the new accounts, file order]}."""
    settings = app().settings
    try:
        with click.open_file(file, "r", encoding="utf-8-sig") as handle:
            read = store.read_import_csv(handle)
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{file}: not UTF-8 text; nothing imported") from exc
    if not read.header:
        raise click.ClickException(f"{file} is empty: nothing imported")

    async def _go() -> list[str]:
        store.check_import_header(read.header)
        async with engine_for(settings) as engine, write_transaction(engine) as conn:
            default_plan = None
            if plan is not None:
                default_plan = (await store.parse_account_fields(conn, {"plan": plan}))[
                    "call_plan_id"
                ]
            return await store.import_account_numbers(
                conn,
                read.rows,
                problems=read.problems,
                default_plan_id=default_plan,
                number_length=length or settings.billing.account_number_length,
            )

    created = run(_go())
    if as_json:
        echo_json({"imported": len(created), "numbers": created})
    click.echo(f"{len(created)} account(s) imported", err=True)


# --- caller IDs ----------------------------------------------------------------------------------


@accounts.group("callerid")
def callerid() -> None:
    """Caller IDs that identify an account."""


@callerid.command("add")
@click.argument("account")
@click.argument("cid")
@_json_option
def callerid_add(account: str, cid: str, as_json: bool) -> None:
    """Attach caller ID CID to ACCOUNT (a caller ID belongs to one account). With --json, prints
    the caller ID as `callerid list --json` does."""

    async def _go() -> store.CallerId:
        async with engine_for(app().settings) as engine, engine.begin() as conn:
            found = await store.require_account(conn, account)
            new_id = await store.add_callerid(conn, found.id, cid)
            return next(c for c in await store.list_callerids(conn, found.id) if c.id == new_id)

    added = run(_go())
    if as_json:
        echo_json(dataclasses.asdict(added))
    click.echo(f"caller ID {added.callerid} added", err=True)


@callerid.command("list")
@click.argument("account")
@_json_option
def callerid_list(account: str, as_json: bool) -> None:
    """List ACCOUNT's caller IDs."""

    async def _go() -> list[store.CallerId]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            found = await store.require_account(conn, account)
            return await store.list_callerids(conn, found.id)

    found = run(_go())
    if as_json:
        echo_json([dataclasses.asdict(c) for c in found])
    else:
        echo_table(["CALLERID", "ACTIVE"], [[c.callerid, _fmt(c.active)] for c in found])


@callerid.command("remove")
@click.argument("account")
@click.argument("cid")
@_json_option
def callerid_remove(account: str, cid: str, as_json: bool) -> None:
    """Remove caller ID CID from ACCOUNT. With --json, prints {"removed": <the caller ID>}."""

    async def _go() -> store.CallerId:
        async with engine_for(app().settings) as engine, engine.begin() as conn:
            found = await store.require_account(conn, account)
            return await store.remove_callerid(conn, found.id, cid)

    removed = run(_go())
    if as_json:
        echo_json({"removed": dataclasses.asdict(removed)})
    click.echo(f"caller ID {removed.callerid} removed", err=True)
