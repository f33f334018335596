"""The lean SQLite call path (``store/lean_sqlite.py``): the stdlib driver on the event loop.

The ledger's promises on the new path (no overdraft under 30 concurrent calls, idempotent settle,
failover regrant, channel and CPS limits, release), the one-writer discipline beside the serve
process's SQLAlchemy writers and another process's writes, and the same charges, to the digit,
as the core ledger for the same calls (on SQLite and on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from call_paths import check_decoded, every_account_field, used_at
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.config import SettingsError, load_settings
from callgate.rating import Rate, buy_cost, cost, max_duration
from callgate.schema.tables import (
    CallStatus,
    ReservationStatus,
    accounts,
    asterisk_cdrs,
    calls,
    live_channels,
    reservations,
)
from callgate.store import accounts as acc
from callgate.store import lean_sqlite, ledger, plans
from callgate.store.callstore import SqlAccounts, SqlLedger
from callgate.store.cdrs import AsteriskCdr, store_cdrs
from callgate.store.channels import LiveChannel, write_channels
from callgate.store.db import create_engine, write_transaction, writer_lock
from callgate.store.errors import NotFoundError, StoreError, StoreUnavailableError
from callgate.store.lean_sqlite import LeanSqlite, sqlite_file
from callgate.store.ports import AccountLookup, Ledger, Refused

RATE = Rate(prefix="1", rate=Decimal("0.60"), initial_block=30, increment=6)
CAP = 3600
GRACE = 60
T0 = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)


def pricer(rate: Rate, cap: int = CAP) -> ledger.Pricer:
    def price(available: Decimal) -> tuple[int, Decimal]:
        granted = max_duration(rate, available, cap)
        return granted, cost(rate, granted)

    return price


@dataclass
class Lean:
    engine: AsyncEngine
    lean: LeanSqlite
    path: Path


@pytest.fixture
async def lean_db(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Lean]:
    path = tmp_path / "lean.db"  # (db_url's SQLite file is callgate.db)
    shutil.copyfile(sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    lean = LeanSqlite.for_engine(engine, grace_seconds=GRACE, server="cg1")
    try:
        yield Lean(engine, lean, path)
    finally:
        lean.close()
        await engine.dispose()


async def _account(engine: AsyncEngine, balance: str, **extra: Any) -> acc.Account:
    async with write_transaction(engine) as conn:
        plan = await plans.create_call_plan(conn, name=f"p{random.randrange(10**9)}")
        return await acc.create_account(
            conn, call_plan_id=plan.id, balance=Decimal(balance), **extra
        )


async def _balance(engine: AsyncEngine, account_id: int) -> Decimal:
    async with engine.connect() as conn:
        value = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account_id))
    assert isinstance(value, Decimal)
    return value


def _record(
    account_id: int, uniqueid: str, billsec: int, granted: int, rate: Rate = RATE
) -> ledger.CallRecord:
    charged = min(billsec, granted)
    return ledger.CallRecord(
        uniqueid=uniqueid,
        status=CallStatus.OK,
        started_at=T0,
        account_id=account_id,
        billsec=charged,
        granted_seconds=granted,
        answered_at=T0 + timedelta(seconds=3) if billsec else None,
        ended_at=T0 + timedelta(seconds=3 + billsec),
        dial_status="ANSWER" if billsec else "NOANSWER",
        sell_rate=rate.rate,
        buy_rate=rate.buy_rate,
        cost=cost(rate, charged),
        buy_cost=buy_cost(rate, charged),
    )


async def _reserve(
    port: Ledger, account_id: int, uniqueid: str, rate: Rate = RATE, cap: int = CAP, **extra: Any
) -> Any:
    values: dict[str, Any] = {"now": T0, "trunk": "carrier", "rate_id": 7}
    values.update(extra)
    return await port.reserve(
        account_id=account_id, uniqueid=uniqueid, price=pricer(rate, cap), **values
    )


# ---------------------------------------------------------------- the ledger's promises


async def test_reserve_then_settle_charges_exactly_once(lean_db: Lean) -> None:
    account = await _account(lean_db.engine, "1.00")
    first = await _reserve(lean_db.lean, account.id, "u1")
    # 1.00 at 0.60/min, 30/6: 96 s cost 0.96; 102 s would cost 1.02
    assert (first.granted_seconds, first.amount) == (96, Decimal("0.96"))
    assert first.available == Decimal("1.00")
    with pytest.raises(Refused) as refused:  # 0.04 left cannot pay the first 30 s block
        await _reserve(lean_db.lean, account.id, "u2")
    assert refused.value.status == "NO_CREDIT"
    settled = await lean_db.lean.settle(_record(account.id, "u1", billsec=61, granted=96))
    assert (settled.charged, settled.balance) == (Decimal("0.66000"), Decimal("0.34000"))
    again = await lean_db.lean.settle(_record(account.id, "u1", billsec=61, granted=96))
    assert again.already_settled and again.charged == 0 and again.balance == Decimal("0.34")
    assert await _balance(lean_db.engine, account.id) == Decimal("0.34000")
    async with lean_db.engine.connect() as conn:
        row = (await conn.execute(select(reservations))).one()
        assert row.status == ReservationStatus.SETTLED.value and row.charged == Decimal("0.66")
        assert row.expires_at == T0 + timedelta(seconds=96 + GRACE)
        assert row.created_at == T0 and row.server == "cg1" and row.trunk == "carrier"
        assert await ledger.open_reservations(conn, account.id) == 0
        call = (await conn.execute(select(calls))).one()
        assert (call.cost, call.billsec, call.status) == (Decimal("0.66"), 61, "OK")
        assert call.started_at == T0 and call.ended_at == T0 + timedelta(seconds=64)
        stored = (await conn.execute(select(accounts).where(accounts.c.id == account.id))).one()
        assert stored.call_count == 1
        assert stored.first_use_at == T0 and stored.last_use_at == T0


async def test_thirty_concurrent_calls_of_one_account_never_overdraw(lean_db: Lean) -> None:
    account = await _account(lean_db.engine, "3.00")
    rng = random.Random(11)
    outcomes: list[str] = []

    async def one_call(n: int, billsec: int) -> None:
        await asyncio.sleep(rng.random() / 50)
        try:
            grant = await lean_db.lean.reserve(
                account_id=account.id,
                uniqueid=f"call-{n}",
                price=pricer(RATE, 60),  # several calls of the account fit at once
                now=datetime.now(UTC),
                trunk="carrier",
                rate_id=None,
            )
        except Refused as exc:
            assert exc.status == "NO_CREDIT"
            outcomes.append("refused")
            return
        await asyncio.sleep(rng.random() / 50)
        await lean_db.lean.settle(_record(account.id, f"call-{n}", billsec, grant.granted_seconds))
        outcomes.append("settled")

    await asyncio.gather(*(one_call(n, rng.randrange(0, 90)) for n in range(30)))
    balance = await _balance(lean_db.engine, account.id)
    async with lean_db.engine.connect() as conn:
        charged = await conn.scalar(select(func.coalesce(func.sum(calls.c.cost), 0)))
        still_open = await ledger.open_reservations(conn, account.id)
    assert balance >= 0, balance
    assert charged == Decimal("3.00") - balance
    assert still_open == 0
    assert len(outcomes) == 30 and outcomes.count("settled") >= 5
    assert outcomes.count("refused") >= 1  # the credit ran out: later calls were refused


async def test_debit_limit_extends_the_available_credit(lean_db: Lean) -> None:
    account = await _account(lean_db.engine, "0", debit_limit=Decimal("0.30"))
    grant = await _reserve(lean_db.lean, account.id, "u1")
    assert grant.granted_seconds == 30 and grant.available == Decimal("0.30000")
    await lean_db.lean.settle(_record(account.id, "u1", billsec=25, granted=30))
    assert await _balance(lean_db.engine, account.id) == Decimal("-0.30000")


async def test_failover_regrant_excludes_its_own_reservation(lean_db: Lean) -> None:
    account = await _account(lean_db.engine, "1.00")
    await _reserve(lean_db.lean, account.id, "u1")
    dearer = Rate(prefix="1", rate=Decimal("1.20"), initial_block=30, increment=6)
    again = await lean_db.lean.regrant(
        uniqueid="u1", price=pricer(dearer), now=T0, trunk="backup", rate_id=8
    )
    assert (again.granted_seconds, again.amount) == (48, Decimal("0.96"))
    assert again.available == Decimal("1.00")
    async with lean_db.engine.connect() as conn:
        row = (await conn.execute(select(reservations))).one()
    assert (row.amount, row.granted_seconds, row.trunk, row.rate_id) == (
        Decimal("0.96"),
        48,
        "backup",
        8,
    )
    assert row.expires_at == T0 + timedelta(seconds=48 + GRACE)
    unpayable = Rate(prefix="1", rate=Decimal("60"), initial_block=60, increment=60)
    with pytest.raises(Refused) as refused:
        await lean_db.lean.regrant(
            uniqueid="u1", price=pricer(unpayable), now=T0, trunk="x", rate_id=None
        )
    assert refused.value.status == "NO_CREDIT"
    await lean_db.lean.settle(_record(account.id, "u1", billsec=40, granted=48, rate=dearer))
    with pytest.raises(NotFoundError, match="no open reservation for u1"):
        await lean_db.lean.regrant(
            uniqueid="u1", price=pricer(dearer), now=T0, trunk="x", rate_id=None
        )
    assert await _balance(lean_db.engine, account.id) == Decimal("1.00") - cost(dearer, 40)


async def test_status_expiry_channel_and_cps_limits_refuse(lean_db: Lean) -> None:
    engine, lean = lean_db.engine, lean_db.lean
    inactive = await _account(engine, "5", status="inactive")
    with pytest.raises(Refused) as refused:
        await _reserve(lean, inactive.id, "a")
    assert refused.value.status == "INACTIVE"
    expired = await _account(engine, "5", expiry_mode="at_date", expires_at=T0)
    with pytest.raises(Refused) as refused:
        await _reserve(lean, expired.id, "b")
    assert refused.value.status == "EXPIRED"
    limited = await _account(engine, "500", channel_limit=2, cps_limit=3)
    for n in range(2):
        await _reserve(lean, limited.id, f"c{n}")
    with pytest.raises(Refused) as refused:
        await _reserve(lean, limited.id, "c2")
    assert refused.value.status == "CHANNEL_LIMIT" and "2 in use" in refused.value.reason
    async with write_transaction(engine) as conn:
        await conn.execute(update(accounts).values(channel_limit=None))
    await _reserve(lean, limited.id, "c3")
    with pytest.raises(Refused) as refused:  # three created within the last second
        await _reserve(lean, limited.id, "c4", now=T0 + timedelta(milliseconds=900))
    assert refused.value.status == "CPS_LIMIT"
    later = T0 + timedelta(seconds=2)
    await _reserve(lean, limited.id, "c5", now=later)
    ip_limits = ledger.Limits(
        source_address="10.0.0.9", address_channel_limit=1, address_cps_limit=5
    )
    await _reserve(lean, limited.id, "c6", now=later + timedelta(seconds=2), limits=ip_limits)
    with pytest.raises(Refused) as refused:
        await _reserve(lean, limited.id, "c7", now=later + timedelta(seconds=4), limits=ip_limits)
    assert refused.value.status == "CHANNEL_LIMIT" and "10.0.0.9" in refused.value.reason
    ip_cps = ledger.Limits(source_address="10.0.0.10", address_cps_limit=1)
    await _reserve(lean, limited.id, "c8", now=later + timedelta(seconds=6), limits=ip_cps)
    with pytest.raises(Refused) as refused:
        await _reserve(lean, limited.id, "c9", now=later + timedelta(seconds=6), limits=ip_cps)
    assert refused.value.status == "CPS_LIMIT" and "10.0.0.10" in refused.value.reason
    async with engine.connect() as conn:  # nothing refused left a reservation behind
        keys = (await conn.execute(select(reservations.c.uniqueid))).scalars().all()
    assert sorted(keys) == ["c0", "c1", "c3", "c5", "c6", "c8"]


async def test_release_closes_without_a_charge_and_frees_the_credit(lean_db: Lean) -> None:
    account = await _account(lean_db.engine, "1.00")
    await _reserve(lean_db.lean, account.id, "u1")
    with pytest.raises(Refused):
        await _reserve(lean_db.lean, account.id, "u2")
    await lean_db.lean.release("u1", "before Dial: hung up", asterisk="")
    await lean_db.lean.release("u1", "twice is harmless")
    grant = await _reserve(lean_db.lean, account.id, "u2")
    assert grant.granted_seconds == 96
    async with lean_db.engine.connect() as conn:
        row = (
            await conn.execute(select(reservations).where(reservations.c.uniqueid == "u1"))
        ).one()
    assert (row.status, row.charged, row.note) == ("released", Decimal(0), "before Dial: hung up")
    assert await _balance(lean_db.engine, account.id) == Decimal("1.00")


async def test_record_attempt_is_idempotent_per_asterisk_and_uniqueid(lean_db: Lean) -> None:
    record = ledger.CallRecord(
        uniqueid="x1", status=CallStatus.NO_ACCOUNT, started_at=T0, note="no account"
    )
    await lean_db.lean.record_attempt(record)
    await lean_db.lean.record_attempt(record)
    await lean_db.lean.record_attempt(replace(record, asterisk="ast-b"))
    async with lean_db.engine.connect() as conn:
        rows = (await conn.execute(select(calls).order_by(calls.c.id))).all()
    assert [(r.asterisk, r.status, r.account_id, r.cost) for r in rows] == [
        ("", "NO_ACCOUNT", None, Decimal(0)),
        ("ast-b", "NO_ACCOUNT", None, Decimal(0)),
    ]
    bad = replace(record, uniqueid="x2", cost=Decimal("-1"))  # the schema's CHECK refuses it
    with pytest.raises(StoreError, match="record attempt: refused by the database"):
        await lean_db.lean.record_attempt(bad)


async def test_settle_completes_even_when_the_caller_is_cancelled(lean_db: Lean) -> None:
    account = await _account(lean_db.engine, "1.00")
    await _reserve(lean_db.lean, account.id, "u9")
    async with writer_lock(lean_db.engine):  # another writer is inside: the settle must wait
        task = asyncio.create_task(lean_db.lean.settle(_record(account.id, "u9", 40, 96)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    for _ in range(100):
        if await _balance(lean_db.engine, account.id) != Decimal("1.00"):
            break
        await asyncio.sleep(0.01)
    assert await _balance(lean_db.engine, account.id) == Decimal("0.58000")  # 40 s bills 42 s


async def test_lookups_answer_as_the_core_lookup(lean_db: Lean) -> None:
    engine = lean_db.engine
    alice = await _account(engine, "2.5", alias="Alice", language="fr", cps_limit=4)
    bob = await _account(engine, "0", alias="bob", debit_limit=Decimal("3.25"))
    await _account(engine, "1", alias="carol", expiry_mode="at_date", expires_at=T0)
    async with write_transaction(engine) as conn:
        await acc.add_callerid(conn, bob.id, "15550001")
    core = SqlAccounts(engine)
    ports: tuple[AccountLookup, AccountLookup] = (lean_db.lean, core)
    for accountcode, argument, callerid in [
        (alice.number, "", ""),
        ("", "ALICE", ""),  # an alias whatever its case
        ("", bob.number, ""),
        ("0000", "nobody", "15550001"),  # caller ID last
        ("", "carol", ""),
        ("", "", "nobody"),
    ]:
        lean_found, core_found = [
            await p.find_for_call(accountcode=accountcode, argument=argument, callerid=callerid)
            for p in ports
        ]
        assert lean_found == core_found
    found = await lean_db.lean.find_for_call(accountcode="", argument="", callerid="15550001")
    assert found is not None and (found.id, found.debit_limit) == (bob.id, Decimal("3.25"))
    carol = await lean_db.lean.find_for_call(accountcode="", argument="carol", callerid="")
    assert carol is not None and carol.expired
    assert await lean_db.lean.find_by_pin(alice.number) == await core.find_by_pin(alice.number)
    assert await lean_db.lean.find_by_id(alice.id) == await core.find_by_id(alice.id)
    assert await lean_db.lean.find_by_id(999_999) is None
    assert await lean_db.lean.find_by_pin("") is None


async def test_an_account_row_decodes_as_the_core_reads_it_field_by_field(lean_db: Lean) -> None:
    engine = lean_db.engine
    every = await _account(engine, "7.125", **every_account_field(T0))
    async with write_transaction(engine) as conn:
        await conn.execute(update(accounts).where(accounts.c.id == every.id).values(used_at(T0)))
    async with engine.connect() as conn:
        core = await acc.fetch_account(conn, every.id)
    row = lean_db.lean._conn.execute(lean_sqlite._BY_ID, (every.id,)).fetchone()
    check_decoded(lean_sqlite._account(row), core, T0)


# ---------------------------------------------------------------- one writer


async def test_ami_listener_writes_beside_settles_never_meet_a_locked_database(
    lean_db: Lean,
) -> None:
    """The AMI listener's writes (live channels and CDRs through SQLAlchemy, under the writer
    lock) run while 30 calls reserve and settle on the lean path: nobody sees "database is
    locked" and every row is stored."""
    engine, lean = lean_db.engine, lean_db.lean
    account = await _account(engine, "100")
    stop = asyncio.Event()
    written = 0

    async def listener() -> None:
        nonlocal written
        while not stop.is_set():
            n = written
            now = datetime.now(UTC)
            channel = LiveChannel(
                uniqueid=f"ch{n}",
                channel=f"PJSIP/a-{n}",
                started_at=now,
                updated_at=now,
                server="ast",
                state="Up",
            )
            cdr = AsteriskCdr(fingerprint=f"fp{n}", uniqueid=f"ch{n}", asterisk="ast")
            async with write_transaction(engine) as conn:
                await write_channels(conn, [channel])
                await store_cdrs(conn, [cdr])
            written += 1
            await asyncio.sleep(0)

    async def one_call(n: int) -> None:
        await asyncio.sleep(random.random() / 100)
        grant = await _reserve(lean, account.id, f"call-{n}", cap=60, now=datetime.now(UTC))
        await asyncio.sleep(random.random() / 100)
        await lean.settle(_record(account.id, f"call-{n}", 20, grant.granted_seconds))

    writer = asyncio.create_task(listener())
    await asyncio.gather(*(one_call(n) for n in range(30)))
    stop.set()
    await writer
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(calls)) == 30
        assert await conn.scalar(select(func.count()).select_from(asterisk_cdrs)) == written
        assert await conn.scalar(select(func.count()).select_from(live_channels)) == written
    assert written > 0
    assert await _balance(engine, account.id) == Decimal(100) - 30 * cost(RATE, 20)


HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE accounts SET public_notes = 'operator' WHERE id = 1")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


async def _held_by_another_process(path: Path, seconds: float) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(path), str(seconds), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"held\n"
    return proc


async def _max_loop_gap(work: Awaitable[Any]) -> tuple[Any, float]:
    """Run ``work`` while a ticker measures the longest stall of the event loop (seconds)."""
    loop = asyncio.get_running_loop()
    gap = 0.0
    done = False

    last = loop.time()

    async def ticker() -> None:
        nonlocal gap, last
        while not done:
            await asyncio.sleep(0.002)
            now = loop.time()
            gap, last = max(gap, now - last), now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)  # the ticker runs first: a work that never yields is seen too
    try:
        result = await work
    finally:
        gap = max(gap, loop.time() - last)
        done = True
        await tick
    return result, gap


async def test_another_process_holding_the_database_is_waited_for_without_blocking(
    lean_db: Lean,
) -> None:
    """An operator's command holds SQLite's write lock for 0.3 s: the lean path retries with
    asynchronous sleeps, so the event loop keeps running, and the calls go through after it."""
    account = await _account(lean_db.engine, "10")
    lean = lean_db.lean
    for n in range(5):
        await _reserve(lean, account.id, f"u{n}", cap=60)
    proc = await _held_by_another_process(lean_db.path, 0.3)

    async def settles() -> list[Any]:
        return [await lean.settle(_record(account.id, f"u{n}", 10, 60)) for n in range(5)]

    started = asyncio.get_running_loop().time()
    settled, gap = await _max_loop_gap(settles())
    waited = asyncio.get_running_loop().time() - started
    assert await proc.wait() == 0
    assert waited >= 0.2  # they did wait for the operator
    assert gap < 0.1, f"the event loop stalled {gap:.3f} s"
    assert [s.charged for s in settled] == [cost(RATE, 10)] * 5
    assert await _balance(lean_db.engine, account.id) == Decimal(10) - 5 * cost(RATE, 10)


