"""The fake Asterisk (client + emulator) against a real AgiServer: Dial outcomes, L(), the U()
answer stamp, caller hang-ups, lingering detection and the load driver."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from callgate.agi.client import (
    AsteriskEmulator,
    ChannelSpec,
    DialOutcome,
    DialStatus,
    FakeAsterisk,
    LoadResult,
    ReceivedCommand,
    run_load,
    split_app_args,
)
from callgate.agi.errors import AgiHangup
from callgate.agi.server import AgiServer, Handler
from callgate.agi.session import AgiSession

EPOCH_MS = 1_700_000_000_000


def fixed_clock() -> int:
    return EPOCH_MS


@contextlib.asynccontextmanager
async def serving(flow: Handler) -> AsyncIterator[AgiServer]:
    server = AgiServer({"call": flow}, port=0, command_timeout_ms=3000)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(1)


@dataclass
class DialSeen:
    rc: int
    status: str | None
    answered_time_ms: str | None
    stamp: str | None
    end: str | None
    hangupcause: str | None
    hung_up: bool
    after: str = "-"


def dial_flow(limit: str, seen: list[DialSeen], *, attempts: int = 1) -> Handler:
    """The protocol part of DESIGN.md §5's call flow."""

    async def flow(s: AgiSession) -> None:
        uniqueid = s.env.uniqueid
        for attempt in range(attempts):
            await s.set_variable("SHARED(CALLGATE_ANSWER_MS)", "")
            rc = await s.exec(
                "Dial",
                f"PJSIP/999{attempt}@trunk{attempt},60,U(callgate-answered^{uniqueid}){limit}",
                timeout_ms=60_000,
            )
            end = await s.get_full_variable("${STRFTIME(,,%s%3q)}")
            stamp = await s.get_variable("SHARED(CALLGATE_ANSWER_MS)")
            status = await s.get_variable("DIALSTATUS")
            answered = await s.get_variable("ANSWEREDTIME_MS")
            cause = await s.get_variable("HANGUPCAUSE")
            item = DialSeen(rc, status, answered, stamp, end, cause, s.hung_up)
            try:
                await s.stream_file("time-is-up")
                item.after = "played"
            except AgiHangup:
                item.after = "hangup"
            seen.append(item)
            if status != "CHANUNAVAIL":
                break

    return flow


async def place(
    flow: Handler, outcomes: Sequence[DialOutcome], *, spec: ChannelSpec | None = None
) -> tuple[AsteriskEmulator, tuple[str, ...]]:
    spec = spec or ChannelSpec(uniqueid="1700000000.77")
    emulator = AsteriskEmulator(spec, dial_outcomes=outcomes, clock_ms=fixed_clock)
    async with serving(flow) as server:
        result = await FakeAsterisk("127.0.0.1", server.port).call(spec, emulator)
    assert result.ok and not result.lingered
    return emulator, result.lines


def talk_of(item: DialSeen) -> int:
    assert item.end is not None and item.stamp
    return int(item.end) - int(item.stamp)


async def test_answered_call_cut_by_limit() -> None:
    seen: list[DialSeen] = []
    emulator, lines = await place(
        dial_flow("L(5000:2000:1000)", seen), [DialOutcome.answered(8000, ring_ms=3000)]
    )
    (item,) = seen
    assert (item.rc, item.status, item.hung_up, item.after) == (-1, "ANSWER", False, "played")
    assert talk_of(item) == 5000
    assert item.stamp == str(EPOCH_MS + 3000)
    assert item.answered_time_ms == "5000"
    (dial,) = emulator.dials
    assert (dial.limit_ms, dial.ended_by, dial.stamped, dial.talk_ms) == (5000, "limit", True, 5000)
    assert lines[0] == 'SET VARIABLE SHARED(CALLGATE_ANSWER_MS) ""'
    assert lines[1] == (
        "EXEC Dial PJSIP/9990@trunk0,60,U(callgate-answered^1700000000.77)L(5000:2000:1000)"
    )
    assert emulator.violations == []


