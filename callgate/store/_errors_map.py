"""Map driver errors to store errors, most specific first."""

from __future__ import annotations

import asyncio
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


def translate(error: Exception, what: str = "") -> StoreError:
    """The store error for a SQLAlchemy/driver error."""
    prefix = f"{what}: " if what else ""
    if isinstance(error, sa_exc.IntegrityError):
        text = str(error.orig) if error.orig is not None else str(error)
        if any(marker in text.lower() for marker in _UNIQUE_MARKERS):
            return ConflictError(f"{prefix}already exists ({_first_line(text)})")
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
