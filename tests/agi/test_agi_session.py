"""AgiSession over real sockets: convenience methods against the Asterisk emulator, and the odd
byte sequences (HANGUP twice, 100 Trying, EOF, long lines, cancellation) from a scripted peer."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from prometheus_client import REGISTRY

from callgate.agi.client import (
    AsteriskEmulator,
    ChannelSpec,
    DialOutcome,
    FakeAsterisk,
    build_header_block,
)
from callgate.agi.codec import AgiReply, parse_header_block
from callgate.agi.errors import (
    AgiCommandError,
    AgiError,
    AgiHangup,
    AgiProtocolError,
    AgiTimeout,
)
from callgate.agi.server import AgiServer
from callgate.agi.session import (
    DEADLINE_TICK_S,
    AgiSession,
    UniqueidLogFilter,
    _deadlines_of,
    current_uniqueid,
)

DEADLINE_S = 5.0
Flow = Callable[[AgiSession], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(flow: Flow, *, command_timeout_ms: int = 2000) -> AsyncIterator[AgiServer]:
    server = AgiServer({"call": flow}, port=0, command_timeout_ms=command_timeout_ms)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(1)


# --------------------------------------------------------------------------- convenience methods


async def test_convenience_methods_against_the_emulator() -> None:
    got: dict[str, object] = {}
    tricky = 'value "with" quotes\\ back\\slash and (parens) '

    async def flow(s: AgiSession) -> None:
        await s.answer()
        got["unset"] = await s.get_variable("UNSET")
        await s.set_variable("MYVAR", tricky)
        got["myvar"] = await s.get_variable("MYVAR")
        await s.set_variable("EMPTY", "")
        got["empty"] = await s.get_variable("EMPTY")
        got["now"] = await s.get_full_variable("${STRFTIME(,,%s%3q)}")
        got["full"] = await s.get_full_variable("${CALLERID(num)}/${MYVAR}")
        got["pin"] = await s.get_data("enter-pin", 3000, 6)
        got["nothing"] = await s.get_data("enter-pin", 3000, 6)
        got["stream"] = await s.stream_file("beep", "#")
        got["missing"] = await s.stream_file("nope")
        got["say"] = await s.say_number(42)
        got["exec"] = await s.exec("Playback", "a&b,noanswer")
        got["noapp"] = await s.exec("NoSuchApp")
        await s.verbose('say "hi"', 3)
        await s.hangup()
        try:
            await s.stream_file("after")
        except AgiHangup as exc:
            got["after"] = exc
        got["var_after"] = await s.get_variable("MYVAR")
        got["hung_up"] = s.hung_up
        got["uniqueid"] = (s.uniqueid, current_uniqueid.get())

    spec = ChannelSpec(uniqueid="u-conv")
    emulator = AsteriskEmulator(spec, digits=["0012"], missing_files=["nope"])
    async with serving(flow) as server:
        result = await FakeAsterisk("127.0.0.1", server.port).call(spec, emulator)

    assert result.ok
    assert got["unset"] is None
    assert got["myvar"] == tricky
    assert emulator.variables["MYVAR"] == tricky
    assert got["empty"] == ""
    assert isinstance(got["now"], str) and got["now"].isdigit() and len(got["now"]) == 13
    assert got["full"] == f"5551001/{tricky}"
    assert got["pin"] == ("0012", False)
    assert got["nothing"] == ("", True)
    assert (got["stream"], got["missing"], got["say"]) == (0, -1, 0)
    assert (got["exec"], got["noapp"]) == (0, -2)
    assert isinstance(got["after"], AgiHangup)
    assert got["var_after"] == tricky
    assert got["hung_up"] is True
    assert got["uniqueid"] == ("u-conv", "u-conv")
    assert result.lines[:4] == (
        "ANSWER",
        "GET VARIABLE UNSET",
        r'SET VARIABLE MYVAR "value \"with\" quotes\\ back\\slash and (parens) "',
        "GET VARIABLE MYVAR",
    )
    assert "EXEC Playback a&b,noanswer" in result.lines
    assert 'EXEC NoSuchApp ""' in result.lines
    assert 'VERBOSE "say \\"hi\\"" 3' in result.lines
    assert emulator.violations == []


async def test_exec_args_are_one_argument_and_not_expanded() -> None:
    async def flow(s: AgiSession) -> None:
        await s.exec("Set", "X=a b c")
        await s.exec("NoOp", "${UNIQUEID}")

    spec = ChannelSpec()
    emulator = AsteriskEmulator(spec)
    async with serving(flow) as server:
        result = await FakeAsterisk("127.0.0.1", server.port).call(spec, emulator)
    assert result.lines == ('EXEC Set "X=a b c"', "EXEC NoOp ${UNIQUEID}")
    assert emulator.variables["X"] == "a b c"
    assert emulator.violations == ["EXEC NoOp args hold ${...}, which EXEC does not expand"]


async def test_plain_variables_go_in_one_mset_and_the_rest_one_by_one() -> None:
    async def flow(s: AgiSession) -> None:
        await s.set_variables(
            [
                ("CALLGATE_ACCOUNT", "7000000003"),
                ("CALLGATE_MAXSEC", 3600),
                ("SHARED(CALLGATE_ANSWER_MS)", ""),
            ]
        )
        await s.set_variables([("ONLY", "one")])  # nothing to save: a plain SET VARIABLE
        # a value MSet would split, unquote or unescape: each pair on its own, in order
        await s.set_variables([("A", "x,y"), ("B", 'say "hi"'), ("C", "back\\slash")])

    spec = ChannelSpec(uniqueid="u-mset")
    emulator = AsteriskEmulator(spec)
    async with serving(flow) as server:
        result = await FakeAsterisk("127.0.0.1", server.port).call(spec, emulator)
    assert result.lines == (
        "EXEC MSet CALLGATE_ACCOUNT=7000000003,CALLGATE_MAXSEC=3600,SHARED(CALLGATE_ANSWER_MS)=",
        "SET VARIABLE ONLY one",
        "SET VARIABLE A x,y",
        r'SET VARIABLE B "say \"hi\""',
        r'SET VARIABLE C "back\\slash"',
    )
    assert emulator.variables["CALLGATE_ACCOUNT"] == "7000000003"
    assert emulator.variables["CALLGATE_MAXSEC"] == "3600"
    assert emulator.shared.get("CALLGATE_ANSWER_MS", "") == ""
    assert (emulator.variables["A"], emulator.variables["B"]) == ("x,y", 'say "hi"')
    assert emulator.variables["C"] == "back\\slash"
    assert emulator.violations == []


async def test_an_asterisk_without_mset_gets_set_variable_from_then_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def flow(s: AgiSession) -> None:
        s.asterisk = "old-box"
        await s.set_variables([("X", "1"), ("Y", "2")])
        await s.set_variables([("Z", "3"), ("W", "4")])

    lines: list[tuple[str, ...]] = []
    emulators: list[AsteriskEmulator] = []
    caplog.set_level(logging.WARNING, logger="callgate.agi.session")
    async with serving(flow) as server:
        for index in range(2):
            spec = ChannelSpec(uniqueid=f"u-old-{index}")
            emulator = AsteriskEmulator(spec, missing_apps=["MSet"])
            result = await FakeAsterisk("127.0.0.1", server.port).call(spec, emulator)
            lines.append(result.lines)
            emulators.append(emulator)
    assert lines[0] == (
        "EXEC MSet X=1,Y=2",
        "SET VARIABLE X 1",
        "SET VARIABLE Y 2",
        "SET VARIABLE Z 3",
        "SET VARIABLE W 4",
    )
    assert lines[1] == (
        "SET VARIABLE X 1",
        "SET VARIABLE Y 2",
        "SET VARIABLE Z 3",
        "SET VARIABLE W 4",
    )
    for emulator in emulators:
        assert [emulator.variables[name] for name in "XYZW"] == ["1", "2", "3", "4"]
    warned = [r.getMessage() for r in caplog.records if "MSet" in r.getMessage()]
    assert warned == ["Asterisk old-box has no MSet application: setting variables one by one"]


async def test_get_data_failure_raises() -> None:
    errors: list[AgiError] = []

    async def flow(s: AgiSession) -> None:
        try:
            await s.get_data("missing-prompt", 1000, 4)
        except AgiCommandError as exc:
            errors.append(exc)

    emulator = AsteriskEmulator(missing_files=["missing-prompt"])
    async with serving(flow) as server:
        result = await FakeAsterisk("127.0.0.1", server.port).call(responder=emulator)
    assert result.ok
    assert len(errors) == 1 and "GET DATA failed" in str(errors[0])


# --------------------------------------------------------------------------- scripted peer


@dataclass
class Outcome:
    value: AgiReply | AgiError | None = None
    hung_up: bool = False
    broken: bool = False


Step = bytes | str | tuple[str, float]


async def run_scripted(
    steps: list[Step],
    flow: Flow,
    *,
    command_timeout_ms: int = 2000,
) -> list[str]:
    """Connect, send the header, then for each step: ``"read"`` reads one command line,
    ``"close"`` closes the socket, ``"eof?"`` expects the server to close, ``("sleep", s)``
    waits, bytes are written. Returns the command lines read."""
    received: list[str] = []
    async with serving(flow, command_timeout_ms=command_timeout_ms) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(build_header_block(ChannelSpec(uniqueid="u-scripted")))
            for step in steps:
                if step == "read":
                    async with asyncio.timeout(DEADLINE_S):
                        received.append((await reader.readuntil(b"\n")).decode())
                elif step == "close":
                    break
                elif isinstance(step, tuple):
                    await asyncio.sleep(step[1])
                elif step == "eof?":
                    async with asyncio.timeout(DEADLINE_S):
                        assert await reader.read() == b""
                else:
                    assert isinstance(step, bytes)
                    writer.write(step)
                    await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        async with asyncio.timeout(DEADLINE_S):
            await server.wait_idle()
    return received


def one_command(outcome: Outcome, command: str = "NOOP", timeout_ms: int | None = None) -> Flow:
    async def flow(s: AgiSession) -> None:
        try:
            outcome.value = await s.command(command, timeout_ms=timeout_ms)
        except AgiError as exc:
            outcome.value = exc
        outcome.hung_up = s.hung_up
        outcome.broken = s.broken

    return flow


async def test_hangup_twice_before_the_reply() -> None:
    outcome = Outcome()
    await run_scripted(["read", b"HANGUP\nHANGUP\n200 result=0\n", "eof?"], one_command(outcome))
    assert isinstance(outcome.value, AgiReply) and outcome.value.result == 0
    assert outcome.hung_up and not outcome.broken


async def test_hangup_split_across_writes_and_after_the_reply() -> None:
    replies: list[AgiReply] = []
    flags: list[bool] = []

    async def flow(s: AgiSession) -> None:
        replies.append(await s.command("NOOP"))
        flags.append(s.hung_up)
        replies.append(await s.command("GET VARIABLE", "DIALSTATUS"))
        flags.append(s.hung_up)

    await run_scripted(
        ["read", b"200 result=0\nHAN", b"GUP\n", "read", b"200 resu", b"lt=1 (BUSY)\n", "eof?"],
        flow,
    )
    assert [r.result for r in replies] == [0, 1]
    assert replies[1].data == "BUSY"
    assert flags == [False, True]


async def test_intermediate_100_trying_is_skipped() -> None:
    outcome = Outcome()
    await run_scripted(
        ["read", b"100 result=0 Trying...\n200 result=0 endpos=1234\n", "eof?"],
        one_command(outcome, "RECORD FILE"),
    )
    assert isinstance(outcome.value, AgiReply)
    assert outcome.value.endpos == 1234
    assert not outcome.broken


async def test_eof_mid_command_is_a_protocol_error() -> None:
    outcome = Outcome()
    await run_scripted(["read", b"200 res", "close"], one_command(outcome))
    assert isinstance(outcome.value, AgiProtocolError)
    assert "closed" in str(outcome.value)
    assert outcome.broken


async def test_eof_after_hangup_is_a_hangup() -> None:
    outcome = Outcome()
    await run_scripted(["read", b"HANGUP\n", "close"], one_command(outcome))
    assert isinstance(outcome.value, AgiHangup)
    assert outcome.hung_up and outcome.broken


async def test_511_without_hangup_is_a_command_error() -> None:
    outcome = Outcome()
    await run_scripted(
        ["read", b"511 Command Not Permitted on a dead channel or intercept routine\n", "eof?"],
        one_command(outcome, "ANSWER"),
    )
    assert isinstance(outcome.value, AgiCommandError) and outcome.value.code == 511
    assert not outcome.broken


async def test_garbage_reply_breaks_the_session() -> None:
    outcome = Outcome()
    await run_scripted(["read", b"hello there\n", "eof?"], one_command(outcome))
    assert isinstance(outcome.value, AgiProtocolError)
    assert outcome.broken


async def test_reply_line_too_long_breaks_the_session() -> None:
    outcome = Outcome()
    await run_scripted(
        ["read", b"200 result=1 (" + b"x" * 20_000 + b")\n", "eof?"], one_command(outcome)
    )
    assert isinstance(outcome.value, AgiProtocolError)
    assert "too long" in str(outcome.value)
    assert outcome.broken


async def test_timeout_breaks_the_session() -> None:
    outcome = Outcome()
    await run_scripted(["read", "eof?"], one_command(outcome, timeout_ms=100))
    assert isinstance(outcome.value, AgiTimeout)
    assert outcome.broken


async def test_cancelled_command_breaks_the_session_and_propagates() -> None:
    states: list[object] = []

    async def flow(s: AgiSession) -> None:
        task = asyncio.create_task(s.command("NOOP"))
        await asyncio.sleep(0.1)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            states.append("cancelled")
        states.append(s.broken)
        try:
            await s.command("NOOP")
        except AgiProtocolError:
            states.append("refused")

    received = await run_scripted(["read", "eof?"], flow)
    assert states == ["cancelled", True, "refused"]
    assert received == ["NOOP\n"]


# --------------------------------------------------------------------------- deadlines

#: how late a deadline may fire on a busy machine, on top of the sweep's tick
SLACK_S = 0.25


def _timeouts_counted() -> float:
    return REGISTRY.get_sample_value("callgate_agi_command_timeouts_total") or 0.0


async def test_no_reply_times_out_within_the_deadline_plus_a_tick() -> None:
    outcome = Outcome()
    elapsed: list[float] = []
    inner = one_command(outcome, "GET VARIABLE X", timeout_ms=300)

    async def flow(s: AgiSession) -> None:
        start = time.monotonic()
        await inner(s)
        elapsed.append(time.monotonic() - start)

    before = _timeouts_counted()
    await run_scripted(["read", "eof?"], flow)
    assert isinstance(outcome.value, AgiTimeout)
    assert str(outcome.value) == "no reply to 'GET VARIABLE X' within 300 ms"
    assert outcome.broken
    assert 0.3 <= elapsed[0] <= 0.3 + DEADLINE_TICK_S + SLACK_S
    assert _timeouts_counted() == before + 1


async def _started(s: AgiSession) -> None:
    """Let a command task just created run to its read of the reply: its deadline waits."""
    await asyncio.sleep(0)
    assert s._deadline in _deadlines_of(asyncio.get_running_loop())._waiting


async def _waiting_command(s: AgiSession) -> asyncio.Task[AgiReply]:
    """Start a NOOP in its own task and return once its deadline waits in the loop's table."""
    task = asyncio.create_task(s.command("NOOP"))
    await _started(s)
    return task


