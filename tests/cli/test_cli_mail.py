"""E-mail from the CLI on both databases (issue 12.13): `accounts contact add --send-password`
through a real SMTP server on loopback (aiosmtpd, in its own thread and event loop), refused
before any change without a relay; and alert e-mails that would wait for an unconfigured relay
warn instead of waiting silently."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import socket
import threading
from collections.abc import Iterator
from decimal import Decimal
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.alerts import AlertService, SmtpSender
from callgate.cli.main import cli
from callgate.config import SmtpSettings
from callgate.schema.tables import AlertArea, AlertOperator, contacts
from callgate.store import accounts as account_store
from callgate.store import alerts as alert_store
from callgate.store import plans
from callgate.store.contacts import verify_password
from callgate.store.db import create_engine

NUMBER = "3000000001"


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), message))
        return "250 OK"


@pytest.fixture
def relay() -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server on a loopback port, served by its own event loop in a thread (the CLI
    under test runs its own ``asyncio.run``)."""
    inbox = Inbox()
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(lambda: SMTP(inbox), "127.0.0.1", 0))
    port = int(server.sockets[0].getsockname()[1])
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield inbox, port
    finally:

        async def _close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(_close(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _smtp_env(port: int) -> dict[str, str]:
    return {
        "CALLGATE_SMTP_HOST": "127.0.0.1",
        "CALLGATE_SMTP_PORT": str(port),
        "CALLGATE_SMTP_SENDER": "billing@example.com",
        "CALLGATE_SMTP_TIMEOUT_SECONDS": "5",
    }


def invoke(db_url: str, *args: str, **env: str) -> Result:
    environment = {"CALLGATE_DATABASE_URL": db_url, "CALLGATE_LOG_LEVEL": "WARNING", **env}
    return CliRunner().invoke(cli, list(args), env=environment)


def _seed(db_url: str) -> None:
    async def go() -> None:
        engine = create_engine(db_url)
        try:
            async with engine.begin() as conn:
                plan = await plans.create_call_plan(conn, name="retail")
                await account_store.open_account(
                    conn, call_plan_id=plan.id, number=NUMBER, balance=Decimal("5")
                )
        finally:
            await engine.dispose()

    asyncio.run(go())


def _contacts(db_url: str) -> list[Any]:
    async def go() -> list[Any]:
        engine = create_engine(db_url)
        try:
            async with engine.connect() as conn:
                return list(await conn.execute(select(contacts).order_by(contacts.c.id)))
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _add_contact(db_url: str, *extra: str, **env: str) -> Result:
    return invoke(
        db_url,
        *("accounts", "contact", "add", NUMBER, "--name", "Ann Lee"),
        *("--email", "Ann@Example.com", *extra),
        **env,
    )


def test_send_password_mails_the_generated_password_to_the_contact(
    db_url: str, relay: tuple[Inbox, int]
) -> None:
    inbox, port = relay
    _seed(db_url)
    result = _add_contact(db_url, "--send-password", **_smtp_env(port))
    assert result.exit_code == 0, result.output
    assert "password e-mailed to ann@example.com" in result.stderr
    ((mail_from, rcpt_tos, message),) = inbox.messages
    assert (mail_from, rcpt_tos) == ("billing@example.com", ["ann@example.com"])
    assert message["To"] == "ann@example.com" and NUMBER in str(message["Subject"])
    body = message.get_content()
    assert "Login: ann@example.com" in body
    password = body.split("Password: ", 1)[1].split()[0]
    assert len(password) >= 8
    assert password not in result.stdout  # mailed, not printed
    (stored,) = _contacts(db_url)
    assert verify_password(password, stored.password_hash)


def test_send_password_without_a_relay_is_refused_before_any_change(db_url: str) -> None:
    _seed(db_url)
    result = _add_contact(db_url, "--send-password")
    assert result.exit_code == 1, result.output
    assert "--send-password: no SMTP relay is configured ([smtp] host" in result.output
    assert "nothing was changed" in result.output
    assert _contacts(db_url) == []
    both = _add_contact(db_url, "--send-password", "--ask-password", **_smtp_env(_closed_port()))
    assert both.exit_code == 2 and "leave out --ask-password" in both.output
    assert _contacts(db_url) == []


def test_a_refused_password_mail_prints_the_password_and_fails(db_url: str) -> None:
    _seed(db_url)
    result = _add_contact(db_url, "--send-password", **_smtp_env(_closed_port()))
    assert result.exit_code == 1, result.output
    assert "the password e-mail to ann@example.com failed" in result.stderr
    password = result.stdout.strip()
    (stored,) = _contacts(db_url)  # the contact is made and its password is not lost
    assert verify_password(password, stored.password_hash)


def test_alert_emails_without_a_relay_warn_in_the_cli(db_url: str) -> None:
    _seed(db_url)
    added = invoke(
        db_url,
        *("alerts", "add", NUMBER, "low", "--recipient", "ops@example.com"),
        *("--area", "balance", "--operator", "<", "--threshold", "10"),
    )
    assert added.exit_code == 0, added.output
    assert "warning: no SMTP relay is configured" in added.stderr
    assert "will wait in the outbox" in added.stderr
    phone = invoke(
        db_url,
        *("alerts", "add", NUMBER, "sms", "--recipient", "+15550001111"),
        *("--area", "balance", "--operator", "<", "--threshold", "10"),
    )
    assert phone.exit_code == 0 and "warning" not in phone.stderr  # no relay needed
    checked = invoke(db_url, "alerts", "check")
    assert checked.exit_code == 0, checked.output
    assert "2 alert(s) fired" in checked.stderr
    assert "warning: 1 alert e-mail(s) wait in the outbox: no SMTP relay" in checked.stderr


async def test_alert_service_warns_at_start_and_at_send_time_without_a_relay(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    async with engine.begin() as conn:
        plan = await plans.create_call_plan(conn, name="retail")
        account = await account_store.open_account(
            conn, call_plan_id=plan.id, number=NUMBER, balance=Decimal("5")
        )
    service = AlertService(engine, SmtpSender(SmtpSettings()))  # no [smtp] host
    caplog.set_level(logging.WARNING, logger="callgate.alerts")
    assert await service.warn_if_no_relay() == 0
    assert caplog.records == []  # no e-mail alert: nothing to warn about
    async with engine.begin() as conn:
        await alert_store.add_alert(
            conn, account.id, "low", "ops@example.com", AlertArea.BALANCE, AlertOperator.LT,
            Decimal("10"),
        )  # fmt: skip
    assert await service.warn_if_no_relay() == 0
    (start,) = caplog.records
    assert "no SMTP relay is configured" in start.getMessage()
    assert "1 alert(s) e-mail their recipients" in start.getMessage()
    caplog.clear()
    assert await service.evaluate(account.id)  # fires; flush cannot send
    (at_send,) = caplog.records
    assert at_send.levelno == logging.WARNING
    assert "1 alert e-mail(s) wait in the outbox: no SMTP relay" in at_send.getMessage()
    assert await service.waiting_without_relay() == 1
