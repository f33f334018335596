"""``callgate alerts``: conditions on an account that e-mail (or record for SMS) once."""

from __future__ import annotations

import dataclasses
from typing import Any
from zoneinfo import ZoneInfo

import click

from callgate.alerts import NO_RELAY, AlertService, SmtpSender
from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.schema.tables import AlertArea, AlertOperator, NotificationChannel
from callgate.store import accounts as account_store
from callgate.store import alerts as alert_store
from callgate.store.db import write_transaction
from callgate.store.errors import InvalidDataError

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
@_json_option
def alerts_add(
    account: str,
    name: str,
    recipient: str,
    area: str,
    operator: str,
    threshold: str,
    as_json: bool,
) -> None:
    """Add alert NAME to ACCOUNT. With --json, the alert as `alerts list --json` shows it."""

    async def _go() -> tuple[alert_store.Alert, str]:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            found = await account_store.require_account(conn, account)
            return await alert_store.add_alert(
                conn,
                found.id,
                name,
                recipient,
                AlertArea(area),
                AlertOperator(operator),
                account_store.parse_amount(threshold, "threshold"),
            ), found.number

    created, number = run(_go())
    if as_json:
        echo_json(_alert_data(created, number))
    click.echo(f"alert {created.name!r} added", err=True)
    _warn_without_relay(created)


def _alert_data(alert: alert_store.Alert, number: str) -> dict[str, Any]:
    """An alert as `alerts list --json` prints it (with its account's number)."""
    return dataclasses.asdict(alert) | {"account": number}


def _warn_without_relay(alert: alert_store.Alert) -> None:
    channel = alert_store.recipient_channel(alert.recipient)
    if channel is NotificationChannel.EMAIL and not SmtpSender(app().settings.smtp).configured:
        click.echo(
            f"warning: {NO_RELAY}: the e-mails of this alert will wait in the outbox", err=True
        )


@alerts.command("update")
@click.argument("account")
@click.argument("name")
@click.option("--name", "new_name", default=None, help="New name of the alert.")
@click.option("--recipient", default=None, help="An e-mail address or a phone number.")
@click.option("--area", type=click.Choice([a.value for a in AlertArea]), default=None)
@click.option("--operator", type=click.Choice([o.value for o in AlertOperator]), default=None)
@click.option("--threshold", default=None, help="Money for balance/spend, a count for channels.")
@_json_option
def alerts_update(
    account: str,
    name: str,
    new_name: str | None,
    recipient: str | None,
    area: str | None,
    operator: str | None,
    threshold: str | None,
    as_json: bool,
) -> None:
    """Change ACCOUNT's alert NAME: only the options given; --name renames it.

    A changed condition (area, operator or threshold) re-arms the alert: it fires once more
    when the new condition holds. A new recipient gets the notifications fired from now on."""
    changes: dict[str, Any] = {
        field: value
        for field, value in (("name", new_name), ("recipient", recipient))
        if value is not None
    }
    if area is not None:
        changes["area"] = AlertArea(area)
    if operator is not None:
        changes["operator"] = AlertOperator(operator)
    if threshold is not None:
        try:
            changes["threshold"] = account_store.parse_amount(threshold, "threshold")
        except InvalidDataError as exc:
            raise click.BadParameter(str(exc), param_hint="--threshold") from exc
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")

    async def _go() -> tuple[alert_store.Alert, str]:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            found = await account_store.require_account(conn, account)
            changed = await alert_store.update_alert(conn, found.id, name, changes)
            return changed, found.number

    changed, number = run(_go())
    if as_json:
        echo_json(_alert_data(changed, number))
    rearmed = " and re-armed" if changes.keys() & {"area", "operator", "threshold"} else ""
    click.echo(f"alert {name!r} updated{rearmed}", err=True)
    _warn_without_relay(changed)


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
        echo_json([_alert_data(a, numbers.get(a.account_id, "")) for a in found])
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
@_json_option
def alerts_remove(account: str, name: str, as_json: bool) -> None:
    """Remove ACCOUNT's alert NAME and its notifications. With --json, prints
    {"removed": <the alert>}."""

    async def _go() -> tuple[alert_store.Alert, str]:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            found = await account_store.require_account(conn, account)
            return await alert_store.remove_alert(conn, found.id, name), found.number

    removed, number = run(_go())
    if as_json:
        echo_json({"removed": _alert_data(removed, number)})
    click.echo(f"alert {name!r} removed", err=True)


@alerts.command("check")
@click.option("--account", default=None, help="Only this account (default: every account).")
@_json_option
def alerts_check(account: str | None, as_json: bool) -> None:
    """Evaluate alerts now and send the pending e-mails (after payments made elsewhere).
    With --json, prints {"fired": N, "waiting_without_relay": M}."""
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
    if as_json:
        echo_json({"fired": fired, "waiting_without_relay": waiting})
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