async def test_a_database_held_past_the_busy_timeout_fails_closed(lean_db: Lean) -> None:
    account = await _account(lean_db.engine, "10")
    lean = LeanSqlite(
        str(lean_db.path), writer=writer_lock(lean_db.engine), grace_seconds=0, busy_timeout_ms=100
    )
    try:
        proc = await _held_by_another_process(lean_db.path, 1.0)
        with pytest.raises(StoreUnavailableError, match="reserve: database unavailable"):
            await _reserve(lean, account.id, "u1")
        found = await lean.find_by_id(account.id)  # reads go on: WAL readers never wait
        assert found is not None and found.balance == Decimal(10)
        assert await proc.wait() == 0
        await _reserve(lean, account.id, "u1")  # and once it is free, calls go on
    finally:
        lean.close()


# ---------------------------------------------------------------- the same charges as core


@dataclass(frozen=True)
class Step:
    alias: str
    uniqueid: str
    rate: Rate
    billsec: int = 0  # talk time; -1: released before Dial
    failover: Rate | None = None
    asterisk: str = ""


RATES = {
    "60/6": Rate(prefix="1", rate=Decimal("0.10"), initial_block=60, increment=6),
    "30/6": Rate(
        prefix="1",
        rate=Decimal("0.25"),
        initial_block=30,
        increment=6,
        buy_rate=Decimal("0.0133"),
        buy_initial_block=1,
        buy_increment=1,
    ),
    "fees": Rate(
        prefix="1",
        rate=Decimal("1.99"),
        initial_block=60,
        increment=60,
        connect_fee=Decimal("0.05"),
        minimal_cost=Decimal("1.00"),
    ),
    "odd": Rate(
        prefix="1",
        rate=Decimal("0.0133"),
        initial_block=1,
        increment=1,
        disconnect_fee=Decimal("0.00007"),
        disconnect_after=20,
        buy_rate=Decimal("0.00999"),
    ),
}
SCENARIO = [
    Step("ann", "c1", RATES["60/6"], billsec=10),
    Step("ann", "c2", RATES["60/6"], billsec=61),
    Step("ann", "c3", RATES["30/6"], billsec=89),
    Step("ann", "c4", RATES["fees"], billsec=1),
    Step("ann", "c5", RATES["odd"], billsec=7),
    Step("ann", "c6", RATES["odd"], billsec=23, asterisk="ast-b"),
    Step("ann", "c7", RATES["30/6"], billsec=0),  # not answered
    Step("ann", "c8", RATES["60/6"], billsec=-1),  # released before Dial
    Step("ann", "c9", RATES["60/6"], billsec=45, failover=RATES["fees"]),
    Step("ben", "d1", RATES["fees"], billsec=130),  # postpaid: the debit limit pays
    Step("ben", "d2", RATES["fees"], billsec=30),  # refused: no credit left
    Step("ben", "d3", RATES["odd"], billsec=4000),  # billed at most the grant
]


