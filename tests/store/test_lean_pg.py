"""The lean PostgreSQL ledger's reserve in two round trips (migration 0010): it inserts only on
the state it priced the call on, and decides again when another call of the account changed
that state between its read and its insert. PostgreSQL only (the functions are PostgreSQL's).

The interleaving is made deterministic by a subclass that runs a change right after the
reserve's read: the change is real SQL on a second connection, the reserve the real one.

Also here: the connection leases, and the settles and the reserves' function calls that wait
going to the database together (group commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from call_paths import check_decoded, every_account_field, used_at
from conftest import _admin_execute, _pg_url_for
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.rating import Rate, cost, max_duration
from callgate.schema.tables import CallStatus, accounts, calls, reservations
from callgate.store import accounts as acc
from callgate.store import lean_pg, plans
from callgate.store.errors import NotFoundError, StoreError
from callgate.store.ledger import CallRecord, Limits
from callgate.store.ports import Refused, SettledCall

pytestmark = pytest.mark.pg

RATE = Rate(prefix="1", rate=Decimal("0.60"), initial_block=30, increment=6)
GRACE = 60


def price(available: Decimal) -> tuple[int, Decimal]:
    granted = max_duration(RATE, available, 3600)
    return granted, cost(RATE, granted)


@pytest.fixture
def db_url(pg_template: str) -> Iterator[str]:
    """PostgreSQL only here (conftest's ``engine`` fixture opens it)."""
    name = f"cgt_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    try:
        yield _pg_url_for(name)
    finally:
        asyncio.run(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Interleaved(lean_pg.LeanPostgres):
    """The lean ledger, with ``changes`` run one by one right after each of the reserve's reads
    of the state (between the read and the insert that depends on it)."""

    changes: list[Callable[[], Awaitable[None]]]
    reads = 0

    async def _fetchrow(self, what: str, query: str, *args: Any) -> asyncpg.Record | None:
        row = await super()._fetchrow(what, query, *args)
        if query == lean_pg._READ_STATE:
            self.reads += 1
            if self.changes:
                await self.changes.pop(0)()
        return row


@contextlib.asynccontextmanager
async def _interleaved(db_url: str, max_size: int) -> AsyncIterator[Interleaved]:
    """The lean ledger on a pool of its own of ``max_size`` connections, closed at the end."""
    pool = await asyncpg.create_pool(lean_pg.asyncpg_dsn(db_url), min_size=1, max_size=max_size)
    gate = Interleaved(pool, grace_seconds=GRACE)
    gate.changes = []
    try:
        yield gate
    finally:
        await gate.close()


@pytest.fixture
async def ledger(db_url: str) -> AsyncIterator[Interleaved]:
    async with _interleaved(db_url, 4) as gate:
        yield gate


@pytest.fixture
async def another(db_url: str) -> AsyncIterator[Interleaved]:
    """The lean ledger of another server of the same database (a pool of its own)."""
    async with _interleaved(db_url, 2) as gate:
        yield gate


async def _account(engine: AsyncEngine, balance: str, **extra: Any) -> acc.Account:
    async with engine.begin() as conn:
        plan = await plans.create_call_plan(conn, name=f"p{random.randrange(10**9)}")
        return await acc.create_account(
            conn, call_plan_id=plan.id, balance=Decimal(balance), **extra
        )


def _set_balance(
    engine: AsyncEngine, account_id: int, balance: str
) -> Callable[[], Awaitable[None]]:
    async def change() -> None:
        async with engine.begin() as conn:
            await conn.execute(
                update(accounts).where(accounts.c.id == account_id).values(balance=Decimal(balance))
            )

    return change


async def _open_reservations(engine: AsyncEngine, account_id: int) -> list[tuple[str, Decimal]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(reservations.c.uniqueid, reservations.c.amount)
            .where(reservations.c.account_id == account_id, reservations.c.status == "open")
            .order_by(reservations.c.id)
        )
        return [(r.uniqueid, r.amount) for r in rows]


async def _reserve(ledger: Interleaved, account_id: int, uniqueid: str, **kwargs: Any) -> Any:
    values: dict[str, Any] = {"price": price, "now": datetime.now(UTC), "trunk": "t1"}
    values.update(kwargs)
    return await ledger.reserve(account_id=account_id, uniqueid=uniqueid, rate_id=None, **values)


# the state a reserve decides on, as callgate_call_state returns it
_STATE_COLUMNS = ("row_version", "reserved", "in_use", "recent", "address_in_use", "address_recent")


def _function_args(
    account_id: int, read: tuple[Any, ...], seen: tuple[Any, ...], uniqueid: str
) -> tuple[Any, ...]:
    """The arguments of ``callgate_reserve_if_unchanged``: the read's parameters (since,
    address, the two IP flags), the state seen (version, reserved, the four counts), a 0.30
    reservation of 30 s."""
    now = datetime.now(UTC)
    money = (Decimal("0.30"), 30, None, "t1", "", now, now + timedelta(seconds=90))
    return (account_id, *read, *seen, uniqueid, "", *money)


async def _reserve_if_unchanged(
    connection: asyncpg.Connection,
    account_id: int,
    read: tuple[Any, ...],
    seen: tuple[Any, ...],
    uniqueid: str,
) -> bool:
    """``callgate_reserve_if_unchanged`` called directly."""
    args = _function_args(account_id, read, seen, uniqueid)
    return bool(await connection.fetchval(lean_pg._RESERVE_IF_UNCHANGED, *args))


async def test_an_account_row_decodes_as_the_core_reads_it_field_by_field(
    engine: AsyncEngine, ledger: Interleaved
) -> None:
    stamp = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)
    every = await _account(engine, "7.125", **every_account_field(stamp))
    async with engine.begin() as conn:
        await conn.execute(update(accounts).where(accounts.c.id == every.id).values(used_at(stamp)))
        core = await acc.fetch_account(conn, every.id)
    async with ledger._pool.acquire() as conn:
        by_id = await conn.fetchrow(lean_pg._BY_ID, every.id)
        # the locked read: the account's columns, then the state's
        locked = await conn.fetchrow(lean_pg._READ_LOCKED, every.id, 0, stamp, "", False, False)
    check_decoded(lean_pg._account(by_id), core, stamp)
    check_decoded(lean_pg._account(locked), core, stamp)


async def test_an_unchanged_state_reserves_on_the_first_read(
    engine: AsyncEngine, ledger: Interleaved
) -> None:
    account = await _account(engine, "1.00")
    grant = await _reserve(ledger, account.id, "u1")
    # 1.00 at 0.60/min, 30/6: 96 s for 0.96
    assert (grant.granted_seconds, grant.amount, grant.available) == (
        96,
        Decimal("0.96000"),
        Decimal("1.00000"),
    )
    assert ledger.reads == 1
    assert await _open_reservations(engine, account.id) == [("u1", Decimal("0.96"))]


async def test_a_balance_changed_between_read_and_insert_is_priced_again(
    engine: AsyncEngine, ledger: Interleaved
) -> None:
    account = await _account(engine, "1.00")
    ledger.changes = [_set_balance(engine, account.id, "0.50")]
    grant = await _reserve(ledger, account.id, "u1")
    # priced first on 1.00 (96 s), refused by the function, priced again on 0.50: 48 s for 0.48
    assert (grant.granted_seconds, grant.amount, grant.available) == (
        48,
        Decimal("0.48000"),
        Decimal("0.50000"),
    )
    assert ledger.reads == 2
    assert await _open_reservations(engine, account.id) == [("u1", Decimal("0.48"))]


async def test_a_reservation_of_another_call_between_read_and_insert_is_counted(
    engine: AsyncEngine, ledger: Interleaved, another: Interleaved
) -> None:
    account = await _account(engine, "1.00")

    async def another_call() -> None:
        await _reserve(another, account.id, "u0", price=lambda a: (30, Decimal("0.30")))

    ledger.changes = [another_call]
    grant = await _reserve(ledger, account.id, "u1")
    # 1.00 - 0.30 reserved by u0 = 0.70: 66 s for 0.66 (72 s would cost 0.72)
    assert (grant.granted_seconds, grant.amount, grant.available) == (
        66,
        Decimal("0.66000"),
        Decimal("0.70000"),
    )
    assert await _open_reservations(engine, account.id) == [
        ("u0", Decimal("0.30")),
        ("u1", Decimal("0.66")),
    ]


async def test_a_state_that_keeps_changing_takes_the_locked_path(
    engine: AsyncEngine, ledger: Interleaved
) -> None:
    account = await _account(engine, "1.00")
    ledger.changes = [
        _set_balance(engine, account.id, balance)
        for balance in ("0.90", "0.80", "0.70")[: lean_pg.OPTIMISTIC_ATTEMPTS]
    ]
    grant = await _reserve(ledger, account.id, "u1")
    last = ("0.90", "0.80", "0.70")[lean_pg.OPTIMISTIC_ATTEMPTS - 1]
    granted, amount = price(Decimal(last))
    assert (grant.granted_seconds, grant.amount, grant.available) == (
        granted,
        amount,
        Decimal(last),
    )
    assert ledger.reads == lean_pg.OPTIMISTIC_ATTEMPTS  # the locked path reads under its lock
    assert await _open_reservations(engine, account.id) == [("u1", amount)]


async def test_a_channel_limit_reached_between_read_and_insert_refuses(
    engine: AsyncEngine, ledger: Interleaved, another: Interleaved
) -> None:
    account = await _account(engine, "5.00", channel_limit=1)

    async def another_call() -> None:
        await _reserve(another, account.id, "u0")

    ledger.changes = [another_call]
    with pytest.raises(Refused, match="channel limit 1 reached"):
        await _reserve(ledger, account.id, "u1")
    assert [u for u, _ in await _open_reservations(engine, account.id)] == ["u0"]


async def test_the_function_inserts_nothing_on_a_stale_state(
    engine: AsyncEngine, db_url: str
) -> None:
    account = await _account(engine, "1.00")
    connection = await asyncpg.connect(lean_pg.asyncpg_dsn(db_url))
    try:
        since = datetime.now(UTC) - timedelta(seconds=1)
        state = await connection.fetchrow(
            "SELECT * FROM callgate_call_state($1, 0, $2, '', false, false)", account.id, since
        )
        assert state is not None
        assert (state["reserved"], state["in_use"], state["recent"]) == (Decimal(0), None, None)

        async def reserve(uniqueid: str, row_version: str, reserved: Decimal) -> bool:
            seen = (row_version, reserved, None, None, None, None)
            return await _reserve_if_unchanged(
                connection, account.id, (since, "", False, False), seen, uniqueid
            )

        assert not await reserve("stale-reserved", state["row_version"], Decimal("0.01"))
        await _set_balance(engine, account.id, "0.99")()
        assert not await reserve("stale-version", state["row_version"], Decimal(0))
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(reservations)) == 0
        fresh = await connection.fetchrow(
            "SELECT * FROM callgate_call_state($1, 0, $2, '', false, false)", account.id, since
        )
        assert fresh is not None and fresh["row_version"] != state["row_version"]
        assert await reserve("fresh", fresh["row_version"], Decimal(0))
        assert await _open_reservations(engine, account.id) == [("fresh", Decimal("0.30"))]
    finally:
        await connection.close()


