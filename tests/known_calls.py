"""A known set of billing records, shared by the store and the CLI tests of calls and CDRs.

``tests/`` is on ``sys.path`` because pytest puts the root conftest's folder there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.rating import Rate, cost
from callgate.schema.tables import CallStatus, rates
from callgate.store import accounts as account_store
from callgate.store import ledger, plans

RATE = Rate(prefix="44", rate=Decimal("0.60"), initial_block=30, increment=6, destination="UK")
DAY1 = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
DAY2 = datetime(2026, 11, 21, 9, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Spec:
    uniqueid: str
    started: datetime
    billsec: int
    dial_status: str
    pdd_ms: int | None
    cause: int | None
    status: CallStatus = CallStatus.OK
    number: str = "442079460000"


# a known set: 6 attempts, 3 answered, 3 in one second
SPECS = (
    Spec("c1", DAY1 + timedelta(milliseconds=100), 60, "ANSWER", 1000, 16),
    Spec("c2", DAY1 + timedelta(milliseconds=500), 30, "ANSWER", 3000, 16),
    Spec("c3", DAY1 + timedelta(milliseconds=900), 0, "BUSY", 500, 17),
    Spec("c4", DAY1 + timedelta(seconds=5), 0, "NOANSWER", None, 19, number="15551230000"),
    Spec("c5", DAY2, 120, "ANSWER", 2000, 16),
    Spec("c6", DAY2 + timedelta(seconds=1), 0, "", None, None, CallStatus.NO_CREDIT),
)


async def seed(engine: AsyncEngine, specs: tuple[Spec, ...] = SPECS) -> tuple[int, int]:
    async with engine.begin() as conn:
        await plans.create_rate_table(conn, name="std")
        await plans.add_rates(
            conn,
            "std",
            [
                {
                    "prefix": "44",
                    "destination": "UK",
                    "rate": RATE.rate,
                    "initial_block": 30,
                    "increment": 6,
                }
            ],
        )
        rate_id = int(await conn.scalar(select(rates.c.id)) or 0)
        plan = await plans.create_call_plan(conn, name="p")
        account = await account_store.create_account(
            conn, call_plan_id=plan.id, number="8000000001", balance=Decimal("10.00")
        )
    for spec in specs:
        await ledger.record_attempt(
            engine,
            ledger.CallRecord(
                uniqueid=spec.uniqueid,
                status=spec.status,
                started_at=spec.started,
                account_id=account.id,
                number=spec.number,
                prefix="44" if spec.number.startswith("44") else "1",
                destination="UK" if spec.number.startswith("44") else "USA",
                rate_id=rate_id,
                trunk="carrier-a" if spec.number.startswith("44") else "carrier-b",
                billsec=spec.billsec,
                dial_status=spec.dial_status,
                pdd_ms=spec.pdd_ms,
                hangup_cause=spec.cause,
                cost=cost(RATE, spec.billsec),
            ),
        )
    return account.id, rate_id
