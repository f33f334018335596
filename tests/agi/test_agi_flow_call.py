"""The `call` and `card` flows end to end: a fake Asterisk over real TCP, a real database.

Each test drives whole calls through the FastAGI server with the Asterisk emulator of
``callgate.agi.client`` and checks the billing records and balances in the database (both
backends).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from call_paths import open_test_call_path
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate import metrics
from callgate.agi.client import (
    AsteriskEmulator,
    ChannelSpec,
    DialOutcome,
    DialStatus,
    Emit,
    FakeAsterisk,
    FakeCallResult,
    ReceivedCommand,
)
from callgate.agi.flows.call import CallFlows, FlowSettings
from callgate.agi.server import AgiServer
from callgate.rating import CallPlan, PlanTable, PrefixIndex, Rate, RoutingMode
from callgate.schema.tables import accounts, calls, reservations
from callgate.store import accounts as account_store
from callgate.store import plans
from callgate.store.callstore import RoutingData, SqlAccounts, SqlLedger

UK = Rate(
    prefix="44",
    rate=Decimal("0.60"),
    initial_block=30,
    increment=6,
    buy_rate=Decimal("0.30"),
    destination="UK",
    trunk="carrier-a",
)
UK_BACKUP = Rate(
    prefix="44",
    rate=Decimal("0.90"),
    initial_block=60,
    increment=60,
    buy_rate=Decimal("0.50"),
    destination="UK (backup)",
    trunk="carrier-c",
)


@dataclass
class Harness:
    engine: AsyncEngine
    server: AgiServer
    asterisk: FakeAsterisk
    account: account_store.Account
    flows_plans: RoutingData

    async def call(self, emulator: AsteriskEmulator) -> FakeCallResult:
        return await self.asterisk.call(emulator.spec, emulator)

    async def balance(self) -> Decimal:
        async with self.engine.connect() as conn:
            value = await conn.scalar(
                select(accounts.c.balance).where(accounts.c.id == self.account.id)
            )
        assert isinstance(value, Decimal)
        return value

    async def call_row(self, uniqueid: str) -> dict[str, object]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(calls).where(calls.c.uniqueid == uniqueid))).one()
        return dict(row._mapping)

    async def open_reservations(self) -> int:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(select(reservations).where(reservations.c.status == "open"))
            ).all()
        return len(rows)


@pytest.fixture
async def harness(engine: AsyncEngine, call_path: str) -> AsyncIterator[Harness]:
    """The flows on each call path (``[database] call_path``: core, and lean, the default)."""
    async with engine.begin() as conn:
        await plans.create_trunk(conn, name="carrier-b", technology="SIP", peer="gw-b")
        await plans.create_trunk(
            conn,
            name="carrier-a",
            technology="PJSIP",
            peer="gw-a",
            dial_prefix="00",
            failover="carrier-b",
        )
        await plans.create_trunk(conn, name="carrier-c", technology="IAX2", peer="gw-c")
        plan_row = await plans.create_call_plan(conn, name="retail")
        account = await account_store.create_account(
            conn, call_plan_id=plan_row.id, number="1000000001", balance=Decimal("1.00")
        )
        await account_store.add_callerid(conn, account.id, "5551001")
    plan = CallPlan(
        name="retail",
        mode=RoutingMode.LCR,
        max_call_seconds=3600,
        tables=(
            PlanTable("std", 1, PrefixIndex("std", [UK])),
            PlanTable("backup", 2, PrefixIndex("backup", [UK_BACKUP])),
        ),
    )
    routing = RoutingData(engine, lambda plan_id: plan if plan_id == plan_row.id else None)
    await routing.refresh()
    path = await open_test_call_path(call_path, engine)
    flows = CallFlows(
        accounts=path.accounts,
        plans=routing,
        ledger=path.ledger,
        settings=FlowSettings(dial_warning_seconds=30),
    )
    server = AgiServer({"call": flows.call, "card": flows.card}, port=0)
    await server.start()
    try:
        yield Harness(engine, server, FakeAsterisk("127.0.0.1", server.port), account, routing)
    finally:
        await server.shutdown(1)
        await path.close()


FROZEN_MS = 1_763_769_600_000  # the emulated Asterisk clock stands still but for simulated time


def _emulator(spec: ChannelSpec, **kwargs: Any) -> AsteriskEmulator:
    return AsteriskEmulator(spec, clock_ms=lambda: FROZEN_MS, **kwargs)


def _spec(uniqueid: str, **changes: object) -> ChannelSpec:
    values: dict[str, object] = {
        "uniqueid": uniqueid,
        "extension": "00442079460000",
        "accountcode": "1000000001",
    }
    values.update(changes)
    return ChannelSpec(**values)  # type: ignore[arg-type]


async def test_answered_call_is_limited_and_billed_from_the_answer_stamp(
    harness: Harness,
) -> None:
    spec = _spec("call-1")
    emulator = _emulator(spec, dial_outcomes=[DialOutcome.answered(61_000, ring_ms=4_000)])
    result = await harness.call(emulator)
    assert result.ok and not emulator.violations
    (dial,) = emulator.dials
    # 1.00 at 0.60/min, 30/6: 96 s granted, dialled via carrier-a's prefix 00, warning at 30 s
    assert dial.destination == "PJSIP/00442079460000@gw-a"
    assert dial.limit_ms == 96_000 and "L(96000:30000)" in dial.options
    assert dial.stamped
    row = await harness.call_row("call-1")
    assert row["billsec"] == 61 and row["status"] == "OK" and row["dial_status"] == "ANSWER"
    assert row["cost"] == Decimal("0.66000") and row["buy_cost"] == Decimal(
        "0.30500"
    )  # buy side: per second
    assert row["prefix"] == "44" and row["trunk"] == "carrier-a" and row["number"] == "442079460000"
    assert await harness.balance() == Decimal("0.34000")
    assert await harness.open_reservations() == 0
    assert emulator.variables["CALLGATE_STATUS"] == "OK"
    assert emulator.variables["CALLGATE_ACCOUNT"] == "1000000001"
    assert emulator.variables["CALLGATE_MAXSEC"] == "96"
    # four round trips: the dialplan's variables ride with the stamp cleared before Dial and
    # with the outcome, one MSet each
    assert len(result.lines) == 4, result.lines
    assert result.lines[0] == (
        "EXEC MSet CALLGATE_ACCOUNT=1000000001,CALLGATE_MAXSEC=96,SHARED(CALLGATE_ANSWER_MS)="
    )
    assert result.lines[1].startswith("EXEC Dial PJSIP/00442079460000@gw-a,")
    assert result.lines[2].startswith("GET FULL VARIABLE ")
    assert result.lines[3] == "EXEC MSet CALLGATE_STATUS=OK,CALLGATE_HANGUPCAUSE=16"


async def test_limit_cuts_the_call_and_the_charge_never_exceeds_the_grant(
    harness: Harness,
) -> None:
    emulator = _emulator(
        _spec("call-2"), dial_outcomes=[DialOutcome.answered(3_600_000, ring_ms=1_000)]
    )
    assert (await harness.call(emulator)).ok
    assert emulator.dials[0].ended_by == "limit"
    row = await harness.call_row("call-2")
    assert row["billsec"] == 96 and row["cost"] == Decimal("0.96000")
    assert await harness.balance() == Decimal("0.04000")
    # nothing left for a first block: the next call is refused and not dialled
    refused = _emulator(_spec("call-3"))
    assert (await harness.call(refused)).ok
    assert refused.dials == []
    assert refused.variables["CALLGATE_STATUS"] == "NO_CREDIT"
    assert refused.variables["CALLGATE_HANGUPCAUSE"] == "21"
    assert (await harness.call_row("call-3"))["status"] == "NO_CREDIT"


@pytest.mark.parametrize("status", [DialStatus.BUSY, DialStatus.NOANSWER])
async def test_unanswered_calls_are_free_and_recorded(harness: Harness, status: DialStatus) -> None:
    emulator = _emulator(_spec("call-4"), dial_outcomes=[DialOutcome.failed(status)])
    assert (await harness.call(emulator)).ok
    assert len(emulator.dials) == 1  # BUSY and NOANSWER do not fail over
    row = await harness.call_row("call-4")
    assert row["dial_status"] == status.value and row["cost"] == 0 and row["billsec"] == 0
    assert await harness.balance() == Decimal("1.00000")
    assert await harness.open_reservations() == 0


async def test_failover_to_the_trunks_backup_then_to_the_next_route(harness: Harness) -> None:
    emulator = _emulator(
        _spec("call-5"),
        dial_outcomes=[
            DialOutcome.failed(DialStatus.CHANUNAVAIL),
            DialOutcome.failed(DialStatus.CONGESTION),
            DialOutcome.answered(30_000),
        ],
    )
    assert (await harness.call(emulator)).ok
    assert [d.destination for d in emulator.dials] == [
        "PJSIP/00442079460000@gw-a",
        "SIP/gw-b/442079460000",
        "IAX2/gw-c/442079460000",
    ]
    # the backup route is 0.90/min 60/60: the grant is recomputed for it, 1.00 buys 60 s
    row = await harness.call_row("call-5")
    assert row["rate_table"] == "backup" and row["granted_seconds"] == 60
    assert emulator.dials[2].limit_ms == 60_000
    assert row["billsec"] == 30 and row["cost"] == Decimal("0.90000")
    assert emulator.variables["CALLGATE_MAXSEC"] == "60"


async def test_caller_hangup_during_dial_bills_the_talk_so_far(harness: Harness) -> None:
    emulator = _emulator(
        _spec("call-6"), dial_outcomes=[DialOutcome.caller_hangs_up(20_500, ring_ms=2_000)]
    )
    result = await harness.call(emulator)
    assert result.ok
    row = await harness.call_row("call-6")
    assert row["billsec"] == 19  # 18.5 s of talk, a started second is a second
    assert row["cost"] == Decimal("0.30000")  # the first 30 s block
    assert emulator.variables["CALLGATE_STATUS"] == "OK"


async def test_unknown_caller_is_refused_and_nothing_is_dialled(harness: Harness) -> None:
    emulator = _emulator(_spec("call-7", accountcode="", callerid="5559999"))
    assert (await harness.call(emulator)).ok
    assert emulator.dials == []
    assert emulator.variables["CALLGATE_STATUS"] == "NO_ACCOUNT"
    assert (await harness.call_row("call-7"))["account_id"] is None


async def test_identified_by_caller_id_or_argument(harness: Harness) -> None:
    by_cid = _emulator(_spec("call-8", accountcode=""))
    assert (await harness.call(by_cid)).ok
    assert by_cid.variables["CALLGATE_ACCOUNT"] == "1000000001"
    by_arg = _emulator(_spec("call-9", accountcode="", callerid="", args=(harness.account.alias,)))
    assert (await harness.call(by_arg)).ok
    assert by_arg.variables["CALLGATE_ACCOUNT"] == "1000000001"


async def test_no_rate_for_the_destination(harness: Harness) -> None:
    emulator = _emulator(_spec("call-10", extension="0033123456789"))
    assert (await harness.call(emulator)).ok
    assert emulator.dials == [] and emulator.variables["CALLGATE_STATUS"] == "NO_RATE"
    assert emulator.variables["CALLGATE_HANGUPCAUSE"] == "3"


async def test_missing_answer_stamp_is_billed_from_answeredtime(harness: Harness) -> None:
    emulator = _emulator(
        _spec("call-11"), dial_outcomes=[DialOutcome.answered(40_000, ring_ms=1_000)]
    )
    emulator.spec = _spec("someone-else")  # the U() stamp lands on another channel
    result = await harness.asterisk.call(_spec("call-11"), emulator)
    assert result.ok
    row = await harness.call_row("call-11")
    assert row["billsec"] == 40 and row["cost"] == Decimal("0.42000")
    assert "answer stamp" in str(row["note"])


async def test_calling_card_prompts_announces_and_dials(harness: Harness) -> None:
    spec = _spec("card-1", script="card", accountcode="", callerid="5557777")
    emulator = _emulator(
        spec,
        digits=["999", "1000000001", "442079460000"],
        dial_outcomes=[DialOutcome.answered(10_000)],
    )
    assert (await harness.call(emulator)).ok
    verbs = [c.line for c in (await harness.call(_emulator(_spec("x", script="nope")))).commands]
    assert verbs and verbs[0].startswith("VERBOSE")
    assert emulator.variables["CALLGATE_STATUS"] == "OK"
    row = await harness.call_row("card-1")
    assert row["script"] == "card" and row["billsec"] == 10


async def test_caller_hanging_up_during_a_card_prompt_reserves_nothing(harness: Harness) -> None:
    spec = _spec("card-2", script="card", accountcode="", callerid="5558888")
    emulator = _emulator(spec, digits=["1000000001"], hangup_during=["GET DATA"])
    result = await harness.call(emulator)
    assert result.ok and emulator.dials == []
    assert emulator.variables["CALLGATE_STATUS"] == "ERROR"
    assert await harness.open_reservations() == 0
    assert (await harness.call_row("card-2"))["status"] == "ERROR"


async def test_calling_card_locks_out_a_caller_after_repeated_failures(harness: Harness) -> None:
    # card_lockout_failures=5, three tries per call: the second call locks the caller ID out
    for n in range(2):
        spec = _spec(f"card-bad-{n}", script="card", accountcode="", callerid="5556666")
        emulator = _emulator(spec, digits=["1", "2", "3"])
        assert (await harness.call(emulator)).ok
        assert emulator.variables["CALLGATE_STATUS"] == "NO_ACCOUNT"
    spec = _spec("card-locked", script="card", accountcode="", callerid="5556666")
    locked = _emulator(spec, digits=["1000000001", "442079460000"])
    result = await harness.call(locked)
    assert result.ok
    assert locked.dials == [] and locked.variables["CALLGATE_STATUS"] == "NO_ACCOUNT"
    assert not any(command.verb == "GET DATA" for command in result.commands)
    other = _spec("card-other", script="card", accountcode="", callerid="5551234")
    fine = _emulator(other, digits=["1000000001", "442079460000"])
    assert (await harness.call(fine)).ok
    assert fine.variables["CALLGATE_STATUS"] == "OK"


async def test_overload_refuses_new_calls_at_once_without_the_database(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        plan_row = await plans.create_call_plan(conn, name="busy")
        await account_store.create_account(
            conn, call_plan_id=plan_row.id, number="1000000009", balance=Decimal("1.00")
        )
    routing = RoutingData(engine, lambda plan_id: None)
    await routing.refresh()
    flows = CallFlows(
        accounts=SqlAccounts(engine),
        plans=routing,
        ledger=SqlLedger(engine, grace_seconds=60),
        settings=FlowSettings(max_setups=0),  # every new call finds the set-up slots full
    )
    server = AgiServer({"call": flows.call}, port=0)
    await server.start()
    shed_before = metrics.REGISTRY.get_sample_value("callgate_calls_shed_total") or 0
    try:
        emulator = _emulator(_spec("shed-1", accountcode="1000000009"))
        result = await FakeAsterisk("127.0.0.1", server.port).call(emulator.spec, emulator)
    finally:
        await server.shutdown(1)
    assert result.ok and emulator.dials == []
    assert emulator.variables["CALLGATE_STATUS"] == "ERROR"
    assert emulator.variables["CALLGATE_HANGUPCAUSE"] == "42"
    assert flows.shed == 1 and flows.setups == 0
    assert (metrics.REGISTRY.get_sample_value("callgate_calls_shed_total") or 0) - shed_before == 1
    async with engine.connect() as conn:
        assert (await conn.execute(select(calls))).first() is None  # nothing written


class _SlowBeforeDial(AsteriskEmulator):
    """Answers ``EXEC MSet CALLGATE_ACCOUNT=...`` (sent between the reserve and the Dial) after
    ``hold_ms`` of real time, and says when it got it: the call is in set-up meanwhile."""

    def __init__(self, spec: ChannelSpec, hold_ms: float, in_setup: asyncio.Event) -> None:
        super().__init__(spec, clock_ms=lambda: FROZEN_MS)
        self.hold_ms = hold_ms
        self.in_setup = in_setup

    def __call__(self, command: ReceivedCommand) -> Sequence[Emit]:
        emits = super().__call__(command)
        if command.line.startswith("EXEC MSet CALLGATE_ACCOUNT="):
            self.in_setup.set()
            return [Emit(emit.data, emit.delay_ms + self.hold_ms) for emit in emits]
        return emits


@pytest.mark.parametrize(
    ("setup_wait_ms", "second_dials"),
    [(5000, True), (50, False)],
    ids=["waits-for-the-slot", "refused-after-the-wait"],
)
async def test_a_call_beyond_max_setups_waits_in_line_for_setup_wait_ms(
    engine: AsyncEngine, setup_wait_ms: int, second_dials: bool
) -> None:
    async with engine.begin() as conn:
        await plans.create_trunk(conn, name="carrier-a", technology="PJSIP", peer="gw-a")
        plan_row = await plans.create_call_plan(conn, name="burst")
        await account_store.create_account(
            conn, call_plan_id=plan_row.id, number="1000000009", balance=Decimal("50.00")
        )
    plan = CallPlan(
        name="burst",
        mode=RoutingMode.LCR,
        max_call_seconds=3600,
        tables=(PlanTable("std", 1, PrefixIndex("std", [UK])),),
    )
    routing = RoutingData(engine, lambda plan_id: plan if plan_id == plan_row.id else None)
    await routing.refresh()
    flows = CallFlows(
        accounts=SqlAccounts(engine),
        plans=routing,
        ledger=SqlLedger(engine, grace_seconds=60),
        settings=FlowSettings(max_setups=1, setup_wait_ms=setup_wait_ms),
    )
    server = AgiServer({"call": flows.call}, port=0)
    await server.start()
    asterisk = FakeAsterisk("127.0.0.1", server.port)
    shed_before = metrics.REGISTRY.get_sample_value("callgate_calls_shed_total") or 0
    waited_before = metrics.REGISTRY.get_sample_value("callgate_calls_setup_waited_total") or 0
    in_setup = asyncio.Event()
    slow = _SlowBeforeDial(_spec("burst-1", accountcode="1000000009"), 400, in_setup)
    second = _emulator(_spec("burst-2", accountcode="1000000009"))
    try:
        first_call = asyncio.create_task(asterisk.call(slow.spec, slow))
        await asyncio.wait_for(in_setup.wait(), 5)  # the only set-up slot is taken
        second_result = await asterisk.call(second.spec, second)
        first_result = await first_call
    finally:
        await server.shutdown(1)
    assert first_result.ok and len(slow.dials) == 1
    assert second_result.ok
    assert flows.setups == 0  # every slot came back
    shed = (metrics.REGISTRY.get_sample_value("callgate_calls_shed_total") or 0) - shed_before
    waited = (
        metrics.REGISTRY.get_sample_value("callgate_calls_setup_waited_total") or 0
    ) - waited_before
    if second_dials:  # it waited about 400 ms for the first call's slot, then dialled
        assert len(second.dials) == 1 and second.variables["CALLGATE_STATUS"] == "OK"
        assert flows.waited == 1 and waited == 1 and flows.shed == 0 and shed == 0
        assert second_result.setup_ms is not None and second_result.setup_ms >= 300
    else:  # no slot within 50 ms: refused, nothing written for it
        assert second.dials == [] and second.variables["CALLGATE_HANGUPCAUSE"] == "42"
        assert flows.waited == 0 and waited == 0 and flows.shed == 1 and shed == 1
        async with engine.connect() as conn:
            rows = (await conn.execute(select(calls.c.uniqueid))).scalars().all()
        assert rows == ["burst-1"]


async def test_two_asterisk_servers_may_issue_the_same_uniqueid(harness: Harness) -> None:
    """Calls are keyed by (Asterisk, uniqueid): the FastAGI peer's configured system name, else
    its address. The same uniqueid from two boxes is two calls; from one box, still one."""
    flows = CallFlows(
        accounts=SqlAccounts(harness.engine),
        plans=harness.flows_plans,
        ledger=SqlLedger(harness.engine, grace_seconds=60),
        settings=FlowSettings(dial_warning_seconds=30),
    )
    server = AgiServer({"call": flows.call}, port=0, system_names={"127.0.0.2": "ast-b"})
    await server.start()
    try:
        box_a = FakeAsterisk("127.0.0.1", server.port, source_address="127.0.0.1")
        box_b = FakeAsterisk("127.0.0.1", server.port, source_address="127.0.0.2")
        for box in (box_a, box_b):
            emulator = _emulator(
                _spec("1763769600.42"), dial_outcomes=[DialOutcome.answered(20_000)]
            )
            result = await box.call(emulator.spec, emulator)
            assert result.ok and emulator.variables["CALLGATE_STATUS"] == "OK"
        async with harness.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(calls.c.asterisk, calls.c.cost, calls.c.status)
                    .where(calls.c.uniqueid == "1763769600.42")
                    .order_by(calls.c.asterisk)
                )
            ).all()
        assert [(r.asterisk, r.cost, r.status) for r in rows] == [
            ("127.0.0.1", Decimal("0.30000"), "OK"),  # 20 s bill one 30 s block of 0.60/min
            ("ast-b", Decimal("0.30000"), "OK"),
        ]
        assert await harness.balance() == Decimal("0.40000")
        # the same box sending that uniqueid again is the same call: nothing is charged twice
        again = _emulator(_spec("1763769600.42"), dial_outcomes=[DialOutcome.answered(20_000)])
        result = await box_b.call(again.spec, again)
        assert again.variables["CALLGATE_STATUS"] == "ERROR" and not again.dials
        assert await harness.balance() == Decimal("0.40000")
        assert await harness.open_reservations() == 0
    finally:
        await server.shutdown(1)


def _flows_without_plans(engine: AsyncEngine, *, max_setups: int, setup_wait_ms: int) -> CallFlows:
    """Flows for the set-up line alone (no call reaches the database)."""
    return CallFlows(
        accounts=SqlAccounts(engine),
        plans=RoutingData(engine, lambda plan_id: None),
        ledger=SqlLedger(engine, grace_seconds=60),
        settings=FlowSettings(max_setups=max_setups, setup_wait_ms=setup_wait_ms),
    )


async def test_a_call_cancelled_in_line_gives_back_a_slot_handed_to_it(engine: AsyncEngine) -> None:
    flows = _flows_without_plans(engine, max_setups=1, setup_wait_ms=5000)
    assert await flows._admitted()  # the one slot
    waiting = asyncio.create_task(flows._admitted())
    await asyncio.sleep(0)  # it queued
    waiting.cancel()  # e.g. the server shutting down
    with pytest.raises(asyncio.CancelledError):
        await waiting
    handed = asyncio.create_task(flows._admitted())
    await asyncio.sleep(0)
    flows._free_setup_slot()  # the first call reaches Dial: its slot goes to the call in line
    assert flows.setups == 1
    handed.cancel()  # cancelled before it could run with the slot
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert flows.setups == 0 and flows.waited == 0
    assert await flows._admitted() and flows.setups == 1  # the slot is free again, at once


async def test_a_newcomer_is_refused_at_once_when_the_line_is_as_long_as_the_slots(
    engine: AsyncEngine,
) -> None:
    flows = _flows_without_plans(engine, max_setups=2, setup_wait_ms=60_000)
    assert await flows._admitted() and await flows._admitted()  # both slots
    line = [asyncio.create_task(flows._admitted()) for _ in range(2)]
    await asyncio.sleep(0)  # both queued
    async with asyncio.timeout(1):  # not after the 60 s wait: at once
        assert not await flows._admitted()
    flows._free_setup_slot()
    flows._free_setup_slot()
    assert [await task for task in line] == [True, True]
    assert flows.setups == 2 and flows.waited == 2
