"""The AMI listener over a real socket (FakeAmiServer replaying recorded AMI), on both databases:
live channels, Asterisk CDRs stored once, resync after a reconnect, a database that fails."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.ami.client import AmiClient
from callgate.ami.codec import AmiMessage, AmiParser
from callgate.ami.fakeserver import FakeAmiServer, FakeChannel, load_session, recorded_messages
from callgate.ami.listener import AmiListener, parse_duration
from callgate.schema.tables import CallStatus, accounts, asterisk_cdrs
from callgate.store import accounts as acc
from callgate.store import ledger, plans
from callgate.store.cdrs import billing_cdr, fingerprint
from callgate.store.channels import LiveChannel, list_channels
from callgate.store.db import create_engine

SESSION = Path(__file__).parents[1] / "data" / "transcripts" / "ami-session.raw"
RAW_EVENTS = [m for m in recorded_messages(load_session(SESSION)) if m.startswith(b"Event: ")]
USER, SECRET = "callgate", "listener-secret"


def parsed(raw: bytes) -> AmiMessage:
    (message,) = AmiParser(expect_banner=False).feed(raw)
    return message


EVENTS = [parsed(raw) for raw in RAW_EVENTS]
CDR_RAW = [raw for raw, ev in zip(RAW_EVENTS, EVENTS, strict=True) if ev.name == "Cdr"]


def call_events(linkedid: str) -> list[bytes]:
    """The recorded events of one call (by Linkedid), in order."""
    return [
        raw
        for raw, ev in zip(RAW_EVENTS, EVENTS, strict=True)
        if (ev.get("Linkedid") or ev.get("LinkedID")) == linkedid
    ]


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


@dataclass
class Rig:
    server: FakeAmiServer
    client: AmiClient
    listener: AmiListener
    engine: AsyncEngine

    async def channels(self) -> list[LiveChannel]:
        async with self.engine.connect() as conn:
            return await list_channels(conn)

    async def cdr_count(self) -> int:
        async with self.engine.connect() as conn:
            count = await conn.scalar(select(func.count()).select_from(asterisk_cdrs))
        return int(count or 0)

    async def settle(self, events: int) -> None:
        """Wait until ``events`` events were consumed and everything is written."""
        await until(lambda: self.listener.stats.events >= events)
        async with asyncio.timeout(5):
            await self.listener.wait_idle()


async def _rig(engine: AsyncEngine, server: FakeAmiServer, **listener_options: object) -> Rig:
    listener = AmiListener(engine, server="pbx-1", **listener_options)  # type: ignore[arg-type]
    client = AmiClient(
        "127.0.0.1",
        server.port,
        USER,
        SECRET,
        connect_timeout=2.0,
        action_timeout=2.0,
        ping_interval=5.0,
        ping_timeout=2.0,
        backoff_initial=0.05,
        backoff_max=0.2,
        name=f"lst-{uuid.uuid4().hex[:6]}",
        rng=random.Random(3),
        on_login=listener.on_login,
    )
    listener.attach(client)
    return Rig(server, client, listener, engine)


@pytest.fixture
async def rig(engine: AsyncEngine) -> AsyncIterator[Rig]:
    async with FakeAmiServer(username=USER, secret=SECRET) as server:
        r = await _rig(engine, server)
        task = asyncio.create_task(r.listener.run())
        await r.client.connect()
        try:
            yield r
        finally:
            await r.client.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def markers(rig: Rig) -> int:
    """Events the listener counts that are its own resync markers (two per login)."""
    return 2 * rig.server.logins


async def test_a_recorded_call_builds_the_live_view_then_empties_it(rig: Rig) -> None:
    events = call_events("t1174-full")
    first_hangup = next(i for i, raw in enumerate(events) if raw.startswith(b"Event: Hangup\r\n"))
    during = b"".join(events[:first_hangup])
    # several messages per read, values split across reads at odd places
    await rig.server.push(during, cut_at=range(7, len(during), 613))
    wanted = [parsed(r) for r in events[:first_hangup]]
    wanted_count = sum(1 for e in wanted if (e.name or "").lower() in _LISTENED)
    await rig.settle(markers(rig) + wanted_count)
    live = {c.uniqueid: c for c in await rig.channels()}
    caller = live["t1174-full-2"]
    assert caller.channel == "Local/999002@from-customer-00000051;2"
    assert (caller.accountcode, caller.callerid, caller.destination) == (
        "acct-1001",
        "5551001",
        "999002",
    )
    assert caller.state == "Up" and caller.answered_at is not None
    assert caller.application == "Dial" and caller.server == "pbx-1"
    assert caller.linkedid == "t1174-full"
    assert set(live) == {"t1174-full", "t1174-full-2", "1795301178.326", "1795301178.327"}
    assert caller.bridged_to == "Local/999002@carrier-00000052;1"
    assert live["1795301178.326"].bridged_to == caller.channel
    rest = b"".join(events[first_hangup:])
    await rig.server.push(rest, cut_at=range(1, len(rest), 977))
    rest_count = sum(1 for r in events[first_hangup:] if _listened(parsed(r)))
    await rig.settle(markers(rig) + wanted_count + rest_count)
    assert await rig.channels() == []
    assert await rig.cdr_count() == 3  # the call's three CDRs


_LISTENED = {
    "newchannel",
    "newstate",
    "newaccountcode",
    "newcallerid",
    "dialbegin",
    "dialend",
    "bridgeenter",
    "bridgeleave",
    "hangup",
    "cdr",
}


def _listened(event: AmiMessage) -> bool:
    return (event.name or "").lower() in _LISTENED


async def test_the_whole_session_replayed_twice_stores_each_cdr_once(rig: Rig) -> None:
    stream = b"".join(RAW_EVENTS)
    await rig.server.push(stream, cut_at=range(3, len(stream), 1499))
    listened = sum(1 for e in EVENTS if _listened(e))
    await rig.settle(markers(rig) + listened)
    distinct = {fingerprint(parsed(r).headers) for r in CDR_RAW}
    assert len(distinct) == len(CDR_RAW) == 41
    assert await rig.cdr_count() == 41
    assert await rig.channels() == []  # 42 Newchannel, 42 Hangup
    await rig.server.push(b"".join(CDR_RAW))  # a replay: stored once
    await rig.settle(markers(rig) + listened + len(CDR_RAW))
    assert await rig.cdr_count() == 41
    assert rig.listener.stats.cdrs_stored == 41
    async with rig.engine.connect() as conn:
        cdr = await billing_cdr(conn, "t1174-full-2")
        by_linkedid = await billing_cdr(conn, "t1239-dial-limit")
    assert cdr is not None and cdr.last_application == "Dial" and cdr.billsec == 6
    assert cdr.start_time == "2026-11-21 22:46:14"  # Asterisk's local time, as sent
    assert cdr.channel == "Local/999002@from-customer-00000051;2"
    assert by_linkedid is not None and by_linkedid.uniqueid == "t1239-dial-limit-2"
    assert by_linkedid.billsec == 5


async def test_disconnect_mid_event_then_resync_from_coreshowchannels(rig: Rig) -> None:
    events = call_events("t1174-full")
    first_hangup = next(i for i, raw in enumerate(events) if raw.startswith(b"Event: Hangup\r\n"))
    during = events[:first_hangup]
    await rig.server.push(b"".join(during))
    await rig.settle(markers(rig) + sum(1 for r in during if _listened(parsed(r))))
    assert {c.uniqueid for c in await rig.channels()} >= {"t1174-full", "t1174-full-2"}
    # Asterisk now knows only one channel (the others hung up while we were away), and one that
    # started meanwhile; the connection breaks in the middle of a Hangup event
    newstate = parsed(next(r for r in during if r.startswith(b"Event: Newstate\r\n")))
    survivor = FakeChannel.from_event(newstate, duration="00:01:05", application="Dial")
    other = parsed(call_events("t1239-dial-limit")[0])
    newcomer = FakeChannel.from_event(other, application="AppDial2", duration="00:00:02")
    rig.server.channels = [survivor, newcomer]
    hangup = events[first_hangup]
    await rig.server.drop(partial=hangup[: len(hangup) // 2])
    await rig.server.wait_logins(2)
    await until(lambda: rig.client.connected)  # connected = logged in AND resynced
    live = {c.uniqueid: c for c in await rig.channels()}
    assert set(live) == {newstate.get("Uniqueid"), other.get("Uniqueid")}
    kept = live[str(newstate.get("Uniqueid"))]
    assert kept.accountcode == "acct-1001" and kept.state == "Up"
    assert 64 <= kept.duration_seconds(kept.updated_at) <= 66
    assert live[str(other.get("Uniqueid"))].server == "pbx-1"
    assert rig.listener.stats.resyncs == 2


async def test_events_during_the_resync_are_applied_on_top_of_the_snapshot(
    engine: AsyncEngine,
) -> None:
    events = call_events("t1247-dial-callee-hangup")
    newchannel = parsed(events[0])
    uid = str(newchannel.get("Uniqueid"))
    hangup = next(
        r for r in events if r.startswith(b"Event: Hangup\r\n") and parsed(r).get("Uniqueid") == uid
    )
    async with FakeAmiServer(username=USER, secret=SECRET) as server:
        # the snapshot lists the channel, and its Hangup arrives after that item, before the
        # list's Complete (interleave: Login response, list response, item, Complete)
        server.channels = [FakeChannel.from_event(newchannel)]
        server.interleave = [b"", b"", b"", hangup]
        r = await _rig(engine, server)
        task = asyncio.create_task(r.listener.run())
        try:
            await r.client.connect()
            assert r.client.connected
            assert await r.channels() == []
            assert r.listener.channels() == []
        finally:
            await r.client.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_database_outage_keeps_the_changes_and_retries(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    async with FakeAmiServer(username=USER, secret=SECRET) as server:
        # a database that cannot be opened (a missing directory) stands for one that is down
        broken = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'x.db'}")
        r = await _rig(broken, server, retry_seconds=0.05)
        task = asyncio.create_task(r.listener.run())
        try:
            r.client.start()
            await server.wait_logins(1)
            await until(lambda: r.listener.stats.write_failures >= 1)  # the resync cannot write
            assert not r.client.connected  # so the login is not complete: it will retry
            # the database comes back: a later login resyncs and writes
            r.listener.engine = r.engine = engine
            await until(lambda: r.client.connected, within=10)
            await server.push(b"".join(CDR_RAW[:3]))
            await until(lambda: r.listener.stats.cdrs_stored == 3)
            assert await r.cdr_count() == 3
        finally:
            await r.client.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await broken.dispose()


def test_parse_duration() -> None:
    assert parse_duration("01:02:03") == 3723
    assert parse_duration("00:00:07") == 7
    assert parse_duration("") == 0 and parse_duration("x") == 0


async def test_cdr_writes_beside_concurrent_settles_never_meet_a_locked_database(
    rig: Rig,
) -> None:
    """The listener's writes and the ledger's settles share one writer discipline: on SQLite a
    CDR batch (read the fingerprints, then insert) used to fail with "database is locked" when
    a settle committed in between."""
    async with rig.engine.begin() as conn:
        plan = await plans.create_call_plan(conn, name=f"p{random.randrange(10**9)}")
        account = await acc.create_account(conn, call_plan_id=plan.id, balance=Decimal("100"))
    now = datetime.now(UTC)
    calls = 40
    for n in range(calls):
        await ledger.reserve(
            rig.engine,
            account_id=account.id,
            uniqueid=f"w{n}",
            price=lambda available: (60, Decimal("0.10")),
            now=now,
            grace_seconds=60,
        )

    async def settle(n: int) -> None:
        await asyncio.sleep(0.001 * (n % 7))
        await ledger.settle(
            rig.engine,
            ledger.CallRecord(
                uniqueid=f"w{n}",
                status=CallStatus.OK,
                started_at=now,
                account_id=account.id,
                billsec=30,
                granted_seconds=60,
                cost=Decimal("0.05"),
            ),
        )

    async def cdr_waves(waves: int) -> None:
        for wave in range(waves):  # each wave: the recorded CDRs under fresh uniqueids
            await rig.server.push(b"".join(raw.replace(b"t1", b"v%d-" % wave) for raw in CDR_RAW))
            await asyncio.sleep(0.003)

    waves = 8
    await asyncio.gather(cdr_waves(waves), *(settle(n) for n in range(calls)))
    await rig.settle(markers(rig) + waves * len(CDR_RAW))
    assert rig.listener.stats.write_failures == 0
    assert await rig.cdr_count() == waves * len(CDR_RAW)
    async with rig.engine.connect() as conn:
        balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account.id))
    assert balance == Decimal("100") - calls * Decimal("0.05")