async def test_limits_of_an_ip_entry_are_in_the_state(
    engine: AsyncEngine, ledger: Interleaved
) -> None:
    account = await _account(engine, "5.00")
    limits = Limits(source_address="192.0.2.7", address_channel_limit=1)
    await _reserve(ledger, account.id, "u0", limits=limits)
    with pytest.raises(Refused, match="IP 192.0.2.7 channel limit 1 reached"):
        await _reserve(ledger, account.id, "u1", limits=limits)
    assert ledger.reads == 2


@pytest.mark.parametrize(
    ("account_limits", "address_flags", "status", "source_address"),
    [
        ({"channel_limit": 5}, (False, False), "open", ""),
        ({"cps_limit": 5}, (False, False), "released", ""),
        ({}, (True, False), "open", "192.0.2.9"),
        ({}, (False, True), "released", "192.0.2.9"),
    ],
    ids=["account channels", "account CPS", "IP channels", "IP CPS"],
)
async def test_the_function_sees_a_count_that_changed_alone(
    engine: AsyncEngine,
    db_url: str,
    account_limits: dict[str, int],
    address_flags: tuple[bool, bool],
    status: str,
    source_address: str,
) -> None:
    """A free call (amount 0) between the read and the insert changes one count and neither the
    sum of the open reservations nor the account's row: the function must see the count."""
    account = await _account(engine, "1.00", **account_limits)
    address = "192.0.2.9" if any(address_flags) else ""
    connection = await asyncpg.connect(lean_pg.asyncpg_dsn(db_url))
    try:
        now = datetime.now(UTC)
        state_args = (now - timedelta(seconds=1), address, *address_flags)
        read = "SELECT * FROM callgate_call_state($1, 0, $2, $3, $4, $5)"
        state = await connection.fetchrow(read, account.id, *state_args)
        assert state is not None
        await connection.execute(
            "INSERT INTO reservations (uniqueid, asterisk, account_id, amount, granted_seconds,"
            " status, source_address, trunk, server, created_at, expires_at)"
            " VALUES ('free', '', $1, 0, 60, $2, $3, 't1', '', $4, $5)",
            account.id,
            status,
            source_address,
            now,
            now + timedelta(seconds=90),
        )
        fresh = await connection.fetchrow(read, account.id, *state_args)
        assert fresh is not None
        assert (fresh["row_version"], fresh["reserved"]) == (state["row_version"], Decimal(0))
        changed = [
            name
            for name in ("in_use", "recent", "address_in_use", "address_recent")
            if fresh[name] != state[name]
        ]
        assert len(changed) == 1, changed

        async def reserve(uniqueid: str, seen: asyncpg.Record) -> bool:
            values = tuple(seen[name] for name in _STATE_COLUMNS)
            return await _reserve_if_unchanged(connection, account.id, state_args, values, uniqueid)

        assert not await reserve("stale", state)
        assert await reserve("fresh", fresh)
        assert await _open_reservations(engine, account.id) == [
            *([("free", Decimal(0))] if status == "open" else []),
            ("fresh", Decimal("0.30")),
        ]
    finally:
        await connection.close()


