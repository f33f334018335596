"""Alert delivery: evaluate accounts' alerts and send their e-mails through an SMTP relay.

:class:`AlertService` is the call flows' ``AlertHook``: ``account_changed(account_id)`` returns at
once and evaluates the account in a background task (a call never waits for it), then sends the
pending e-mails of the outbox (``callgate.store.alerts``). ``check_all`` evaluates every account
that has alerts (the server runs it periodically, so payments, package charges and calls on other
callgate servers are seen too). :class:`SmtpSender` speaks SMTP with the standard library's
``smtplib`` in a worker thread, under a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.config import SmtpSettings
from callgate.store import alerts as alert_store
from callgate.store._errors_map import mapped_errors
from callgate.store.db import write_transaction
from callgate.store.errors import StoreError

log = logging.getLogger(__name__)
UTC_ZONE = ZoneInfo("UTC")

Send = Callable[[str, str, str], Awaitable[None]]  # (recipient, subject, body)


NO_RELAY = "no SMTP relay is configured ([smtp] host, or CALLGATE_SMTP_HOST)"


class AlertDeliveryError(Exception):
    """The relay refused or could not be reached."""


def render_password_mail(
    *, email: str, name: str, account_number: str, password: str
) -> tuple[str, str]:
    """``(subject, body)`` of the e-mail that gives a contact its generated portal password."""
    subject = f"Your password for account {account_number}"
    body = (
        f"Hello {name},\n\n"
        f"a password was made for you, as a contact of account {account_number}.\n\n"
        f"Login: {email}\n"
        f"Password: {password}\n\n"
        "Only a hash of it is kept: nobody can read it back, so keep this message or change "
        "the password.\n"
    )
    return subject, body


class SmtpSender:
    """Send one e-mail through the configured relay (``smtplib`` in a thread, with a deadline)."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    @property
    def configured(self) -> bool:
        return bool(self.settings.host)

    def _send_sync(self, message: EmailMessage) -> None:
        s = self.settings
        with smtplib.SMTP(s.host, s.port, timeout=s.timeout_seconds) as client:
            if s.starttls:
                client.starttls()
            if s.username:
                client.login(s.username, s.password.value)
            client.send_message(message)

    async def __call__(self, recipient: str, subject: str, body: str) -> None:
        if not self.configured:
            raise AlertDeliveryError(NO_RELAY)
        message = EmailMessage()
        message["From"] = self.settings.sender
        message["To"] = recipient
        message["Subject"] = subject
        message.set_content(body)
        try:
            async with asyncio.timeout(self.settings.timeout_seconds + 1):
                await asyncio.to_thread(self._send_sync, message)
        except (OSError, smtplib.SMTPException, TimeoutError) as exc:
            raise AlertDeliveryError(
                f"SMTP {self.settings.host}:{self.settings.port}: {exc}"
            ) from exc


