"""Engines and transactions for both backends.

- SQLite (aiosqlite) is the embedded default: WAL journal, foreign keys on, a busy timeout, and
  transactions begun by us (``BEGIN`` or ``BEGIN IMMEDIATE``) instead of by the driver, so that a
  ledger transaction takes SQLite's write lock before it reads (DESIGN.md §6).
- PostgreSQL (asyncpg) is for production; row locks are ``SELECT ... FOR UPDATE``.

:func:`write_transaction` is the one way the ledger opens a transaction that reads then writes.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

SQLITE_BUSY_TIMEOUT_MS = 10_000
_BEGIN_OPTION = "callgate_sqlite_begin"


def is_sqlite(engine: AsyncEngine | AsyncConnection) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` (``sqlite+aiosqlite://`` or ``postgresql+asyncpg://``)."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, **kwargs)
        _setup_sqlite(engine)
        return engine
    if url.startswith("postgresql") and "+asyncpg" not in url.split("://", 1)[0]:
        url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("timeout", 10)  # asyncpg connect deadline, seconds
    connect_args.setdefault("command_timeout", 30)
    return create_async_engine(url, connect_args=connect_args, **kwargs)


def _setup_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        # let us emit BEGIN ourselves (the driver's implicit BEGIN is DEFERRED and too late)
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        if sync_engine in _CHECKPOINTED_IN_THREAD:
            cursor.execute("PRAGMA wal_autocheckpoint = 0")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()
_CHECKPOINTED_IN_THREAD: weakref.WeakSet[Engine] = weakref.WeakSet()


def checkpoint_in_thread(engine: AsyncEngine, on: bool = True) -> None:
    """Turn SQLite's automatic WAL checkpoints off (``on``) or back on for the connections
    ``engine`` opens from now on: a :class:`~callgate.store.wal.WalCheckpointer` runs them
    instead. Otherwise one of these connections' COMMIT would checkpoint, fsyncs included,
    while it holds :func:`writer_lock`, and every call's reserve and settle would wait for the
    disk behind it. Connections already in the pool keep their setting: dispose of them."""
    if on:
        _CHECKPOINTED_IN_THREAD.add(engine.sync_engine)
    else:
        _CHECKPOINTED_IN_THREAD.discard(engine.sync_engine)


def writer_lock(engine: AsyncEngine) -> asyncio.Lock:
    """The one-writer lock of this process for the SQLite database of ``engine``: every writer
    (:func:`write_transaction`, and the call path's stdlib driver in ``store/lean_sqlite.py``)
    holds it from ``BEGIN IMMEDIATE`` to ``COMMIT``."""
    lock = _SQLITE_WRITERS.get(engine.sync_engine)
    if lock is None:
        lock = _SQLITE_WRITERS[engine.sync_engine] = asyncio.Lock()
    return lock


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that will write what it reads: ``BEGIN IMMEDIATE`` on SQLite.

    On PostgreSQL it is an ordinary transaction; lock the rows you read with
    ``.with_for_update()`` (a no-op on SQLite, where the whole database is already held).
    On SQLite, writers of this process also queue on an asyncio lock before BEGIN IMMEDIATE:
    SQLite admits one writer at a time anyway, and its busy handler polls with sleeps of up to
    100 ms, so waiting our turn in the event loop is much faster than contending in the driver.
    (Other processes on the same file still wait through ``busy_timeout``.)
    """
    if is_sqlite(engine):
        async with writer_lock(engine), engine.connect() as connection:
            connection = await connection.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
            async with connection.begin():
                yield connection
        return
    async with engine.connect() as connection, connection.begin():
        yield connection