async def _lookup(ledger: Interleaved, account: acc.Account) -> None:
    found = await ledger.find_for_call(accountcode=account.number, argument="", callerid="")
    assert found is not None and found.id == account.id


async def test_a_reserve_after_the_lookup_prices_on_the_lookups_state(
    engine: AsyncEngine, ledger: Interleaved
) -> None:
    account = await _account(engine, "5.00")
    await _lookup(ledger, account)
    grant = await _reserve(ledger, account.id, "u0")
    assert ledger.reads == 0  # the function only: one round trip
    assert await _open_reservations(engine, account.id) == [("u0", grant.amount)]
    with pytest.raises(Refused, match="credit"):  # the lookup's state is used once
        await _reserve(ledger, account.id, "u1")
    assert ledger.reads == 1


async def test_a_change_between_the_lookup_and_the_reserve_is_priced_again(
    engine: AsyncEngine, ledger: Interleaved
) -> None:
    account = await _account(engine, "5.00")
    await _lookup(ledger, account)
    await _set_balance(engine, account.id, "0.60")()
    grant = await _reserve(ledger, account.id, "u0")
    assert ledger.reads == 1
    assert (grant.granted_seconds, grant.available) == (60, Decimal("0.60"))
    assert await _open_reservations(engine, account.id) == [("u0", Decimal("0.60"))]


