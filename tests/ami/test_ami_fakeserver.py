"""FakeAmiServer answers like the recorded Asterisk 22.10.1, byte for byte; the session helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callgate.ami.codec import AmiParser
from callgate.ami.fakeserver import (
    BANNER,
    Direction,
    FakeAmiServer,
    load_session,
    parse_session,
    recorded_messages,
    split_at,
)

SESSION = Path(__file__).parents[1] / "data" / "transcripts" / "ami-session.raw"
FRAMES = load_session(SESSION)
# Actions whose recorded answer does not depend on the Asterisk state of that moment.
REPLAYABLE = {"Login", "Setvar", "Command", "Reload", "CoreSettings", "Ping", "Logoff"}


def test_session_framing() -> None:
    assert len(FRAMES) == 1162
    assert sum(f.direction is Direction.SEND for f in FRAMES) == 36
    assert FRAMES[0].data == BANNER
    assert FRAMES[0].unix_ms == 1795301174909
    # Four recorded frames declare 26 bytes more than they hold; the parser resyncs on the next
    # header and keeps what was declared.
    short = [f for f in FRAMES if f.declared_length != len(f.data)]
    assert [f.declared_length - len(f.data) for f in short] == [26, 26, 26, 26]
    assert all(f.data.endswith(b"\r\n\r\n") for f in short)
    assert all(f.declared_length == len(f.data) for f in FRAMES if f not in short)


def test_parse_session_small() -> None:
    data = b"### recv 1.5 3 bytes\nabc\n### send 2.25 0 bytes\n\n### recv 3.000 2 bytes\nxy\n"
    frames = parse_session(data)
    assert [(f.direction, f.unix_ms, f.data) for f in frames] == [
        (Direction.RECV, 1500, b"abc"),
        (Direction.SEND, 2250, b""),
        (Direction.RECV, 3000, b"xy"),
    ]
    with pytest.raises(ValueError, match="no frame header"):
        parse_session(b"garbage\n")


def test_split_at() -> None:
    assert split_at(b"abcdef", [0, 2, 2, 4, 99]) == [b"ab", b"cd", b"ef"]
    assert split_at(b"abc", []) == [b"abc"]


def test_recorded_messages_send_side() -> None:
    sent = recorded_messages(FRAMES, Direction.SEND)
    assert len(sent) == 36
    assert sent[0].startswith(b"Action: Login\r\n")


@pytest.fixture
async def harness_server() -> AsyncIterator[FakeAmiServer]:
    async with FakeAmiServer(username="harness", secret="secret") as srv:
        yield srv


async def read_message(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(2):
        return await reader.readuntil(b"\r\n\r\n")


async def test_replaying_the_recorded_actions_gives_the_recorded_answers(
    harness_server: FakeAmiServer,
) -> None:
    """Send each recorded action's exact bytes; the answer must be the recorded one."""
    recv = [m for m in recorded_messages(FRAMES) if m.startswith(b"Response: ")]
    answers = {AmiParser(expect_banner=False).feed(r)[0].action_id: r for r in recv}
    reader, writer = await asyncio.open_connection("127.0.0.1", harness_server.port)
    try:
        async with asyncio.timeout(2):
            assert await reader.readuntil(b"\r\n") == BANNER
        checked = []
        for raw in recorded_messages(FRAMES, Direction.SEND):
            (action,) = AmiParser(expect_banner=False).feed(raw)
            if action.name not in REPLAYABLE:
                continue
            writer.write(raw)
            await writer.drain()
            got = await read_message(reader)
            expected = answers[action.action_id]
            if action.name == "Ping":  # the Timestamp is the clock of the moment
                got, expected = got.split(b"Timestamp:")[0], expected.split(b"Timestamp:")[0]
            assert got == expected, action.name
            checked.append(action.name)
            if action.name == "Login":
                booted = await read_message(reader)
                assert booted.startswith(b"Event: FullyBooted\r\n")
        assert checked.count("Command") == 12
        assert "Logoff" in checked
        async with asyncio.timeout(2):
            assert await reader.read() == b""  # Goodbye, then Asterisk closes
    finally:
        writer.close()
        await writer.wait_closed()


async def test_permission_denied_before_login_and_unknown_action(
    harness_server: FakeAmiServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", harness_server.port)
    try:
        async with asyncio.timeout(2):
            await reader.readuntil(b"\r\n")
        writer.write(b"Action: Ping\r\nActionID: 1\r\n\r\n")
        assert b"Permission denied" in await read_message(reader)
        writer.write(b"Action: Login\r\nUsername: harness\r\nSecret: secret\r\nEvents: off\r\n\r\n")
        assert b"Authentication accepted" in await read_message(reader)
        writer.write(b"Action: NoSuchThing\r\nActionID: 2\r\n\r\n")
        assert await read_message(reader) == (
            b"Response: Error\r\nActionID: 2\r\nMessage: Invalid/unknown command\r\n\r\n"
        )
        assert harness_server.live() == []  # Events: off gets no pushed events
    finally:
        writer.close()
        await writer.wait_closed()