class AlertService:
    """Evaluates alerts and delivers their e-mails; the flows' ``AlertHook``."""

    def __init__(
        self,
        engine: AsyncEngine,
        send: Send,
        *,
        zone: ZoneInfo = UTC_ZONE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.send = send
        self.zone = zone
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._watched: set[int] | None = None  # accounts with alerts (None: not loaded yet)

    # ------------------------------------------------------------------ the flows' hook

    def account_changed(self, account_id: int) -> None:
        """Evaluate the account soon, in the background; never raises, never blocks."""
        if self._watched is not None and account_id not in self._watched:
            return
        task = asyncio.get_running_loop().create_task(self._evaluate_logged(account_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _evaluate_logged(self, account_id: int) -> None:
        try:
            await self.evaluate(account_id)
        except (StoreError, AlertDeliveryError) as exc:
            log.error("alerts of account %s: %s", account_id, exc)
        except Exception:
            log.exception("alerts of account %s failed", account_id)

    async def drain(self) -> None:
        """Wait for the evaluations in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()

    # ------------------------------------------------------------------ evaluation and delivery

    async def refresh(self) -> None:
        """Reload which accounts have alerts (the hook skips the others without SQL)."""
        async with mapped_errors("alerts"), self.engine.connect() as conn:
            self._watched = await alert_store.accounts_with_alerts(conn)

    async def evaluate(self, account_id: int) -> list[int]:
        """Evaluate one account now and send what it fired; the new notification ids."""
        async with mapped_errors("alerts"), write_transaction(self.engine) as conn:
            created = await alert_store.evaluate_account(
                conn, account_id, now=self.clock(), zone=self.zone
            )
        if created:
            log.info("account %s fired %d alert(s)", account_id, len(created))
            await self.flush()
        return created

    async def check_all(self) -> int:
        """Evaluate every account that has alerts; the number of notifications fired."""
        await self.refresh()
        fired = 0
        for account_id in sorted(self._watched or ()):
            async with mapped_errors("alerts"), write_transaction(self.engine) as conn:
                fired += len(
                    await alert_store.evaluate_account(
                        conn, account_id, now=self.clock(), zone=self.zone
                    )
                )
        await self.flush()
        return fired

    @property
    def has_relay(self) -> bool:
        """False when e-mails cannot leave: the sender is an unconfigured :class:`SmtpSender`."""
        return not (isinstance(self.send, SmtpSender) and not self.send.configured)

    async def waiting_without_relay(self) -> int:
        """How many alert e-mails wait in the outbox because no relay is configured (0 when one
        is); :meth:`flush` and the server's start-up warn with it instead of waiting silently."""
        if self.has_relay:
            return 0
        async with mapped_errors("alerts"), self.engine.connect() as conn:
            return len(await alert_store.pending_emails(conn, limit=10_000))

    async def warn_if_no_relay(self) -> int:
        """Log a warning when e-mails would wait for a relay that is not configured: alerts with
        an e-mail recipient exist, or e-mails already wait. Returns how many wait."""
        if self.has_relay:
            return 0
        waiting = await self.waiting_without_relay()
        async with mapped_errors("alerts"), self.engine.connect() as conn:
            by_email = await alert_store.email_alert_count(conn)
        if waiting or by_email:
            log.warning(
                "%s: %d alert(s) e-mail their recipients and %d alert e-mail(s) wait in the "
                "outbox; they stay pending until a relay is configured",
                NO_RELAY,
                by_email,
                waiting,
            )
        return waiting

    async def flush(self) -> int:
        """Send the pending e-mails of the outbox; the number sent. Phone ones stay pending,
        and so do e-mails while no SMTP relay is configured (with a warning, not silently)."""
        if not self.has_relay:
            waiting = await self.waiting_without_relay()
            if waiting:
                log.warning("%d alert e-mail(s) wait in the outbox: %s", waiting, NO_RELAY)
            return 0
        async with mapped_errors("alerts"), self.engine.connect() as conn:
            pending = await alert_store.pending_emails(conn)
        sent = 0
        for notification_id in pending:
            async with mapped_errors("alerts"), write_transaction(self.engine) as conn:
                claimed = await alert_store.claim_email(conn, notification_id)
            if claimed is None:
                continue
            try:
                await self.send(claimed.recipient, claimed.subject, claimed.body)
            except AlertDeliveryError as exc:
                log.warning("alert e-mail %s to %s: %s", claimed.id, claimed.recipient, exc)
                async with mapped_errors("alerts"), write_transaction(self.engine) as conn:
                    await alert_store.mark_failed(conn, claimed.id, str(exc))
                continue
            async with mapped_errors("alerts"), write_transaction(self.engine) as conn:
                await alert_store.mark_sent(conn, claimed.id, now=self.clock())
            sent += 1
        return sent

    async def run_periodic(self, interval_seconds: float) -> None:
        """The server's background loop: ``check_all`` every ``interval_seconds``."""
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.check_all()
            except (StoreError, AlertDeliveryError) as exc:
                log.error("periodic alert check failed: %s", exc)
            except Exception:
                log.exception("periodic alert check failed")