async def test_a_refusal_on_the_lookups_state_is_decided_again_on_a_fresh_read(
    engine: AsyncEngine, ledger: Interleaved
) -> None:
    account = await _account(engine, "0.00")
    await _lookup(ledger, account)
    await _set_balance(engine, account.id, "1.20")()  # a payment meanwhile
    grant = await _reserve(ledger, account.id, "u0")
    assert ledger.reads == 1 and grant.granted_seconds == 120


@pytest.mark.parametrize(
    ("extra", "limits"),
    [
        ({"cps_limit": 5}, Limits()),
        ({}, Limits(source_address="192.0.2.7", address_cps_limit=5)),
        ({}, Limits(source_address="192.0.2.7", address_channel_limit=5)),
    ],
    ids=["account CPS limit", "IP CPS limit", "IP channel limit"],
)
async def test_a_reserve_with_counts_the_lookup_did_not_read_reads_them(
    engine: AsyncEngine, ledger: Interleaved, extra: dict[str, int], limits: Limits
) -> None:
    account = await _account(engine, "5.00", **extra)
    await _lookup(ledger, account)
    await _reserve(ledger, account.id, "u0", limits=limits)
    assert ledger.reads == 1
    assert [u for u, _ in await _open_reservations(engine, account.id)] == ["u0"]


