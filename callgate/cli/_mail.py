"""E-mailing a generated contact password (``--send-password``) through the ``[smtp]`` relay.

Two steps, so that a command fails before it changes anything when no relay is configured:
:func:`require_relay` first, then the change, then :func:`send_password`. When the relay refuses
after the change, the command prints the password (it is not lost: it exists nowhere else) and
exits 1 saying the mail failed.
"""

from __future__ import annotations

import asyncio

import click

from callgate.alerts import NO_RELAY, AlertDeliveryError, SmtpSender, render_password_mail
from callgate.config import Settings

SEND_PASSWORD_HELP = (
    "E-mail the generated password to the contact through the [smtp] relay instead of "
    "printing it (refused before any change when no relay is configured)."
)


def require_relay(settings: Settings) -> None:
    """Refuse ``--send-password`` (exit 1, nothing changed) when no SMTP relay is configured."""
    if not SmtpSender(settings.smtp).configured:
        raise click.ClickException(
            f"--send-password: {NO_RELAY}; nothing was changed "
            "(configure the relay, or leave out --send-password to have the password printed)"
        )


def send_password(
    settings: Settings, *, email: str, name: str, account_number: str, password: str
) -> None:
    """Mail ``password`` to ``email``; on failure print it and exit 1 (the change is made)."""
    subject, body = render_password_mail(
        email=email, name=name, account_number=account_number, password=password
    )
    try:
        asyncio.run(SmtpSender(settings.smtp)(email, subject, body))
    except AlertDeliveryError as exc:
        click.echo("generated password (shown once, only its hash is stored):", err=True)
        click.echo(password)
        raise click.ClickException(
            f"the password e-mail to {email} failed ({exc}); the password is printed above: "
            "give it to the contact yourself"
        ) from exc
    click.echo(f"password e-mailed to {email} through {settings.smtp.host}", err=True)
