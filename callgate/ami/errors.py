"""Errors of the AMI client.

The tree::

    AmiError                      base of everything this package raises
    ├── AmiProtocolError          the peer broke the protocol (no banner, message too large...)
    ├── AmiAuthError              Login (plain or MD5 challenge) was refused
    ├── AmiActionError            an action got ``Response: Error``; ``.message``, ``.response``
    ├── AmiDisconnected           the connection is gone (or was never up); pending actions get it
    └── AmiTimeout                no answer within the deadline (also a ``TimeoutError``)

Messages never carry a secret or an MD5 key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from callgate.ami.codec import AmiMessage


class AmiError(Exception):
    """Base of every AMI error."""


class AmiProtocolError(AmiError):
    """The peer sent something that is not AMI, or a message past the size cap."""


class AmiAuthError(AmiError):
    """Asterisk refused the login (``Message: Authentication failed``)."""


class AmiActionError(AmiError):
    """An action was answered with ``Response: Error``.

    ``message`` is Asterisk's ``Message:`` (for ``Command``, the output, e.g. ``No such command
    'pjsip reload' ...``); ``response`` is the whole response.
    """

    def __init__(self, message: str, response: AmiMessage | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.response = response


class AmiDisconnected(AmiError):
    """The AMI connection is not up, or was lost while the action waited."""


class AmiTimeout(AmiError, TimeoutError):
    """No answer within the deadline."""