async def test_deadline_expired_by_the_sweep_is_an_agi_timeout() -> None:
    """The deterministic counterpart of the next test: the sweep alone makes an AgiTimeout."""
    seen: list[object] = []

    async def flow(s: AgiSession) -> None:
        task = await _waiting_command(s)
        _deadlines_of(asyncio.get_running_loop()).sweep(s._deadline.when)
        try:
            await task
        except AgiTimeout as exc:
            seen.append(exc)
        seen.append(s.broken)

    await run_scripted(["read", "eof?"], flow)
    assert len(seen) == 2 and isinstance(seen[0], AgiTimeout) and seen[1] is True


@pytest.mark.parametrize("cancel_first", [False, True])
async def test_a_cancel_arriving_with_the_deadline_stays_a_cancel(cancel_first: bool) -> None:
    seen: list[object] = []

    async def flow(s: AgiSession) -> None:
        task = await _waiting_command(s)
        table = _deadlines_of(asyncio.get_running_loop())
        # both in one step of the loop: the task sees them together
        if cancel_first:
            task.cancel()
        table.sweep(s._deadline.when)
        if not cancel_first:
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            seen.append("cancelled")
        except AgiTimeout:
            seen.append("timeout")
        seen.append(s.broken)

    before = _timeouts_counted()
    await run_scripted(["read", "eof?"], flow)
    assert seen == ["cancelled", True]
    assert _timeouts_counted() == before