async def test_callee_hangs_up_before_the_limit() -> None:
    seen: list[DialSeen] = []
    emulator, _ = await place(dial_flow("L(60000)", seen), [DialOutcome.answered(2500)])
    (item,) = seen
    assert (item.rc, item.status, talk_of(item), item.hung_up) == (-1, "ANSWER", 2500, False)
    assert emulator.dials[0].ended_by == "callee"


@pytest.mark.parametrize(
    "status", [DialStatus.BUSY, DialStatus.NOANSWER, DialStatus.CONGESTION, DialStatus.CHANUNAVAIL]
)
async def test_failed_dial_returns_0_and_no_stamp(status: DialStatus) -> None:
    seen: list[DialSeen] = []
    await place(dial_flow("L(5000)", seen), [DialOutcome.failed(status, ring_ms=1000)])
    (item,) = seen
    assert (item.rc, item.status, item.stamp, item.answered_time_ms) == (0, status.value, "", "")
    assert (item.hangupcause, item.hung_up, item.after) == ("0", False, "played")


async def test_caller_hangs_up_while_ringing() -> None:
    seen: list[DialSeen] = []
    emulator, _ = await place(
        dial_flow("L(5000)", seen), [DialOutcome.caller_hangs_up(2000, ring_ms=5000)]
    )
    (item,) = seen
    assert (item.rc, item.status, item.stamp) == (-1, "CANCEL", "")
    assert item.hung_up  # HANGUP came ~40 ms after the Dial reply
    assert (item.hangupcause, item.after) == ("16", "hangup")  # STREAM FILE -> 511
    assert emulator.dials[0].ended_by == "cancel"


async def test_caller_hangs_up_during_talk() -> None:
    seen: list[DialSeen] = []
    await place(dial_flow("L(60000)", seen), [DialOutcome.caller_hangs_up(4000, ring_ms=1000)])
    (item,) = seen
    assert (item.rc, item.status, talk_of(item), item.answered_time_ms) == (
        -1,
        "ANSWER",
        3000,
        "3000",
    )
    assert item.hung_up and item.after == "hangup"


async def test_pre_answered_caller_inflates_answeredtime_but_not_the_stamp() -> None:
    seen: list[DialSeen] = []
    inner = dial_flow("L(60000)", seen)

    async def card(s: AgiSession) -> None:
        await s.answer()
        await s.exec("Wait", "2")  # 2 s of prompts
        await inner(s)

    await place(card, [DialOutcome.answered(1000, ring_ms=3000)])
    (item,) = seen
    assert talk_of(item) == 1000
    assert item.answered_time_ms == "6000"  # prompts + ringing + talk, as DESIGN.md §5 measured


async def test_ringtime_is_set_only_when_the_callee_rang() -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def flow(s: AgiSession) -> None:
        for _ in range(2):
            await s.exec("Dial", "PJSIP/1@t,30")
            seen.append((await s.get_variable("RINGTIME_MS"), await s.get_variable("DIALSTATUS")))

    outcomes = [
        DialOutcome.failed(DialStatus.CHANUNAVAIL),
        DialOutcome(DialStatus.NOANSWER, ring_ms=30_000, first_ring_ms=120),
    ]
    await place(flow, outcomes)
    assert seen == [(None, "CHANUNAVAIL"), ("120", "NOANSWER")]


async def test_failover_consumes_outcomes_in_order() -> None:
    seen: list[DialSeen] = []
    emulator, lines = await place(
        dial_flow("L(5000)", seen, attempts=3),
        [DialOutcome.failed(DialStatus.CHANUNAVAIL), DialOutcome.answered(1200)],
    )
    assert [(i.status, i.stamp != "") for i in seen] == [("CHANUNAVAIL", False), ("ANSWER", True)]
    assert [d.destination for d in emulator.dials] == ["PJSIP/9990@trunk0", "PJSIP/9991@trunk1"]
    assert talk_of(seen[1]) == 1200


async def test_violations_are_reported() -> None:
    async def flow(s: AgiSession) -> None:
        await s.exec("Dial", "PJSIP/1@t,60,U(callgate-answered^${UNIQUEID})L(0)")

    emulator, _ = await place(flow, [DialOutcome.answered(1000)])
    assert emulator.violations == [
        "EXEC Dial args hold ${...}, which EXEC does not expand",
        "Dial with L(0): no limit at all",
        "Dial U(callgate-answered^${UNIQUEID}): not this channel's uniqueid '1700000000.77'",
    ]
    assert emulator.dials[0].stamped is False


