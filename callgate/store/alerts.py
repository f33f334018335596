"""Alerts: a condition on an account, and the notifications it gives (an outbox).

An alert watches one area of an account — ``balance``, ``channels`` (calls in progress: open
reservations) or ``daily_spend`` (what its calls cost since midnight in the operator's zone) —
with an operator (``<``, ``<=``, ``>``, ``>=``) and a threshold. It fires ONCE when the condition
becomes true: :func:`evaluate_account` moves it from ``armed`` to ``fired`` and writes a
notification in the same transaction (the alert rows are locked, so two callgate servers
evaluating at once fire it once); it is re-armed when the condition is false again.

Notifications are an outbox (``alert_notifications``): e-mail ones are sent by
``callgate.alerts.AlertService`` through the SMTP relay, which claims each row (pending ->
sending) before it sends, and marks it sent or failed. Phone recipients are recorded and stay
``pending``: callgate has no SMS gateway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import (
    AlertArea,
    AlertOperator,
    AlertState,
    NotificationChannel,
    NotificationStatus,
    ReservationStatus,
    accounts,
    alert_notifications,
    alerts,
    calls,
    reservations,
)
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import ConflictError, InvalidDataError, NotFoundError

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE = re.compile(r"\+?[0-9]{5,20}")
MAX_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    account_id: int
    name: str
    recipient: str
    area: AlertArea
    operator: AlertOperator
    threshold: Decimal
    state: AlertState
    last_value: Decimal | None
    fired_at: datetime | None


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    alert_id: int
    channel: NotificationChannel
    recipient: str
    subject: str
    body: str
    status: NotificationStatus
    attempts: int
    error: str
    created_at: datetime | None = None
    sent_at: datetime | None = None


def recipient_channel(recipient: str) -> NotificationChannel:
    text = recipient.strip()
    if _EMAIL.fullmatch(text):
        return NotificationChannel.EMAIL
    if _PHONE.fullmatch(text):
        return NotificationChannel.PHONE
    raise InvalidDataError(f"a recipient is an e-mail address or a phone number: {recipient!r}")


def holds(operator: AlertOperator, value: Decimal, threshold: Decimal) -> bool:
    if operator is AlertOperator.LT:
        return value < threshold
    if operator is AlertOperator.LE:
        return value <= threshold
    if operator is AlertOperator.GT:
        return value > threshold
    return value >= threshold


def alert_from_row(row: Any) -> Alert:
    m = row._mapping
    return Alert(
        id=m["id"],
        account_id=m["account_id"],
        name=m["name"],
        recipient=m["recipient"],
        area=AlertArea(m["area"]),
        operator=AlertOperator(m["operator"]),
        threshold=m["threshold"],
        state=AlertState(m["state"]),
        last_value=m["last_value"],
        fired_at=m["fired_at"],
    )


def notification_from_row(row: Any) -> Notification:
    m = row._mapping
    return Notification(
        id=m["id"],
        alert_id=m["alert_id"],
        channel=NotificationChannel(m["channel"]),
        recipient=m["recipient"],
        subject=m["subject"],
        body=m["body"],
        status=NotificationStatus(m["status"]),
        attempts=m["attempts"],
        error=m["error"],
        created_at=m["created_at"],
        sent_at=m["sent_at"],
    )


async def add_alert(
    conn: AsyncConnection,
    account_id: int,
    name: str,
    recipient: str,
    area: AlertArea,
    operator: AlertOperator,
    threshold: Decimal,
) -> Alert:
    if not name.strip():
        raise InvalidDataError("an alert needs a name")
    recipient_channel(recipient)
    async with mapped_errors(f"alert {name}"):
        new_id = await conn.scalar(
            insert(alerts)
            .values(
                account_id=account_id,
                name=name.strip(),
                recipient=recipient.strip(),
                area=area.value,
                operator=operator.value,
                threshold=threshold,
            )
            .returning(alerts.c.id)
        )
        row = (await conn.execute(select(alerts).where(alerts.c.id == new_id))).one()
    return alert_from_row(row)


async def list_alerts(conn: AsyncConnection, account_id: int | None = None) -> list[Alert]:
    query = select(alerts).order_by(alerts.c.account_id, alerts.c.name)
    if account_id is not None:
        query = query.where(alerts.c.account_id == account_id)
    async with mapped_errors("alerts"):
        return [alert_from_row(r) for r in await conn.execute(query)]


ALERT_FIELDS = frozenset({"name", "recipient", "area", "operator", "threshold"})
_CONDITION = ("area", "operator", "threshold")


async def update_alert(
    conn: AsyncConnection, account_id: int, name: str, changes: dict[str, Any]
) -> Alert:
    """Change the account's alert ``name``: ``changes`` holds the :data:`ALERT_FIELDS` to set
    (``area`` and ``operator`` as their enums), the others stay.

    A changed condition (area, operator or threshold) re-arms the alert: it may fire again, once,
    at the next evaluation, for the new condition. A new recipient or name leaves its state.
    """
    unknown = set(changes) - ALERT_FIELDS
    if unknown:
        raise InvalidDataError(f"unknown alert field(s): {', '.join(sorted(unknown))}")
    async with mapped_errors(f"alert {name}"):
        row = (
            await conn.execute(
                select(alerts)
                .where(alerts.c.account_id == account_id, alerts.c.name == name)
                .with_for_update()
            )
        ).first()
        if row is None:
            raise NotFoundError(f"the account has no alert {name!r}")
        current = alert_from_row(row)
        values: dict[str, Any] = {}
        for field, value in changes.items():
            if field in ("name", "recipient"):
                value = str(value).strip()
            if field == "name" and not value:
                raise InvalidDataError("an alert needs a name")
            if field == "recipient":
                recipient_channel(value)
            if value != getattr(current, field):
                values[field] = value
        if not values:
            return current
        if "name" in values and await conn.scalar(
            select(alerts.c.id).where(
                alerts.c.account_id == account_id, alerts.c.name == values["name"]
            )
        ):
            raise ConflictError(f"the account has an alert {values['name']!r}; nothing changed")
        if any(field in values for field in _CONDITION):
            values.update(state=AlertState.ARMED.value, fired_at=None, last_value=None)
        for field in ("area", "operator"):
            if field in values:
                values[field] = values[field].value
        updated = (
            await conn.execute(
                update(alerts).where(alerts.c.id == current.id).values(**values).returning(alerts)
            )
        ).one()
    return alert_from_row(updated)


async def remove_alert(conn: AsyncConnection, account_id: int, name: str) -> Alert:
    """Remove the account's alert ``name`` (and its notifications); returns it as it was."""
    async with mapped_errors("alert"):
        row = (
            await conn.execute(
                delete(alerts)
                .where(alerts.c.account_id == account_id, alerts.c.name == name)
                .returning(alerts)
            )
        ).first()
    if row is None:
        raise NotFoundError(f"the account has no alert {name!r}")
    return alert_from_row(row)