async def _run_scenario(
    engine: AsyncEngine, lookup: AccountLookup, port: Ledger
) -> list[tuple[Any, ...]]:
    """The scenario through the ports; every answer they gave, in order."""
    async with write_transaction(engine) as conn:
        plan = await plans.create_call_plan(conn, name="same")
        for alias, number, balance, debit in [
            ("ann", "5000000001", "20", "0"),
            ("ben", "5000000002", "0.50", "3"),
        ]:
            await acc.create_account(
                conn,
                call_plan_id=plan.id,
                number=number,
                alias=alias,
                balance=Decimal(balance),
                debit_limit=Decimal(debit),
            )
    answers: list[tuple[Any, ...]] = []
    for n, step in enumerate(SCENARIO):
        found = await lookup.find_for_call(accountcode="", argument=step.alias, callerid="")
        assert found is not None
        answers.append(("lookup", found.number, found.balance, found.debit_limit))
        now = T0 + timedelta(seconds=n * 7, microseconds=n * 1111)
        try:
            grant = await port.reserve(
                account_id=found.id,
                uniqueid=step.uniqueid,
                price=pricer(step.rate, 600),
                now=now,
                trunk="carrier",
                rate_id=n,
                asterisk=step.asterisk,
            )
        except Refused as exc:
            answers.append(("refused", exc.status, exc.reason))
            record = ledger.CallRecord(
                uniqueid=step.uniqueid,
                status=CallStatus(exc.status),
                started_at=now,
                account_id=found.id,
                note=exc.reason,
                asterisk=step.asterisk,
            )
            await port.record_attempt(record)
            continue
        answers.append(("grant", grant.granted_seconds, grant.amount, grant.available))
        rate, granted = step.rate, grant.granted_seconds
        if step.failover is not None:
            rate = step.failover
            grant = await port.regrant(
                uniqueid=step.uniqueid,
                price=pricer(rate, 600),
                now=now,
                trunk="backup",
                rate_id=100 + n,
                asterisk=step.asterisk,
            )
            granted = grant.granted_seconds
            answers.append(("regrant", granted, grant.amount, grant.available))
        if step.billsec < 0:
            await port.release(step.uniqueid, "before Dial", asterisk=step.asterisk)
            continue
        record = replace(
            _record(found.id, step.uniqueid, step.billsec, granted, rate),
            started_at=now,
            rate_id=n,
            asterisk=step.asterisk,
        )
        settled = await port.settle(record)
        answers.append(("settled", settled.charged, settled.balance, settled.already_settled))
        again = await port.settle(record)
        answers.append(("again", again.charged, again.balance, again.already_settled))
    return answers