async def test_the_callers_timeout_expiring_with_the_deadline_is_the_callers() -> None:
    """An ``asyncio.timeout`` around the command that expires with the command's deadline
    raises the caller's plain TimeoutError (its cancellation was not ours), not AgiTimeout."""
    seen: list[object] = []

    async def flow(s: AgiSession) -> None:
        scopes: list[asyncio.Timeout] = []

        async def guarded() -> AgiReply:
            async with asyncio.timeout(None) as outer:
                scopes.append(outer)
                return await s.command("NOOP")

        task = asyncio.create_task(guarded())
        await _started(s)
        table = _deadlines_of(asyncio.get_running_loop())
        scopes[0].reschedule(asyncio.get_running_loop().time())  # expires on the next step
        table.sweep(s._deadline.when)
        try:
            await task
        except AgiTimeout:
            seen.append("agi timeout")
        except TimeoutError:
            seen.append("caller's timeout")
        seen.append(s.broken)

    await run_scripted(["read", "eof?"], flow)
    assert seen == ["caller's timeout", True]


async def test_after_many_commands_the_deadline_table_is_empty_and_its_timer_gone() -> None:
    async def flow(s: AgiSession) -> None:
        for i in range(100):
            await s.set_variable("N", i)
        await s.wait_hangup(1)  # a wait that times out leaves nothing either

    async with serving(flow) as server:
        for _ in range(3):
            assert (await FakeAsterisk("127.0.0.1", server.port).call()).ok
    loop = asyncio.get_running_loop()
    table = _deadlines_of(loop)
    assert len(table) == 0
    await asyncio.sleep(2 * DEADLINE_TICK_S + 0.05)  # the timer lapses one tick after the last
    assert not table.armed
    scheduled = getattr(loop, "_scheduled", [])  # the asyncio loop's timer heap
    assert [h for h in scheduled if getattr(h, "_callback", None) == table._tick] == []