# ---------------------------------------------------------------- leased connections


@pytest.fixture
async def narrow(db_url: str) -> AsyncIterator[lean_pg.LeanPostgres]:
    """The lean ledger on a pool of two connections."""
    async with _interleaved(db_url, 2) as gate:
        yield gate


async def test_more_statements_than_connections_all_run_and_every_connection_comes_back(
    engine: AsyncEngine, narrow: lean_pg.LeanPostgres
) -> None:
    account = await _account(engine, "1.00")
    found = await asyncio.gather(*(narrow.find_by_id(account.id) for _ in range(30)))
    assert {a.id for a in found if a is not None} == {account.id} and None not in found
    leases = narrow._leases
    assert 1 <= leases._out <= 2
    assert len(leases._idle) == leases._out and not [w for w in leases._line if not w.done()]
    async with asyncio.timeout(5):  # the idle ones go back, so the pool closes at once
        await narrow.close()


async def test_a_statement_that_fails_gives_its_connection_back_to_the_pool(
    narrow: lean_pg.LeanPostgres,
) -> None:
    leases = narrow._leases
    with pytest.raises(asyncpg.DivisionByZeroError):
        await leases.run("fetchval", "SELECT 1 / 0")
    assert (leases._out, leases._idle) == (0, [])
    assert await leases.run("fetchval", "SELECT 2") == 2
    assert leases._out == 1 and len(leases._idle) == 1


async def test_a_connection_closed_while_idle_is_replaced(narrow: lean_pg.LeanPostgres) -> None:
    leases = narrow._leases
    assert await leases.run("fetchval", "SELECT 1") == 1
    (idle,) = leases._idle
    idle.terminate()  # as when the server or the network drops it
    assert await leases.run("fetchval", "SELECT 3") == 3
    assert leases._out == 1 and len(leases._idle) == 1 and not leases._idle[0].is_closed()


async def test_a_connection_handed_to_a_statement_that_gave_up_goes_to_the_next(
    narrow: lean_pg.LeanPostgres,
) -> None:
    leases = narrow._leases
    first, second = await leases.get(), await leases.get()  # both connections out
    waiting = asyncio.create_task(leases.get())
    await asyncio.sleep(0)  # it waits in line
    leases.put(first)  # handed to it...
    waiting.cancel()  # ...which gives up before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert leases._idle == [first] and leases._out == 2
    leases.put(second)
    assert await leases.run("fetchval", "SELECT 4") == 4


