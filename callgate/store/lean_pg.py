"""The call path's SQL on PostgreSQL through asyncpg directly (issue 11).

Through SQLAlchemy Core a statement cost about 370 us of CPU (against about 100 us through
asyncpg), and a call ran some fifteen of them once the pool's pre-ping and the rollback on
check-in are counted. Here the call path (account lookup, reserve, regrant, settle, release,
record_attempt) runs on an asyncpg pool of its own, opened from the same database URL, with
prepared statements (asyncpg's statement cache) and as few round trips as correctness allows:

- **lookup**: one statement. For the call flow's lookup (:meth:`LeanPostgres.find_for_call`)
  it also reads the state a reserve decides on (below), and keeps it for the account's next
  reserve: when that reserve comes within :data:`LOOKUP_STATE_SECONDS` and its decision does
  not depend on a time window (the account has no CPS limit, the IP entry no limits), it prices
  the call on that state and needs one round trip, not two. The function checks the state as
  it does for its own read: when another call changed it meanwhile, nothing is inserted and
  the reserve reads and decides again.
- **reserve**: two round trips. One statement reads the account with the state a reserve
  decides on (its row version ``xmin``, the sum of its open reservations, the counts its limits
  need: the function ``callgate_call_state``, migration 0010); Python decides (the same checks
  and pricer as every ledger); then ``callgate_reserve_if_unchanged`` locks the account, reads
  the state again in a snapshot taken after the lock (inline since migration 0011, which made
  that check cheaper), and inserts the reservation only if it is
  the state the call was priced on (function calls that wait go together, in one statement
  per lane, :data:`_RESERVE_MANY`). When another call of the account changed it meanwhile,
  nothing is inserted and the reserve reads and decides again; after
  :data:`OPTIMISTIC_ATTEMPTS` it takes the locked path: ``BEGIN`` and the account lock in one
  round trip, one statement that reads the account with its open reservations and the counts,
  the pricer, one ``INSERT``, ``COMMIT``. The read runs *after* the lock, in its own statement:
  in READ COMMITTED a statement that waited for a row lock keeps the snapshot it started with,
  so a sum in the locking statement could miss a reservation committed while it waited.
- **settle**: one statement with CTEs (autocommit): insert the billing record ``ON CONFLICT
  (asterisk, uniqueid) DO NOTHING``, and only when it was inserted, close the reservation and
  charge the account. The unique billing record is what makes a second settle of the same call
  charge nothing, on one server or on several sharing the database. Settles that wait while
  another runs go together (:class:`_Together`): one statement, :data:`_SETTLE_MANY`, and one
  commit for all of them (group commit), with the same effects as one by one.
- **release**, **record_attempt**: one statement each.

The lock is ``FOR NO KEY UPDATE``: it excludes other reserves (and the core ledger's
``FOR UPDATE``) exactly as ``FOR UPDATE`` would, but lets the foreign-key checks of other calls'
settles (``KEY SHARE`` on the account) through. The pool does not reset sessions on release
(the call path changes no session state), which saves a round trip per operation, and a
connection that ran its statement stays leased for the next one instead of going back to the
pool (:class:`_Leases`: asyncpg's release costs a task of its own).

The decisions are the core ledger's (:mod:`callgate.store.ledger`): the same account checks
(:func:`~callgate.store.ledger.check_usable`), the same limit messages, the same pure pricer
guard; money stays ``Decimal`` (asyncpg reads NUMERIC as Decimal; amounts written are quantized
to five places with ROUND_HALF_UP as :class:`~callgate.schema.types.Money` does). SQLAlchemy
stays for the schema, the migrations and the operator commands.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Generic, TypeVar

import asyncpg
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL

from callgate.schema.tables import ReservationStatus, accounts, calls
from callgate.schema.types import MONEY_PLACES, Money, UtcDateTime
from callgate.store._errors_map import rolled_back_by_conflict
from callgate.store.accounts import ACCOUNT_FIELD_NAMES, Account, account_from_values
from callgate.store.callstore import caller_account
from callgate.store.errors import (
    ConflictError,
    InvalidDataError,
    NotFoundError,
    StoreError,
    StoreUnavailableError,
)
from callgate.store.ledger import (
    SETTLE_ATTEMPTS,
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

log = logging.getLogger(__name__)

T = TypeVar("T")

POOL_MIN_SIZE = 2
POOL_MAX_SIZE = 20
CONNECT_TIMEOUT_SECONDS = 10  # as the engine's (callgate.store.db.create_engine)
COMMAND_TIMEOUT_SECONDS = 30
ACQUIRE_TIMEOUT_SECONDS = 10
# reserves tried on a read state before the locked path (a concurrent call of the same account
# makes one try fail; the locked path queues on the account's lock instead)
OPTIMISTIC_ATTEMPTS = 2
# how long the state read with a call's account lookup is used for its reserve (the reserve
# follows the lookup within milliseconds; a later one, or a stale state, only reads again)
LOOKUP_STATE_SECONDS = 1.0
LOOKUP_STATES_KEPT = 1024  # states of lookups not yet followed by their reserve, oldest dropped
# settles (and the reserves' function calls) waiting while others run go to the database
# together, in one statement (the module's text): at most BATCH_MAX in one, and at most SETTLERS
# statements of settles at once. One: in
# bench/agi_load.py (three rounds back to back) one settler made statements of 5-10 settles on
# average and used less CPU per call than two (3-6); a settle waits for the one before it, after
# the call, where no caller waits for it.
BATCH_MAX = 32
SETTLERS = 1
# the reserves' function calls go together the same way (a reserve waits for the call's Dial:
# two lanes, so one waits at most for the statement running in the other)
RESERVERS = 2

_QUANTUM = Decimal(1).scaleb(-MONEY_PLACES)
CPS_WINDOW = timedelta(seconds=1)  # a CPS limit counts the reservations made in the last second
_OPEN = ReservationStatus.OPEN.value
_SETTLED = ReservationStatus.SETTLED.value
_RELEASED = ReservationStatus.RELEASED.value


def _money(value: Decimal) -> Decimal:
    """An amount as :class:`~callgate.schema.types.Money` binds it (a float is refused)."""
    if isinstance(value, float | bool):
        raise TypeError(f"money must be Decimal or int, not {type(value).__name__}")
    return Decimal(value).quantize(_QUANTUM, rounding=ROUND_HALF_UP)


def _utc(value: datetime) -> datetime:
    """A timestamp as :class:`~callgate.schema.types.UtcDateTime` binds it."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: give timestamps a time zone")
    return value