def test_a_loop_abandoned_with_a_command_waiting_is_freed() -> None:
    """The deadline table outlives no loop: closing a loop while a command waits (its task
    never finishes) leaves nothing that keeps the loop, the task or the session alive."""
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)  # "Task was destroyed": expected
    ours, peer = socket.socketpair()

    async def start() -> tuple[asyncio.Task[AgiReply], AgiSession]:
        reader, writer = await asyncio.open_connection(sock=ours)
        session = AgiSession(reader, writer, parse_header_block(build_header_block(ChannelSpec())))
        task = asyncio.create_task(session.command("NOOP"))
        await _started(session)
        return task, session

    task, session = loop.run_until_complete(start())
    refs: list[weakref.ref[object]] = [weakref.ref(loop), weakref.ref(task), weakref.ref(session)]
    loop.close()
    del loop, task, session
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the abandoned transport's socket
        gc.collect()
    peer.close()
    assert [ref() for ref in refs] == [None, None, None]


async def test_concurrent_commands_are_serialised() -> None:
    replies: list[str | None] = []

    async def flow(s: AgiSession) -> None:
        results = await asyncio.gather(s.get_variable("A"), s.get_variable("B"))
        replies.extend(results)

    received = await run_scripted(
        ["read", b"200 result=1 (a)\n", "read", b"200 result=1 (b)\n", "eof?"], flow
    )
    assert received == ["GET VARIABLE A\n", "GET VARIABLE B\n"]
    assert replies == ["a", "b"]