async def test_the_slot_of_a_dropped_connection_goes_to_the_statement_waiting_first(
    narrow: lean_pg.LeanPostgres,
) -> None:
    leases = narrow._leases
    first, second = await leases.get(), await leases.get()
    waiting = asyncio.create_task(leases.get())
    await asyncio.sleep(0)
    await leases.drop(first)  # its slot goes to the statement waiting...
    asyncio.get_running_loop().call_soon(leases.put, second)  # (a statement ending soon after)
    async with asyncio.timeout(5):
        theirs = await leases.get()  # ...so a newcomer waits for the next connection put back
        mine = await waiting  # leased from the pool in that slot
    assert theirs is second and mine is not second and leases._out == 2
    leases.put(mine)
    leases.put(theirs)
    assert await leases.run("fetchval", "SELECT 5") == 5 and leases._out == 2


# ---------------------------------------------------------------- settles together


def _record(account: acc.Account, uniqueid: str, cost_: str, billsec: int, start: int) -> Any:
    started = datetime(2026, 12, 7, 12, 0, tzinfo=UTC) + timedelta(seconds=start)
    return CallRecord(
        uniqueid=uniqueid,
        status=CallStatus.OK,
        started_at=started,
        ended_at=started + timedelta(seconds=billsec),
        account_id=account.id,
        billsec=billsec,
        cost=Decimal(cost_),
    )


def _half_a_minute(available: Decimal) -> tuple[int, Decimal]:
    return 30, Decimal("0.30")


async def _reserved(ledger: Interleaved, *records: CallRecord) -> None:
    """A reservation of 0.30 for each call."""
    for record in records:
        assert record.account_id is not None
        await _reserve(ledger, record.account_id, record.uniqueid, price=_half_a_minute)


async def test_settles_that_wait_together_charge_as_they_would_one_by_one(
    ledger: Interleaved, engine: AsyncEngine
) -> None:
    a = await _account(engine, "10.00")
    b = await _account(engine, "5.00")
    # the order given: a1 unanswered, then a's and b's calls interleaved, one start earlier
    records = [
        _record(a, "a1", "0", 0, 0),
        _record(b, "b1", "0.30", 30, 5),
        _record(a, "a2", "0.60", 60, 10),
        _record(a, "a3", "0.12", 12, 3),
        _record(b, "b2", "1.20", 120, 20),
    ]
    await _reserved(ledger, *records)
    settled = await asyncio.gather(*(ledger.settle(record) for record in records))
    assert ledger.settle_batches == {5: 1}  # all five in one statement
    assert [(s.charged, s.balance, s.already_settled) for s in settled] == [
        (Decimal("0"), Decimal("10.00"), False),
        (Decimal("0.30"), Decimal("4.70"), False),
        (Decimal("0.60"), Decimal("9.40"), False),
        (Decimal("0.12"), Decimal("9.28"), False),
        (Decimal("1.20"), Decimal("3.50"), False),
    ]
    async with engine.connect() as conn:
        rows = {
            r.id: r
            for r in await conn.execute(
                select(
                    accounts.c.id,
                    accounts.c.balance,
                    accounts.c.call_count,
                    accounts.c.first_use_at,
                    accounts.c.last_use_at,
                ).where(accounts.c.id.in_([a.id, b.id]))
            )
        }
        billed = dict((await conn.execute(select(calls.c.uniqueid, calls.c.cost))).all())
        closed = (
            await conn.execute(
                select(reservations.c.uniqueid, reservations.c.status, reservations.c.charged)
            )
        ).all()
    # a: two answered calls; first use is a2's start (a1 was not answered, a2 came before a3
    # in the order given), last use the last call's start in that order (a3), as one by one
    assert (rows[a.id].balance, rows[a.id].call_count) == (Decimal("9.28"), 2)
    assert rows[a.id].first_use_at == records[2].started_at
    assert rows[a.id].last_use_at == records[3].started_at
    assert (rows[b.id].balance, rows[b.id].call_count) == (Decimal("3.50"), 2)
    assert rows[b.id].first_use_at == records[1].started_at
    assert rows[b.id].last_use_at == records[4].started_at
    assert billed == {r.uniqueid: r.cost for r in records}
    assert sorted(closed) == sorted((r.uniqueid, "settled", r.cost) for r in records)