def _encoder(column_type: Any) -> Callable[[Any], Any] | None:
    if isinstance(column_type, Money):
        return _money
    if isinstance(column_type, UtcDateTime):
        return _utc
    return None


def _status_text(status: Any) -> str:
    return str(status.value)


# the columns of ``accounts`` an Account holds, in the order of its fields: every query that
# reads an account starts with them, so a row's first columns are its constructor's arguments
_ACCOUNT_COLUMNS = ", ".join(f"a.{accounts.c[name].name}" for name in ACCOUNT_FIELD_NAMES)
_ACCOUNT_WIDTH = len(ACCOUNT_FIELD_NAMES)
# the billing record: one column of ``calls`` per field of CallRecord, each with its encoder
_CALL_FIELDS: tuple[tuple[str, Callable[[Any], Any] | None], ...] = tuple(
    (f.name, _status_text if f.name == "status" else _encoder(calls.c[f.name].type))
    for f in dataclasses.fields(CallRecord)
)
_CALL_NAMES = [name for name, _ in _CALL_FIELDS]


def _param(name: str) -> str:
    """The placeholder of a CallRecord field in :data:`_INSERT_CALL` and :data:`_SETTLE`."""
    return f"${_CALL_NAMES.index(name) + 1}"


_CALL_VALUES = (
    f"INSERT INTO calls ({', '.join(_CALL_NAMES)}) "
    f"VALUES ({', '.join(f'${n + 1}' for n in range(len(_CALL_NAMES)))}) "
    "ON CONFLICT (asterisk, uniqueid) DO NOTHING"
)
_INSERT_CALL = _CALL_VALUES + " RETURNING id"

_BY_ID = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a WHERE a.id = $1"
_BY_NUMBER = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a WHERE a.number = $1"
# the call flow's lookups: the account with the state a reserve decides on (no IP entry's
# counts; $2 is the CPS window's start), in one snapshot
_WITH_STATE = (
    f"SELECT {_ACCOUNT_COLUMNS}, s.row_version, s.reserved, s.in_use, s.recent,"
    " s.address_in_use, s.address_recent FROM accounts a"
)
_STATE_OF_A = " CROSS JOIN LATERAL callgate_call_state(a.id, 0, $2, '', false, false) s"
_CALL_BY_NUMBER = f"{_WITH_STATE}{_STATE_OF_A} WHERE a.number = $1"
_CALL_BY_ALIAS = f"{_WITH_STATE}{_STATE_OF_A} WHERE lower(a.alias) = lower($1)"
_CALL_BY_CALLERID = (
    f"{_WITH_STATE} JOIN account_callerids c ON c.account_id = a.id{_STATE_OF_A}"
    " WHERE c.callerid = $1 AND c.active"
)

