"""What every command shares: the settings, the engine, JSON output, exit codes.

Exit codes: 0 ok; 1 operational (``click.ClickException``); 2 usage (``click.UsageError``);
3 ``serve`` cannot start (bind, database, pending migrations).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.config import Settings
from callgate.schema.migrate import pending_revisions
from callgate.store.db import create_engine
from callgate.store.errors import StoreError, StoreUnavailableError

EXIT_STARTUP_FAILURE = 3
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AppContext:
    """Put on ``click.Context.obj`` by the root group."""

    settings: Settings


def app(ctx: click.Context | None = None) -> AppContext:
    ctx = ctx or click.get_current_context()
    obj = ctx.find_object(AppContext)
    if obj is None:  # pragma: no cover - the root group always sets it
        raise click.ClickException("internal error: no settings")
    return obj


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine for a command; store errors become clear operational errors."""
    try:
        return asyncio.run(coro)
    except StoreUnavailableError as exc:
        raise click.ClickException(f"database unavailable: {exc}") from exc
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


@asynccontextmanager
async def engine_for(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def require_migrated(engine: AsyncEngine) -> None:
    """Refuse to go on while migrations are pending: the server's start-up check (exit 3)."""
    try:
        pending = await pending_revisions(engine)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        startup_failure(f"cannot read the database schema: {exc}")
    if pending:
        startup_failure(
            f"the database has {len(pending)} pending migration(s) ({', '.join(pending)}): "
            "run `callgate db upgrade` first"
        )


def startup_failure(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(EXIT_STARTUP_FAILURE)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(data: Any) -> str:
    """Stable JSON for ``--json``: Decimal as string, datetimes ISO-8601, sorted keys."""
    return json.dumps(data, default=_json_default, indent=2, sort_keys=True)


def echo_json(data: Any) -> None:
    click.echo(dumps(data))


def echo_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned text table on stdout."""
    text_rows = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in text_rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


AsyncCommand = Callable[..., Awaitable[Any]]
