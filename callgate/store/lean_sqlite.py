"""The call path's SQL on SQLite through the standard library's driver (issue 11).

Through SQLAlchemy Core and aiosqlite a statement cost about 370 us of CPU plus a hop to
aiosqlite's thread and back, and a call runs about ten of them: that, not SQLite, capped the
server. The work itself is microseconds, so here the call path (account lookup, reserve, regrant,
settle, release, record_attempt) runs on one ``sqlite3`` connection used directly on the event
loop thread: no thread, no statement compilation (the driver caches the prepared statements).
SQLAlchemy stays for the schema, the migrations, the operator commands and the serve process's
other writers (the AMI listener, the reaper, package holds, alerts).

The rules the core ledger (:mod:`callgate.store.ledger`) keeps, kept the same way:

- **One transaction per reserve, regrant, settle**, begun with ``BEGIN IMMEDIATE`` (SQLite's
  write lock is taken before anything is read), and run without an ``await`` inside: nothing is
  read and written across an await, and a cancelled session cannot interrupt a settle.
- **One writer per process.** The serve process's SQLAlchemy writers queue on
  :func:`callgate.store.db.writer_lock` from ``BEGIN IMMEDIATE`` to ``COMMIT``; this connection
  writes only while that lock is free (it holds SQLite's lock for microseconds, synchronously,
  so nobody in the process can be inside a transaction then), and otherwise queues on it too.
  So in-process writers never meet "database is locked", and never wait in SQLite's busy
  handler, which would block the event loop here.
- **Other processes** (an operator's ``callgate payments add``, another server) can hold the
  write lock: this connection has no busy timeout, and a busy database is retried after short
  asynchronous sleeps (the loop keeps serving calls) up to the engine's busy timeout, then fails
  closed with :class:`~callgate.store.errors.StoreUnavailableError`.
- **Money** is read and written with the one conversion :class:`~callgate.schema.types.Money`
  uses (an integer count of 10^-5 units, never a float), timestamps as
  :class:`~callgate.schema.types.UtcDateTime` stores them, and the prices come from the same
  pure pricer: the charges are those of the core ledger to the digit (the tests compare them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Boolean
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.schema.tables import ReservationStatus, accounts, calls
from callgate.schema.types import (
    Money,
    UtcDateTime,
    money_from_sqlite,
    money_to_sqlite,
    utc_from_sqlite,
    utc_to_sqlite,
)
from callgate.store._errors_map import translate
from callgate.store.accounts import ACCOUNT_FIELD_NAMES, Account, account_from_values
from callgate.store.callstore import caller_account
from callgate.store.db import SQLITE_BUSY_TIMEOUT_MS, checkpoint_in_thread, writer_lock
from callgate.store.errors import ConflictError, NotFoundError, StoreUnavailableError
from callgate.store.ledger import (
    ZERO,
    CallRecord,
    ChannelLimitError,
    CpsLimitError,
    LedgerRefusal,
    Limits,
    Pricer,
    _priced,
    check_usable,
)
from callgate.store.ports import NO_LIMITS, CallerAccount, Grant, Refused, SettledCall
from callgate.store.wal import WalCheckpointer

log = logging.getLogger(__name__)

T = TypeVar("T")
Decoder = Callable[[Any], Any]

_OPEN = ReservationStatus.OPEN.value
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_FIRST_RETRY_SECONDS = 0.001
_MAX_RETRY_SECONDS = 0.05


def _decoder(column_type: Any) -> Decoder | None:
    if isinstance(column_type, Money):
        return money_from_sqlite
    if isinstance(column_type, UtcDateTime):
        return utc_from_sqlite
    if isinstance(column_type, Boolean):
        return bool
    return None


def _status_text(status: Any) -> str:
    return str(status.value)


def _encoder(column_type: Any) -> Decoder | None:
    if isinstance(column_type, Money):
        return money_to_sqlite
    if isinstance(column_type, UtcDateTime):
        return utc_to_sqlite
    return None


# the columns of ``accounts`` an Account holds, each with its decoder (from the schema's types)
# (in the order of Account's fields: a row is its constructor's arguments)
_ACCOUNT_DECODERS: tuple[tuple[str, Decoder | None], ...] = tuple(
    (name, _decoder(accounts.c[name].type)) for name in ACCOUNT_FIELD_NAMES
)
_ACCOUNT_COLUMNS = ", ".join(f"accounts.{name}" for name, _ in _ACCOUNT_DECODERS)
# the positions of the columns to decode, with their decoders
_DECODE_AT: tuple[tuple[int, Decoder], ...] = tuple(
    (at, decode) for at, (_name, decode) in enumerate(_ACCOUNT_DECODERS) if decode is not None
)
# the billing record: one column of ``calls`` per field of CallRecord, with its encoder
_CALL_ENCODERS: tuple[tuple[str, Decoder | None], ...] = tuple(
    (f.name, _status_text if f.name == "status" else _encoder(calls.c[f.name].type))
    for f in dataclasses.fields(CallRecord)
)
_INSERT_CALL = (
    f"INSERT INTO calls ({', '.join(name for name, _ in _CALL_ENCODERS)}) "
    f"VALUES ({', '.join('?' for _ in _CALL_ENCODERS)})"
)

_BY_ID = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE accounts.id = ?"
_BY_NUMBER = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE accounts.number = ?"
_BY_ALIAS = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE lower(accounts.alias) = lower(?)"
_BY_CALLERID = (
    f"SELECT {_ACCOUNT_COLUMNS} FROM accounts JOIN account_callerids"
    " ON account_callerids.account_id = accounts.id"
    " WHERE account_callerids.callerid = ? AND account_callerids.active = 1"
)
_RESERVED = "SELECT coalesce(sum(amount), 0) FROM reservations WHERE account_id = ? AND status = ?"
_RESERVED_EXCLUDING = _RESERVED + " AND id != ?"
_IN_USE = "SELECT count(*) FROM reservations WHERE account_id = ? AND status = ?"
_RECENT = "SELECT count(*) FROM reservations WHERE account_id = ? AND created_at > ?"
_IN_USE_FROM = "SELECT count(*) FROM reservations WHERE source_address = ? AND status = ?"
_RECENT_FROM = "SELECT count(*) FROM reservations WHERE source_address = ? AND created_at > ?"
_INSERT_RESERVATION = (
    "INSERT INTO reservations (uniqueid, asterisk, account_id, amount, granted_seconds, status,"
    " source_address, rate_id, trunk, server, created_at, expires_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_FIND_RESERVATION = (
    "SELECT id, account_id, status FROM reservations WHERE uniqueid = ? AND asterisk = ?"
)
_REGRANT = (
    "UPDATE reservations SET amount = ?, granted_seconds = ?, expires_at = ?, trunk = ?,"
    " rate_id = ? WHERE id = ?"
)
_CLOSE_RESERVATION = (
    "UPDATE reservations SET status = ?, charged = ?, closed_at = ?"
    " WHERE uniqueid = ? AND asterisk = ? AND status = ?"
)
_RELEASE = (
    "UPDATE reservations SET status = ?, charged = 0, note = ?"
    " WHERE uniqueid = ? AND asterisk = ? AND status = ?"
)
_CALL_EXISTS = "SELECT id FROM calls WHERE uniqueid = ? AND asterisk = ?"
_BALANCE = "SELECT balance FROM accounts WHERE id = ?"
_CHARGE = (
    "UPDATE accounts SET balance = balance - ?, last_use_at = ? WHERE id = ? RETURNING balance"
)
_CHARGE_ANSWERED = (
    "UPDATE accounts SET balance = balance - ?, last_use_at = ?, call_count = call_count + 1,"
    " first_use_at = coalesce(first_use_at, ?) WHERE id = ? RETURNING balance"
)


class _Busy(Exception):
    """SQLite said "database is locked" (another process holds it): retry after a sleep."""


def _account(row: tuple[Any, ...]) -> Account:
    values = list(row)
    for at, decode in _DECODE_AT:
        value = values[at]
        if value is not None:
            values[at] = decode(value)
    return account_from_values(values)


def _call_values(record: CallRecord) -> tuple[Any, ...]:
    values: list[Any] = []
    for name, encode in _CALL_ENCODERS:
        value = getattr(record, name)
        if value is not None and encode is not None:
            value = encode(value)
        values.append(value)
    return tuple(values)


class LeanSqlite:
    """AccountLookup and Ledger on SQLite over one ``sqlite3`` connection, on the loop thread.

    ``writer`` is the process's one-writer lock for this database file (the engine's
    :func:`~callgate.store.db.writer_lock`); ``busy_timeout_ms`` is how long a database another
    process holds is waited for before the operation fails closed.
    """

    def __init__(
        self,
        path: str,
        *,
        writer: asyncio.Lock,
        grace_seconds: int,
        server: str = "",
        busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    ) -> None:
        self.grace_seconds = grace_seconds
        self.server = server
        self._writer = writer
        self._busy_timeout = busy_timeout_ms / 1000
        conn = sqlite3.connect(path, isolation_level=None, cached_statements=64)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 0")  # busy: retried without blocking the loop
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # its COMMITs run on the event loop: the checkpoint's fsyncs run in a thread instead
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            conn.close()
            raise translate(_driver_error(exc), "open the call path's SQLite connection") from exc
        self._conn = conn
        self.checkpointer = WalCheckpointer(path)
        self.checkpointer.start()
        self._engine: AsyncEngine | None = None

    @classmethod
    def for_engine(cls, engine: AsyncEngine, *, grace_seconds: int, server: str = "") -> LeanSqlite:
        """On the file of a ``sqlite+aiosqlite:///path`` engine, sharing its writer lock."""
        path = sqlite_file(engine)
        if path is None:
            raise ValueError(f"{engine.url.render_as_string()}: not an SQLite database file")
        lean = cls(path, writer=writer_lock(engine), grace_seconds=grace_seconds, server=server)
        checkpoint_in_thread(engine)  # the engine's commits must not checkpoint either
        lean._engine = engine
        return lean

    def close(self) -> None:
        self._conn.close()
        self.checkpointer.stop()
        if self._engine is not None:
            checkpoint_in_thread(self._engine, on=False)

    async def aclose(self) -> None:
        """:meth:`close`, for the runtime's closers."""
        self.close()

    # ---------------------------------------------------------------- running a unit of work

    def _once(self, what: str, work: Callable[[sqlite3.Connection], T], write: bool) -> T:
        """Run ``work`` (synchronous) once, in a ``BEGIN IMMEDIATE`` transaction if ``write``.
        Raises :class:`_Busy` when SQLite is locked by another process."""
        conn = self._conn
        try:
            if write:
                conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                if write:
                    conn.execute("COMMIT")
            except Exception:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if exc.sqlite_errorcode & 0xFF in _BUSY_CODES:
                raise _Busy(str(exc)) from exc
            raise translate(_driver_error(exc), what) from exc
        return result

    async def _run(self, what: str, work: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """``work`` at once when no writer of this process is inside a transaction (it runs
        without an await: nobody can interleave); otherwise after our turn on the writer lock,
        retrying while another process holds the database."""
        if not (write and self._writer.locked()):
            with contextlib.suppress(_Busy):
                return self._once(what, work, write)
        return await self._waited(what, work, write)

    async def _waited(self, what: str, work: Callable[[sqlite3.Connection], T], write: bool) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._busy_timeout
        delay = _FIRST_RETRY_SECONDS
        turn: contextlib.AbstractAsyncContextManager[Any] = (
            self._writer if write else contextlib.nullcontext()
        )
        async with turn:
            while True:
                try:
                    return self._once(what, work, write)
                except _Busy as exc:
                    if loop.time() >= deadline:
                        raise StoreUnavailableError(
                            f"{what}: database unavailable ({exc}: another process held it "
                            f"for {self._busy_timeout:g} s)"
                        ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_SECONDS)

    # ---------------------------------------------------------------- AccountLookup

    async def find_for_call(
        self, *, accountcode: str, argument: str, callerid: str
    ) -> CallerAccount | None:
        def work(conn: sqlite3.Connection) -> Account | None:
            row: tuple[Any, ...] | None = None
            if accountcode:
                row = conn.execute(_BY_NUMBER, (accountcode,)).fetchone()
            if row is None and argument:
                row = conn.execute(_BY_NUMBER, (argument,)).fetchone()
                if row is None:
                    row = conn.execute(_BY_ALIAS, (argument,)).fetchone()
            if row is None and callerid:
                row = conn.execute(_BY_CALLERID, (callerid,)).fetchone()
            return None if row is None else _account(row)

        found = await self._run("account lookup", work, write=False)
        return None if found is None else caller_account(found)

    async def find_by_pin(self, pin: str) -> CallerAccount | None:
        found = await self._run("PIN lookup", lambda c: _fetch(c, _BY_NUMBER, pin), write=False)
        return None if found is None else caller_account(found)

    async def find_by_id(self, account_id: int) -> CallerAccount | None:
        found = await self._run(
            "account lookup", lambda c: _fetch(c, _BY_ID, account_id), write=False
        )
        return None if found is None else caller_account(found)

    # ---------------------------------------------------------------- Ledger

    async def reserve(
        self,
        *,
        account_id: int,
        uniqueid: str,
        price: Pricer,
        now: datetime,
        trunk: str,
        rate_id: int | None,
        limits: Limits = NO_LIMITS,
        asterisk: str = "",
    ) -> Grant:
        def work(conn: sqlite3.Connection) -> Grant:
            account = _lock_account(conn, account_id)
            check_usable(account, now)
            _check_limits(conn, account, limits, now)
            available = account.balance + account.debit_limit - _reserved(conn, account_id)
            granted, amount = _priced(price, available)
            expires = now + timedelta(seconds=granted + self.grace_seconds)
            conn.execute(
                _INSERT_RESERVATION,
                (
                    uniqueid,
                    asterisk,
                    account_id,
                    money_to_sqlite(amount),
                    granted,
                    _OPEN,
                    limits.source_address,
                    rate_id,
                    trunk,
                    self.server,
                    utc_to_sqlite(now),
                    utc_to_sqlite(expires),
                ),
            )
            return Grant(granted, amount, available)

        try:
            return await self._run("reserve", work, write=True)
        except LedgerRefusal as exc:
            raise Refused(exc.status.value, str(exc)) from exc

    async def regrant(
        self,
        *,
        uniqueid: str,
        price: Pricer,
        now: datetime,
        trunk: str,
        rate_id: int | None,
        asterisk: str = "",
    ) -> Grant:
        def work(conn: sqlite3.Connection) -> Grant:
            row = conn.execute(_FIND_RESERVATION, (uniqueid, asterisk)).fetchone()
            if row is None or row[2] != _OPEN:
                raise NotFoundError(f"no open reservation for {uniqueid}")
            reservation_id, account_id = row[0], row[1]
            account = _lock_account(conn, account_id)
            reserved = _reserved(conn, account_id, exclude=reservation_id)
            available = account.balance + account.debit_limit - reserved
            granted, amount = _priced(price, available)
            expires = now + timedelta(seconds=granted + self.grace_seconds)
            conn.execute(
                _REGRANT,
                (
                    money_to_sqlite(amount),
                    granted,
                    utc_to_sqlite(expires),
                    trunk,
                    rate_id,
                    reservation_id,
                ),
            )
            return Grant(granted, amount, available)

        try:
            return await self._run("regrant", work, write=True)
        except LedgerRefusal as exc:
            raise Refused(exc.status.value, str(exc)) from exc

    async def settle(self, record: CallRecord) -> SettledCall:
        """Charge, close the reservation, write the call row: one transaction, idempotent by
        the call's key. Without a wait it runs with no await at all; when it must wait (another
        writer), it is shielded: cancelling the session does not cancel the settle."""
        if record.account_id is None:
            raise NotFoundError("settle needs an account; use record_attempt for unknown callers")
        account_id = record.account_id
        charge = record.cost

        def work(conn: sqlite3.Connection) -> SettledCall:
            closed = conn.execute(
                _CLOSE_RESERVATION,
                (
                    ReservationStatus.SETTLED.value,
                    money_to_sqlite(charge),
                    utc_to_sqlite(record.ended_at or record.started_at),
                    record.uniqueid,
                    record.asterisk,
                    _OPEN,
                ),
            ).rowcount
            if not closed:
                if conn.execute(_CALL_EXISTS, (record.uniqueid, record.asterisk)).fetchone():
                    row = conn.execute(_BALANCE, (account_id,)).fetchone()
                    balance = money_from_sqlite(row[0]) if row is not None else ZERO
                    return SettledCall(ZERO, balance, True)
                log.warning(
                    "settle %s: no open reservation; charging the call anyway", record.uniqueid
                )
            started = utc_to_sqlite(record.started_at)
            if record.billsec > 0:
                params: tuple[Any, ...] = (money_to_sqlite(charge), started, started, account_id)
                charged = conn.execute(_CHARGE_ANSWERED, params).fetchone()
            else:
                params = (money_to_sqlite(charge), started, account_id)
                charged = conn.execute(_CHARGE, params).fetchone()
            if charged is None:
                raise NotFoundError(f"no account with id {account_id}")
            conn.execute(_INSERT_CALL, _call_values(record))
            return SettledCall(charge, money_from_sqlite(charged[0]), False)

        if not self._writer.locked():
            with contextlib.suppress(_Busy):
                return self._once("settle", work, True)
        return await asyncio.shield(self._waited("settle", work, True))

    async def release(self, uniqueid: str, note: str, *, asterisk: str = "") -> None:
        values = (ReservationStatus.RELEASED.value, note, uniqueid, asterisk, _OPEN)
        await self._run("release", lambda c: c.execute(_RELEASE, values).rowcount, write=True)

    async def record_attempt(self, record: CallRecord) -> None:
        """The billing record of an attempt never reserved; a second one of the call is
        ignored (idempotent, as the core ledger's)."""
        values = _call_values(record)
        try:
            await self._run("record attempt", lambda c: c.execute(_INSERT_CALL, values), write=True)
        except ConflictError:
            key = (record.uniqueid, record.asterisk)
            if await self._run("record attempt", lambda c: _exists(c, key), write=False):
                return
            raise


def sqlite_file(engine: AsyncEngine) -> str | None:
    """The database file of an SQLite engine; None for another backend or an in-memory one."""
    url = engine.url
    if url.get_backend_name() != "sqlite":
        return None
    path = url.database
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return path


def _driver_error(exc: sqlite3.Error) -> sa_exc.StatementError:
    """The driver's error as SQLAlchemy would raise it, for the store's one error mapping."""
    return sa_exc.DBAPIError.instance(None, None, exc, sqlite3.Error)


def _fetch(conn: sqlite3.Connection, query: str, key: object) -> Account | None:
    row = conn.execute(query, (key,)).fetchone()
    return None if row is None else _account(row)


def _exists(conn: sqlite3.Connection, key: tuple[str, str]) -> bool:
    return conn.execute(_CALL_EXISTS, key).fetchone() is not None


def _lock_account(conn: sqlite3.Connection, account_id: int) -> Account:
    """The account row (the transaction's ``BEGIN IMMEDIATE`` already holds the database)."""
    account = _fetch(conn, _BY_ID, account_id)
    if account is None:
        raise NotFoundError(f"no account with id {account_id}")
    return account


def _reserved(conn: sqlite3.Connection, account_id: int, exclude: int | None = None) -> Decimal:
    if exclude is None:
        row = conn.execute(_RESERVED, (account_id, _OPEN)).fetchone()
    else:
        row = conn.execute(_RESERVED_EXCLUDING, (account_id, _OPEN, exclude)).fetchone()
    return money_from_sqlite(row[0])


def _count(conn: sqlite3.Connection, query: str, params: tuple[Any, ...]) -> int:
    return int(conn.execute(query, params).fetchone()[0])


def _check_limits(
    conn: sqlite3.Connection, account: Account, limits: Limits, now: datetime
) -> None:
    """The account's and the IP entry's channel and CPS limits, as the core ledger checks."""
    if account.channel_limit is not None:
        in_use = _count(conn, _IN_USE, (account.id, _OPEN))
        if in_use >= account.channel_limit:
            raise ChannelLimitError(
                f"account channel limit {account.channel_limit} reached ({in_use} in use)"
            )
    since = utc_to_sqlite(now - timedelta(seconds=1))
    if account.cps_limit is not None:
        if _count(conn, _RECENT, (account.id, since)) >= account.cps_limit:
            raise CpsLimitError(f"account CPS limit {account.cps_limit} reached")
    address = limits.source_address
    if not address:
        return
    if limits.address_channel_limit is not None:
        if _count(conn, _IN_USE_FROM, (address, _OPEN)) >= limits.address_channel_limit:
            raise ChannelLimitError(
                f"IP {address} channel limit {limits.address_channel_limit} reached"
            )
    if limits.address_cps_limit is not None:
        if _count(conn, _RECENT_FROM, (address, since)) >= limits.address_cps_limit:
            raise CpsLimitError(f"IP {address} CPS limit {limits.address_cps_limit} reached")