# BEGIN and the lock in one round trip (the simple protocol takes several statements; the id
# is an int formatted with %d, never text)
_BEGIN_AND_LOCK = "BEGIN; SELECT 1 FROM accounts WHERE id = %d FOR NO KEY UPDATE"
# after the lock, in a fresh snapshot: the account, its open reservations (without the call's
# own, $2, on a regrant) and the counts its limits need (CASE: counted only when limited)
_READ_LOCKED = f"""
SELECT {_ACCOUNT_COLUMNS},
  (SELECT coalesce(sum(r.amount), 0) FROM reservations r
    WHERE r.account_id = a.id AND r.status = '{_OPEN}' AND r.id <> $2::int) AS reserved,
  CASE WHEN a.channel_limit IS NOT NULL THEN
    (SELECT count(*) FROM reservations r WHERE r.account_id = a.id AND r.status = '{_OPEN}')
  END AS in_use,
  CASE WHEN a.cps_limit IS NOT NULL THEN
    (SELECT count(*) FROM reservations r WHERE r.account_id = a.id AND r.created_at > $3)
  END AS recent,
  CASE WHEN $4::text <> '' AND $5::bool THEN
    (SELECT count(*) FROM reservations r WHERE r.source_address = $4 AND r.status = '{_OPEN}')
  END AS address_in_use,
  CASE WHEN $4::text <> '' AND $6::bool THEN
    (SELECT count(*) FROM reservations r WHERE r.source_address = $4 AND r.created_at > $3)
  END AS address_recent
FROM accounts a WHERE a.id = $1
"""
# the state a reserve decides on, beside the account's columns, in one snapshot (migration 0010)
_READ_STATE = (
    f"{_WITH_STATE} CROSS JOIN LATERAL callgate_call_state(a.id, 0, $2, $3, $4, $5) s"
    " WHERE a.id = $1"
)
_RESERVE_IF_UNCHANGED = (
    "SELECT callgate_reserve_if_unchanged($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
    " $13, $14, $15, $16, $17, $18, $19, $20)"
)
# callgate_reserve_if_unchanged for several calls in one statement, called call by call in the
# order of their accounts' ids (the lock order of _SETTLE_MANY); $n are arrays of its
# parameters, one element per call; one row per call: its place (n) and the function's result
_RESERVE_TYPES = (
    "int",
    "timestamptz",
    "text",
    "bool",
    "bool",
    "text",
    "numeric",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "text",
    "text",
    "numeric",
    "int",
    "int",
    "text",
    "text",
    "timestamptz",
    "timestamptz",
)
# the places of the call's key among callgate_reserve_if_unchanged's arguments ($12, $13)
_UNIQUEID_ARG, _ASTERISK_ARG = 11, 12
_RESERVE_MANY = (
    "SELECT s.n, callgate_reserve_if_unchanged("
    + ", ".join(f"s.p{k}" for k in range(len(_RESERVE_TYPES)))
    + ") AS inserted FROM (SELECT * FROM unnest("
    + ", ".join(f"${k + 1}::{t}[]" for k, t in enumerate(_RESERVE_TYPES))
    + ") WITH ORDINALITY AS u("
    + ", ".join(f"p{k}" for k in range(len(_RESERVE_TYPES)))
    + ", n) ORDER BY p0, n OFFSET 0) s"
)
_INSERT_RESERVATION = (
    "INSERT INTO reservations (uniqueid, asterisk, account_id, amount, granted_seconds, status,"
    " source_address, rate_id, trunk, server, created_at, expires_at)"
    f" VALUES ($1, $2, $3, $4, $5, '{_OPEN}', $6, $7, $8, $9, $10, $11)"
)
_FIND_RESERVATION = (
    "SELECT id, account_id, status FROM reservations WHERE uniqueid = $1 AND asterisk = $2"
)
_REGRANT = (
    "UPDATE reservations SET amount = $2, granted_seconds = $3, expires_at = $4, trunk = $5,"
    " rate_id = $6 WHERE id = $1"
)
# The settle. Lock order, the same in every ledger path on PostgreSQL (this one, the core
# ledger's, reserve and regrant): the account row first (FOR NO KEY UPDATE), then what belongs
# to its calls (the billing record, the reservation), so two settles of one call from two
# servers, or a settle beside a regrant, queue on the account instead of deadlocking. The
# billing record is inserted from the lock's row (so after it); the reservation is closed and
# the account charged only when this statement inserted it. $n are the CallRecord's fields (see
# _param); $N+1 is the reservation's closing time.
_CLOSED_AT = f"${len(_CALL_NAMES) + 1}"
_SETTLE = f"""
WITH locked AS (
  SELECT id FROM accounts WHERE id = {_param("account_id")}::int FOR NO KEY UPDATE
),
call AS (
  INSERT INTO calls ({", ".join(_CALL_NAMES)})
  SELECT {", ".join(f"${n + 1}" for n in range(len(_CALL_NAMES)))} FROM locked
  ON CONFLICT (asterisk, uniqueid) DO NOTHING RETURNING id
),
closed AS (
  UPDATE reservations SET status = '{_SETTLED}', charged = {_param("cost")}::numeric,
    closed_at = {_CLOSED_AT}::timestamptz
  WHERE uniqueid = {_param("uniqueid")}::text AND asterisk = {_param("asterisk")}::text
    AND status = '{_OPEN}' AND EXISTS (SELECT 1 FROM call)
  RETURNING id
),
charged AS (
  UPDATE accounts SET balance = balance - {_param("cost")}::numeric,
    last_use_at = {_param("started_at")}::timestamptz,
    call_count = call_count + CASE WHEN {_param("billsec")}::int > 0 THEN 1 ELSE 0 END,
    first_use_at = CASE WHEN {_param("billsec")}::int > 0
      THEN coalesce(first_use_at, {_param("started_at")}::timestamptz) ELSE first_use_at END
  WHERE id = {_param("account_id")}::int AND EXISTS (SELECT 1 FROM call)
  RETURNING balance
)
SELECT (SELECT count(*) FROM locked) AS found, (SELECT count(*) FROM call) AS inserted,
  (SELECT count(*) FROM closed) AS closed, (SELECT balance FROM charged) AS balance
"""
# The settle of several calls in one statement: the same work as _SETTLE's, call by call in
# the order given (n), with the same lock order (the accounts first, in the order of their ids,
# so that two such statements never wait for each other in a cycle). $n are arrays, one per
# CallRecord field and the closing times last, whose elements are the calls; no two calls have
# one key (the caller sees to it). One row per call: whether its account was found, its billing
# record inserted, its reservation closed, and the account's balance just after its charge as
# the calls settled one by one would have left it (the balance after the statement plus what
# the later calls of the account cost).
_PG: Any = postgresql.dialect()  # type: ignore[no-untyped-call]


def _array_type(column_type: Any) -> str:
    """The element type of a column's array parameter, without its length or scale: a cast
    to VARCHAR(n) would cut a longer text silently, the column's own assignment refuses it."""
    name = str(column_type.compile(dialect=_PG)).partition("(")[0]
    return "text" if name == "VARCHAR" else name


