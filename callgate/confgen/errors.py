"""Errors of confgen.

The tree::

    ConfgenError                  base of everything this package raises
    ├── UnsafeValueError          a value Asterisk would misread reached a renderer (never written)
    ├── RealtimeError             the Realtime tables cannot take the rows
    │   └── RealtimeConflictError a row callgate would write exists and is not callgate's
    └── ReloadError               Asterisk refused or failed a reload (its answer in the message)
"""

from __future__ import annotations


class ConfgenError(Exception):
    """Base of every confgen error."""


class UnsafeValueError(ConfgenError):
    """A value that would change the meaning of a generated file; nothing was written."""


class RealtimeError(ConfgenError):
    """The Realtime database or its tables cannot take the rows (missing table or column)."""


class RealtimeConflictError(RealtimeError):
    """A row with the key callgate would write exists and was not written by callgate."""


class ReloadError(ConfgenError):
    """Asterisk answered a reload with an error."""
