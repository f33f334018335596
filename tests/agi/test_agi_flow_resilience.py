"""A database that goes away mid-call: that call fails closed, the server keeps serving others.

PostgreSQL is reached through a TCP proxy on loopback that the test cuts (every connection reset,
new ones refused) and restores, like asyncpg's own TCPFuzzingProxy tests. Also: many concurrent
calls of one account through the whole flow never overdraw it (both databases).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from tcp_proxy import TcpProxy

from callgate.agi.client import (
    AsteriskEmulator,
    ChannelSpec,
    DialOutcome,
    DialStatus,
    Emit,
    FakeAsterisk,
    ReceivedCommand,
)
from callgate.agi.flows.call import CallFlows, FlowSettings
from callgate.agi.server import AgiServer
from callgate.rating import CallPlan, PlanTable, PrefixIndex, Rate, RoutingMode
from callgate.schema.tables import accounts, calls, reservations
from callgate.store import accounts as account_store
from callgate.store import plans
from callgate.store.callstore import RoutingData, SqlAccounts, SqlLedger
from callgate.store.db import create_engine

RATE = Rate(prefix="1", rate=Decimal("0.60"), initial_block=30, increment=6, trunk="carrier")
FROZEN_MS = 1_763_769_600_000


class CutOnDial:
    """A responder that cuts the database the moment the flow sends EXEC Dial."""

    def __init__(self, emulator: AsteriskEmulator, proxy: TcpProxy) -> None:
        self.emulator = emulator
        self.proxy = proxy

    def __call__(self, command: ReceivedCommand) -> Sequence[Emit]:
        if command.is_dial:
            self.proxy.cut()
        return self.emulator(command)


async def _seed(engine: AsyncEngine, balance: str) -> tuple[int, int]:
    async with engine.begin() as conn:
        await plans.create_trunk(conn, name="carrier", technology="PJSIP", peer="gw")
        plan = await plans.create_call_plan(conn, name="p")
        account = await account_store.create_account(
            conn, call_plan_id=plan.id, number="2000000001", balance=Decimal(balance)
        )
    return plan.id, account.id


async def _server(engine: AsyncEngine, plan_id: int) -> AgiServer:
    plan = CallPlan("p", RoutingMode.LCR, 120, (PlanTable("t", 1, PrefixIndex("t", [RATE])),))
    routing = RoutingData(engine, lambda pid: plan if pid == plan_id else None)
    await routing.refresh()
    flows = CallFlows(
        accounts=SqlAccounts(engine),
        plans=routing,
        ledger=SqlLedger(engine, grace_seconds=60),
        settings=FlowSettings(dial_warning_seconds=0),
    )
    server = AgiServer({"call": flows.call}, port=0)
    await server.start()
    return server


def _spec(uniqueid: str) -> ChannelSpec:
    return ChannelSpec(uniqueid=uniqueid, accountcode="2000000001", extension="12125550100")


@pytest.fixture
async def proxied(db_url: str) -> AsyncIterator[tuple[TcpProxy, AsyncEngine, AsyncEngine]]:
    if not db_url.startswith("postgresql"):
        pytest.skip("the database proxy test cuts a TCP connection: PostgreSQL only")
    url = make_url(db_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    port = await proxy.start()
    through = create_engine(url.set(port=port).render_as_string(hide_password=False))
    direct = create_engine(db_url)
    try:
        yield proxy, through, direct
    finally:
        await through.dispose()
        await direct.dispose()
        await proxy.close()


async def test_database_cut_fails_the_call_closed_and_the_server_keeps_serving(
    proxied: tuple[TcpProxy, AsyncEngine, AsyncEngine],
) -> None:
    proxy, through, direct = proxied
    plan_id, account_id = await _seed(direct, "5.00")
    server = await _server(through, plan_id)
    asterisk = FakeAsterisk("127.0.0.1", server.port)
    try:
        first = AsteriskEmulator(
            _spec("db-1"), dial_outcomes=[DialOutcome.answered(10_000)], clock_ms=lambda: FROZEN_MS
        )
        assert (await asterisk.call(first.spec, first)).ok
        assert first.variables["CALLGATE_STATUS"] == "OK"

        # the database is gone before the call is authorised: no Dial, ERROR, socket closed
        proxy.cut()
        cut = AsteriskEmulator(_spec("db-2"), clock_ms=lambda: FROZEN_MS)
        async with asyncio.timeout(20):
            result = await asterisk.call(cut.spec, cut)
        assert result.ok
        assert cut.dials == []
        assert cut.variables["CALLGATE_STATUS"] == "ERROR"
        assert cut.variables["CALLGATE_HANGUPCAUSE"] == "41"

        # the database goes away during the call: the reservation stays open for the reaper
        proxy.restore()
        during = AsteriskEmulator(
            _spec("db-3"), dial_outcomes=[DialOutcome.answered(20_000)], clock_ms=lambda: FROZEN_MS
        )
        async with asyncio.timeout(30):
            result = await asterisk.call(during.spec, CutOnDial(during, proxy))
        assert result.ok and len(during.dials) == 1
        async with direct.connect() as conn:
            status = await conn.scalar(
                select(reservations.c.status).where(reservations.c.uniqueid == "db-3")
            )
            recorded = await conn.scalar(
                select(func.count()).select_from(calls).where(calls.c.uniqueid == "db-3")
            )
        assert status == "open" and recorded == 0

        # back again: the same server serves the next call (db-3 still holds its 1.20)
        proxy.restore()
        after = AsteriskEmulator(
            _spec("db-4"), dial_outcomes=[DialOutcome.answered(6_000)], clock_ms=lambda: FROZEN_MS
        )
        assert (await asterisk.call(after.spec, after)).ok
        assert after.variables["CALLGATE_STATUS"] == "OK"
        async with direct.connect() as conn:
            balance = await conn.scalar(
                select(accounts.c.balance).where(accounts.c.id == account_id)
            )
        # db-1 billed 30 s (0.30), db-4 billed 30 s (0.30); db-3 waits for the reaper
        assert balance == Decimal("4.40000")
    finally:
        await server.shutdown(1)


async def test_many_concurrent_calls_of_one_account_never_overdraw(engine: AsyncEngine) -> None:
    plan_id, account_id = await _seed(engine, "3.00")
    server = await _server(engine, plan_id)
    asterisk = FakeAsterisk("127.0.0.1", server.port)
    rng = random.Random(11)
    emulators: list[AsteriskEmulator] = []

    async def one(n: int) -> None:
        outcome = rng.choice(
            [
                DialOutcome.answered(
                    rng.randrange(1_000, 400_000), ring_ms=rng.randrange(0, 5_000)
                ),
                DialOutcome.failed(DialStatus.BUSY),
                DialOutcome.caller_hangs_up(rng.randrange(1_000, 200_000)),
            ]
        )
        emulator = AsteriskEmulator(
            _spec(f"conc-{n}"), dial_outcomes=[outcome], clock_ms=lambda: FROZEN_MS
        )
        emulators.append(emulator)
        await asyncio.sleep(rng.random() / 20)
        result = await asterisk.call(emulator.spec, emulator)
        assert result.ok, result

    try:
        await asyncio.gather(*(one(n) for n in range(30)))
    finally:
        await server.shutdown(1)
    async with engine.connect() as conn:
        balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account_id))
        charged = await conn.scalar(select(func.coalesce(func.sum(calls.c.cost), 0)))
        open_count = await conn.scalar(
            select(func.count()).select_from(reservations).where(reservations.c.status == "open")
        )
        rows = (await conn.execute(select(calls.c.billsec, calls.c.granted_seconds))).all()
    assert balance is not None and balance >= 0
    assert charged == Decimal("3.00") - balance
    assert open_count == 0
    assert all(billsec <= granted for billsec, granted in rows)
    statuses = [e.variables.get("CALLGATE_STATUS") for e in emulators]
    assert statuses.count("OK") >= 1 and len(statuses) == 30
    assert all(not e.violations for e in emulators)
