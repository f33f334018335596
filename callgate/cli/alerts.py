"""``callgate alerts``: conditions on an account that e-mail (or record for SMS) once."""

from __future__ import annotations

import dataclasses
from zoneinfo import ZoneInfo

import click

from callgate.alerts import NO_RELAY, AlertService, SmtpSender
from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.schema.tables import AlertArea, AlertOperator, NotificationChannel
from callgate.store import accounts as account_store
from callgate.store import alerts as alert_store

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group("alerts")
def alerts() -> None:
    """Alerts: fire once when an account's balance, channels or daily spend crosses a
    threshold; re-armed when the condition clears. E-mail through [smtp]; phone recipients are
    recorded as pending (no SMS gateway)."""


@alerts.command("add")
@click.argument("account")
@click.argument("name")
@click.option("--recipient", required=True, help="An e-mail address or a phone number.")
@click.option("--area", type=click.Choice([a.value for a in AlertArea]), required=True)
@click.option("--operator", type=click.Choice([o.value for o in AlertOperator]), required=True)
@click.option("--threshold", required=True, help="Money for balance/spend, a count for channels.")
def alerts_add(
    account: str, name: str, recipient: str, area: str, operator: str, threshold: str
) -> None:
    """Add alert NAME to ACCOUNT."""

    async def _go() -> alert_store.Alert:
        async with engine_for(app().settings) as engine, engine.begin() as conn:
            found = await account_store.require_account(conn, account)
            return await alert_store.add_alert(
                conn,
                found.id,
                name,
                recipient,
                AlertArea(area),
                AlertOperator(operator),
                account_store.parse_amount(threshold, "threshold"),
            )

    created = run(_go())
    click.echo(f"alert {created.name!r} added", err=True)
    channel = alert_store.recipient_channel(created.recipient)
    if channel is NotificationChannel.EMAIL and not SmtpSender(app().settings.smtp).configured:
        click.echo(
            f"warning: {NO_RELAY}: the e-mails of this alert will wait in the outbox", err=True
        )


@alerts.command("list")
@click.option("--account", default=None, help="Only this account's alerts.")
@_json_option
def alerts_list(account: str | None, as_json: bool) -> None:
    """List the alerts and their state (armed or fired)."""

    async def _go() -> tuple[list[alert_store.Alert], dict[int, str]]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            account_id = None
            if account:
                account_id = (await account_store.require_account(conn, account)).id
            found = await alert_store.list_alerts(conn, account_id)
            return found, await account_store.account_numbers(conn, (a.account_id for a in found))

    found, numbers = run(_go())
    if as_json:
        echo_json(
            [dataclasses.asdict(a) | {"account": numbers.get(a.account_id, "")} for a in found]
        )
        return
    echo_table(
        ["ACCOUNT", "NAME", "RECIPIENT", "CONDITION", "STATE", "LAST VALUE"],
        [
            [
                numbers.get(a.account_id, ""),
                a.name,
                a.recipient,
                f"{a.area.value} {a.operator.value} {a.threshold}",
                a.state.value,
                a.last_value,
            ]
            for a in found
        ],
    )


@alerts.command("remove")
@click.argument("account")
@click.argument("name")
def alerts_remove(account: str, name: str) -> None:
    """Remove ACCOUNT's alert NAME."""

    async def _go() -> None:
        async with engine_for(app().settings) as engine, engine.begin() as conn:
            found = await account_store.require_account(conn, account)
            await alert_store.remove_alert(conn, found.id, name)

    run(_go())
    click.echo(f"alert {name!r} removed", err=True)


@alerts.command("check")
@click.option("--account", default=None, help="Only this account (default: every account).")
def alerts_check(account: str | None) -> None:
    """Evaluate alerts now and send the pending e-mails (after payments made elsewhere)."""
    settings = app().settings

    async def _go() -> tuple[int, int]:
        async with engine_for(settings) as engine:
            service = AlertService(
                engine, SmtpSender(settings.smtp), zone=ZoneInfo(settings.billing.timezone)
            )
            if account:
                async with engine.connect() as conn:
                    found = await account_store.require_account(conn, account)
                fired = len(await service.evaluate(found.id))
            else:
                fired = await service.check_all()
            return fired, await service.waiting_without_relay()

    fired, waiting = run(_go())
    click.echo(f"{fired} alert(s) fired", err=True)
    if waiting:
        click.echo(f"warning: {waiting} alert e-mail(s) wait in the outbox: {NO_RELAY}", err=True)


@alerts.command("notifications")
@click.option("--account", default=None, help="Only this account's notifications.")
@click.option("--limit", type=int, default=50, show_default=True, help="How many, newest first.")
@_json_option
def alerts_notifications(account: str | None, limit: int, as_json: bool) -> None:
    """The outbox: notifications fired, with their delivery status."""

    async def _go() -> list[alert_store.Notification]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            account_id = None
            if account:
                account_id = (await account_store.require_account(conn, account)).id
            return await alert_store.list_notifications(conn, account_id, limit=limit)

    found = run(_go())
    if as_json:
        echo_json([dataclasses.asdict(n) for n in found])
        return
    echo_table(
        ["ID", "CREATED", "CHANNEL", "RECIPIENT", "STATUS", "ATTEMPTS", "SUBJECT"],
        [
            [
                n.id,
                n.created_at,
                n.channel.value,
                n.recipient,
                n.status.value,
                n.attempts,
                n.subject,
            ]
            for n in found
        ],
    )
