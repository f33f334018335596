"""Reconciliation on both databases: a FastAGI session that died between reserve and settle is
settled afterwards from the Asterisk CDR that AMI delivered; without a CDR it waits, unresolved,
for an operator (``callgate calls reconcile``)."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate import metrics
from callgate.ami.client import AmiClient
from callgate.ami.fakeserver import FakeAmiServer, load_session, recorded_messages
from callgate.ami.listener import AmiListener
from callgate.ami.reaper import reap_once, refresh_live_gauges
from callgate.cli.main import cli
from callgate.rating import Rate, cost, max_duration
from callgate.schema.tables import accounts, calls, rates, reservations
from callgate.store import accounts as account_store
from callgate.store import ledger, plans, reconcile
from callgate.store.db import create_engine
from callgate.store.errors import InvalidDataError

SESSION = Path(__file__).parents[1] / "data" / "transcripts" / "ami-session.raw"
RAW_CDRS = [m for m in recorded_messages(load_session(SESSION)) if m.startswith(b"Event: Cdr\r\n")]
USER, SECRET = "callgate", "reaper-secret"
RATE = Rate(prefix="999", rate=Decimal("0.60"), initial_block=30, increment=6, destination="Test")
T0 = datetime(2026, 11, 21, 21, 46, 10, tzinfo=UTC)
GRACE = 60


def cdr_of(uniqueid: str) -> bytes:
    return next(r for r in RAW_CDRS if f"UniqueID: {uniqueid}\r\n".encode() in r)


async def setup_account(engine: AsyncEngine, balance: str = "1.00") -> tuple[int, int]:
    """An account and one rate in the database: (account id, rate id)."""
    async with engine.begin() as conn:
        await plans.create_rate_table(conn, name="std")
        await plans.add_rates(
            conn,
            "std",
            [
                {
                    "prefix": RATE.prefix,
                    "destination": RATE.destination,
                    "rate": RATE.rate,
                    "initial_block": RATE.initial_block,
                    "increment": RATE.increment,
                }
            ],
        )
        rate_id = await conn.scalar(select(rates.c.id))
        plan = await plans.create_call_plan(conn, name="retail")
        account = await account_store.create_account(
            conn, call_plan_id=plan.id, number="7000000001", balance=Decimal(balance)
        )
    assert rate_id is not None
    return account.id, int(rate_id)


def pricer(cap: int) -> ledger.Pricer:
    def price(available: Decimal) -> tuple[int, Decimal]:
        granted = max_duration(RATE, available, cap)
        return granted, cost(RATE, granted)

    return price


async def reserve(
    engine: AsyncEngine, account_id: int, rate_id: int, uniqueid: str, cap: int = 3600
) -> int:
    res = await ledger.reserve(
        engine,
        account_id=account_id,
        uniqueid=uniqueid,
        price=pricer(cap),
        now=T0,
        grace_seconds=GRACE,
        trunk="carrier-a",
        rate_id=rate_id,
        server="cg-1",
    )
    return res.granted_seconds


async def row_of(engine: AsyncEngine, table: Any, uniqueid: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(select(table).where(table.c.uniqueid == uniqueid))).one()
    return dict(row._mapping)


async def balance_of(engine: AsyncEngine, account_id: int) -> Decimal:
    async with engine.connect() as conn:
        value = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account_id))
    assert isinstance(value, Decimal)
    return value


async def deliver_cdrs(engine: AsyncEngine, raws: list[bytes], *, asterisk: str = "") -> None:
    """Asterisk sends these Cdr events; the real listener stores them over a real socket."""
    async with FakeAmiServer(username=USER, secret=SECRET) as server:
        listener = AmiListener(engine, server="pbx", asterisk=asterisk)
        client = AmiClient(
            "127.0.0.1",
            server.port,
            USER,
            SECRET,
            name=f"rc-{uuid.uuid4().hex[:6]}",
            backoff_initial=0.05,
            backoff_max=0.2,
            rng=random.Random(1),
            on_login=listener.on_login,
        )
        listener.attach(client)
        task = asyncio.create_task(listener.run())
        try:
            await client.connect()
            stream = b"".join(raws)
            await server.push(stream, cut_at=range(5, len(stream), 101))
            async with asyncio.timeout(5):
                while listener.stats.cdrs_stored < len(raws):
                    await listener.wait_idle()
                    await asyncio.sleep(0.01)
        finally:
            await client.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_crash_between_reserve_and_settle_is_settled_from_the_cdr(
    engine: AsyncEngine,
) -> None:
    account_id, rate_id = await setup_account(engine)
    granted = await reserve(engine, account_id, rate_id, "t1174-full-2")
    assert granted == 96  # 1.00 at 0.60/min in 30/6 blocks
    # ... the callgate process dies here: no settle. Asterisk finishes the call, AMI reports it.
    await deliver_cdrs(engine, [cdr_of("t1174-full"), cdr_of("t1174-full-2")])
    paris = ZoneInfo("Europe/Paris")
    before_expiry = T0 + timedelta(seconds=granted + GRACE - 1)
    assert await reap_once(engine, zone=paris, now=before_expiry) == []  # not expired yet
    settled_before = metrics.REGISTRY.get_sample_value(
        "callgate_reaper_reservations_total", {"result": "settled"}
    )
    outcomes = await reap_once(engine, zone=paris, now=T0 + timedelta(seconds=granted + GRACE + 1))
    assert [(o.uniqueid, o.result.value, o.billsec) for o in outcomes] == [
        ("t1174-full-2", "settled", 6)
    ]
    charge = cost(RATE, 6)  # 6 s bill one 30 s block
    assert charge == Decimal("0.30000") and outcomes[0].charged == charge
    assert await balance_of(engine, account_id) == Decimal("1.00") - charge
    res = await row_of(engine, reservations, "t1174-full-2")
    assert res["status"] == "expired" and res["charged"] == charge
    call = await row_of(engine, calls, "t1174-full-2")
    assert call["status"] == "OK" and call["billsec"] == 6 and call["cost"] == charge
    assert call["note"] == "settled by the reaper from the Asterisk CDR"
    assert call["dial_status"] == "ANSWER" and call["trunk"] == "carrier-a"
    assert call["rate_id"] == rate_id and call["prefix"] == "999" and call["server"] == "cg-1"
    assert call["dialed_number"] == "999002" and call["callerid"] == "5551001"
    # the CDR's local times were Paris time: 22:46:14 there is 21:46:14 UTC
    assert call["answered_at"] == datetime(2026, 11, 21, 21, 46, 14, tzinfo=UTC)
    assert call["ended_at"] == datetime(2026, 11, 21, 21, 46, 20, tzinfo=UTC)
    after = metrics.REGISTRY.get_sample_value(
        "callgate_reaper_reservations_total", {"result": "settled"}
    )
    assert (after or 0) - (settled_before or 0) == 1
    # a second pass, or a late settle by a session, charges nothing more
    assert await reap_once(engine, zone=paris, now=T0 + timedelta(hours=1)) == []
    assert await balance_of(engine, account_id) == Decimal("1.00") - charge


async def test_the_cdr_is_found_by_linkedid_and_capped_at_the_grant(engine: AsyncEngine) -> None:
    account_id, rate_id = await setup_account(engine)
    # the AGI ran on the call's first channel: its uniqueid is the CDRs' LinkedID; the plan
    # allowed 4 s only
    granted = await reserve(engine, account_id, rate_id, "t1239-dial-limit", cap=4)
    assert granted == 4
    await deliver_cdrs(engine, [cdr_of("t1239-dial-limit"), cdr_of("t1239-dial-limit-2")])
    outcomes = await reap_once(engine, zone=UTC, now=T0 + timedelta(hours=1))
    # the Dial CDR of the ;2 leg says 5 s (not the ;1 leg's Wait CDR, 6 s): capped at 4 s
    assert [(o.billsec, o.charged) for o in outcomes] == [(4, cost(RATE, 4))]


async def test_a_vanished_rate_charges_the_reservation_pro_rata(engine: AsyncEngine) -> None:
    account_id, rate_id = await setup_account(engine)
    granted = await reserve(engine, account_id, rate_id, "t1247-dial-callee-hangup-2")
    async with engine.begin() as conn:
        await conn.execute(delete(rates))
    await deliver_cdrs(engine, [cdr_of("t1247-dial-callee-hangup-2")])
    outcomes = await reap_once(engine, zone=UTC, now=T0 + timedelta(hours=1))
    reserved = cost(RATE, granted)
    expected = (reserved * 3 / granted).quantize(Decimal("0.00001"))
    assert outcomes[0].charged == expected and outcomes[0].billsec == 3
    assert "no longer exists" in outcomes[0].note
    assert await balance_of(engine, account_id) == Decimal("1.00") - expected


def _invoke(db_url: str, *args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), env={"CALLGATE_DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else result.stdout


def test_no_cdr_means_unresolved_then_an_operator_settles_or_releases(db_url: str) -> None:
    async def setup() -> tuple[int, int]:
        engine = create_engine(db_url)
        try:
            account_id, rate_id = await setup_account(engine)
            await reserve(engine, account_id, rate_id, "lost-1", cap=60)
            await reserve(engine, account_id, rate_id, "lost-2", cap=30)
            outcomes = await reap_once(engine, zone=UTC, now=T0 + timedelta(hours=1))
            assert {(o.uniqueid, o.result.value) for o in outcomes} == {
                ("lost-1", "unresolved"),
                ("lost-2", "unresolved"),
            }
            await refresh_live_gauges(engine)
            return account_id, rate_id
        finally:
            await engine.dispose()

    account_id, _ = asyncio.run(setup())
    assert metrics.REGISTRY.get_sample_value("callgate_unresolved_reservations") == 2
    listed = _invoke(db_url, "calls", "reconcile", "--json")
    assert [(i["uniqueid"], i["status"], i["account"]) for i in listed] == [
        ("lost-1", "unresolved", "7000000001"),
        ("lost-2", "unresolved", "7000000001"),
    ]
    done = _invoke(db_url, "calls", "reconcile", "--settle", "lost-1", "--seconds", "45", "--json")
    assert done["status"] == "settled" and done["billsec"] == 45
    assert Decimal(done["charged"]) == cost(RATE, 45) == Decimal("0.48000")  # 30 + 3*6 s
    released = _invoke(db_url, "calls", "reconcile", "--release", "lost-2", "--json")
    assert released["status"] == "released" and Decimal(released["charged"]) == 0
    assert _invoke(db_url, "calls", "reconcile", "--json") == []
    again = CliRunner().invoke(
        cli,
        ["calls", "reconcile", "--settle", "lost-1", "--seconds", "1"],
        env={"CALLGATE_DATABASE_URL": db_url},
    )
    assert again.exit_code == 1 and "settled" in again.output

    async def check() -> None:
        engine = create_engine(db_url)
        try:
            assert await balance_of(engine, account_id) == Decimal("1.00") - Decimal("0.48")
            first = await row_of(engine, calls, "lost-1")
            second = await row_of(engine, calls, "lost-2")
            assert first["status"] == "OK" and first["cost"] == Decimal("0.48")
            assert second["status"] == "ERROR" and second["cost"] == 0
        finally:
            await engine.dispose()

    asyncio.run(check())
    usage = CliRunner().invoke(
        cli, ["calls", "reconcile", "--settle", "x"], env={"CALLGATE_DATABASE_URL": db_url}
    )
    assert usage.exit_code == 2


def test_calls_reap_runs_one_pass(db_url: str) -> None:
    async def setup() -> None:
        engine = create_engine(db_url)
        try:
            account_id, rate_id = await setup_account(engine)
            await reserve(engine, account_id, rate_id, "gone-1")
        finally:
            await engine.dispose()

    asyncio.run(setup())
    reaped = _invoke(db_url, "calls", "reap", "--json")  # T0 is long past
    assert [(r["uniqueid"], r["result"]) for r in reaped] == [("gone-1", "unresolved")]
    assert _invoke(db_url, "calls", "reap", "--json") == []


async def test_the_reaper_and_operators_tell_two_asterisk_servers_apart(
    engine: AsyncEngine,
) -> None:
    """One uniqueid from two Asterisk boxes: the reaper settles each from its own box's CDR
    only, and an operator must name the box."""
    account_id, rate_id = await setup_account(engine, balance="5.00")
    for box in ("ast-a", "ast-b"):
        await ledger.reserve(
            engine,
            account_id=account_id,
            uniqueid="t1174-full-2",
            price=pricer(120),
            now=T0,
            grace_seconds=GRACE,
            trunk="carrier-a",
            rate_id=rate_id,
            asterisk=box,
        )
    # only box a's AMI reports the call
    await deliver_cdrs(engine, [cdr_of("t1174-full"), cdr_of("t1174-full-2")], asterisk="ast-a")
    later = T0 + timedelta(hours=2)
    outcomes = await reap_once(engine, zone=ZoneInfo("Europe/Paris"), now=later)
    assert sorted((o.result.value, o.billsec) for o in outcomes) == [
        ("settled", 6),  # ast-a: from its CDR
        ("unresolved", 0),  # ast-b: no CDR of that box, so nothing is guessed
    ]
    with pytest.raises(InvalidDataError, match="ASTERISK/t1174-full-2"):
        await reconcile.release_reservation(engine, "t1174-full-2", now=later)
    resolved = await reconcile.release_reservation(engine, "ast-b/t1174-full-2", now=later)
    assert resolved.charged == 0
    assert await balance_of(engine, account_id) == Decimal("5.00") - cost(RATE, 6)