_CALL_TYPES = [_array_type(calls.c[name].type) for name in _CALL_NAMES]
_SETTLE_MANY = f"""
WITH input AS (
  SELECT * FROM unnest({", ".join(f"${n + 1}::{t}[]" for n, t in enumerate(_CALL_TYPES))},
    {_CLOSED_AT}::timestamptz[]) WITH ORDINALITY AS t({", ".join(_CALL_NAMES)}, closed_at, n)
),
locked AS (
  SELECT id, balance FROM accounts WHERE id IN (SELECT account_id FROM input)
  ORDER BY id FOR NO KEY UPDATE
),
call AS (
  INSERT INTO calls ({", ".join(_CALL_NAMES)})
  SELECT {", ".join(_CALL_NAMES)} FROM input WHERE account_id IN (SELECT id FROM locked) ORDER BY n
  ON CONFLICT (asterisk, uniqueid) DO NOTHING RETURNING asterisk, uniqueid
),
inserted AS (
  SELECT i.* FROM input i JOIN call c ON c.asterisk = i.asterisk AND c.uniqueid = i.uniqueid
),
closed AS (
  UPDATE reservations r SET status = '{_SETTLED}', charged = i.cost, closed_at = i.closed_at
  FROM inserted i
  WHERE r.uniqueid = i.uniqueid AND r.asterisk = i.asterisk AND r.status = '{_OPEN}'
  RETURNING r.asterisk, r.uniqueid
),
per_account AS (
  SELECT account_id, sum(cost) AS cost, (array_agg(started_at ORDER BY n DESC))[1] AS last_use,
    count(*) FILTER (WHERE billsec > 0) AS answered,
    (array_agg(started_at ORDER BY n) FILTER (WHERE billsec > 0))[1] AS first_use
  FROM inserted GROUP BY account_id
),
charged AS (
  UPDATE accounts a SET balance = a.balance - p.cost, last_use_at = p.last_use,
    call_count = a.call_count + p.answered, first_use_at = coalesce(a.first_use_at, p.first_use)
  FROM per_account p WHERE a.id = p.account_id
  RETURNING a.id, a.balance
)
SELECT i.n, l.id IS NOT NULL AS found, x.n IS NOT NULL AS inserted,
  cl.uniqueid IS NOT NULL AS closed,
  coalesce(ch.balance, l.balance) + coalesce((SELECT sum(later.cost) FROM inserted later
    WHERE later.account_id = i.account_id AND later.n > i.n), 0) AS balance
FROM input i
LEFT JOIN locked l ON l.id = i.account_id
LEFT JOIN inserted x ON x.n = i.n
LEFT JOIN closed cl ON cl.asterisk = i.asterisk AND cl.uniqueid = i.uniqueid
LEFT JOIN charged ch ON ch.id = i.account_id
ORDER BY i.n
"""
_BALANCE = "SELECT balance FROM accounts WHERE id = $1"
_RELEASE = (
    f"UPDATE reservations SET status = '{_RELEASED}', charged = 0, note = $3"
    f" WHERE uniqueid = $1 AND asterisk = $2 AND status = '{_OPEN}'"
)