async def email_alert_count(conn: AsyncConnection) -> int:
    """How many alerts have an e-mail recipient (they need an SMTP relay)."""
    async with mapped_errors("alerts"):
        recipients = await conn.scalars(select(alerts.c.recipient))
        return sum(1 for r in recipients if recipient_channel(r) is NotificationChannel.EMAIL)


async def accounts_with_alerts(conn: AsyncConnection) -> set[int]:
    async with mapped_errors("alerts"):
        rows = await conn.execute(select(alerts.c.account_id).distinct())
        return {int(r[0]) for r in rows}


async def area_value(
    conn: AsyncConnection, account_id: int, area: AlertArea, *, now: datetime, zone: ZoneInfo
) -> Decimal:
    """The current value of an area for an account."""
    if area is AlertArea.BALANCE:
        balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account_id))
        if balance is None:
            raise NotFoundError(f"no account with id {account_id}")
        return Decimal(balance)
    if area is AlertArea.CHANNELS:
        count = await conn.scalar(
            select(func.count())
            .select_from(reservations)
            .where(
                reservations.c.account_id == account_id,
                reservations.c.status == ReservationStatus.OPEN.value,
            )
        )
        return Decimal(int(count or 0))
    local = now.astimezone(zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    next_midnight = midnight + timedelta(days=1)  # wall-clock arithmetic: DST-safe
    spent = await conn.scalar(
        select(func.sum(calls.c.cost)).where(
            calls.c.account_id == account_id,
            calls.c.started_at >= midnight,
            calls.c.started_at < next_midnight,
        )
    )
    return Decimal(spent) if spent is not None else Decimal(0)


def _message(alert: Alert, account: str, value: Decimal) -> tuple[str, str]:
    subject = f"callgate alert {alert.name}: account {account} {alert.area.value} is {value}"
    body = (
        f"Alert: {alert.name}\n"
        f"Account: {account}\n"
        f"Condition: {alert.area.value} {alert.operator.value} {alert.threshold}\n"
        f"Current value: {value}\n"
        "\nThis alert fires once; it is re-armed when the condition is no longer true.\n"
    )
    return subject, body


async def evaluate_account(
    conn: AsyncConnection, account_id: int, *, now: datetime, zone: ZoneInfo
) -> list[int]:
    """Evaluate the account's alerts inside the caller's write transaction.

    Fires (armed -> fired, one notification) those whose condition became true, re-arms those
    whose condition is false again. Returns the ids of the new notifications.
    """
    async with mapped_errors("alert evaluation"):
        rows = (
            await conn.execute(
                select(alerts)
                .where(alerts.c.account_id == account_id)
                .order_by(alerts.c.id)
                .with_for_update()
            )
        ).all()
        if not rows:
            return []
        account = await conn.scalar(select(accounts.c.number).where(accounts.c.id == account_id))
        values: dict[AlertArea, Decimal] = {}
        created: list[int] = []
        for row in rows:
            alert = alert_from_row(row)
            if alert.area not in values:
                values[alert.area] = await area_value(
                    conn, account_id, alert.area, now=now, zone=zone
                )
            value = values[alert.area]
            true_now = holds(alert.operator, value, alert.threshold)
            changes: dict[str, Any] = {"last_value": value}
            if true_now and alert.state is AlertState.ARMED:
                changes.update(state=AlertState.FIRED.value, fired_at=now)
                subject, body = _message(alert, str(account), value)
                new_id = await conn.scalar(
                    insert(alert_notifications)
                    .values(
                        alert_id=alert.id,
                        channel=recipient_channel(alert.recipient).value,
                        recipient=alert.recipient,
                        subject=subject,
                        body=body,
                        created_at=now,
                    )
                    .returning(alert_notifications.c.id)
                )
                created.append(int(new_id))
            elif not true_now and alert.state is AlertState.FIRED:
                changes["state"] = AlertState.ARMED.value
            await conn.execute(update(alerts).where(alerts.c.id == alert.id).values(**changes))
        return created


async def claim_email(conn: AsyncConnection, notification_id: int) -> Notification | None:
    """Claim a pending e-mail notification for sending (None: someone else has it)."""
    async with mapped_errors("alert outbox"):
        result = await conn.execute(
            update(alert_notifications)
            .where(
                alert_notifications.c.id == notification_id,
                alert_notifications.c.status == NotificationStatus.PENDING.value,
                alert_notifications.c.channel == NotificationChannel.EMAIL.value,
            )
            .values(
                status=NotificationStatus.SENDING.value,
                attempts=alert_notifications.c.attempts + 1,
            )
        )
        if not result.rowcount:
            return None
        row = (
            await conn.execute(
                select(alert_notifications).where(alert_notifications.c.id == notification_id)
            )
        ).one()
    return notification_from_row(row)


async def pending_emails(conn: AsyncConnection, *, limit: int = 100) -> list[int]:
    async with mapped_errors("alert outbox"):
        rows = await conn.execute(
            select(alert_notifications.c.id)
            .where(
                alert_notifications.c.status == NotificationStatus.PENDING.value,
                alert_notifications.c.channel == NotificationChannel.EMAIL.value,
            )
            .order_by(alert_notifications.c.id)
            .limit(limit)
        )
        return [int(r[0]) for r in rows]


async def mark_sent(conn: AsyncConnection, notification_id: int, *, now: datetime) -> None:
    async with mapped_errors("alert outbox"):
        await conn.execute(
            update(alert_notifications)
            .where(alert_notifications.c.id == notification_id)
            .values(status=NotificationStatus.SENT.value, sent_at=now, error="")
        )


async def mark_failed(conn: AsyncConnection, notification_id: int, error: str) -> None:
    """Back to pending for a retry, or failed after MAX_ATTEMPTS."""
    async with mapped_errors("alert outbox"):
        attempts = await conn.scalar(
            select(alert_notifications.c.attempts).where(
                alert_notifications.c.id == notification_id
            )
        )
        status = (
            NotificationStatus.FAILED
            if int(attempts or 0) >= MAX_ATTEMPTS
            else NotificationStatus.PENDING
        )
        await conn.execute(
            update(alert_notifications)
            .where(alert_notifications.c.id == notification_id)
            .values(status=status.value, error=error[:1000])
        )


async def list_notifications(
    conn: AsyncConnection, account_id: int | None = None, *, limit: int = 100
) -> list[Notification]:
    query = (
        select(alert_notifications)
        .join(alerts, alerts.c.id == alert_notifications.c.alert_id)
        .order_by(alert_notifications.c.id.desc())
        .limit(limit)
    )
    if account_id is not None:
        query = query.where(alerts.c.account_id == account_id)
    async with mapped_errors("alert outbox"):
        return [notification_from_row(r) for r in await conn.execute(query)]