async def _rows(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """What the scenario left in the ledger's tables (ids and server defaults left out)."""
    async with engine.connect() as conn:
        account_rows = (
            await conn.execute(
                select(
                    accounts.c.alias,
                    accounts.c.balance,
                    accounts.c.call_count,
                    accounts.c.first_use_at,
                    accounts.c.last_use_at,
                ).order_by(accounts.c.alias)
            )
        ).all()
        skip = {"id", "created_at", "account_id"}
        call_rows = (
            await conn.execute(
                select(*[c for c in calls.c if c.name not in skip]).order_by(calls.c.uniqueid)
            )
        ).all()
        skip = {"id", "account_id"}
        reservation_rows = (
            await conn.execute(
                select(*[c for c in reservations.c if c.name not in skip]).order_by(
                    reservations.c.uniqueid
                )
            )
        ).all()
    return {
        "accounts": [tuple(r) for r in account_rows],
        "calls": [tuple(r) for r in call_rows],
        "reservations": [tuple(r) for r in reservation_rows],
    }


async def test_the_lean_ledger_charges_what_the_core_ledger_charges(
    lean_db: Lean, db_url: str
) -> None:
    """The same calls through the lean path (SQLite) and the core ledger (SQLite and
    PostgreSQL): the same grants, charges, balances and stored rows, to the digit."""
    lean_answers = await _run_scenario(lean_db.engine, lean_db.lean, lean_db.lean)
    core_engine = create_engine(db_url)
    try:
        core = SqlLedger(core_engine, grace_seconds=GRACE, server="cg1")
        core_answers = await _run_scenario(core_engine, SqlAccounts(core_engine), core)
        core_rows = await _rows(core_engine)
    finally:
        await core_engine.dispose()
    assert lean_answers == core_answers
    lean_rows = await _rows(lean_db.engine)
    assert lean_rows == core_rows
    assert any(a[0] == "refused" for a in lean_answers)  # the scenario covers a refusal
    balances = dict((r[0], r[1]) for r in lean_rows["accounts"])
    # ben: 3.50 available pays d1's first minute (2.04), d2 no more, d3 its 600 s cap
    assert balances["ben"] == Decimal("0.50") - cost(RATES["fees"], 60) - cost(RATES["odd"], 600)
    # money is stored as integers of 10^-5 on SQLite, never as a float
    with sqlite3.connect(lean_db.path) as raw:
        kinds = raw.execute(
            "SELECT DISTINCT typeof(cost) || typeof(buy_cost) FROM calls"
            " UNION SELECT DISTINCT typeof(balance) FROM accounts"
            " UNION SELECT DISTINCT typeof(amount) FROM reservations"
        ).fetchall()
    assert {k for (k,) in kinds} == {"integerinteger", "integer"}


# ---------------------------------------------------------------- wiring


def test_call_path_setting_is_lean_by_default_and_checked() -> None:
    assert load_settings(environ={}).database.call_path == "lean"
    assert load_settings(environ={"CALLGATE_DATABASE_CALL_PATH": "core"}).database.call_path == (
        "core"
    )
    with pytest.raises(SettingsError, match="database.call_path: must be one of lean, core"):
        load_settings(environ={"CALLGATE_DATABASE_CALL_PATH": "fast"})


async def test_serve_runs_the_lean_path_on_sqlite_unless_told_core(lean_db: Lean) -> None:
    from callgate.cli.runtime import open_call_path

    settings = load_settings(environ={})
    path = await open_call_path(settings, lean_db.engine, grace_seconds=5, server="s")
    try:
        assert isinstance(path.accounts, LeanSqlite) and path.ledger is path.accounts
    finally:
        await path.close()
    core = load_settings(environ={"CALLGATE_DATABASE_CALL_PATH": "core"})
    path = await open_call_path(core, lean_db.engine, grace_seconds=5, server="s")
    assert isinstance(path.accounts, SqlAccounts) and isinstance(path.ledger, SqlLedger)
    memory = create_engine("sqlite+aiosqlite://")
    try:
        assert sqlite_file(memory) is None
        path = await open_call_path(settings, memory, grace_seconds=5, server="s")
        assert isinstance(path.ledger, SqlLedger)  # no file to share: the core path
    finally:
        await memory.dispose()
