"""Errors of the FastAGI layer.

    AgiError                    base of everything raised by callgate.agi
    +-- AgiProtocolError        the bytes make no sense: malformed line, line too long, header
    |                           that never ends or is too big, EOF from the peer, a session
    |                           that is broken or closed
    +-- AgiCommandError         Asterisk refused a command: 510 (unknown command), 511 (dead
    |                           channel, when no HANGUP was seen), 520 (bad usage, with the usage
    |                           text), any other 5xx; also a 200 reply that means failure where
    |                           a convenience method documents it
    +-- AgiHangup               the channel hung up and the command needs a live one (511 after
    |                           HANGUP), or the peer closed the socket after HANGUP
    +-- AgiTimeout              a command or the header exceeded its deadline; the session is
                                broken afterwards and is never reused

`AgiTimeout` is also a `TimeoutError`, so generic timeout handling keeps working.
"""

from __future__ import annotations

__all__ = [
    "AgiCommandError",
    "AgiError",
    "AgiHangup",
    "AgiProtocolError",
    "AgiTimeout",
]


class AgiError(Exception):
    """Base of every error raised by the FastAGI layer."""


class AgiProtocolError(AgiError):
    """The peer sent bytes we cannot understand, closed the socket, or the session is unusable."""


class AgiCommandError(AgiError):
    """Asterisk answered a command with an error code (510, 511, 520, other 5xx)."""

    def __init__(self, code: int, text: str, usage: str = "", *, command: str = "") -> None:
        self.code = code
        self.text = text
        self.usage = usage
        self.command = command
        where = f" to {command!r}" if command else ""
        super().__init__(f"{code} {text}{where}")


class AgiHangup(AgiError):
    """The channel hung up; the command needed a live channel (or the peer went away)."""

    def __init__(self, message: str = "channel hung up", *, command: str = "") -> None:
        self.command = command
        super().__init__(message if not command else f"{message} ({command!r})")


class AgiTimeout(AgiError, TimeoutError):
    """A command (or the header block) exceeded its deadline."""