async def test_closed_session_refuses_commands() -> None:
    outcome = Outcome()

    async def flow(s: AgiSession) -> None:
        await s.close()
        await s.close()  # idempotent
        try:
            await s.command("NOOP")
        except AgiProtocolError as exc:
            outcome.value = exc

    await run_scripted(["eof?"], flow)
    assert isinstance(outcome.value, AgiProtocolError) and "closed" in str(outcome.value)


async def test_injection_is_refused_before_sending() -> None:
    errors: list[ValueError] = []

    async def flow(s: AgiSession) -> None:
        try:
            await s.set_variable("X", "1\nEXEC Dial evil")
        except ValueError as exc:
            errors.append(exc)
        await s.command("NOOP")

    received = await run_scripted(["read", b"200 result=0\n", "eof?"], flow)
    assert len(errors) == 1
    assert received == ["NOOP\n"]


# --------------------------------------------------------------------------- logging


def test_uniqueid_log_filter_stamps_records() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "msg", None, None)
    log_filter = UniqueidLogFilter()
    assert log_filter.filter(record) and getattr(record, "uniqueid", None) == "-"
    token = current_uniqueid.set("u-42")
    try:
        log_filter.filter(record)
    finally:
        current_uniqueid.reset(token)
    assert getattr(record, "uniqueid", None) == "u-42"


