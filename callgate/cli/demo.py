"""``callgate demo``: a whole small telephone business, end to end, in a few seconds.

It creates a demo database (trunks with a failover, a call plan of two rate tables, a few
prepaid, postpaid and inactive accounts with caller IDs), starts the real FastAGI server on a
free loopback port, and drives a few dozen calls through it over real sockets with a built-in
client that speaks like Asterisk 22 (``callgate.agi.client``): answered calls (some cut by the
credit limit), busy and unanswered calls, trunk failover, unknown callers, an inactive account,
a destination without a rate. Then it prints the billing records and the balances, and checks
the ledger: for every account, the money that left the balance equals the sum of its calls.
Talk time is simulated (the emulated Asterisk clock jumps), so the demo takes seconds.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from sqlalchemy import select

from callgate.agi.client import (
    AsteriskEmulator,
    ChannelSpec,
    DialOutcome,
    DialStatus,
    FakeAsterisk,
)
from callgate.cli._common import app, echo_json, echo_table
from callgate.cli.runtime import StartupError, open_runtime, with_agi_port
from callgate.config import Settings
from callgate.schema.migrate import upgrade
from callgate.schema.tables import accounts, calls
from callgate.store import accounts as account_store
from callgate.store import plans
from callgate.store.db import create_engine, write_transaction
from callgate.store.rates import import_rates

DEFAULT_DEMO_DB = "callgate-demo.db"

WHOLESALE_A = """prefix,destination,rate,initial_block,increment,buy_rate,connect_fee
44,United Kingdom,0.0600,30,6,0.0200,0
4420,United Kingdom London,0.0400,30,6,0.0120,0
447,United Kingdom Mobile,0.1800,30,6,0.0900,0.0100
1,USA/Canada,0.0200,6,6,0.0050,0
1212,USA New York,0.0200,6,6,0.0040,0
33,France,0.0700,60,60,0.0250,0
""".splitlines()

WHOLESALE_C = """prefix,destination,rate,initial_block,increment,buy_rate,minimal_cost
44,United Kingdom (premium),0.0900,1,1,0.0300,0.0200
4420,United Kingdom London (premium),0.0700,1,1,0.0250,0.0200
33,France (premium),0.1000,1,1,0.0400,0
""".splitlines()

ACCOUNTS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    # number, caller ID, label, fields
    ("7000000001", "15550001", "prepaid 0.50", {"balance": Decimal("0.50")}),
    ("7000000002", "15550002", "prepaid 2.00", {"balance": Decimal("2.00")}),
    ("7000000003", "15550003", "prepaid 10.00", {"balance": Decimal("10.00")}),
    (
        "7000000004",
        "15550004",
        "postpaid, debit limit 5.00",
        {"balance": Decimal("0"), "debit_limit": Decimal("5.00")},
    ),
    ("7000000005", "15550005", "inactive", {"balance": Decimal("3.00"), "status": "inactive"}),
)

NUMBERS = ("00442079460000", "0044207946", "00447700900123", "0012125550100", "0033142685300")


@dataclass(frozen=True, slots=True)
class PlannedCall:
    uniqueid: str
    accountcode: str
    callerid: str
    extension: str
    outcomes: tuple[DialOutcome, ...]


def plan_calls(count: int, seed: int) -> list[PlannedCall]:
    """A reproducible mix of calls for the demo."""
    rng = random.Random(seed)
    planned: list[PlannedCall] = []
    for n in range(count):
        number, callerid, *_ = ACCOUNTS[n % 4]
        uniqueid = f"1763769600.{n + 1}"
        kind = n % 12
        extension = NUMBERS[rng.randrange(len(NUMBERS))]
        outcomes: tuple[DialOutcome, ...]
        talk = rng.randrange(5_000, 900_000)
        ring = rng.randrange(1_000, 9_000)
        if kind == 3:
            outcomes = (DialOutcome.failed(DialStatus.BUSY, ring_ms=ring),)
        elif kind == 5:
            outcomes = (DialOutcome.failed(DialStatus.NOANSWER, ring_ms=30_000),)
        elif kind == 7:  # the first trunk is down: failover to its backup trunk
            outcomes = (
                DialOutcome.failed(DialStatus.CHANUNAVAIL),
                DialOutcome.answered(talk, ring_ms=ring),
            )
        elif kind == 9:  # both trunks of the first route congested: the next route
            outcomes = (
                DialOutcome.failed(DialStatus.CONGESTION),
                DialOutcome.failed(DialStatus.CONGESTION),
                DialOutcome.answered(talk, ring_ms=ring),
            )
        elif kind == 10:  # the caller hangs up while talking
            outcomes = (DialOutcome.caller_hangs_up(ring + talk // 3, ring_ms=ring),)
        else:
            outcomes = (DialOutcome.answered(talk, ring_ms=ring),)
        accountcode = number if kind != 6 else ""  # identified by caller ID instead
        planned.append(PlannedCall(uniqueid, accountcode, callerid, extension, outcomes))
    # the refusals an operator must see
    planned.append(
        PlannedCall("1763769600.901", "", "15559999", NUMBERS[0], (DialOutcome(),))
    )  # unknown caller
    planned.append(
        PlannedCall("1763769600.902", "7000000005", "15550005", NUMBERS[0], (DialOutcome(),))
    )  # inactive
    planned.append(
        PlannedCall("1763769600.903", "7000000003", "15550003", "00861012345678", (DialOutcome(),))
    )  # no rate for China
    return planned


async def seed_demo(engine: Any, settings: Settings) -> None:
    """The demo's trunks, plan, rate tables, rates and accounts."""
    async with write_transaction(engine) as conn:
        await plans.create_trunk(conn, name="backup-sip", technology="SIP", peer="backup-gw")
        await plans.create_trunk(
            conn,
            name="wholesale-a",
            technology="PJSIP",
            peer="carrier-a",
            failover="backup-sip",
        )
        await plans.create_trunk(conn, name="premium-c", technology="IAX2", peer="carrier-c")
        plan = await plans.create_call_plan(
            conn, name="demo-retail", routing_mode="lcr", max_call_seconds=3600
        )
        await plans.create_rate_table(conn, name="wholesale-a", trunk="wholesale-a")
        await plans.create_rate_table(conn, name="premium-c", trunk="premium-c")
        await plans.attach_rate_table(conn, "demo-retail", "wholesale-a", priority=1)
        await plans.attach_rate_table(conn, "demo-retail", "premium-c", priority=2)
        zone = ZoneInfo(settings.billing.timezone)
        await import_rates(conn, "wholesale-a", WHOLESALE_A, zone=zone)
        await import_rates(conn, "premium-c", WHOLESALE_C, zone=zone)
        for number, callerid, _label, fields in ACCOUNTS:
            account = await account_store.create_account(
                conn, call_plan_id=plan.id, number=number, **fields
            )
            await account_store.add_callerid(conn, account.id, callerid)


