"""Wholesale call control end to end: a fake Asterisk over real TCP, a real database (both).

IP authentication (CIDR, longest tech prefix, strip digits, CLI prefix), limits (IP channels,
IP and account CPS; across two callgate servers sharing PostgreSQL), caller ID rules (deny,
rewrite before Dial), DIDs billed at retail with the provider's cost, free package seconds
first, alerts that fire once with the e-mail received by a real SMTP server on loopback, and
MixMonitor recording for recording rate tables only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.agi.client import (
    AsteriskEmulator,
    ChannelSpec,
    DialOutcome,
    Emit,
    FakeAsterisk,
    FakeCallResult,
)
from callgate.agi.flows.call import CallFlows, FlowSettings
from callgate.agi.flows.did import DidFlow
from callgate.agi.server import AgiServer
from callgate.alerts import AlertService, SmtpSender
from callgate.config import SmtpSettings
from callgate.rating import CallPlan, PlanTable, PrefixIndex, Rate, RoutingMode
from callgate.schema.tables import (
    AlertArea,
    AlertOperator,
    CliRuleAction,
    IpDirection,
    PackageKind,
    PaymentKind,
    accounts,
    alert_notifications,
    calls,
    package_usage,
    reservations,
)
from callgate.store import accounts as account_store
from callgate.store import alerts as alert_store
from callgate.store import clirules, dids, ips, packages, payments, plans
from callgate.store.callstore import RoutingData, SqlAccounts, SqlLedger, WholesaleData
from callgate.store.db import create_engine, write_transaction

UK = Rate(
    prefix="44",
    rate=Decimal("0.60"),
    initial_block=1,
    increment=1,
    buy_rate=Decimal("0.30"),
    destination="UK",
    trunk="carrier-a",
)
RECORDINGS = "/var/spool/asterisk/monitor/callgate"
NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
FROZEN_MS = 1_763_769_600_000


class Clock:
    def __init__(self) -> None:
        self.now = NOON

    def __call__(self) -> datetime:
        return self.now


class RecordingAsterisk(AsteriskEmulator):
    """The emulator, plus MixMonitor (which a real Asterisk has; the emulator answers -2)."""

    def _cmd_exec(self, args: tuple[str, ...]) -> list[Emit]:
        if args and args[0].lower() == "mixmonitor":
            self.variables["MIXMONITOR_FILENAME"] = args[1].split(",")[0] if len(args) > 1 else ""
            return [Emit(b"200 result=0\n")]
        return super()._cmd_exec(args)


@dataclass
class Node:
    """One callgate server: its engine, flows and FastAGI server."""

    engine: AsyncEngine
    data: WholesaleData
    flows: CallFlows
    server: AgiServer
    asterisk: FakeAsterisk


@dataclass
class World:
    engine: AsyncEngine
    clock: Clock
    node: Node
    acct: dict[str, account_store.Account] = field(default_factory=dict)

    async def call(self, emulator: AsteriskEmulator, node: Node | None = None) -> FakeCallResult:
        return await (node or self.node).asterisk.call(emulator.spec, emulator)

    async def balance(self, key: str) -> Decimal:
        async with self.engine.connect() as conn:
            value = await conn.scalar(
                select(accounts.c.balance).where(accounts.c.id == self.acct[key].id)
            )
        assert isinstance(value, Decimal)
        return value

    async def row(self, uniqueid: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(calls).where(calls.c.uniqueid == uniqueid))).one()
        return dict(found._mapping)


def _plan(name: str, table: str) -> CallPlan:
    return CallPlan(
        name=name,
        mode=RoutingMode.LCR,
        max_call_seconds=3600,
        tables=(PlanTable(table, 1, PrefixIndex(table, [UK])),),
    )


async def _node(
    engine: AsyncEngine,
    clock: Clock,
    plan_ids: dict[int, CallPlan],
    *,
    alerts: AlertService | None = None,
    server_name: str = "",
) -> Node:
    routing = RoutingData(engine, plan_ids.get)
    await routing.refresh()
    data = WholesaleData(engine, grace_seconds=60)
    await data.refresh()
    flows = CallFlows(
        accounts=SqlAccounts(engine),
        plans=routing,
        ledger=SqlLedger(engine, grace_seconds=60, server=server_name),
        settings=FlowSettings(dial_warning_seconds=0, recordings_dir=RECORDINGS),
        clock=clock,
        ips=data,
        cli_rules=data,
        packages=data,
        extras=data,
        alerts=alerts,
    )
    server = AgiServer(
        {"call": flows.call, "card": flows.card, "did": DidFlow(flows, data).did}, port=0
    )
    await server.start()
    return Node(engine, data, flows, server, FakeAsterisk("127.0.0.1", server.port))


async def _setup(
    engine: AsyncEngine,
) -> tuple[dict[str, account_store.Account], dict[int, CallPlan]]:
    async with engine.begin() as conn:
        await plans.create_trunk(conn, name="carrier-a", technology="PJSIP", peer="gw-a")
        await plans.create_trunk(conn, name="did-provider", technology="SIP", peer="provider")
        std = await plans.create_call_plan(conn, name="wholesale")
        rec = await plans.create_call_plan(conn, name="recorded")
        await plans.create_rate_table(conn, name="std")
        await plans.create_rate_table(conn, name="rec", record_calls=True)
        await plans.attach_rate_table(conn, "wholesale", "std")
        await plans.attach_rate_table(conn, "recorded", "rec")
        made: dict[str, account_store.Account] = {}
        for key, number, plan_id in (
            ("a", "1000000001", std.id),
            ("b", "1000000002", std.id),
            ("c", "1000000003", std.id),
            ("r", "1000000004", rec.id),
        ):
            made[key] = await account_store.create_account(
                conn, call_plan_id=plan_id, number=number, balance=Decimal("10.00")
            )
        await ips.add_ip(conn, made["a"].id, "203.0.113.0/24")
        await ips.add_ip(conn, made["b"].id, "198.51.100.7", tech_prefix="77", cli_prefix="1")
        await ips.add_ip(conn, made["c"].id, "198.51.100.7", tech_prefix="7788", strip_digits=1)
        await ips.add_ip(
            conn, made["a"].id, "192.0.2.0/24", direction=IpDirection.EGRESS
        )  # egress entries never identify callers
        await account_store.add_callerid(conn, made["r"].id, "5554444")
    return made, {std.id: _plan("wholesale", "std"), rec.id: _plan("recorded", "rec")}


@pytest.fixture
async def world(engine: AsyncEngine) -> AsyncIterator[World]:
    made, plan_ids = await _setup(engine)
    clock = Clock()
    node = await _node(engine, clock, plan_ids)
    try:
        yield World(engine, clock, node, made)
    finally:
        await node.server.shutdown(1)


def _emu(
    uniqueid: str,
    *,
    source: str = "",
    extension: str = "442079460000",
    callerid: str = "5550000",
    accountcode: str = "",
    script: str = "call",
    talk_ms: int = 60_000,
    real_time: bool = False,
    emulator: type[AsteriskEmulator] = AsteriskEmulator,
) -> AsteriskEmulator:
    spec = ChannelSpec(
        script=script,
        uniqueid=uniqueid,
        extension=extension,
        callerid=callerid,
        accountcode=accountcode,
    )
    variables = {"CHANNEL(pjsip,remote_addr)": source} if source else {}
    if real_time:  # real sleeps: the wall clock
        return emulator(
            spec, variables=variables, dial_outcomes=[DialOutcome.answered(talk_ms)], real_time=True
        )
    # simulated time on a clock that stands still otherwise: exact talk times
    return emulator(
        spec,
        variables=variables,
        dial_outcomes=[DialOutcome.answered(talk_ms)],
        clock_ms=lambda: FROZEN_MS,
    )


def _verbs(result: FakeCallResult) -> list[str]:
    return [c.line for c in result.commands]


def _index(lines: Sequence[str], start: str) -> int:
    return next(i for i, line in enumerate(lines) if line.startswith(start))


def _just_before_dial(lines: Sequence[str]) -> str:
    """The command just before the first Dial: the one MSet of the dialplan's variables, the
    presented caller ID and the cleared answer stamp."""
    line = lines[_index(lines, "EXEC Dial") - 1]
    assert line.startswith("EXEC MSet "), line
    return line


# ---------------------------------------------------------------- IP authentication


async def test_ip_authentication_identifies_the_account_by_cidr(world: World) -> None:
    emulator = _emu("ip-1", source="203.0.113.45:5060")
    result = await world.call(emulator)
    assert result.ok and not emulator.violations
    assert any(
        line.startswith("GET FULL VARIABLE") and "${CHANNEL(pjsip,remote_addr)}" in line
        for line in _verbs(result)
    )
    assert emulator.variables["CALLGATE_ACCOUNT"] == "1000000001"
    assert emulator.dials[0].destination == "PJSIP/442079460000@gw-a"
    row = await world.row("ip-1")
    assert row["account_id"] == world.acct["a"].id and row["cost"] == Decimal("0.60000")
    async with world.engine.connect() as conn:
        source = await conn.scalar(
            select(reservations.c.source_address).where(reservations.c.uniqueid == "ip-1")
        )
    assert source == "203.0.113.0/24"  # the entry's limit key


async def test_unknown_or_egress_address_is_not_identified(world: World) -> None:
    for uniqueid, source in (("ip-2", "192.0.2.10:5060"), ("ip-3", "[2001:db8::1]:5060")):
        emulator = _emu(uniqueid, source=source)
        assert (await world.call(emulator)).ok
        assert emulator.variables["CALLGATE_STATUS"] == "NO_ACCOUNT" and emulator.dials == []


async def test_an_accountcode_wins_and_no_source_address_is_read(world: World) -> None:
    emulator = _emu("ip-4", source="203.0.113.45:5060", accountcode="1000000002")
    result = await world.call(emulator)
    assert emulator.variables["CALLGATE_ACCOUNT"] == "1000000002"
    assert not any("remote_addr" in line for line in _verbs(result))


async def test_longest_tech_prefix_wins_and_is_stripped(world: World) -> None:
    # 7788 (account c, strip 1 digit after the prefix) beats 77 (account b)
    longest = _emu("tp-1", source="198.51.100.7:5060", extension="77880442079460000")
    assert (await world.call(longest)).ok
    assert longest.variables["CALLGATE_ACCOUNT"] == "1000000003"
    assert longest.dials[0].destination == "PJSIP/442079460000@gw-a"
    assert (await world.row("tp-1"))["number"] == "442079460000"
    # 77 only: account b, whose CLI prefix "1" is prepended to the caller ID before Dial
    shorter = _emu("tp-2", source="198.51.100.7", extension="77442079460000")
    result = await world.call(shorter)
    assert shorter.variables["CALLGATE_ACCOUNT"] == "1000000002"
    lines = _verbs(result)
    assert shorter.variables["CALLERID(num)"] == "15550000"
    assert ",CALLERID(num)=15550000," in _just_before_dial(lines)
    # no tech prefix matches on the shared address: not identified
    none = _emu("tp-3", source="198.51.100.7:5060", extension="442079460000")
    assert (await world.call(none)).ok
    assert none.variables["CALLGATE_STATUS"] == "NO_ACCOUNT"


# ---------------------------------------------------------------- limits


async def test_ip_and_account_cps_limits_refuse_with_their_status(world: World) -> None:
    async with world.engine.begin() as conn:
        await ips.add_ip(conn, world.acct["b"].id, "203.0.114.9", cps_limit=1)
        await account_store.update_account(conn, world.acct["r"].id, cps_limit=1)
    await world.node.data.refresh()
    first = _emu("cps-1", source="203.0.114.9:5060")
    second = _emu("cps-2", source="203.0.114.9:5060")
    assert (await world.call(first)).ok and (await world.call(second)).ok
    assert first.variables["CALLGATE_STATUS"] == "OK"
    assert second.variables["CALLGATE_STATUS"] == "CPS_LIMIT" and second.dials == []
    assert second.variables["CALLGATE_HANGUPCAUSE"] == "42"
    # the account's own CPS limit (identified by caller ID)
    third = _emu("cps-3", callerid="5554444")
    fourth = _emu("cps-4", callerid="5554444", emulator=RecordingAsterisk)
    assert (await world.call(third)).ok and (await world.call(fourth)).ok
    assert fourth.variables["CALLGATE_STATUS"] == "CPS_LIMIT"
    assert (await world.row("cps-4"))["status"] == "CPS_LIMIT"
    # a second later the flow speed allows a call again
    world.clock.now += timedelta(seconds=2)
    fifth = _emu("cps-5", source="203.0.114.9:5060")
    assert (await world.call(fifth)).ok and fifth.variables["CALLGATE_STATUS"] == "OK"


async def _wait_open(engine: AsyncEngine, uniqueid: str) -> None:
    async with asyncio.timeout(5):
        while True:
            async with engine.connect() as conn:
                status = await conn.scalar(
                    select(reservations.c.status).where(reservations.c.uniqueid == uniqueid)
                )
            if status == "open":
                return
            await asyncio.sleep(0.02)


async def test_ip_channel_limit_refuses_a_concurrent_call(world: World) -> None:
    async with world.engine.begin() as conn:
        await ips.add_ip(conn, world.acct["b"].id, "203.0.114.10", channel_limit=1)
    await world.node.data.refresh()
    long_call = _emu("ch-1", source="203.0.114.10:5060", talk_ms=2_000, real_time=True)
    running = asyncio.create_task(world.call(long_call))
    await _wait_open(world.engine, "ch-1")
    refused = _emu("ch-2", source="203.0.114.10:5060")
    assert (await world.call(refused)).ok
    assert refused.variables["CALLGATE_STATUS"] == "CHANNEL_LIMIT"
    assert refused.variables["CALLGATE_HANGUPCAUSE"] == "34" and refused.dials == []
    assert (await running).ok and long_call.variables["CALLGATE_STATUS"] == "OK"


@pytest.mark.pg
async def test_limits_hold_across_two_servers_sharing_postgresql(
    db_url: str, engine: AsyncEngine
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("several callgate servers share one ledger on PostgreSQL only")
    made, plan_ids = await _setup(engine)
    async with engine.begin() as conn:
        await ips.add_ip(conn, made["b"].id, "203.0.114.20", channel_limit=1)
        await ips.add_ip(conn, made["c"].id, "203.0.114.21", cps_limit=1)
        await account_store.update_account(conn, made["r"].id, channel_limit=1)
    clock = Clock()
    other_engine = create_engine(db_url)  # the second server's own pool
    one = await _node(engine, clock, plan_ids, server_name="callgate-1")
    two = await _node(other_engine, clock, plan_ids, server_name="callgate-2")
    world = World(engine, clock, one, made)
    try:
        # IP channels: a call in progress on server one refuses a second one on server two
        long_call = _emu("x-1", source="203.0.114.20:5060", talk_ms=2_000, real_time=True)
        running = asyncio.create_task(world.call(long_call, one))
        await _wait_open(engine, "x-1")
        refused = _emu("x-2", source="203.0.114.20:5060")
        assert (await world.call(refused, two)).ok
        assert refused.variables["CALLGATE_STATUS"] == "CHANNEL_LIMIT"
        # account channels (identified by caller ID), same story
        held = _emu("x-3", callerid="5554444", talk_ms=2_000, real_time=True)
        running_r = asyncio.create_task(world.call(held, two))
        await _wait_open(engine, "x-3")
        refused_r = _emu("x-4", callerid="5554444")
        assert (await world.call(refused_r, one)).ok
        assert refused_r.variables["CALLGATE_STATUS"] == "CHANNEL_LIMIT"
        # IP CPS: one call per second, whichever server takes it
        fast = [_emu(f"x-{n}", source="203.0.114.21:5060") for n in (5, 6)]
        results = await asyncio.gather(world.call(fast[0], one), world.call(fast[1], two))
        assert all(r.ok for r in results)
        assert sorted(e.variables["CALLGATE_STATUS"] for e in fast) == ["CPS_LIMIT", "OK"]
        assert (await running).ok and (await running_r).ok
        async with engine.connect() as conn:
            servers = set(
                (await conn.execute(select(reservations.c.server).distinct())).scalars().all()
            )
        assert servers == {"callgate-1", "callgate-2"}
    finally:
        await one.server.shutdown(1)
        await two.server.shutdown(1)
        await other_engine.dispose()


# ---------------------------------------------------------------- caller ID rules


async def test_cli_rules_deny_allow_and_rewrite_before_dial(world: World) -> None:
    a = world.acct["a"].id
    async with world.engine.begin() as conn:
        await clirules.add_rule(conn, a, CliRuleAction.ALLOW, "_6660X.")
        await clirules.add_rule(conn, a, CliRuleAction.DENY, "666")
        await clirules.add_rule(
            conn, a, CliRuleAction.REWRITE, "_0X.", strip_digits=1, prepend="44"
        )
    await world.node.data.refresh()
    denied = _emu("cli-1", source="203.0.113.5:5060", callerid="6661234")
    assert (await world.call(denied)).ok
    assert denied.variables["CALLGATE_STATUS"] == "CLI_REJECTED" and denied.dials == []
    assert denied.variables["CALLGATE_HANGUPCAUSE"] == "21"
    assert (await world.row("cli-1"))["status"] == "CLI_REJECTED"
    allowed = _emu("cli-2", source="203.0.113.5:5060", callerid="66601234")  # allow first
    assert (await world.call(allowed)).ok
    assert allowed.variables["CALLGATE_STATUS"] == "OK"
    assert "CALLERID(num)" not in allowed.variables  # not rewritten: presented as received
    rewritten = _emu("cli-3", source="203.0.113.5:5060", callerid="02079460000")
    result = await world.call(rewritten)
    lines = _verbs(result)
    assert rewritten.variables["CALLERID(num)"] == "442079460000"
    assert ",CALLERID(num)=442079460000," in _just_before_dial(lines)
    assert (await world.row("cli-3"))["callerid"] == "02079460000"  # the record keeps the original


# ---------------------------------------------------------------- DIDs


async def test_did_call_is_billed_at_retail_with_the_provider_cost(world: World) -> None:
    async with world.engine.begin() as conn:
        await dids.add_did(
            conn,
            "+1 555 123 0000",
            "PJSIP/alice",
            account_id=world.acct["a"].id,
            provider_trunk="did-provider",
            provider_cost=Decimal("0.01"),
            retail_rate=Decimal("0.06"),
            retail_monthly=Decimal("2.00"),
        )
        await dids.add_did(
            conn,
            "15551230001",
            "442079460000",
            account_id=world.acct["a"].id,
            provider_trunk="did-provider",
            provider_cost=Decimal("0.01"),
            retail_rate=Decimal("0.06"),
        )
    inbound = _emu("did-1", script="did", extension="+15551230000", talk_ms=60_000)
    assert (await world.call(inbound)).ok and not inbound.violations
    (dial,) = inbound.dials
    assert dial.destination == "PJSIP/alice" and dial.limit_ms is not None and dial.stamped
    row = await world.row("did-1")
    assert row["script"] == "did" and row["status"] == "OK" and row["billsec"] == 60
    assert row["cost"] == Decimal("0.06000") and row["buy_cost"] == Decimal("0.01000")
    assert row["trunk"] == "did-provider" and row["account_id"] == world.acct["a"].id
    assert await world.balance("a") == Decimal("9.94000")
    # a DID forwarded to a number: DID retail + the outbound route, for the same seconds
    forwarded = _emu("did-2", script="did", extension="15551230001", talk_ms=60_000)
    assert (await world.call(forwarded)).ok
    assert forwarded.dials[0].destination == "PJSIP/442079460000@gw-a"
    row = await world.row("did-2")
    assert row["cost"] == Decimal("0.66000") and row["buy_cost"] == Decimal("0.31000")
    # unknown DID
    unknown = _emu("did-3", script="did", extension="15550000000")
    assert (await world.call(unknown)).ok
    assert unknown.variables["CALLGATE_STATUS"] == "NO_ACCOUNT" and unknown.dials == []


# ---------------------------------------------------------------- packages


async def test_free_package_seconds_are_used_first(world: World) -> None:
    async with world.engine.begin() as conn:
        await packages.add_package(conn, "uk2", PackageKind.FREE_MINUTES, quantity=2, prefixes="44")
        await packages.assign(conn, world.acct["a"].id, "uk2")
    await world.node.data.refresh()
    src = "203.0.113.9:5060"
    first = _emu("pk-1", source=src, talk_ms=90_000)
    assert (await world.call(first)).ok
    # 120 free seconds + what 10.00 pays at 0.60/min (1000 s) = 1120 s granted
    assert first.dials[0].limit_ms == 1_120_000
    assert (await world.row("pk-1"))["cost"] == 0
    second = _emu("pk-2", source=src, talk_ms=60_000)
    assert (await world.call(second)).ok
    assert (await world.row("pk-2"))["cost"] == Decimal("0.30000")  # 30 free, 30 paid
    third = _emu("pk-3", source=src, talk_ms=60_000)
    assert (await world.call(third)).ok
    assert (await world.row("pk-3"))["cost"] == Decimal("0.60000")  # nothing free left
    assert await world.balance("a") == Decimal("9.10000")
    async with world.engine.connect() as conn:
        used = (
            await conn.execute(
                select(
                    package_usage.c.uniqueid, package_usage.c.seconds, package_usage.c.status
                ).order_by(package_usage.c.id)
            )
        ).all()
    assert [tuple(r) for r in used] == [("pk-1", 90, "settled"), ("pk-2", 30, "settled")]
    # a number the package does not cover is billed in full, no hold
    other = _emu("pk-4", source=src, extension="4412345", talk_ms=10_000)
    assert (await world.call(other)).ok


async def test_a_refused_call_gives_its_held_free_seconds_back(world: World) -> None:
    async with world.engine.begin() as conn:
        await packages.add_package(conn, "all", PackageKind.UNLIMITED)
        await packages.assign(conn, world.acct["b"].id, "all")
        await ips.add_ip(conn, world.acct["b"].id, "203.0.114.30", cps_limit=0)
    await world.node.data.refresh()
    refused = _emu("pk-5", source="203.0.114.30")
    assert (await world.call(refused)).ok
    assert refused.variables["CALLGATE_STATUS"] == "CPS_LIMIT"
    async with world.engine.connect() as conn:
        status = await conn.scalar(
            select(package_usage.c.status).where(package_usage.c.uniqueid == "pk-5")
        )
    assert status == "released"


# ---------------------------------------------------------------- alerts


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], str]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        text = content.decode() if isinstance(content, bytes) else str(content)
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), text))
        return "250 OK"


@pytest.fixture
async def smtp_server() -> AsyncIterator[tuple[Inbox, int]]:
    inbox = Inbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(inbox), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield inbox, port
    finally:
        server.close()
        await server.wait_closed()


async def test_alert_fires_once_over_several_calls_and_the_email_arrives(
    engine: AsyncEngine, smtp_server: tuple[Inbox, int]
) -> None:
    inbox, port = smtp_server
    made, plan_ids = await _setup(engine)
    clock = Clock()
    service = AlertService(
        engine,
        SmtpSender(SmtpSettings(host="127.0.0.1", port=port, sender="callgate@example.com")),
        clock=clock,
    )
    async with engine.begin() as conn:
        for recipient in ("ops@example.com", "+15550001111"):
            await alert_store.add_alert(
                conn,
                made["a"].id,
                f"low balance {recipient}",
                recipient,
                AlertArea.BALANCE,
                AlertOperator.LT,
                Decimal("9.50"),
            )
    await service.refresh()
    node = await _node(engine, clock, plan_ids, alerts=service)
    world = World(engine, clock, node, made)
    try:
        for n in range(4):  # 10.00 -> 9.40 (crosses 9.50) -> 8.80 -> 8.20 -> 7.60
            emulator = _emu(f"al-{n}", source="203.0.113.7:5060", talk_ms=60_000)
            assert (await world.call(emulator)).ok
            await service.drain()
        assert await world.balance("a") == Decimal("7.60000")
        assert len(inbox.messages) == 1
        sender, recipients, text = inbox.messages[0]
        assert sender == "callgate@example.com" and recipients == ["ops@example.com"]
        assert "low balance ops@example.com" in text and "9.40000" in text
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(alert_notifications.c.channel, alert_notifications.c.status).order_by(
                        alert_notifications.c.id
                    )
                )
            ).all()
        # the phone recipient is recorded, pending (no SMS gateway)
        assert sorted(tuple(r) for r in rows) == [("email", "sent"), ("phone", "pending")]
        # a payment lifts the balance: re-armed; the next crossing fires again
        async with write_transaction(engine) as conn:
            await payments.add_payment(
                conn, made["a"].id, Decimal("12.40"), kind=PaymentKind.ADJUSTMENT
            )
        assert await service.check_all() == 0
        async with write_transaction(engine) as conn:
            await payments.add_payment(
                conn, made["a"].id, Decimal("-11.00"), kind=PaymentKind.ADJUSTMENT
            )
        assert await service.check_all() == 2
        assert len(inbox.messages) == 2
    finally:
        await node.server.shutdown(1)
        await service.aclose()


async def test_a_channels_alert_fires_while_the_call_is_up(engine: AsyncEngine) -> None:
    made, plan_ids = await _setup(engine)
    clock = Clock()
    sent: list[tuple[str, str]] = []

    async def send(recipient: str, subject: str, body: str) -> None:
        sent.append((recipient, subject))

    service = AlertService(engine, send, clock=clock)
    async with engine.begin() as conn:
        await alert_store.add_alert(
            conn,
            made["a"].id,
            "busy",
            "noc@example.com",
            AlertArea.CHANNELS,
            AlertOperator.GE,
            Decimal(1),
        )
    await service.refresh()
    node = await _node(engine, clock, plan_ids, alerts=service)
    world = World(engine, clock, node, made)
    try:
        call = _emu("busy-1", source="203.0.113.7:5060", talk_ms=2_000, real_time=True)
        running = asyncio.create_task(world.call(call))
        await _wait_open(engine, "busy-1")
        async with asyncio.timeout(5):
            while not sent:
                await service.drain()
                await asyncio.sleep(0.02)
        assert sent == [("noc@example.com", sent[0][1])] and "channels is 1" in sent[0][1]
        assert (await running).ok
        await service.drain()
        async with engine.connect() as conn:
            (alert,) = await alert_store.list_alerts(conn, made["a"].id)
        assert alert.state.value == "armed" and len(sent) == 1  # re-armed once the call ended
    finally:
        await node.server.shutdown(1)
        await service.aclose()


# ---------------------------------------------------------------- recording


async def test_recording_tables_get_mixmonitor_before_dial_and_the_path_is_stored(
    world: World,
) -> None:
    recorded = _emu("rec-1.42", callerid="5554444", emulator=RecordingAsterisk)
    result = await world.call(recorded)
    assert result.ok and not recorded.violations
    lines = _verbs(result)
    path = f"{RECORDINGS}/rec-1.42.wav"
    assert lines[_index(lines, "EXEC MixMonitor")] == f"EXEC MixMonitor {path},b"
    assert _index(lines, "EXEC MixMonitor") < _index(lines, "EXEC Dial")
    assert (await world.row("rec-1.42"))["recording"] == path
    plain = _emu("rec-2", source="203.0.113.5:5060", emulator=RecordingAsterisk)
    result = await world.call(plain)
    assert not any(line.startswith("EXEC MixMonitor") for line in _verbs(result))
    assert (await world.row("rec-2"))["recording"] == ""