async def test_a_second_settle_waiting_with_the_first_charges_nothing(
    ledger: Interleaved, engine: AsyncEngine
) -> None:
    account = await _account(engine, "10.00")
    first, other = _record(account, "c1", "0.60", 60, 0), _record(account, "c2", "0.30", 30, 1)
    await _reserved(ledger, first, other)
    results = await asyncio.gather(
        ledger.settle(first), ledger.settle(other), ledger.settle(replace(first, note="again"))
    )
    # the second settle of c1 waited for the next statement (no key twice in one)
    assert ledger.settle_batches == {2: 1, 1: 1}
    assert [(r.charged, r.already_settled) for r in results] == [
        (Decimal("0.60"), False),
        (Decimal("0.30"), False),
        (Decimal("0"), True),
    ]
    assert results[2].balance == Decimal("9.10")
    async with engine.connect() as conn:
        balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account.id))
        notes = (await conn.execute(select(calls.c.uniqueid, calls.c.note))).all()
    assert balance == Decimal("9.10")
    assert sorted(notes) == [("c1", ""), ("c2", "")]


async def test_an_unknown_account_fails_its_own_settle_in_a_statement_of_several(
    ledger: Interleaved, engine: AsyncEngine
) -> None:
    account = await _account(engine, "10.00")
    good = _record(account, "g1", "0.60", 60, 0)
    await _reserved(ledger, good)
    stray = replace(good, uniqueid="s1", account_id=account.id + 1000)
    results = await asyncio.gather(
        ledger.settle(good), ledger.settle(stray), return_exceptions=True
    )
    assert ledger.settle_batches == {2: 1}
    assert isinstance(results[1], NotFoundError)
    assert f"no account with id {account.id + 1000}" in str(results[1])
    assert isinstance(results[0], SettledCall) and results[0].charged == Decimal("0.60")
    async with engine.connect() as conn:
        assert (await conn.execute(select(calls.c.uniqueid))).scalars().all() == ["g1"]


async def test_a_statement_of_several_that_fails_settles_each_alone(
    ledger: Interleaved, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    account = await _account(engine, "10.00")
    good = _record(account, "g1", "0.60", 60, 0)
    bad = replace(_record(account, "b1", "0.30", 30, 1), dial_status="X" * 40)  # too long
    await _reserved(ledger, good, bad)
    results = await asyncio.gather(ledger.settle(good), ledger.settle(bad), return_exceptions=True)
    assert ledger.settle_batches == {1: 1}  # the statement of two failed; g1 then alone
    assert "settle of 2 calls in one statement" in caplog.text
    assert isinstance(results[1], StoreError)  # as the one-call statement reports it
    assert "value too long" in str(results[1])
    assert isinstance(results[0], SettledCall) and results[0].balance == Decimal("9.40")
    assert await _open_reservations(engine, account.id) == [("b1", Decimal("0.30"))]


async def test_closing_waits_for_the_settles_under_way(db_url: str, engine: AsyncEngine) -> None:
    account = await _account(engine, "10.00")
    records = [_record(account, f"w{n}", "0.10", 10, n) for n in range(6)]
    async with _interleaved(db_url, 2) as gate:
        await _reserved(gate, *records)
        settles = [asyncio.create_task(gate.settle(record)) for record in records]
        await asyncio.sleep(0)  # each is in line, none has run
    # the pool is closed: every settle had finished first
    assert all(task.done() and not task.exception() for task in settles)
    assert sum(size * n for size, n in gate.settle_batches.items()) == 6
    async with engine.connect() as conn:
        balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account.id))
    assert balance == Decimal("9.40")