async def test_real_time_mode_sleeps_the_talk_time() -> None:
    seen: list[DialSeen] = []
    spec = ChannelSpec(uniqueid="rt-1")
    emulator = AsteriskEmulator(spec, dial_outcomes=[DialOutcome.answered(150)], real_time=True)
    async with serving(dial_flow("L(5000)", seen)) as server:
        started = time.monotonic()
        result = await FakeAsterisk("127.0.0.1", server.port).call(spec, emulator)
        took_ms = (time.monotonic() - started) * 1000
    assert result.ok
    assert took_ms >= 150
    assert 150 <= talk_of(seen[0]) < 1000


async def test_lingering_server_is_detected() -> None:
    async def lingers(s: AgiSession) -> None:
        await s.verbose("then silence", 1)
        await asyncio.sleep(0.5)

    async with serving(lingers) as server:
        result = await FakeAsterisk("127.0.0.1", server.port, linger_timeout_ms=150).call()
    assert result.lingered and not result.server_closed and not result.ok
    assert result.lines == ('VERBOSE "then silence" 1',)


async def test_unknown_commands_and_bad_usage() -> None:
    errors: list[int] = []

    async def flow(s: AgiSession) -> None:
        from callgate.agi.errors import AgiCommandError

        for command in ("FOO BAR", "GET VARIABLE"):
            try:
                await s.command(command)
            except AgiCommandError as exc:
                errors.append(exc.code)

    emulator, _ = await place(flow, [DialOutcome()])
    assert errors == [510, 520]


def test_received_command_parse() -> None:
    command = ReceivedCommand.parse('get full variable "${A} b"', 1.5)
    assert (command.verb, command.args, command.at_ms) == ("GET FULL VARIABLE", ("${A} b",), 1.5)
    assert ReceivedCommand.parse("EXEC Dial x,1").is_dial
    assert not ReceivedCommand.parse("EXEC Playback x").is_dial
    assert ReceivedCommand.parse("FOO BAR").verb == "FOO"


async def test_run_load_measures_every_call() -> None:
    seen: list[DialSeen] = []
    async with serving(dial_flow("L(5000)", seen)) as server:
        result = await run_load(
            "127.0.0.1",
            server.port,
            calls=40,
            concurrency=8,
            responder_factory=lambda spec: AsteriskEmulator(
                spec, dial_outcomes=[DialOutcome.answered(1000)], hangup_delay_ms=0
            ),
        )
    assert (result.calls, result.completed, result.failed, result.lingered) == (40, 40, 0, 0)
    assert len(result.setup_ms) == 40 and len(result.session_ms) == 40
    assert all(ms >= 0 for ms in result.setup_ms)
    assert result.sessions_per_second > 0
    assert len(seen) == 40 and all(1000 <= talk_of(item) < 3000 for item in seen)  # wall clock
    assert "40/40 sessions" in result.summary()


async def test_run_load_counts_refused_connections() -> None:
    server = AgiServer({"call": dial_flow("L(5000)", [])}, port=0)
    await server.start()
    port = server.port
    await server.shutdown(0)
    result = await run_load("127.0.0.1", port, calls=3, concurrency=2, connect_timeout_ms=1000)
    assert (result.completed, result.failed) == (0, 3)
    assert result.errors == {"connect": 3}


def test_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert LoadResult.percentile(values, 50) == 50.0
    assert LoadResult.percentile(values, 99) == 99.0
    assert LoadResult.percentile(values, 100) == 100.0
    assert LoadResult.percentile([], 50) == 0.0


def test_application_arguments_split_as_asterisk_does() -> None:
    assert split_app_args('A=1,B="x,y",SHARED(C)=,D=f(1\\,2),E=a\\,b') == [
        "A=1",
        "B=x,y",
        "SHARED(C)=",
        "D=f(1,2)",
        "E=a,b",
    ]
    assert split_app_args("F(a,b)=1,G=2") == ["F(a,b)=1", "G=2"]
    assert split_app_args("") == [""]