@pytest.mark.parametrize("level", [0, 4])
async def test_verbose_level(level: int) -> None:
    async def flow(s: AgiSession) -> None:
        await s.verbose("x", level)

    async with serving(flow) as server:
        result = await FakeAsterisk("127.0.0.1", server.port).call()
    assert result.lines == (f"VERBOSE x {level}",)


async def test_wait_hangup_after_dial() -> None:
    seen: list[object] = []

    async def flow(s: AgiSession) -> None:
        seen.append(await s.exec("Dial", "PJSIP/1@t,30", timeout_ms=5000))
        seen.append(await s.wait_hangup(50))  # nothing yet: still usable
        seen.append(await s.wait_hangup(2000))
        seen.append(s.broken)
        seen.append(await s.get_variable("DIALSTATUS"))

    await run_scripted(
        [
            "read",
            b"200 result=-1\n",
            ("sleep", 0.2),
            b"HANGUP\n",
            "read",
            b"200 result=1 (CANCEL)\n",
            "eof?",
        ],
        flow,
    )
    assert seen == [-1, False, True, False, "CANCEL"]


async def test_wait_hangup_after_limit_keeps_the_caller() -> None:
    seen: list[object] = []

    async def flow(s: AgiSession) -> None:
        seen.append(await s.exec("Dial", "PJSIP/1@t,30,L(5000)", timeout_ms=5000))
        seen.append(await s.wait_hangup(100))
        seen.append(await s.stream_file("time-is-up"))

    emulator = AsteriskEmulator(dial_outcomes=[DialOutcome.answered(9000)])
    async with serving(flow) as server:
        result = await FakeAsterisk("127.0.0.1", server.port).call(responder=emulator)
    assert result.ok
    assert seen == [-1, False, 0]


async def test_wait_hangup_refuses_garbage() -> None:
    errors: list[AgiError] = []
    broken: list[bool] = []

    async def flow(s: AgiSession) -> None:
        try:
            await s.wait_hangup(2000)
        except AgiProtocolError as exc:
            errors.append(exc)
        broken.append(s.broken)

    await run_scripted([b"200 result=0\n", "eof?"], flow)
    assert len(errors) == 1 and broken == [True]