async def run_demo(
    settings: Settings, *, calls_count: int, concurrency: int, seed: int
) -> dict[str, Any]:
    engine = create_engine(settings.database_url)
    await upgrade(engine)
    await seed_demo(engine, settings)
    async with engine.connect() as conn:
        before = {
            row.number: row.balance
            for row in await conn.execute(select(accounts.c.number, accounts.c.balance))
        }
    demo_settings = with_agi_port(settings, "127.0.0.1", 0)
    runtime = await open_runtime(demo_settings, engine=engine)
    asterisk = FakeAsterisk("127.0.0.1", runtime.server.port)
    gate = asyncio.Semaphore(concurrency)
    results: list[Any] = []

    async def one(call: PlannedCall) -> None:
        spec = ChannelSpec(
            uniqueid=call.uniqueid,
            channel=f"PJSIP/customer-{call.uniqueid.split('.')[-1]}",
            extension=call.extension,
            callerid=call.callerid,
            accountcode=call.accountcode,
        )
        async with gate:
            emulator = AsteriskEmulator(spec, dial_outcomes=call.outcomes)
            results.append((await asterisk.call(spec, emulator), emulator))

    try:
        await asyncio.gather(*(one(c) for c in plan_calls(calls_count, seed)))
    finally:
        await runtime.server.shutdown(5)
    engine2 = create_engine(settings.database_url)
    try:
        async with engine2.connect() as conn:
            rows = (
                await conn.execute(
                    select(calls, accounts.c.number.label("account_number"))
                    .outerjoin(accounts, accounts.c.id == calls.c.account_id)
                    .order_by(calls.c.id)
                )
            ).all()
            after = {
                row.number: row.balance
                for row in await conn.execute(select(accounts.c.number, accounts.c.balance))
            }
    finally:
        await engine2.dispose()
        await runtime.stop(0)
    records = [
        {
            "uniqueid": r.uniqueid,
            "account": r.account_number or "-",
            "number": r.number or r.dialed_number,
            "destination": r.destination,
            "trunk": r.trunk,
            "dial_status": r.dial_status,
            "granted_seconds": r.granted_seconds,
            "billsec": r.billsec,
            "cost": r.cost,
            "status": r.status,
        }
        for r in rows
    ]
    balances = []
    ledger_ok = True
    for number, _cid, label, _fields in ACCOUNTS:
        spent = sum((rec["cost"] for rec in records if rec["account"] == number), start=Decimal(0))
        moved = before[number] - after[number]
        ok = moved == spent
        ledger_ok = ledger_ok and ok
        balances.append(
            {
                "account": number,
                "kind": label,
                "before": before[number],
                "after": after[number],
                "charged": spent,
                "consistent": ok,
            }
        )
    server_closed = all(result.server_closed for result, _ in results)
    violations = [v for _, em in results for v in em.violations]
    return {
        "calls": records,
        "balances": balances,
        "ledger_consistent": ledger_ok,
        "sockets_closed_by_server": server_closed,
        "protocol_violations": violations,
    }