# ---------------------------------------------------------------- reserves together


async def _current_args(ledger: Interleaved, account: acc.Account, uniqueid: str) -> Any:
    """The function's arguments on the account's current state (:func:`_function_args`)."""
    read = (datetime.now(UTC) - lean_pg.CPS_WINDOW, "", False, False)
    row = await ledger._fetchrow("test", lean_pg._READ_STATE, account.id, *read)
    assert row is not None
    return _function_args(account.id, read, tuple(row[c] for c in _STATE_COLUMNS), uniqueid)


async def test_reserves_that_wait_together_go_in_one_statement(
    ledger: Interleaved, engine: AsyncEngine
) -> None:
    owners = [await _account(engine, "1.00") for _ in range(3)]
    args = [await _current_args(ledger, a, f"r{n}") for n, a in enumerate(owners)]
    # the same account twice: the second was priced on the state before the first's insert
    args.append(await _current_args(ledger, owners[0], "again"))
    inserted = await asyncio.gather(*(ledger._reserves.run(a) for a in args))
    assert ledger.reserve_batches == {4: 1}
    assert inserted == [True, True, True, False]  # "again" saw r0's reservation: not inserted
    for n, owner in enumerate(owners):
        assert await _open_reservations(engine, owner.id) == [(f"r{n}", Decimal("0.30"))]


async def test_reserves_of_one_account_at_once_each_count_the_others(
    ledger: Interleaved, engine: AsyncEngine
) -> None:
    account = await _account(engine, "1.00")  # three 0.30 minutes, not four
    results = await asyncio.gather(
        *(_reserve(ledger, account.id, f"c{n}", price=_half_a_minute) for n in range(4)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, Refused)]
    assert len(refused) == 1 and "available 0.10000" in str(refused[0])
    assert sum(amount for _, amount in await _open_reservations(engine, account.id)) == Decimal(
        "0.90"
    )


async def test_a_reserve_whose_caller_went_away_while_it_ran_is_released(
    ledger: Interleaved, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = await _account(engine, "1.00"), await _account(engine, "1.00")
    kept_args = await _current_args(ledger, first, "kept")
    gone_args = await _current_args(ledger, second, "gone")
    kept = asyncio.create_task(ledger._reserves.run(kept_args))
    gone = asyncio.create_task(ledger._reserves.run(gone_args))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # both are in the statement now running
    gone.cancel()
    assert await kept is True
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert ledger.reserve_batches == {2: 1}
    assert ledger._releasing  # the release of what "gone" inserted, under way
    async with asyncio.timeout(5):
        await asyncio.wait(set(ledger._releasing))
    assert await _open_reservations(engine, second.id) == []
    assert await _open_reservations(engine, first.id) == [("kept", Decimal("0.30"))]
    assert "reserve gone: its session ended meanwhile; releasing it" in caplog.text
    async with engine.connect() as conn:
        note = await conn.scalar(
            select(reservations.c.note).where(reservations.c.uniqueid == "gone")
        )
    assert note == "its session ended during the reserve"


async def test_a_reserve_whose_caller_went_away_before_its_turn_is_not_made(
    ledger: Interleaved, engine: AsyncEngine
) -> None:
    owners = [await _account(engine, "1.00") for _ in range(4)]
    args = [await _current_args(ledger, a, f"t{n}") for n, a in enumerate(owners)]
    # all four wait for a runner, which leaves out the one whose caller went away
    tasks = [asyncio.create_task(ledger._reserves.run(a)) for a in args]
    await asyncio.sleep(0)
    tasks[3].cancel()
    assert await asyncio.gather(*tasks[:3]) == [True, True, True]
    assert await _open_reservations(engine, owners[3].id) == []
    assert sum(size * n for size, n in ledger.reserve_batches.items()) == 3
