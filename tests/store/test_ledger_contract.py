"""The contract every call path implementation keeps (issue 11): the account lookup and the
ledger ports, run against each implementation on a real database.

Add an implementation with one line in ``IMPLEMENTATIONS``: (``[database] call_path``, backend).
The implementation is built as ``callgate serve`` builds it
(:func:`callgate.cli.runtime.open_call_path`), so a new one only needs wiring there. Every test
asserts the same figures for every implementation: the lean ledgers must compute what the core
one computes, to the digit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from call_paths import open_test_call_path
from conftest import _admin_execute, _pg_url_for
from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from tcp_proxy import TcpProxy

from callgate.cli.runtime import CallPath
from callgate.rating import Rate, cost, max_duration
from callgate.schema.tables import CallStatus, ReservationStatus, accounts, calls, reservations
from callgate.store import accounts as acc
from callgate.store import plans
from callgate.store._errors_map import mapped_errors, rolled_back_by_conflict
from callgate.store.db import create_engine, writer_lock
from callgate.store.errors import StoreError, StoreUnavailableError
from callgate.store.ledger import CallRecord, Limits
from callgate.store.ports import Refused

IMPLEMENTATIONS = [
    pytest.param(("core", "sqlite"), id="core-sqlite"),
    pytest.param(("core", "pg"), id="core-pg", marks=pytest.mark.pg),
    pytest.param(("lean", "pg"), id="lean-pg", marks=pytest.mark.pg),
    pytest.param(("lean", "sqlite"), id="lean-sqlite"),
]

RATE = Rate(prefix="1", rate=Decimal("0.60"), initial_block=30, increment=6)
CAP = 3600
GRACE = 60


def price(available: Decimal, cap: int = CAP) -> tuple[int, Decimal]:
    granted = max_duration(RATE, available, cap)
    return granted, cost(RATE, granted)


def price_short(available: Decimal) -> tuple[int, Decimal]:
    """At most 60 s a call: several calls of one account fit at once."""
    return price(available, 60)


@dataclass
class Gate:
    """One implementation on a fresh database, and an engine to seed and inspect it."""

    name: str
    url: str
    engine: AsyncEngine
    path: CallPath

    async def account(self, balance: str, **extra: Any) -> acc.Account:
        async with self.engine.begin() as conn:
            plan = await plans.create_call_plan(conn, name=f"p{random.randrange(10**9)}")
            return await acc.create_account(
                conn, call_plan_id=plan.id, balance=Decimal(balance), **extra
            )

    async def balance(self, account_id: int) -> Decimal:
        async with self.engine.connect() as conn:
            value = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account_id))
        assert isinstance(value, Decimal)
        return value

    async def reservation(self, uniqueid: str, asterisk: str = "") -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(reservations).where(
                        reservations.c.uniqueid == uniqueid, reservations.c.asterisk == asterisk
                    )
                )
            ).one()
        return dict(row._mapping)

    async def count(self, table: Any, *where: Any) -> int:
        async with self.engine.connect() as conn:
            value = await conn.scalar(select(func.count()).select_from(table).where(*where))
        return int(value or 0)


@pytest.fixture(params=IMPLEMENTATIONS)
def contract_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(call path, a freshly migrated database URL of the implementation's backend)."""
    name, backend = request.param
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "callgate.db"
        shutil.copyfile(template, path)
        yield name, f"sqlite+aiosqlite:///{path}"
        return
    template_name: str = request.getfixturevalue("pg_template")
    database = f"cgt_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin_execute(f'CREATE DATABASE "{database}" TEMPLATE "{template_name}"'))
    try:
        yield name, _pg_url_for(database)
    finally:
        asyncio.run(_admin_execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


@pytest.fixture
async def gate(contract_db: tuple[str, str]) -> AsyncIterator[Gate]:
    name, url = contract_db
    engine = create_engine(url)
    path = await open_test_call_path(name, engine, grace_seconds=GRACE)
    try:
        yield Gate(name, url, engine, path)
    finally:
        await path.close()
        await engine.dispose()


def _record(account: acc.Account, uniqueid: str, billsec: int, granted: int) -> CallRecord:
    now = datetime.now(UTC)
    return CallRecord(
        uniqueid=uniqueid,
        status=CallStatus.OK,
        started_at=now,
        account_id=account.id,
        billsec=billsec,
        granted_seconds=granted,
        dial_status="ANSWER" if billsec else "NOANSWER",
        cost=cost(RATE, min(billsec, granted)),
        ended_at=now + timedelta(seconds=billsec),
    )


async def _reserve(gate: Gate, account_id: int, uniqueid: str, **kwargs: Any) -> Any:
    values: dict[str, Any] = {"price": price, "now": datetime.now(UTC), "trunk": "t1"}
    values.update(kwargs)
    return await gate.path.ledger.reserve(
        account_id=account_id, uniqueid=uniqueid, rate_id=None, **values
    )


# ---------------------------------------------------------------- lookup


async def test_the_account_lookup_finds_by_accountcode_argument_alias_and_caller_id(
    gate: Gate,
) -> None:
    account = await gate.account(
        "2.50", number="7000000001", alias="Alice", debit_limit=Decimal("1")
    )
    async with gate.engine.begin() as conn:
        await acc.add_callerid(conn, account.id, "5551001")
    lookup = gate.path.accounts
    by_code = await lookup.find_for_call(accountcode="7000000001", argument="", callerid="")
    assert by_code is not None and by_code.id == account.id
    assert (by_code.balance, by_code.debit_limit) == (Decimal("2.50000"), Decimal("1.00000"))
    assert (by_code.status, by_code.expired, by_code.alias) == ("active", False, "Alice")
    by_number = await lookup.find_for_call(accountcode="x", argument="7000000001", callerid="")
    by_alias = await lookup.find_for_call(accountcode="", argument="ALICE", callerid="")
    by_cli = await lookup.find_for_call(accountcode="", argument="", callerid="5551001")
    assert by_code == by_number == by_alias == by_cli
    assert await lookup.find_for_call(accountcode="no", argument="no", callerid="no") is None
    assert await lookup.find_by_pin("7000000001") == by_code
    assert await lookup.find_by_id(account.id) == by_code
    assert await lookup.find_by_id(account.id + 1000) is None


# ---------------------------------------------------------------- reserve and settle


async def test_reserve_then_settle_charges_exactly_once(gate: Gate) -> None:
    account = await gate.account("1.00")
    now = datetime.now(UTC)
    first = await _reserve(gate, account.id, "u1", now=now)
    # 1.00 at 0.60/min, 30/6: 96 s cost 0.96; 102 s would cost 1.02
    assert (first.granted_seconds, first.amount, first.available) == (
        96,
        Decimal("0.96000"),
        Decimal("1.00000"),
    )
    row = await gate.reservation("u1")
    assert row["expires_at"] == now + timedelta(seconds=96 + GRACE)
    assert (row["status"], row["amount"], row["trunk"]) == ("open", Decimal("0.96"), "t1")
    with pytest.raises(Refused) as refused:  # 0.04 left cannot pay the first 30 s block
        await _reserve(gate, account.id, "u2", now=now)
    assert refused.value.status == "NO_CREDIT"
    result = await gate.path.ledger.settle(_record(account, "u1", billsec=61, granted=96))
    assert (result.charged, result.balance) == (Decimal("0.66000"), Decimal("0.34000"))
    assert not result.already_settled
    again = await gate.path.ledger.settle(_record(account, "u1", billsec=61, granted=96))
    assert again.already_settled and again.charged == 0 and again.balance == Decimal("0.34")
    assert await gate.balance(account.id) == Decimal("0.34000")
    row = await gate.reservation("u1")
    assert row["status"] == ReservationStatus.SETTLED.value and row["charged"] == Decimal("0.66")
    assert row["closed_at"] is not None and row["closed_at"].tzinfo is not None
    assert await gate.count(calls) == 1
    async with gate.engine.connect() as conn:
        assert await conn.scalar(select(accounts.c.call_count)) == 1
        first_use = await conn.scalar(select(accounts.c.first_use_at))
        assert first_use is not None and first_use.tzinfo is not None
        call = (await conn.execute(select(calls))).one()
    assert (call.cost, call.billsec, call.status) == (Decimal("0.66"), 61, "OK")


async def test_an_unanswered_call_charges_nothing_and_counts_no_use(gate: Gate) -> None:
    account = await gate.account("1.00")
    await _reserve(gate, account.id, "n1")
    result = await gate.path.ledger.settle(_record(account, "n1", billsec=0, granted=96))
    assert (result.charged, result.balance) == (Decimal("0"), Decimal("1.00000"))
    async with gate.engine.connect() as conn:
        row = (await conn.execute(select(accounts.c.call_count, accounts.c.first_use_at))).one()
    assert (row.call_count, row.first_use_at) == (0, None)


async def test_settling_twice_at_once_charges_once(gate: Gate) -> None:
    account = await gate.account("5.00")
    await _reserve(gate, account.id, "twice")
    record = _record(account, "twice", billsec=45, granted=300)
    results = await asyncio.gather(*(gate.path.ledger.settle(record) for _ in range(4)))
    assert sorted(r.already_settled for r in results) == [False, True, True, True]
    assert sum(r.charged for r in results) == Decimal("0.48000")  # 45 s bills 48 s
    assert await gate.balance(account.id) == Decimal("4.52000")
    assert await gate.count(calls) == 1


async def test_debit_limit_extends_the_available_credit(gate: Gate) -> None:
    account = await gate.account("0", debit_limit=Decimal("0.30"))
    res = await _reserve(gate, account.id, "u1")
    assert res.granted_seconds == 30 and res.available == Decimal("0.30000")
    await gate.path.ledger.settle(_record(account, "u1", billsec=25, granted=30))
    assert await gate.balance(account.id) == Decimal("-0.30000")


async def test_a_settle_without_an_open_reservation_still_charges_the_call(gate: Gate) -> None:
    account = await gate.account("1.00")
    result = await gate.path.ledger.settle(_record(account, "lost", billsec=30, granted=96))
    assert (result.charged, result.already_settled) == (Decimal("0.30000"), False)
    assert await gate.balance(account.id) == Decimal("0.70000")


async def test_settle_of_an_unknown_account_fails_and_writes_nothing(gate: Gate) -> None:
    account = await gate.account("1.00")
    ghost = replace(account, id=account.id + 1000)
    with pytest.raises(StoreError):
        await gate.path.ledger.settle(_record(ghost, "ghost", billsec=30, granted=96))
    assert await gate.count(calls) == 0


async def test_settle_completes_even_when_the_caller_is_cancelled(gate: Gate) -> None:
    account = await gate.account("1.00")
    await _reserve(gate, account.id, "u9")
    async with contextlib.AsyncExitStack() as held:
        if gate.url.startswith("sqlite"):
            # another writer of the process is inside a transaction: the settle has to wait,
            # so the cancellation lands while it waits (the lean SQLite settle, which never
            # awaits when it need not, would otherwise be done before the cancel)
            await held.enter_async_context(writer_lock(gate.engine))
        task = asyncio.create_task(gate.path.ledger.settle(_record(account, "u9", 40, 96)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    for _ in range(100):
        if await gate.balance(account.id) != Decimal("1.00"):
            break
        await asyncio.sleep(0.02)
    assert await gate.balance(account.id) == Decimal("0.58000")  # 40 s bills 42 s


# ---------------------------------------------------------------- failover, release, attempts


async def test_regrant_for_failover_excludes_its_own_reservation(gate: Gate) -> None:
    account = await gate.account("1.00")
    now = datetime.now(UTC)
    await _reserve(gate, account.id, "u1", now=now)
    dearer = Rate(prefix="1", rate=Decimal("1.20"), initial_block=30, increment=6)

    def price2(available: Decimal) -> tuple[int, Decimal]:
        granted = max_duration(dearer, available, CAP)
        return granted, cost(dearer, granted)

    later = now + timedelta(seconds=20)
    again = await gate.path.ledger.regrant(
        uniqueid="u1", price=price2, now=later, trunk="t2", rate_id=None
    )
    assert (again.granted_seconds, again.amount, again.available) == (
        48,
        Decimal("0.96000"),
        Decimal("1.00000"),
    )
    row = await gate.reservation("u1")
    assert (row["amount"], row["granted_seconds"], row["trunk"]) == (Decimal("0.96"), 48, "t2")
    assert row["expires_at"] == later + timedelta(seconds=48 + GRACE)

    def unpayable(available: Decimal) -> tuple[int, Decimal]:
        return 30, available + Decimal("0.01")

    with pytest.raises(Refused) as refused:
        await gate.path.ledger.regrant(
            uniqueid="u1", price=unpayable, now=later, trunk="t3", rate_id=None
        )
    assert refused.value.status == "NO_CREDIT"
    assert (await gate.reservation("u1"))["trunk"] == "t2"  # the refused regrant changed nothing
    with pytest.raises(StoreError):
        await gate.path.ledger.regrant(
            uniqueid="nope", price=price2, now=later, trunk="t2", rate_id=None
        )


async def test_release_closes_without_a_charge_and_frees_the_credit(gate: Gate) -> None:
    account = await gate.account("1.00")
    await _reserve(gate, account.id, "r1")
    with pytest.raises(Refused):
        await _reserve(gate, account.id, "r2")
    await gate.path.ledger.release("r1", "never dialled")
    row = await gate.reservation("r1")
    assert (row["status"], row["charged"], row["note"]) == ("released", Decimal(0), "never dialled")
    await gate.path.ledger.release("r1", "again")  # nothing open: nothing changes
    assert (await gate.reservation("r1"))["note"] == "never dialled"
    second = await _reserve(gate, account.id, "r2")
    assert second.available == Decimal("1.00000")
    assert await gate.balance(account.id) == Decimal("1.00000")


async def test_record_attempt_is_idempotent(gate: Gate) -> None:
    record = CallRecord(
        uniqueid="x1",
        status=CallStatus.NO_ACCOUNT,
        started_at=datetime.now(UTC),
        callerid="5550000",
        dialed_number="12125550100",
    )
    await gate.path.ledger.record_attempt(record)
    await gate.path.ledger.record_attempt(replace(record, note="second"))
    async with gate.engine.connect() as conn:
        rows = (await conn.execute(select(calls.c.status, calls.c.note, calls.c.cost))).all()
    assert [tuple(r) for r in rows] == [("NO_ACCOUNT", "", Decimal(0))]


async def test_a_call_paid_by_free_seconds_needs_no_credit(gate: Gate) -> None:
    account = await gate.account("0")

    def free_minute(available: Decimal) -> tuple[int, Decimal]:
        return 60, Decimal(0)  # a package pays the first minute; the credit pays nothing more

    res = await _reserve(gate, account.id, "f1", price=free_minute)
    assert (res.granted_seconds, res.amount, res.available) == (60, Decimal(0), Decimal("0.00000"))
    with pytest.raises(Refused):  # without the package: nothing to pay with
        await _reserve(gate, account.id, "f2")


# ---------------------------------------------------------------- account checks and limits


async def test_status_expiry_and_limits_refuse(gate: Gate) -> None:
    now = datetime.now(UTC)
    inactive = await gate.account("5", status="inactive")
    with pytest.raises(Refused) as refused:
        await _reserve(gate, inactive.id, "a", now=now)
    assert refused.value.status == "INACTIVE"
    expired = await gate.account("5", expiry_mode="at_date", expires_at=now - timedelta(seconds=1))
    with pytest.raises(Refused) as refused:
        await _reserve(gate, expired.id, "b", now=now)
    assert refused.value.status == "EXPIRED"

    limited = await gate.account("500", channel_limit=2, cps_limit=3)
    for n in range(2):
        await _reserve(gate, limited.id, f"c{n}", now=now)
    with pytest.raises(Refused) as refused:
        await _reserve(gate, limited.id, "c2", now=now)
    assert refused.value.status == "CHANNEL_LIMIT"
    assert refused.value.reason == "account channel limit 2 reached (2 in use)"
    async with gate.engine.begin() as conn:
        await conn.execute(update(accounts).values(channel_limit=None))
    await _reserve(gate, limited.id, "c3", now=now)
    with pytest.raises(Refused) as refused:
        await _reserve(gate, limited.id, "c4", now=now)
    assert (refused.value.status, refused.value.reason) == (
        "CPS_LIMIT",
        "account CPS limit 3 reached",
    )
    later = now + timedelta(seconds=2)
    await _reserve(gate, limited.id, "c5", now=later)  # a second on: the CPS window moved


async def test_per_ip_channel_and_cps_limits(gate: Gate) -> None:
    now = datetime.now(UTC)
    one = await gate.account("500")
    other = await gate.account("500")
    channels = Limits(source_address="10.0.0.9", address_channel_limit=1)
    await _reserve(gate, one.id, "i1", now=now, limits=channels)
    with pytest.raises(Refused) as refused:  # the IP's limit spans its accounts
        await _reserve(gate, other.id, "i2", now=now + timedelta(seconds=2), limits=channels)
    assert (refused.value.status, refused.value.reason) == (
        "CHANNEL_LIMIT",
        "IP 10.0.0.9 channel limit 1 reached",
    )
    await _reserve(gate, other.id, "i3", now=now, limits=Limits(source_address="10.0.0.10"))
    cps = Limits(source_address="10.0.0.11", address_cps_limit=2)
    later = now + timedelta(seconds=10)
    await _reserve(gate, one.id, "i4", now=later, limits=cps)
    await _reserve(gate, other.id, "i5", now=later, limits=cps)
    with pytest.raises(Refused) as refused:
        await _reserve(gate, one.id, "i6", now=later, limits=cps)
    assert (refused.value.status, refused.value.reason) == (
        "CPS_LIMIT",
        "IP 10.0.0.11 CPS limit 2 reached",
    )
    row = await gate.reservation("i4")
    assert row["source_address"] == "10.0.0.11"


# ---------------------------------------------------------------- concurrency


async def test_thirty_concurrent_calls_of_one_account_cannot_overdraw(gate: Gate) -> None:
    account = await gate.account("3.00", debit_limit=Decimal("0.50"))
    rng = random.Random(7)
    grants: dict[int, int] = {}
    refused: list[str] = []

    async def one_call(n: int) -> None:
        await asyncio.sleep(rng.random() / 50)
        try:
            res = await _reserve(gate, account.id, f"call-{n}", price=price_short)
        except Refused as exc:
            refused.append(exc.status)
            return
        assert res.amount == cost(RATE, res.granted_seconds) <= res.available
        grants[n] = res.granted_seconds

    await asyncio.gather(*(one_call(n) for n in range(30)))
    # every grant is held at once: 3.50 pays five 60 s grants (0.60 each) and one of 48 s from
    # the 0.50 left (0.48); the 0.02 then left cannot pay a first block
    assert sorted(grants.values()) == [48, 60, 60, 60, 60, 60]
    async with gate.engine.connect() as conn:
        held = await conn.scalar(
            select(func.sum(reservations.c.amount)).where(reservations.c.status == "open")
        )
    assert held == Decimal("3.48")
    assert refused == ["NO_CREDIT"] * 24

    async def settle(n: int, granted: int) -> None:
        billsec = rng.randrange(0, 90)
        await gate.path.ledger.settle(_record(account, f"call-{n}", billsec, granted))

    await asyncio.gather(*(settle(n, granted) for n, granted in grants.items()))
    balance = await gate.balance(account.id)
    async with gate.engine.connect() as conn:
        charged = await conn.scalar(select(func.coalesce(func.sum(calls.c.cost), 0)))
    assert balance >= Decimal("-0.50"), balance
    assert charged == Decimal("3.00") - balance
    assert await gate.count(reservations, reservations.c.status == "open") == 0


async def test_the_same_uniqueid_from_two_asterisk_servers_is_two_calls(gate: Gate) -> None:
    account = await gate.account("10.00")
    for box in ("ast-a", "ast-b"):
        res = await _reserve(gate, account.id, "1763769600.7", price=price_short, asterisk=box)
        assert res.granted_seconds == 60
    with pytest.raises(StoreError):  # one box, one uniqueid: one reservation
        await _reserve(gate, account.id, "1763769600.7", price=price_short, asterisk="ast-a")
    regranted = await gate.path.ledger.regrant(
        uniqueid="1763769600.7",
        price=price_short,
        now=datetime.now(UTC),
        trunk="t2",
        rate_id=None,
        asterisk="ast-b",
    )
    assert regranted.available == Decimal("10.00") - Decimal("0.60")  # only ast-a's is excluded
    record_a = replace(_record(account, "1763769600.7", billsec=30, granted=60), asterisk="ast-a")
    record_b = replace(record_a, asterisk="ast-b", billsec=40, cost=cost(RATE, 40))
    first = await gate.path.ledger.settle(record_a)
    second = await gate.path.ledger.settle(record_b)
    assert (first.charged, second.charged) == (Decimal("0.30000"), Decimal("0.42000"))
    again = await gate.path.ledger.settle(record_b)  # idempotent per (asterisk, uniqueid)
    assert again.already_settled and again.charged == 0
    assert await gate.balance(account.id) == Decimal("10.00") - Decimal("0.72000")
    await gate.path.ledger.release("1763769600.7", "x", asterisk="ast-c")  # no such call
    attempt = CallRecord(
        uniqueid="1763769600.9", status=CallStatus.NO_ACCOUNT, started_at=datetime.now(UTC)
    )
    await gate.path.ledger.record_attempt(replace(attempt, asterisk="ast-a"))
    await gate.path.ledger.record_attempt(replace(attempt, asterisk="ast-b"))
    await gate.path.ledger.record_attempt(replace(attempt, asterisk="ast-a"))
    async with gate.engine.connect() as conn:
        keys = (await conn.execute(select(calls.c.asterisk, calls.c.uniqueid))).all()
    assert sorted(tuple(k) for k in keys) == [
        ("ast-a", "1763769600.7"),
        ("ast-a", "1763769600.9"),
        ("ast-b", "1763769600.7"),
        ("ast-b", "1763769600.9"),
    ]


@pytest.mark.parametrize("other_path", ["core", "lean"])
async def test_two_servers_sharing_postgresql_cannot_overdraw(gate: Gate, other_path: str) -> None:
    """A second callgate (its own engine and pool, core or lean: a rolling upgrade mixes them)
    on the same database: the same uniqueid from two Asterisk names is two calls, a settle
    seen by both is charged once, and their concurrent calls of one account never overdraw."""
    if not gate.url.startswith("postgresql"):
        pytest.skip("several callgate servers share PostgreSQL, not SQLite")
    account = await gate.account("3.00")
    engine_b = create_engine(gate.url)
    path_b = await open_test_call_path(other_path, engine_b, grace_seconds=GRACE, server="b")
    servers = [gate.path, path_b]
    try:
        for n, server in enumerate(servers):
            await server.ledger.reserve(
                account_id=account.id,
                uniqueid="1763769600.1",
                price=price_short,
                now=datetime.now(UTC),
                trunk="t",
                rate_id=None,
                asterisk=f"ast-{n}",
            )
        record = replace(_record(account, "1763769600.1", 30, 60), asterisk="ast-0")
        both = await asyncio.gather(*(server.ledger.settle(record) for server in servers))
        assert sorted(s.already_settled for s in both) == [False, True]
        await path_b.ledger.settle(replace(record, asterisk="ast-1", billsec=6, cost=cost(RATE, 6)))
        # 0.30 for ast-0's call (30 s) and 0.30 for ast-1's (its first block is 30 s)
        assert await gate.balance(account.id) == Decimal("2.40000")

        rng = random.Random(3)
        grants: list[Decimal] = []

        async def one_call(n: int) -> None:
            server = servers[n % 2]
            await asyncio.sleep(rng.random() / 50)
            try:
                res = await server.ledger.reserve(
                    account_id=account.id,
                    uniqueid=f"shared-{n}",
                    price=price_short,
                    now=datetime.now(UTC),
                    trunk="t",
                    rate_id=None,
                    asterisk="ast-x",
                )
            except Refused:
                return
            grants.append(res.amount)

        await asyncio.gather(*(one_call(n) for n in range(30)))
        # nothing settles: every grant is held at once, so their sum is within the credit
        assert sum(grants) <= Decimal("2.40000") and len(grants) == 4
    finally:
        await path_b.close()
        await engine_b.dispose()


@pytest.mark.parametrize("other_path", ["core", "lean"])
async def test_two_servers_settling_one_call_never_deadlock(gate: Gate, other_path: str) -> None:
    """Round after round, two servers (core and lean mixed, as in a rolling upgrade) settle the
    same call at once while a third call of the account is reserved beside them: every settle
    and reserve succeeds (one lock order: the account row first, so no deadlock is possible),
    each call is charged exactly once, and the balance is exact to the digit."""
    if not gate.url.startswith("postgresql"):
        pytest.skip("several callgate servers share PostgreSQL, not SQLite")
    account = await gate.account("100.00")
    engine_b = create_engine(gate.url)
    path_b = await open_test_call_path(other_path, engine_b, grace_seconds=GRACE, server="b")
    servers = [gate.path, path_b]
    charged = Decimal(0)
    try:
        for n in range(40):
            await servers[n % 2].ledger.reserve(
                account_id=account.id,
                uniqueid=f"race-{n}",
                price=price_short,
                now=datetime.now(UTC),
                trunk="t",
                rate_id=None,
            )
            record = _record(account, f"race-{n}", billsec=1 + n % 50, granted=60)
            results = await asyncio.gather(
                servers[0].ledger.settle(record),
                servers[1].ledger.settle(record),
                servers[(n + 1) % 2].ledger.reserve(
                    account_id=account.id,
                    uniqueid=f"side-{n}",
                    price=price_short,
                    now=datetime.now(UTC),
                    trunk="t",
                    rate_id=None,
                ),
            )
            settles = results[:2]
            assert sorted(s.already_settled for s in settles) == [False, True], n
            charged += record.cost
            await servers[n % 2].ledger.release(f"side-{n}", "test: never dialled")
        assert await gate.balance(account.id) == Decimal("100.00") - charged
        async with gate.engine.connect() as conn:
            rows = (
                await conn.execute(select(calls.c.uniqueid).where(calls.c.uniqueid.like("race-%")))
            ).all()
        assert len(rows) == 40
    finally:
        await path_b.close()
        await engine_b.dispose()


async def test_a_deadlock_is_recognised_as_retryable_and_a_duplicate_is_not(gate: Gate) -> None:
    """The settles' retry predicate on real PostgreSQL errors: a deadlock provoked on two
    connections (opposite lock orders) is a rolled-back conflict, through the store error, the
    SQLAlchemy error and the driver's; a unique violation is not."""
    if not gate.url.startswith("postgresql"):
        pytest.skip("SQLite's writers are serial: no deadlock to recognise")
    first, second = await gate.account("1.00"), await gate.account("1.00")
    errors: list[BaseException] = []

    async def cross(a: int, b: int, started: asyncio.Event, other: asyncio.Event) -> None:
        async with gate.engine.connect() as conn:
            try:
                async with mapped_errors("cross"), conn.begin():
                    bump = accounts.c.balance + 1
                    await conn.execute(
                        update(accounts).where(accounts.c.id == a).values(balance=bump)
                    )
                    started.set()
                    await other.wait()
                    await conn.execute(
                        update(accounts).where(accounts.c.id == b).values(balance=bump)
                    )
            except StoreError as exc:
                errors.append(exc)

    one, two = asyncio.Event(), asyncio.Event()
    async with asyncio.timeout(20):
        await asyncio.gather(
            cross(first.id, second.id, one, two), cross(second.id, first.id, two, one)
        )
    assert len(errors) == 1 and rolled_back_by_conflict(errors[0])
    assert "deadlock" in str(errors[0])
    with pytest.raises(StoreError) as duplicate:
        async with mapped_errors("dup"), gate.engine.begin() as conn:
            await conn.execute(
                update(accounts).where(accounts.c.id == second.id).values(number=first.number)
            )
    assert not rolled_back_by_conflict(duplicate.value)


# ---------------------------------------------------------------- the database goes away


async def test_the_database_cut_during_a_call_fails_closed_and_recovers(gate: Gate) -> None:
    """PostgreSQL through a TCP proxy that is cut while a call holds its reservation: the
    settle fails with StoreUnavailableError, in time, and charges nothing; the reservation stays
    open for the reaper; a reserve while it is down fails closed; once it is back, the same
    implementation serves the next call."""
    if not gate.url.startswith("postgresql"):
        pytest.skip("the database cut is a TCP connection cut: PostgreSQL only")
    account = await gate.account("5.00")
    url = make_url(gate.url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    port = await proxy.start()
    through = create_engine(url.set(port=port).render_as_string(hide_password=False))
    path = await open_test_call_path(gate.name, through, grace_seconds=GRACE)
    try:
        await path.ledger.reserve(
            account_id=account.id,
            uniqueid="cut-1",
            price=price_short,
            now=datetime.now(UTC),
            trunk="t",
            rate_id=None,
        )
        proxy.cut()  # the call is in Dial when the database goes away
        async with asyncio.timeout(20):
            with pytest.raises(StoreUnavailableError):
                await path.ledger.settle(_record(account, "cut-1", billsec=30, granted=60))
            with pytest.raises(StoreUnavailableError):
                await path.ledger.reserve(
                    account_id=account.id,
                    uniqueid="cut-2",
                    price=price_short,
                    now=datetime.now(UTC),
                    trunk="t",
                    rate_id=None,
                )
            with pytest.raises(StoreUnavailableError):
                await path.accounts.find_by_id(account.id)
        assert (await gate.reservation("cut-1"))["status"] == "open"
        assert await gate.count(reservations, reservations.c.uniqueid == "cut-2") == 0
        assert await gate.count(calls) == 0
        assert await gate.balance(account.id) == Decimal("5.00000")

        proxy.restore()
        async with asyncio.timeout(20):
            found = await path.accounts.find_by_id(account.id)
            assert found is not None
            grant = await path.ledger.reserve(
                account_id=account.id,
                uniqueid="cut-3",
                price=price_short,
                now=datetime.now(UTC),
                trunk="t",
                rate_id=None,
            )
            # cut-1 still holds its 0.60 (60 s): the next call sees what is left
            assert grant.available == Decimal("5.00") - (await gate.reservation("cut-1"))["amount"]
            settled = await path.ledger.settle(_record(account, "cut-3", billsec=6, granted=60))
        assert settled.charged == Decimal("0.30000") and not settled.already_settled
    finally:
        await path.close()
        await through.dispose()
        await proxy.close()
