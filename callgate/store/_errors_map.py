"""Map driver errors to store errors, most specific first."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import exc as sa_exc

from callgate.store.errors import (
    ConflictError,
    InvalidDataError,
    StoreError,
    StoreUnavailableError,
)

_UNIQUE_MARKERS = ("unique", "duplicate key")

# What a table's rows are to an operator, for duplicate-entry errors no store function foresaw.
_ROW_NAMES = {
    "accounts": "an account",
    "account_callerids": "a caller ID",
    "account_ips": "an IP entry",
    "customer_groups": "a group",
    "account_packages": "this package on this account",
    "alerts": "an alert",
    "call_plans": "a call plan",
    "contacts": "a contact",
    "currencies": "a currency",
    "dids": "a DID",
    "iax_friends": "an IAX friend",
    "operators": "an operator",
    "api_tokens": "an API token",
    "packages": "a package",
    "rate_tables": "a rate table",
    "sip_friends": "a SIP friend",
    "trunks": "a trunk",
}
_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: (?P<cols>[\w., ]+)")
_PG_KEY = re.compile(r"Key \((?P<cols>[^)]*)\)=")


def _duplicate(error: sa_exc.IntegrityError) -> str | None:
    """``a caller ID with the same callerid already exists`` from either driver; None if the
    error is not a unique violation. Never the SQL or the driver's own text."""
    text = str(error.orig) if error.orig is not None else str(error)
    if not any(marker in text.lower() for marker in _UNIQUE_MARKERS):
        return None
    table, columns = "", []
    found = _SQLITE_UNIQUE.search(text)
    if found:
        pairs = [c.strip().split(".", 1) for c in found["cols"].split(",") if "." in c]
        table = pairs[0][0] if pairs else ""
        columns = [c for _, c in pairs]
    else:
        cause = getattr(error.orig, "__cause__", None)
        table = str(getattr(cause, "table_name", "") or "")
        key = _PG_KEY.search(str(getattr(cause, "detail", "") or text))
        columns = [c.strip() for c in key["cols"].split(",")] if key else []
    what = _ROW_NAMES.get(table, f"a {table} row" if table else "a row")
    names = [c.replace("_", " ") for c in columns]
    joined = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    same = f" with the same {joined}" if names else ""
    return f"{what}{same} already exists"


# PostgreSQL's class 40 errors a transaction can simply be run again after: a serialization
# failure and a deadlock (the server rolled one side back; nothing of it was written)
_ROLLED_BACK_SQLSTATES = frozenset({"40001", "40P01"})


def rolled_back_by_conflict(error: BaseException) -> bool:
    """True when ``error`` (a store error, SQLAlchemy's or a driver's, through their causes)
    is PostgreSQL rolling the transaction back for a lock conflict: safe to retry whole."""
    seen: BaseException | None = error
    for _ in range(6):  # store error -> SQLAlchemy -> adapter -> asyncpg, at most
        if seen is None:
            return False
        if getattr(seen, "sqlstate", None) in _ROLLED_BACK_SQLSTATES:
            return True
        orig = getattr(seen, "orig", None)
        seen = orig if isinstance(orig, BaseException) else seen.__cause__
    return False


def translate(error: Exception, what: str = "") -> StoreError:
    """The store error for a SQLAlchemy/driver error."""
    prefix = f"{what}: " if what else ""
    if isinstance(error, sa_exc.IntegrityError):
        duplicate = _duplicate(error)
        if duplicate is not None:
            return ConflictError(f"{prefix}{duplicate}")
        text = str(error.orig) if error.orig is not None else str(error)
        return InvalidDataError(f"{prefix}refused by the database ({_first_line(text)})")
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return StoreUnavailableError(f"{prefix}database connection lost")
    if isinstance(error, sa_exc.InterfaceError | sa_exc.OperationalError):
        return StoreUnavailableError(f"{prefix}database unavailable ({_first_line(str(error))})")
    if isinstance(error, OSError | TimeoutError):
        return StoreUnavailableError(f"{prefix}database unreachable ({error})")
    if isinstance(error, sa_exc.DBAPIError):
        return StoreError(f"{prefix}{_first_line(str(error))}")
    return StoreError(f"{prefix}{error}")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


@asynccontextmanager
async def mapped_errors(what: str = "") -> AsyncIterator[None]:
    """Re-raise database errors as store errors; let cancellation and ours through."""
    try:
        yield
    except asyncio.CancelledError:
        raise
    except StoreError:
        raise
    except (sa_exc.SQLAlchemyError, OSError, TimeoutError) as error:
        raise translate(error, what) from error