def asyncpg_dsn(url: str | URL) -> str:
    """The libpq DSN asyncpg takes for a SQLAlchemy URL (``postgresql+asyncpg://`` ...)."""
    parsed = url if isinstance(url, URL) else _make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _make_url(url: str) -> URL:
    from sqlalchemy.engine import make_url

    return make_url(url)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing (the call path leaves no session state; an open
    transaction is still rolled back by asyncpg before this is called)."""


def _unavailable(error: BaseException) -> bool:
    if isinstance(error, OSError | TimeoutError | asyncpg.InterfaceError):
        return True  # ConnectionDoesNotExistError (the connection went away) is one too
    if isinstance(error, asyncpg.PostgresError):
        code = str(getattr(error, "sqlstate", "") or "")
        # 08 connection exception, 53 insufficient resources, 57 operator intervention
        # (admin shutdown, cannot connect now, statement timeout)
        return code[:2] in {"08", "53", "57"}
    return False


def translate(error: Exception, what: str) -> StoreError:
    """The store error for an asyncpg (or socket) error, most specific first."""
    if isinstance(error, asyncpg.UniqueViolationError):
        table = getattr(error, "table_name", "") or "a row"
        return ConflictError(f"{what}: {table} with the same key already exists")
    if isinstance(error, asyncpg.IntegrityConstraintViolationError):
        return InvalidDataError(f"{what}: refused by the database ({error})")
    if _unavailable(error):
        return StoreUnavailableError(f"{what}: database unavailable ({error!r})")
    return StoreError(f"{what}: {error}")


@asynccontextmanager
async def _mapped(what: str) -> AsyncIterator[None]:
    """Re-raise driver errors as store errors; cancellation and ours pass through."""
    try:
        yield
    except (StoreError, LedgerRefusal):
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as error:
        raise translate(error, what) from error


async def _rollback(connection: asyncpg.Connection) -> None:
    """End an aborted transaction; a connection that cannot is closed (the server rolls back)."""
    if _closed(connection) or not connection.is_in_transaction():
        return
    try:
        await connection.execute("ROLLBACK")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
        connection.terminate()


def _check_counts(account: Account, limits: Limits, row: asyncpg.Record) -> None:
    """The account's and the IP entry's channel and CPS limits, as the core ledger checks
    them (same order, same messages), from the counts :data:`_READ_LOCKED` read."""
    if account.channel_limit is not None and row["in_use"] >= account.channel_limit:
        raise ChannelLimitError(
            f"account channel limit {account.channel_limit} reached ({row['in_use']} in use)"
        )
    if account.cps_limit is not None and row["recent"] >= account.cps_limit:
        raise CpsLimitError(f"account CPS limit {account.cps_limit} reached")
    if not limits.source_address:
        return
    if (
        limits.address_channel_limit is not None
        and row["address_in_use"] >= limits.address_channel_limit
    ):
        raise ChannelLimitError(
            f"IP {limits.source_address} channel limit {limits.address_channel_limit} reached"
        )
    if limits.address_cps_limit is not None and row["address_recent"] >= limits.address_cps_limit:
        raise CpsLimitError(
            f"IP {limits.source_address} CPS limit {limits.address_cps_limit} reached"
        )


def _account(row: asyncpg.Record) -> Account:
    return account_from_values(list(row[:_ACCOUNT_WIDTH]))


def _closed(connection: asyncpg.Connection) -> bool:
    """True when the connection is closed, or when the pool took it back as it closed (asyncpg
    then detaches the pool's proxy, whose every method raises InterfaceError)."""
    try:
        closed: bool = connection.is_closed()
    except asyncpg.InterfaceError:
        return True
    return closed


class _Leases:
    """The call path's connections, leased from the pool and kept between statements.

    asyncpg's ``Pool.release`` shields every release in a task of its own, and each acquire
    builds a proxy and a context: some 15 us of callgate's CPU for each of a call's three
    statements (py-spy: 6.5 % of the process under load). Here a connection that ran its
    statement without an error waits in ``_idle`` for the next statement (last in, first out);
    a statement that finds none there leases one from the pool, at most the pool's ``max_size``
    in all; when all are out it waits in line, first come first served, for the first to come
    back. A connection that met any error, was closed or left a transaction open goes back to
    the pool, which checks, resets or replaces it: the pool still owns connecting, reconnecting
    and closing. A connection found closed in ``_idle`` (the server or the network dropped it
    while it waited) goes back too, and the statement takes another.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._size: int = pool.get_max_size()
        self._idle: list[asyncpg.Connection] = []
        # leased from the pool: idle here, running a statement, or a slot handed to a statement
        # that leases its connection
        self._out = 0
        # statements waiting for a connection: each is handed one, or None (lease your own:
        # a connection went back to the pool)
        self._line: deque[asyncio.Future[asyncpg.Connection | None]] = deque()

    async def get(self, acquire_timeout: float | None = None) -> asyncpg.Connection:
        """A connection for one statement (or transaction); give it back with :meth:`put` after
        success, :meth:`drop` after anything else."""
        while self._idle:
            connection = self._idle.pop()
            if not _closed(connection):
                return connection
            await self.drop(connection)
        if self._out < self._size:
            self._out += 1
        else:
            waiter: asyncio.Future[asyncpg.Connection | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._line.append(waiter)
            try:
                handed = await (
                    asyncio.wait_for(waiter, acquire_timeout) if acquire_timeout else waiter
                )
            except BaseException:
                if waiter.done() and not waiter.cancelled():  # handed over as it gave up
                    handed = waiter.result()
                    if handed is None:
                        self._free_slot()
                    else:
                        self.put(handed)
                raise
            if handed is not None:
                return handed
            # None: the slot of a connection that went back to the pool (counted in _out)
        try:
            connection = await self._pool.acquire(timeout=acquire_timeout)
        except BaseException:
            self._free_slot()
            raise
        return connection

    def put(self, connection: asyncpg.Connection) -> None:
        """Give back a connection whose statement succeeded (its transaction, if any, ended):
        to the first statement waiting, else to ``_idle``."""
        if not self._hand_over(connection):
            self._idle.append(connection)

    async def drop(self, connection: asyncpg.Connection) -> None:
        """Give a connection back to the pool (it met an error, or was closed)."""
        try:
            await self._pool.release(connection)
        finally:
            self._free_slot()

    def _free_slot(self) -> None:
        """A leased connection went back to the pool (or was never leased): its slot goes to
        the first statement waiting, which leases one itself, else it is free. Handing the slot
        over, not freeing it, keeps a newcomer from taking it first: the pool has no more
        connections than ``_size`` and the leased ones never go back while healthy."""
        if not self._hand_over(None):
            self._out -= 1

    def _hand_over(self, handed: asyncpg.Connection | None) -> bool:
        """Give ``handed`` (a connection, or None: a slot) to the first statement still
        waiting; False when none waits."""
        while self._line:
            waiter = self._line.popleft()
            if not waiter.done():
                waiter.set_result(handed)
                return True
        return False

    async def run(
        self, method: str, query: str, *args: Any, command_timeout: float = COMMAND_TIMEOUT_SECONDS
    ) -> Any:
        """``connection.<method>(query, *args)`` on a leased connection."""
        connection = await self.get()
        try:
            result = await getattr(connection, method)(query, *args, timeout=command_timeout)
        except BaseException:
            await self.drop(connection)
            raise
        if _closed(connection) or connection.is_in_transaction():
            await self.drop(connection)
        else:
            self.put(connection)
        return result

    async def close(self) -> None:
        """Give the idle connections back to the pool (before closing it)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await self.drop(connection)


Q = TypeVar("Q")
R = TypeVar("R")


class _Together(Generic[Q, R]):
    """Requests of one kind that wait while others run go to the database together.

    A request waits in line for one of ``lanes`` runners. A runner takes every request waiting,
    first come first, up to :data:`BATCH_MAX` and no key twice (a second request of one
    key waits for the next turn): one alone runs ``alone``, several run ``together``, one
    statement and one commit for all (group commit: under load the database saves a
    statement, a transaction and a WAL flush per request), which gives each request its result
    or its own error. When that statement fails, each of its requests runs alone, so each caller
    gets what it would have got alone.

    Without ``abandoned``, requests are shielded: a caller that goes away (its session
    cancelled) does not cancel its request (a settle is money owed). With it, a caller that
    goes away before its turn takes its request out of line, and one that goes away while its
    request runs leaves the result to ``abandoned`` (a reserve made for nobody is released).
    """

    def __init__(
        self,
        what: str,
        alone: Callable[[Q], Awaitable[R]],
        together: Callable[[list[Q]], Awaitable[list[R | StoreError]]],
        *,
        lanes: int,
        key: Callable[[Q], object],
        abandoned: Callable[[Q, R], None] | None = None,
    ) -> None:
        self._what = what
        self._abandoned = abandoned
        self._alone, self._together, self._key = alone, together, key
        self._lanes = lanes
        self._waiting: deque[tuple[Q, asyncio.Future[R]]] = deque()
        self._runners: set[asyncio.Task[None]] = set()
        self.sizes: Counter[int] = Counter()  # requests per statement -> statements

    async def run(self, item: Q) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)
        self._waiting.append((item, future))
        if len(self._runners) < self._lanes:
            runner = asyncio.create_task(self._run_waiting(), name=f"callgate-{self._what}")
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)
        if self._abandoned is None:
            return await asyncio.shield(future)
        return await future

    async def finish(self, seconds: float) -> None:
        """Wait for the requests under way (each is money); cancel what is left after
        ``seconds`` (their callers get an error)."""
        if not self._runners:
            return
        _done, pending = await asyncio.wait(set(self._runners), timeout=seconds)
        for runner in pending:
            runner.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _run_waiting(self) -> None:
        while self._waiting:
            batch = self._next()
            try:
                if not batch:  # every request waiting was taken out of line
                    continue
                if len(batch) == 1:
                    await self._one(*batch[0])
                else:
                    await self._several(batch)
            except BaseException:  # cancelled (the loop closes): no caller waits forever
                for _item, future in batch:
                    if not future.done():
                        future.set_exception(StoreUnavailableError(f"{self._what}: interrupted"))
                raise

    def _next(self) -> list[tuple[Q, asyncio.Future[R]]]:
        waiting = self._waiting
        batch: list[tuple[Q, asyncio.Future[R]]] = []
        keys: set[object] = set()
        again: list[tuple[Q, asyncio.Future[R]]] = []
        while waiting and len(batch) < BATCH_MAX:
            item = waiting.popleft()
            if item[1].done():  # its caller went away (only without a shield)
                continue
            key = self._key(item[0])
            if key in keys:
                again.append(item)
            else:
                keys.add(key)
                batch.append(item)
        waiting.extendleft(reversed(again))
        return batch

    async def _one(self, item: Q, future: asyncio.Future[R]) -> None:
        try:
            result = await self._alone(item)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            self.sizes[1] += 1
            self._give(item, future, result)

    async def _several(self, batch: list[tuple[Q, asyncio.Future[R]]]) -> None:
        try:
            results = await self._together([item for item, _ in batch])
        except Exception as exc:
            log.warning(
                "%s of %d calls in one statement: %s; each alone", self._what, len(batch), exc
            )
            await asyncio.gather(*(self._one(item, future) for item, future in batch))
            return
        self.sizes[len(batch)] += 1
        for (item, future), result in zip(batch, results, strict=True):
            if isinstance(result, StoreError):
                if not future.done():
                    future.set_exception(result)
            else:
                self._give(item, future, result)

    def _give(self, item: Q, future: asyncio.Future[R], result: R) -> None:
        if not future.done():
            future.set_result(result)
        elif future.cancelled() and self._abandoned is not None:
            self._abandoned(item, result)

    def summary(self) -> str | None:
        """How the requests went to the database (None before the first)."""
        sizes = self.sizes
        if not sizes:
            return None
        requests = sum(size * count for size, count in sizes.items())
        return f"{requests} in {sizes.total()} statements (largest {max(sizes)})"


