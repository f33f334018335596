"""Reading and writing a test database from synchronous CLI tests: rows of a table, a snapshot
of several (to show that a refused command changed nothing), SQL run before a command."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Executable

from callgate.store.db import create_engine

T = TypeVar("T")


async def with_conn(db_url: str, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """``work`` in one transaction on a fresh engine of ``db_url``."""
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            return await work(conn)
    finally:
        await engine.dispose()


def run_sql(db_url: str, *statements: Executable) -> None:
    async def _go(conn: AsyncConnection) -> None:
        for statement in statements:
            await conn.execute(statement)

    asyncio.run(with_conn(db_url, _go))


def rows(db_url: str, table: Table) -> list[dict[str, Any]]:
    """Every row of ``table``, in primary-key order."""

    async def _go(conn: AsyncConnection) -> list[dict[str, Any]]:
        result = await conn.execute(select(table).order_by(*table.primary_key.columns))
        return [dict(r._mapping) for r in result]

    return asyncio.run(with_conn(db_url, _go))


def snapshot(db_url: str, tables: Iterable[Table]) -> dict[str, list[dict[str, Any]]]:
    return {table.name: rows(db_url, table) for table in tables}
