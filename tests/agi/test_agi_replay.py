"""Replay every recorded Asterisk 22 FastAGI transcript against the real AgiServer.

A fake peer connects over loopback and writes the exact ``A>`` bytes of each ``.jsonl`` in the
recorded chunking (gaps shortened to at most 50 ms, order kept); where the recorded server sent
a command it first reads the command line our server sent and only then writes the recorded
reply. The handler sends the same commands the recorded server sent and stores what it got;
every assertion is made here, in the test body, after the session ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from callgate.agi.codec import AgiEnv, AgiReply, split_command
from callgate.agi.errors import (
    AgiCommandError,
    AgiError,
    AgiHangup,
    AgiProtocolError,
    AgiTimeout,
)
from callgate.agi.server import AgiServer, Handler
from callgate.agi.session import AgiSession

TRANSCRIPTS = Path(__file__).resolve().parents[1] / "data" / "transcripts"
CLOSE = "<server closes socket>"
SCENARIOS = sorted(p.name[len("agi-") : -len(".jsonl")] for p in TRANSCRIPTS.glob("agi-*.jsonl"))
GAP_CAP_S = 0.05
IO_DEADLINE_S = 5.0


@dataclass(frozen=True, slots=True)
class Chunk:
    t: float
    direction: str
    data: str

    @property
    def raw(self) -> bytes:
        return self.data.encode("latin-1")


def load(name: str) -> list[Chunk]:
    lines = (TRANSCRIPTS / f"agi-{name}.jsonl").read_text().splitlines()
    return [Chunk(float(d["t"]), d["dir"], d["data"]) for d in map(json.loads, lines)]


@dataclass
class PeerLog:
    commands: list[str] = field(default_factory=list)
    server_closed: bool = False
    write_failed_after_close: bool = False
    trailing: bytes = b""


@dataclass
class Outcome:
    argv: tuple[str, ...]
    value: AgiReply | AgiError
    hung_up: bool


@dataclass
class Replay:
    peer: PeerLog
    outcomes: list[Outcome]
    envs: list[AgiEnv]
    final_hung_up: list[bool]


async def play(port: int, chunks: list[Chunk]) -> PeerLog:
    log = PeerLog()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        previous_t = 0.0
        for chunk in chunks:
            if chunk.direction == "A>":
                gap = min(max(chunk.t - previous_t, 0.0), GAP_CAP_S)
                if gap:
                    await asyncio.sleep(gap)
                try:
                    writer.write(chunk.raw)
                    async with asyncio.timeout(IO_DEADLINE_S):
                        await writer.drain()
                except ConnectionError:
                    log.write_failed_after_close = True
            elif chunk.data == CLOSE:
                try:
                    async with asyncio.timeout(IO_DEADLINE_S):
                        log.trailing = await reader.read()
                except ConnectionError:
                    pass
                log.server_closed = True
            else:
                async with asyncio.timeout(IO_DEADLINE_S):
                    line = await reader.readuntil(b"\n")
                log.commands.append(line.decode("utf-8"))
            previous_t = chunk.t
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return log


def recorded_commands(chunks: list[Chunk]) -> list[tuple[tuple[str, ...], bool]]:
    """(argv, has_reply) for each command the recorded server sent."""
    result: list[tuple[tuple[str, ...], bool]] = []
    for index, chunk in enumerate(chunks):
        if chunk.direction == "S>" and chunk.data != CLOSE:
            following = chunks[index + 1] if index + 1 < len(chunks) else None
            has_reply = following is not None and following.direction == "A>"
            result.append((split_command(chunk.data), has_reply))
    return result


def make_handler(
    commands: list[tuple[tuple[str, ...], bool]],
    outcomes: list[Outcome],
    envs: list[AgiEnv],
    final_hung_up: list[bool],
) -> Handler:
    async def handler(session: AgiSession) -> None:
        envs.append(session.env)
        for argv, has_reply in commands:
            # The recorded server closed without waiting for this reply: give up quickly.
            timeout_ms = None if has_reply else 200
            try:
                value: AgiReply | AgiError = await session.command(*argv, timeout_ms=timeout_ms)
            except AgiError as exc:
                value = exc
            outcomes.append(Outcome(argv, value, session.hung_up))
        final_hung_up.append(session.hung_up)

    return handler


@contextlib.asynccontextmanager
async def serving(routes: Mapping[str, Handler]) -> AsyncIterator[AgiServer]:
    server = AgiServer(routes, port=0, header_timeout_ms=2000, command_timeout_ms=3000)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(2)


async def replay(name: str) -> Replay:
    chunks = load(name)
    outcomes: list[Outcome] = []
    envs: list[AgiEnv] = []
    final_hung_up: list[bool] = []
    handler = make_handler(recorded_commands(chunks), outcomes, envs, final_hung_up)
    async with serving({"call": handler, "some/script.agi": handler}) as server:
        peer = await play(server.port, chunks)
        # The server closed the socket in its finally; let the task finish its bookkeeping.
        async with asyncio.timeout(IO_DEADLINE_S):
            await server.wait_idle()
    return Replay(peer, outcomes, envs, final_hung_up)


def _reply(outcome: Outcome) -> AgiReply:
    assert isinstance(outcome.value, AgiReply), outcome
    return outcome.value


# --------------------------------------------------------------------------- every transcript


@pytest.mark.parametrize("name", SCENARIOS)
async def test_replay_matches_the_recording(name: str) -> None:
    chunks = load(name)
    result = await replay(name)

    # Our server sent what the recorded server sent (as Asterisk tokenises it) and closed.
    sent = [split_command(line) for line in result.peer.commands]
    assert sent == [argv for argv, _ in recorded_commands(chunks)]
    assert result.peer.server_closed
    assert result.peer.trailing == b""
    assert len(result.envs) == 1

    # Each outcome agrees with the recorded reply: derive the expectation from the transcript.
    hangup_seen = False
    expected: list[tuple[int, bool]] = []  # (code, HANGUP seen before that reply)
    pending: list[str] = []
    for chunk in chunks:
        if chunk.direction != "A>" or chunk.data.startswith("agi_"):
            continue
        for line in chunk.data.splitlines():
            if line == "HANGUP":
                hangup_seen = True
            elif line[:4] in ("200 ", "510 ", "511 ", "520 ") or line.startswith("520-"):
                pending.append(line)
                if not line.startswith("520-"):
                    expected.append((int(pending[0][:3]), hangup_seen))
                    pending = []
    answered = [o for o in result.outcomes if not isinstance(o.value, AgiTimeout)]
    assert len(answered) == len(expected)
    for outcome, (code, hung_up) in zip(answered, expected, strict=True):
        if code == 200:
            assert isinstance(outcome.value, AgiReply) and outcome.value.code == 200
        elif code == 511 and hung_up:
            assert isinstance(outcome.value, AgiHangup), outcome
        else:
            assert isinstance(outcome.value, AgiCommandError), outcome
            assert outcome.value.code == code
        assert outcome.hung_up == hung_up, outcome


# --------------------------------------------------------------------------- specific values


async def test_replay_full_tour() -> None:
    result = await replay("full")
    by_line: dict[str, Outcome] = {}
    for outcome in result.outcomes:  # the first time each command was sent
        by_line.setdefault(" ".join(outcome.argv), outcome)
    assert _reply(by_line["ANSWER"]).result == 0
    assert _reply(by_line["GET VARIABLE HARNESS_SET"]).data == "hello world"
    unset = _reply(by_line["GET VARIABLE HARNESS_UNSET"])
    assert (unset.result, unset.data) == (0, None)
    assert _reply(by_line["GET VARIABLE CALLERID(all)"]).data == '"Alice" <5551001>'
    full = _reply(by_line["GET FULL VARIABLE ${CALLERID(num)}/${CHANNEL(accountcode)}/${EXTEN}"])
    assert full.data == "5551001/acct-1001/999002"
    missing = _reply(by_line["STREAM FILE no-such-file "])
    assert (missing.result, missing.endpos) == (-1, 0)
    assert _reply(by_line["STREAM FILE custom/beep #"]).endpos == 4000
    timeout = _reply(by_line["GET DATA custom/beep 1500 4"])
    assert (timeout.result, timeout.result_text, timeout.data) == (None, "", "timeout")
    assert _reply(by_line["EXEC Dial Local/999002@carrier,30"]).result == -1
    assert _reply(by_line["GET VARIABLE DIALSTATUS"]).data == "ANSWER"
    assert _reply(by_line["GET VARIABLE ANSWEREDTIME"]).data == "6"
    assert _reply(by_line["EXEC NoSuchApplication foo"]).result == -2

    unknown = by_line["FOO BAR"].value
    assert isinstance(unknown, AgiCommandError)
    assert (unknown.code, unknown.text) == (510, "Invalid or unknown command")
    usage = by_line["GET VARIABLE"].value
    assert isinstance(usage, AgiCommandError) and usage.code == 520
    assert usage.usage.splitlines()[-1] == "Example return code: 200 result=1 (testvariable)"
    assert "<replaceable>variablename</replaceable>" in usage.usage
    db_usage = by_line["DATABASE PUT onlyfamily"].value
    assert isinstance(db_usage, AgiCommandError) and db_usage.code == 520
    assert db_usage.usage.startswith("Adds or updates an entry")

    # HANGUP command: 200 result=1, then the unsolicited HANGUP line; then 511s are AgiHangup,
    # while GET/SET VARIABLE, NOOP and EXEC still work on the dead channel.
    hangup_index = next(i for i, o in enumerate(result.outcomes) if o.argv == ("HANGUP",))
    assert _reply(result.outcomes[hangup_index]).result == 1
    after = result.outcomes[hangup_index + 1 :]
    assert all(o.hung_up for o in after)
    assert [type(o.value).__name__ for o in after] == [
        "AgiHangup",  # ANSWER
        "AgiHangup",  # CHANNEL STATUS
        "AgiReply",  # GET VARIABLE MYVAR
        "AgiReply",  # NOOP
        "AgiReply",  # SET VARIABLE
        "AgiReply",  # EXEC NoOp
        "AgiHangup",  # WAIT FOR DIGIT
        "AgiHangup",  # STREAM FILE
    ]
    assert _reply(after[2]).data == "value with spaces"
    assert result.final_hung_up == [True]


async def test_replay_dial_outcomes() -> None:
    busy = await replay("dial-busy")
    assert [_reply(o).data for o in busy.outcomes[1:]] == ["BUSY", "0"]
    assert _reply(busy.outcomes[0]).result == 0
    assert busy.final_hung_up == [False]

    limit = await replay("dial-limit")
    assert _reply(limit.outcomes[0]).result == -1
    assert [_reply(o).data for o in limit.outcomes[1:4]] == ["ANSWER", "5", "5"]
    assert _reply(limit.outcomes[4]).result == 6  # the caller stays up after L()
    assert limit.final_hung_up == [False]

    callee = await replay("dial-callee-hangup")
    assert _reply(callee.outcomes[0]).result == -1
    assert [_reply(o).data for o in callee.outcomes[1:3]] == ["ANSWER", "3"]
    assert _reply(callee.outcomes[3]).result == 6
    assert _reply(callee.outcomes[4]).result == 1  # HANGUP command


async def test_replay_caller_hangups() -> None:
    during_dial = await replay("caller-hangup-during-dial")
    assert _reply(during_dial.outcomes[0]).result == -1
    status = during_dial.outcomes[1]
    assert status.hung_up and _reply(status).data == "CANCEL"
    assert _reply(during_dial.outcomes[2]).data == ""  # DIALEDTIME: "()"

    during_exec = await replay("caller-hangup-during-exec")
    assert _reply(during_exec.outcomes[1]).data == "19"
    assert isinstance(during_exec.outcomes[2].value, AgiHangup)  # WAIT FOR DIGIT -> 511
    assert _reply(during_exec.outcomes[3]).result == 0  # NOOP still works

    absolute = await replay("abs-timeout-exec")
    assert _reply(absolute.outcomes[1]).data == "4.999"
    assert [_reply(o).data for o in absolute.outcomes[3:5]] == ["ANSWER", "5"]
    assert isinstance(absolute.outcomes[5].value, AgiHangup)  # CHANNEL STATUS -> 511

    setvar = await replay("abs-timeout-setvar")
    assert _reply(setvar.outcomes[0]).result == 1
    assert [_reply(o).data for o in setvar.outcomes[3:]] == ["ANSWER", "4"]
    assert setvar.final_hung_up == [True]

    lingers = await replay("server-lingers-after-hangup")
    assert _reply(lingers.outcomes[0]).result == -1
    assert lingers.peer.server_closed


async def test_replay_args_and_early_close() -> None:
    args = await replay("args")
    (env,) = args.envs
    assert env.script == "some/script.agi"
    assert dict(env.query) == {"card": "1001", "mode": "test"}
    assert env.args == ("12345", "second arg", "quoted, with comma", "x=y&z|w", "", "last")
    assert args.outcomes == []
    assert args.peer.server_closed

    early = await replay("server-close-early")
    assert early.outcomes == [] and early.peer.server_closed


async def test_replay_close_during_exec_times_out_and_breaks_the_session() -> None:
    result = await replay("server-close-during-exec")
    (outcome,) = result.outcomes
    assert isinstance(outcome.value, AgiTimeout)
    assert isinstance(outcome.value, TimeoutError)
    assert result.peer.commands == ["EXEC Dial Local/999003@carrier,30\n"]
    assert result.peer.server_closed


async def test_session_broken_after_timeout_refuses_commands() -> None:
    chunks = load("server-close-during-exec")
    seen: list[AgiError] = []
    broken: list[bool] = []

    async def handler(session: AgiSession) -> None:
        try:
            await session.exec("Dial", "Local/999003@carrier,30", timeout_ms=100)
        except AgiTimeout as exc:
            seen.append(exc)
        broken.append(session.broken)
        try:
            await session.get_variable("DIALSTATUS")
        except AgiProtocolError as exc:
            seen.append(exc)

    async with serving({"call": handler}) as server:
        peer = await play(server.port, chunks)
    assert peer.server_closed
    assert broken == [True]
    assert [type(e) for e in seen] == [AgiTimeout, AgiProtocolError]
    assert "broken" in str(seen[1])
    assert peer.commands == ["EXEC Dial Local/999003@carrier,30\n"]