@click.command()
@click.option(
    "--database-url",
    default=None,
    help=f"Where to build the demo (default: a fresh SQLite file ./{DEFAULT_DEMO_DB}); "
    "a PostgreSQL database given here must be empty.",
)
@click.option("--calls", "calls_count", type=int, default=36, show_default=True)
@click.option("--concurrency", type=int, default=8, show_default=True)
@click.option("--seed", type=int, default=2026, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def demo(
    database_url: str | None, calls_count: int, concurrency: int, seed: int, as_json: bool
) -> None:
    """Build a demo business, run calls through the real server, print records and balances."""
    settings = app().settings
    if database_url is None:
        path = Path(DEFAULT_DEMO_DB)
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        database_url = f"sqlite+aiosqlite:///{path}"
    settings = replace(settings, database_url=database_url)
    try:
        result = asyncio.run(
            run_demo(settings, calls_count=calls_count, concurrency=concurrency, seed=seed)
        )
    except StartupError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        echo_json(result)
    else:
        click.echo("Billing records (one per call attempt):")
        echo_table(
            [
                "uniqueid",
                "account",
                "number",
                "destination",
                "trunk",
                "dial",
                "granted",
                "billsec",
                "cost",
                "status",
            ],
            [
                [
                    r["uniqueid"],
                    r["account"],
                    r["number"],
                    r["destination"],
                    r["trunk"],
                    r["dial_status"] or "-",
                    r["granted_seconds"],
                    r["billsec"],
                    r["cost"],
                    r["status"],
                ]
                for r in result["calls"]
            ],
        )
        click.echo("")
        click.echo("Balances:")
        echo_table(
            ["account", "kind", "before", "after", "charged", "consistent"],
            [
                [
                    b["account"],
                    b["kind"],
                    b["before"],
                    b["after"],
                    b["charged"],
                    "yes" if b["consistent"] else "NO",
                ]
                for b in result["balances"]
            ],
        )
        click.echo("")
        click.echo(
            f"ledger consistent: {'yes' if result['ledger_consistent'] else 'NO'}; "
            f"every socket closed by the server: "
            f"{'yes' if result['sockets_closed_by_server'] else 'NO'}; "
            f"protocol violations: {len(result['protocol_violations'])}"
        )
    if not (result["ledger_consistent"] and result["sockets_closed_by_server"]):
        raise click.ClickException("the demo found an inconsistency (see above)")
