"""The server's rates in memory: one prefix index per rate table, swapped when the table changes.

DESIGN.md decision 3, no SQL on the rating hot path: `RateCache.plan` is a pure in-memory read
(a dict lookup on the current snapshot) that returns a `callgate.rating.CallPlan` whose tables
are `callgate.rating.PrefixIndex` objects built from the database. A call costs no rate query.

How the cache stays current:

- Every change to a rate table's rates bumps ``rate_tables.version`` (`callgate.store.rates`
  imports; `callgate.store.plans.add_rates` too, but it sends no NOTIFY, so only the poll sees
  it). `RateCache.refresh` runs ONE cheap query (plans,
  their tables with priorities, each table's version and default trunk: one row per plan/table
  link, never a rate) and compares it with what is loaded. Only tables whose version (or name or
  trunk) changed are rebuilt; attach/detach and plan changes only rebuild the small `CallPlan`
  wrappers. A table's rates are streamed from the database in batches (a driver cursor;
  rows are decoded into `Rate` values batch by batch, repeated values shared through the rating
  core's `Interner`) inside one REPEATABLE READ transaction with the version it is labelled with.
  The new index is built completely, then the snapshot reference is replaced in one assignment:
  a call rated during a rebuild sees the old tables, a call after it the new ones, never half.
- On PostgreSQL the import, replace, attach and detach commands send
  ``NOTIFY callgate_rates, '<table id>'`` in their own transaction; the cache holds a dedicated
  asyncpg connection that LISTENs on that channel and wakes the refresher at once. The listener
  reconnects with backoff if the connection drops (and refreshes after reconnecting, since
  notices sent meanwhile are lost), and pings it every poll interval.
- A periodic version poll (every `poll_seconds`) is the safety net, and the only mechanism on
  SQLite.

Memory: a rate costs about 300 bytes in memory (the `Rate` object, its prefix string, its dict
slot); prices, names and dates are shared. While a table is rebuilt its old index stays in use,
so a rebuild briefly needs room for both.

Lifecycle: ``cache = RateCache(engine); await cache.start()`` (loads everything, raises if it
cannot: a server must not start without its rates), then ``cache.plan(plan_id)`` on every call,
and ``await cache.close()`` at shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callgate.rating import (
    CallPlan,
    Interner,
    PlanTable,
    PrefixIndex,
    Rate,
    RatingError,
    RoutingMode,
)
from callgate.schema.tables import call_plan_rate_tables, call_plans, rate_tables, trunks
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import InvalidDataError, StoreError
from callgate.store.rates import NOTIFY_CHANNEL, iter_rates

__all__ = ["RateCache"]

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 30.0
QUERY_TIMEOUT_SECONDS = 30.0  # the layout query, a listener ping
CONNECT_TIMEOUT_SECONDS = 10.0
BUILD_TIMEOUT_SECONDS = 600.0  # streaming one (large) table out of the database
RECONNECT_MAX_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class _Link:
    """One row of the layout query: a plan and (when it has any) one of its tables."""

    plan_id: int
    plan_name: str
    mode: str
    max_call_seconds: int
    table_id: int | None
    priority: int | None
    table_name: str | None
    version: int | None
    trunk: str | None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """Everything `plan` reads, replaced as a whole."""

    layout: tuple[_Link, ...]
    indexes: Mapping[int, PrefixIndex]
    plans: Mapping[int, CallPlan]
    plan_ids: Mapping[str, int]


_EMPTY = _Snapshot((), {}, {}, {})


class RateCache:
    """Call plans with their in-memory rate indexes, kept current (see the module docstring).

    `poll_seconds` is the version poll interval; `listen` turns LISTEN/NOTIFY on (PostgreSQL
    only); `batch` is how many rates are decoded between two yields to the event loop.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        listen: bool = True,
        batch: int = 5000,
    ) -> None:
        self._engine = engine
        self._poll_seconds = poll_seconds
        self._listen = listen and engine.dialect.name == "postgresql"
        self._batch = batch
        self._snapshot = _EMPTY
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()
        self.generation = 0  # how many snapshots have been swapped in
        self.rebuilds = 0  # how many table indexes have been built

    # --- the hot path: memory only ---------------------------------------------------------

    def plan(self, plan_id: int) -> CallPlan | None:
        """The call plan `plan_id` with its indexes; None if there is no such plan. No SQL."""
        return self._snapshot.plans.get(plan_id)

    def plan_named(self, name: str) -> CallPlan | None:
        """The call plan called `name`; None if there is none. No SQL."""
        snapshot = self._snapshot
        plan_id = snapshot.plan_ids.get(name)
        return None if plan_id is None else snapshot.plans.get(plan_id)

    def index(self, table_id: int) -> PrefixIndex | None:
        """The loaded index of rate table `table_id` (only tables in some plan are loaded)."""
        return self._snapshot.indexes.get(table_id)

    @property
    def versions(self) -> dict[int, int]:
        """The version of every loaded rate table, by table id."""
        return {table_id: index.version for table_id, index in self._snapshot.indexes.items()}

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up (PostgreSQL)."""
        return self._listening.is_set()

    async def wait_listening(self) -> None:
        """Wait until the LISTEN connection is up (put a deadline around it)."""
        await self._listening.wait()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every plan and its tables, then keep them current in the background.

        Raises `StoreError` (or `RatingError` for a rate the database should not hold) when the
        first load fails: a server must not take calls without its rates.
        """
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._refresher(), name="ratecache-refresh"))
        if self._listen:
            self._tasks.append(asyncio.create_task(self._listener(), name="ratecache-listen"))

    async def close(self) -> None:
        """Stop the background tasks (and the LISTEN connection). The last snapshot stays."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def poke(self) -> None:
        """Ask the background refresher to refresh now (as a NOTIFY does)."""
        self._wake.set()

    # --- refresh -------------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Bring the cache up to date; True when a new snapshot was swapped in.

        One cheap query when nothing changed; otherwise rebuilds only the changed tables, then
        swaps. On error the current snapshot stays in use and the error is raised.
        """
        async with self._lock:
            async with asyncio.timeout(QUERY_TIMEOUT_SECONDS):
                layout = await self._read_layout()
            current = self._snapshot
            if layout == current.layout:
                return False
            wanted: dict[int, tuple[str, int, str | None]] = {}
            for link in layout:
                if link.table_id is not None and link.table_name is not None:
                    wanted[link.table_id] = (link.table_name, link.version or 0, link.trunk)
            interner = Interner()
            indexes: dict[int, PrefixIndex] = {}
            for table_id, (name, version, trunk) in wanted.items():
                loaded = current.indexes.get(table_id)
                if (
                    loaded is not None
                    and loaded.name == name
                    and loaded.version >= version
                    and loaded.default_trunk == trunk
                ):
                    indexes[table_id] = loaded
                else:
                    indexes[table_id] = await self._build(table_id, name, trunk, interner)
            plans, plan_ids = _plans(layout, indexes)
            self._snapshot = _Snapshot(layout, indexes, plans, plan_ids)  # the atomic swap
            self.generation += 1
            # A million rates are millions of objects the cyclic collector would walk on every
            # full collection (0.5-0.8 s with the event loop stopped). They hold no cycles and
            # live until the next swap: move them out of its sight. Replaced indexes are still
            # freed by reference counting. (Young garbage is collected first, cheaply.)
            gc.collect(1)
            gc.freeze()
            return True

    async def _read_layout(self) -> tuple[_Link, ...]:
        query = (
            select(
                call_plans.c.id,
                call_plans.c.name,
                call_plans.c.routing_mode,
                call_plans.c.max_call_seconds,
                rate_tables.c.id,
                call_plan_rate_tables.c.priority,
                rate_tables.c.name,
                rate_tables.c.version,
                trunks.c.name,
            )
            .select_from(call_plans)
            .outerjoin(
                call_plan_rate_tables, call_plan_rate_tables.c.call_plan_id == call_plans.c.id
            )
            .outerjoin(rate_tables, rate_tables.c.id == call_plan_rate_tables.c.rate_table_id)
            .outerjoin(trunks, trunks.c.id == rate_tables.c.trunk_id)
            .order_by(call_plans.c.id, call_plan_rate_tables.c.priority, rate_tables.c.name)
        )
        async with mapped_errors("rate cache layout"), self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return tuple(_Link(*row) for row in rows)

    async def _build(
        self, table_id: int, name: str, trunk: str | None, interner: Interner
    ) -> PrefixIndex:
        rates: list[Rate] = []
        async with asyncio.timeout(BUILD_TIMEOUT_SECONDS), mapped_errors(f"rate table {name}"):
            async with self._engine.connect() as conn:
                conn = await _snapshot_isolation(conn)
                version = await conn.scalar(
                    select(rate_tables.c.version).where(rate_tables.c.id == table_id)
                )
                async for batch in iter_rates(conn, table_id, interner=interner, batch=self._batch):
                    rates.extend(batch)
        index = await asyncio.to_thread(
            PrefixIndex, name, rates, default_trunk=trunk, version=int(version or 0)
        )
        self.rebuilds += 1
        log.info("rate table %s loaded: %d rates, version %s", name, len(index), index.version)
        return index

    # --- background tasks ------------------------------------------------------------------------

    async def _refresher(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._poll_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.refresh()
            except (StoreError, RatingError, TimeoutError) as exc:
                log.error("rates not refreshed, still using the previous ones: %s", exc)
            except Exception:  # a bug must not stop the refresher: rates would go stale
                log.exception("rates not refreshed, still using the previous ones")

    def _on_notify(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        log.debug("rate change notice for table %s", payload)
        self._wake.set()

    async def _listener(self) -> None:
        args, kwargs = self._engine.dialect.create_connect_args(self._engine.url)
        for sqlalchemy_only in ("prepared_statement_cache_size", "prepared_statement_name_func"):
            kwargs.pop(sqlalchemy_only, None)
        delay = 1.0
        while True:
            lost = asyncio.Event()
            connection: Any = None
            try:
                connection = await asyncpg.connect(*args, **kwargs, timeout=CONNECT_TIMEOUT_SECONDS)
                connection.add_termination_listener(functools.partial(_set_lost, lost))
                await connection.add_listener(NOTIFY_CHANNEL, self._on_notify)
                self._listening.set()
                delay = 1.0
                self._wake.set()  # notices sent while we were not listening are lost
                while not lost.is_set():
                    try:
                        async with asyncio.timeout(self._poll_seconds):
                            await lost.wait()
                    except TimeoutError:
                        await connection.execute("SELECT 1", timeout=QUERY_TIMEOUT_SECONDS)
                log.warning("rate change listener: connection closed, reconnecting")
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("rate change listener: %s; retrying in %.0f s", exc, delay)
            except Exception:  # keep listening whatever happened; the poll covers the gap
                log.exception("rate change listener failed; retrying in %.0f s", delay)
            finally:
                self._listening.clear()
                if connection is not None:
                    await _close_quietly(connection)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)


def _set_lost(event: asyncio.Event, connection: Any) -> None:
    event.set()


async def _close_quietly(connection: Any) -> None:
    try:
        await connection.close(timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        connection.terminate()


async def _snapshot_isolation(conn: AsyncConnection) -> AsyncConnection:
    """One consistent snapshot for a table's version and its rates (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        return await conn.execution_options(isolation_level="REPEATABLE READ")
    return conn  # SQLite: a read transaction in WAL mode already reads one snapshot


def _plans(
    layout: tuple[_Link, ...], indexes: Mapping[int, PrefixIndex]
) -> tuple[dict[int, CallPlan], dict[str, int]]:
    members: dict[int, list[PlanTable]] = {}
    heads: dict[int, _Link] = {}
    for link in layout:
        heads.setdefault(link.plan_id, link)
        tables = members.setdefault(link.plan_id, [])
        if link.table_id is not None and link.table_name is not None:
            tables.append(PlanTable(link.table_name, link.priority or 0, indexes[link.table_id]))
    plans: dict[int, CallPlan] = {}
    for plan_id, head in heads.items():
        try:
            plans[plan_id] = CallPlan(
                head.plan_name,
                RoutingMode(head.mode),
                head.max_call_seconds,
                tuple(members[plan_id]),
            )
        except (RatingError, ValueError) as exc:
            raise InvalidDataError(f"call plan {head.plan_name!r}: {exc}") from exc
    return plans, {head.plan_name: plan_id for plan_id, head in heads.items()}