class LeanPostgres:
    """AccountLookup and Ledger on PostgreSQL over an asyncpg pool (see the module's text)."""

    def __init__(self, pool: asyncpg.Pool, *, grace_seconds: int, server: str = "") -> None:
        self._pool = pool
        self._leases = _Leases(pool)
        self.grace_seconds = grace_seconds
        self.server = server
        # account id -> (monotonic time, the row of its lookup with the state): for the
        # account's next reserve (see the module's text)
        self._looked_up: dict[int, tuple[float, asyncpg.Record]] = {}
        self._settles = _Together[CallRecord, SettledCall](
            "settle",
            self._settle_retrying,
            self._settle_many,
            lanes=SETTLERS,
            key=lambda record: (record.asterisk, record.uniqueid),
        )
        # how many statements settled how many calls at once (1: the one-call statement)
        self.settle_batches = self._settles.sizes
        self._reserves = _Together[tuple[Any, ...], bool](
            "reserve",
            self._reserve_alone,
            self._reserve_many,
            lanes=RESERVERS,
            key=lambda args: (args[_ASTERISK_ARG], args[_UNIQUEID_ARG]),
            abandoned=self._reserved_for_nobody,
        )
        self.reserve_batches = self._reserves.sizes
        self._releasing: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(
        cls,
        url: str | URL,
        *,
        grace_seconds: int,
        server: str = "",
        min_size: int = POOL_MIN_SIZE,
        max_size: int = POOL_MAX_SIZE,
    ) -> LeanPostgres:
        """A pool on the database of ``url`` (a SQLAlchemy URL: ``+asyncpg`` is dropped; libpq's
        ``PG*`` variables fill what it leaves out). Raises StoreUnavailableError."""
        async with _mapped("open the call path's PostgreSQL pool"):
            pool = await asyncpg.create_pool(
                asyncpg_dsn(url),
                min_size=min_size,
                max_size=max_size,
                timeout=CONNECT_TIMEOUT_SECONDS,
                command_timeout=COMMAND_TIMEOUT_SECONDS,
                reset=_keep_session,
            )
        return cls(pool, grace_seconds=grace_seconds, server=server)

    async def close(self) -> None:
        """Finish the settles under way (each is money), log how they went to the database,
        then close the pool."""
        await self._reserves.finish(COMMAND_TIMEOUT_SECONDS)
        if self._releasing:
            await asyncio.wait(set(self._releasing), timeout=COMMAND_TIMEOUT_SECONDS)
        await self._settles.finish(COMMAND_TIMEOUT_SECONDS)
        for what, together in (("reserved", self._reserves), ("settled", self._settles)):
            summary = together.summary()
            if summary is not None:
                log.info("%s %s", what, summary)
        try:
            async with asyncio.timeout(10):
                await self._leases.close()
                await self._pool.close()
        except TimeoutError:
            self._pool.terminate()

    async def _fetchrow(self, what: str, query: str, *args: Any) -> asyncpg.Record | None:
        async with _mapped(what):
            row: asyncpg.Record | None = await self._leases.run("fetchrow", query, *args)
            return row

    async def _locked(
        self,
        what: str,
        account_id: int,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
    ) -> T:
        """``work`` in one transaction that holds the account's row lock."""
        async with _mapped(what):
            connection = await self._leases.get(acquire_timeout=ACQUIRE_TIMEOUT_SECONDS)
            try:
                await connection.execute(_BEGIN_AND_LOCK % int(account_id))
                result = await work(connection)
                await connection.execute("COMMIT")
            except BaseException:
                try:
                    await _rollback(connection)
                finally:
                    await self._leases.drop(connection)
                raise
            self._leases.put(connection)
            return result

    # ---------------------------------------------------------------- AccountLookup

    async def find_for_call(
        self, *, accountcode: str, argument: str, callerid: str
    ) -> CallerAccount | None:
        since = datetime.now(UTC) - CPS_WINDOW
        row: asyncpg.Record | None = None
        if accountcode:
            row = await self._fetchrow("account lookup", _CALL_BY_NUMBER, accountcode, since)
        if row is None and argument:
            row = await self._fetchrow("account lookup", _CALL_BY_NUMBER, argument, since)
            if row is None:
                row = await self._fetchrow("account lookup", _CALL_BY_ALIAS, argument, since)
        if row is None and callerid:
            row = await self._fetchrow("account lookup", _CALL_BY_CALLERID, callerid, since)
        if row is None:
            return None
        account = _account(row)
        self._keep_state(account, row)
        return caller_account(account)

    def _keep_state(self, account: Account, row: asyncpg.Record) -> None:
        """Keep a lookup's state for the account's reserve, when its decision will not depend
        on the time (a CPS window starts from the reserve's own clock)."""
        if account.cps_limit is not None:
            return
        kept = self._looked_up
        kept.pop(account.id, None)  # re-inserted last: the dict stays oldest first
        kept[account.id] = (time.monotonic(), row)
        while len(kept) > LOOKUP_STATES_KEPT:
            del kept[next(iter(kept))]

    def _kept_state(self, account_id: int, limits: Limits) -> asyncpg.Record | None:
        """The state of the account's lookup, once, while fresh and when the IP entry has no
        limits (their counts are not in it)."""
        kept = self._looked_up.pop(account_id, None)
        ip_limits = (limits.address_channel_limit, limits.address_cps_limit)
        if kept is None or ip_limits != (None, None):
            return None
        read_at, row = kept
        return row if time.monotonic() - read_at <= LOOKUP_STATE_SECONDS else None

    async def find_by_pin(self, pin: str) -> CallerAccount | None:
        row = await self._fetchrow("PIN lookup", _BY_NUMBER, pin)
        return None if row is None else caller_account(_account(row))

    async def find_by_id(self, account_id: int) -> CallerAccount | None:
        row = await self._fetchrow("account lookup", _BY_ID, account_id)
        return None if row is None else caller_account(_account(row))

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
        since = _utc(now - CPS_WINDOW)
        count_channels = limits.address_channel_limit is not None
        count_cps = limits.address_cps_limit is not None
        # the parameters of the state's counts, the same in both reads ($3.. of _READ_LOCKED)
        state = (since, limits.source_address, count_channels, count_cps)

        def decide(row: asyncpg.Record | None) -> tuple[int, Decimal, Decimal, datetime]:
            """The checks and the price on a read state: (granted, amount, available, expires)."""
            if row is None:
                raise NotFoundError(f"no account with id {account_id}")
            account = _account(row)
            check_usable(account, now)
            _check_counts(account, limits, row)
            available = account.balance + account.debit_limit - row["reserved"]
            granted, amount = _priced(price, available)
            return granted, amount, available, now + timedelta(seconds=granted + self.grace_seconds)

        async def work(connection: asyncpg.Connection) -> Grant:
            row = await connection.fetchrow(
                _READ_LOCKED,
                account_id,
                0,  # no reservation of this call yet
                *state,
            )
            granted, amount, available, expires = decide(row)
            await connection.execute(
                _INSERT_RESERVATION,
                uniqueid,
                asterisk,
                account_id,
                _money(amount),
                granted,
                limits.source_address,
                rate_id,
                trunk,
                self.server,
                _utc(now),
                _utc(expires),
            )
            return Grant(granted, amount, available)

        try:
            kept = self._kept_state(account_id, limits)
            for _attempt in range(OPTIMISTIC_ATTEMPTS + (kept is not None)):
                if kept is not None:  # the state read with the call's lookup
                    row, kept = kept, None
                    try:
                        granted, amount, available, expires = decide(row)
                    except LedgerRefusal:
                        continue  # a refusal is decided on a fresh read
                    # read without the IP entry's counts (it has no limits) and with no CPS
                    # count (the account had no CPS limit; were one set since, the row's version
                    # would differ): the reserve's own window gives the function the same state
                    read = (since, limits.source_address, False, False)
                else:
                    found = await self._fetchrow("reserve", _READ_STATE, account_id, *state)
                    granted, amount, available, expires = decide(found)
                    assert found is not None
                    row, read = found, state
                inserted = await self._reserves.run(
                    (
                        account_id,
                        *read,
                        row["row_version"],
                        row["reserved"],
                        row["in_use"],
                        row["recent"],
                        row["address_in_use"],
                        row["address_recent"],
                        uniqueid,
                        asterisk,
                        _money(amount),
                        granted,
                        rate_id,
                        trunk,
                        self.server,
                        _utc(now),
                        _utc(expires),
                    )
                )
                if inserted:
                    return Grant(granted, amount, available)
            return await self._locked("reserve", account_id, work)
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
        found = await self._fetchrow("regrant", _FIND_RESERVATION, uniqueid, asterisk)
        if found is None or found["status"] != _OPEN:
            raise NotFoundError(f"no open reservation for {uniqueid}")
        reservation_id, account_id = found["id"], found["account_id"]

        async def work(connection: asyncpg.Connection) -> Grant:
            again = await connection.fetchrow(_FIND_RESERVATION, uniqueid, asterisk)
            if again is None or again["status"] != _OPEN:  # settled or released meanwhile
                raise NotFoundError(f"no open reservation for {uniqueid}")
            row = await connection.fetchrow(
                _READ_LOCKED, account_id, reservation_id, _utc(now), "", False, False
            )
            if row is None:
                raise NotFoundError(f"no account with id {account_id}")
            account = _account(row)
            available = account.balance + account.debit_limit - row["reserved"]
            granted, amount = _priced(price, available)
            expires = now + timedelta(seconds=granted + self.grace_seconds)
            await connection.execute(
                _REGRANT, reservation_id, _money(amount), granted, _utc(expires), trunk, rate_id
            )
            return Grant(granted, amount, available)

        try:
            return await self._locked("regrant", account_id, work)
        except LedgerRefusal as exc:
            raise Refused(exc.status.value, str(exc)) from exc

    async def _reserve_alone(self, args: tuple[Any, ...]) -> bool:
        async with _mapped("reserve"):
            return bool(await self._leases.run("fetchval", _RESERVE_IF_UNCHANGED, *args))

    async def _reserve_many(self, items: list[tuple[Any, ...]]) -> list[bool | StoreError]:
        columns = [list(column) for column in zip(*items, strict=True)]
        async with _mapped("reserve"):
            rows = await self._leases.run("fetch", _RESERVE_MANY, *columns)
        inserted = {row["n"]: bool(row["inserted"]) for row in rows}
        return [inserted[n] for n in range(1, len(items) + 1)]

    def _reserved_for_nobody(self, args: tuple[Any, ...], inserted: bool) -> None:
        """A reserve whose session ended while it ran: release what it inserted."""
        if inserted:
            task = asyncio.create_task(
                self._release_abandoned(uniqueid=args[_UNIQUEID_ARG], asterisk=args[_ASTERISK_ARG])
            )
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _release_abandoned(self, *, uniqueid: str, asterisk: str) -> None:
        log.warning("reserve %s: its session ended meanwhile; releasing it", uniqueid)
        try:
            await self.release(uniqueid, "its session ended during the reserve", asterisk=asterisk)
        except StoreError as exc:  # the reaper closes it when it expires
            log.error("reserve %s: cannot release it: %s", uniqueid, exc)

    async def settle(self, record: CallRecord) -> SettledCall:
        """Charge, close the reservation, write the billing record: one statement, idempotent
        by the call's key, shielded (cancelling the session does not cancel the settle).
        Settles that wait while others run go together (:class:`_Together`: one statement of
        :data:`_SETTLE_MANY` and one commit for all)."""
        if record.account_id is None:
            raise NotFoundError("settle needs an account; use record_attempt for unknown callers")
        return await self._settles.run(record)

    async def _settle_many(self, records: list[CallRecord]) -> list[SettledCall | StoreError]:
        columns = [list(column) for column in zip(*map(_call_values, records), strict=True)]
        closed_at = [_utc(record.ended_at or record.started_at) for record in records]
        async with _mapped("settle"):
            rows = await self._leases.run("fetch", _SETTLE_MANY, *columns, closed_at)
        results: list[SettledCall | StoreError] = []
        for record, row in zip(records, rows, strict=True):
            try:
                results.append(_settled(record, row))
            except StoreError as exc:
                results.append(exc)
        return results

    async def _settle_retrying(self, record: CallRecord) -> SettledCall:
        for attempt in range(1, SETTLE_ATTEMPTS + 1):
            try:
                return await self._settle(record)
            except StoreError as exc:
                if attempt == SETTLE_ATTEMPTS or not rolled_back_by_conflict(exc):
                    raise
                log.warning("settle %s: %s; retrying (%d)", record.uniqueid, exc, attempt)
                await asyncio.sleep(0.01 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _settle(self, record: CallRecord) -> SettledCall:
        if record.account_id is None:
            raise NotFoundError("settle needs an account; use record_attempt for unknown callers")
        values = _call_values(record)
        closed_at = _utc(record.ended_at or record.started_at)
        async with _mapped("settle"):
            try:
                row = await self._leases.run("fetchrow", _SETTLE, *values, closed_at)
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFoundError(f"no account with id {record.account_id}") from exc
            assert row is not None
            if not row["found"]:
                raise NotFoundError(f"no account with id {record.account_id}")
            if not row["inserted"]:  # this call's billing record is already there
                balance = await self._leases.run("fetchval", _BALANCE, record.account_id)
                return SettledCall(ZERO, balance if balance is not None else ZERO, True)
        return _settled(record, row)

    async def release(self, uniqueid: str, note: str, *, asterisk: str = "") -> None:
        async with _mapped("release"):
            await self._leases.run(
                "execute",
                _RELEASE,
                uniqueid,
                asterisk,
                note,
            )

    async def record_attempt(self, record: CallRecord) -> None:
        """The billing record of an attempt never reserved; a second one of the call is
        ignored (idempotent, as the core ledger's)."""
        async with _mapped("record attempt"):
            await self._leases.run(
                "execute",
                _CALL_VALUES,
                *_call_values(record),
            )


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a settle's error as seen: its caller may have gone (the settle is shielded)."""
    if not future.cancelled():
        future.exception()


def _settled(record: CallRecord, row: asyncpg.Record) -> SettledCall:
    """The result of a settle from its row of _SETTLE or _SETTLE_MANY."""
    if not row["found"]:
        raise NotFoundError(f"no account with id {record.account_id}")
    balance: Decimal = row["balance"] if row["balance"] is not None else ZERO
    if not row["inserted"]:  # this call's billing record is already there
        return SettledCall(ZERO, balance, True)
    if not row["closed"]:
        log.warning("settle %s: no open reservation; charging the call anyway", record.uniqueid)
    return SettledCall(record.cost, balance, False)


def _call_values(record: CallRecord) -> list[Any]:
    values: list[Any] = []
    for name, encode in _CALL_FIELDS:
        value = getattr(record, name)
        if value is not None and encode is not None:
            value = encode(value)
        values.append(value)
    return values
