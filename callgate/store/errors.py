"""Errors of the store, declared beside the ports and raised by the adapters.

StoreError
 +-- StoreUnavailableError   the database cannot be reached or went away (fail closed)
 +-- NotFoundError           no such row (account, plan, rate table...)
 +-- ConflictError           a unique value is taken (account number, alias, caller ID...)
 +-- InvalidDataError        a value the schema refuses (negative price, unknown status...)
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every store error."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached, or the connection broke mid-operation."""


class NotFoundError(StoreError):
    """The row asked for does not exist."""


class ConflictError(StoreError):
    """A value that must be unique is already taken."""


class InvalidDataError(StoreError):
    """The database refused a value (a CHECK or a foreign key)."""
