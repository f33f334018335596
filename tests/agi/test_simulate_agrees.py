"""`callgate simulate` and a live call decide alike (issue 12, item 2), on both databases.

For each case the same call is simulated through the CLI (``--at`` the live call's start) and
then placed over a real FastAGI socket by the fake Asterisk against the server's flow (the rate
cache, the live ledger and wholesale data, as ``callgate serve`` builds them). Both must agree on
the status, the granted seconds and the Dial string (the simulated uniqueid stands for the live
one). Simulate runs first and must leave nothing behind: no reservation, no package hold.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.agi.client import AsteriskEmulator, ChannelSpec, DialOutcome, FakeAsterisk
from callgate.agi.flows.call import CallFlows, flow_settings
from callgate.agi.server import AgiServer
from callgate.cli.main import cli
from callgate.config import load_settings
from callgate.schema.tables import CliRuleAction, PackageKind, package_usage, reservations
from callgate.store import accounts as account_store
from callgate.store import clirules, ips, packages, plans
from callgate.store.callstore import RoutingData, SqlAccounts, SqlLedger, WholesaleData
from callgate.store.ratecache import RateCache

NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
FROZEN_MS = 1_763_769_600_000


@dataclass(frozen=True)
class Case:
    name: str
    number: str  # the dialled number (the AGI extension, simulate's --number)
    account: str = ""  # the AGI argument, simulate's --account
    callerid: str = "5550000"
    source: str = ""  # the SIP source address, simulate's --source-ip
    status: str = "OK"
    granted: int = 0


CASES = (
    # 10.00 at 0.60/min per second: 1000 s, under the plan's 3600 s cap
    Case("normal", "442079460000", account="2000000001", granted=1000),
    Case("cli-rule", "442079460000", "2000000002", callerid="6665551", status="CLI_REJECTED"),
    # no credit, 5 free minutes of a package covering 44
    Case("package", "442079460000", account="2000000003", granted=300),
    # no argument: the source address's entry, tech prefix 99 stripped before rating
    Case("ip-auth", "99442079460000", source="198.51.100.20:5060", granted=500),
    Case("no-credit", "442079460000", account="2000000005", status="NO_CREDIT"),
)


@dataclass
class Live:
    engine: AsyncEngine
    db_url: str
    asterisk: FakeAsterisk


async def _seed(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await plans.create_trunk(conn, name="carrier-a", technology="PJSIP", peer="gw-a")
        plan = await plans.create_call_plan(conn, name="wholesale", max_call_seconds=3600)
        await plans.create_rate_table(conn, name="std", trunk="carrier-a")
        await plans.attach_rate_table(conn, "wholesale", "std")
        await plans.add_rates(
            conn,
            "std",
            [
                {
                    "prefix": "44",
                    "destination": "UK",
                    "rate": Decimal("0.60"),
                    "buy_rate": Decimal("0.30"),
                    "initial_block": 1,
                    "increment": 1,
                }
            ],
        )
        made = {}
        for number, balance in (
            ("2000000001", "10.00"),
            ("2000000002", "10.00"),
            ("2000000003", "0.00"),
            ("2000000004", "5.00"),
            ("2000000005", "0.005"),
        ):
            made[number] = await account_store.create_account(
                conn, call_plan_id=plan.id, number=number, balance=Decimal(balance)
            )
        await clirules.add_rule(conn, made["2000000002"].id, CliRuleAction.DENY, "666")
        await packages.add_package(
            conn, "uk-5", PackageKind.FREE_MINUTES, quantity=5, prefixes="44"
        )
        await packages.assign(conn, made["2000000003"].id, "uk-5")
        await ips.add_ip(
            conn, made["2000000004"].id, "198.51.100.20", tech_prefix="99", cli_prefix="1"
        )


@pytest.fixture
async def live(db_url: str, engine: AsyncEngine) -> AsyncIterator[Live]:
    await _seed(engine)
    cache = RateCache(engine, listen=False)
    await cache.start()
    routing = RoutingData(engine, cache.plan)
    await routing.refresh()
    data = WholesaleData(engine, grace_seconds=60)
    await data.refresh()
    settings = load_settings(environ={"CALLGATE_DATABASE_URL": db_url})
    flows = CallFlows(
        accounts=SqlAccounts(engine),
        plans=routing,
        ledger=SqlLedger(engine, grace_seconds=60),
        settings=flow_settings(settings),
        clock=lambda: NOON,
        ips=data,
        cli_rules=data,
        packages=data,
        extras=data,
    )
    server = AgiServer({"call": flows.call}, port=0)
    await server.start()
    try:
        yield Live(engine, db_url, FakeAsterisk("127.0.0.1", server.port))
    finally:
        await server.shutdown(1)
        await cache.close()


def _simulate(db_url: str, case: Case) -> dict[str, Any]:
    args = ["simulate", "--number", case.number, "--at", NOON.isoformat(), "--json"]
    if case.account:
        args += ["--account", case.account]
    if case.callerid:
        args += ["--callerid", case.callerid]
    if case.source:
        args += ["--source-ip", case.source]
    result = CliRunner().invoke(cli, args, env={"CALLGATE_DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


async def _open_rows(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        held = await conn.scalar(select(func.count()).select_from(package_usage))
        reserved = await conn.scalar(select(func.count()).select_from(reservations))
    return int(held or 0), int(reserved or 0)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_simulate_and_a_live_call_agree(live: Live, case: Case) -> None:
    before = await _open_rows(live.engine)
    simulated = await asyncio.to_thread(_simulate, live.db_url, case)
    assert await _open_rows(live.engine) == before  # simulate reserved and held nothing

    uniqueid = f"live-{case.name}"
    spec = ChannelSpec(
        uniqueid=uniqueid,
        extension=case.number,
        callerid=case.callerid,
        accountcode="",
        args=(case.account,) if case.account else (),
    )
    variables = {"CHANNEL(pjsip,remote_addr)": case.source} if case.source else {}
    emulator = AsteriskEmulator(
        spec,
        variables=variables,
        dial_outcomes=[DialOutcome.answered(30_000)],
        clock_ms=lambda: FROZEN_MS,
    )
    result = await live.asterisk.call(spec, emulator)
    assert result.ok and not emulator.violations

    live_status = emulator.variables["CALLGATE_STATUS"]
    live_granted = int(emulator.variables.get("CALLGATE_MAXSEC", "0"))
    live_dial = emulator.dials[0].args.replace(uniqueid, "simulated") if emulator.dials else ""
    assert (simulated["status"], simulated["granted_seconds"], simulated["dial"]) == (
        live_status,
        live_granted,
        live_dial,
    )
    # and both are what the case expects
    assert live_status == case.status and live_granted == case.granted
    if case.status == "OK":
        assert live_dial.startswith(f"PJSIP/{case.number[-12:]}@gw-a,")
        assert f"L({case.granted * 1000}" in live_dial
    if case.name == "package":
        assert simulated["free_seconds"] == 300
    if case.name == "ip-auth":
        assert simulated["account"]["number"] == "2000000004"
        assert simulated["callerid"] == emulator.variables["CALLERID(num)"] == "15550000"
