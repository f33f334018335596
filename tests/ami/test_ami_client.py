"""AmiClient against FakeAmiServer over real loopback sockets, replaying recorded AMI bytes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from callgate.ami.client import AmiClient, Overflow, backoff_delay
from callgate.ami.codec import AmiMessage, AmiParser, encode_message
from callgate.ami.errors import (
    AmiActionError,
    AmiAuthError,
    AmiDisconnected,
    AmiError,
    AmiTimeout,
)
from callgate.ami.fakeserver import (
    RECORDED_COMMANDS,
    FakeAmiConnection,
    FakeAmiServer,
    FakeChannel,
    load_session,
    recorded_messages,
    split_at,
)
from callgate.config import AmiSettings, Secret

SESSION = Path(__file__).parents[1] / "data" / "transcripts" / "ami-session.raw"
RAW_EVENTS = [m for m in recorded_messages(load_session(SESSION)) if m.startswith(b"Event: ")]
SECRET = "s3cr3t-Zq9-unlikely"
USER = "callgate"


def parsed(raw: bytes) -> AmiMessage:
    (message,) = AmiParser(expect_banner=False).feed(raw)
    return message


def raw_events(name: str) -> list[bytes]:
    return [r for r in RAW_EVENTS if r.startswith(f"Event: {name}\r\n".encode())]


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.fixture
async def server() -> AsyncIterator[FakeAmiServer]:
    async with FakeAmiServer(username=USER, secret=SECRET) as srv:
        yield srv


def make_client(server: FakeAmiServer, **overrides: Any) -> AmiClient:
    options: dict[str, Any] = {
        "connect_timeout": 2.0,
        "action_timeout": 2.0,
        "ping_interval": 5.0,
        "ping_timeout": 2.0,
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
        "name": f"test-{uuid.uuid4().hex[:8]}",
        "rng": random.Random(7),
    }
    options.update(overrides)
    secret = options.pop("secret", SECRET)
    return AmiClient("127.0.0.1", server.port, USER, secret, **options)


# -- login ---------------------------------------------------------------------------------------


async def test_plain_login_and_clean_close(server: FakeAmiServer) -> None:
    client = make_client(server)
    assert metric("callgate_ami_connected", server=client.name) == 0
    async with client:
        assert client.connected
        assert metric("callgate_ami_connected", server=client.name) == 1
        login = await server.wait_action("Login")
        assert login.get("Username") == USER
        assert login.get("Secret") == SECRET
        assert login.get("Events") == "on"
        assert "Key" not in login
    assert not client.connected
    assert metric("callgate_ami_connected", server=client.name) == 0
    await server.wait_action("Logoff")
    await server.wait_for(lambda: not server.connections)
    assert server.logins == 1
    assert metric("callgate_ami_connects_total", server=client.name, outcome="ok") == 1
    with pytest.raises(AmiDisconnected):
        await client.action("Ping")


async def test_md5_login_sends_the_key_not_the_secret(server: FakeAmiServer) -> None:
    async with make_client(server, md5=True, events=False):
        challenge_action = await server.wait_action("Challenge")
        assert challenge_action.get("AuthType") == "md5"
        login = await server.wait_action("Login")
        conn_challenge = server.connections[0].challenge
        assert conn_challenge is not None
        assert login.get("Key") == hashlib.md5((conn_challenge + SECRET).encode()).hexdigest()
        assert login.get("AuthType") == "md5"
        assert login.get("Events") == "off"
        assert "Secret" not in login
        assert server.logins == 1


@pytest.mark.parametrize("md5", [False, True])
async def test_wrong_password_raises_auth_error(server: FakeAmiServer, md5: bool) -> None:
    client = make_client(server, md5=md5, secret="not-the-secret")
    with pytest.raises(AmiAuthError, match="Authentication failed"):
        await client.connect()
    assert not client.connected
    assert server.failed_logins == 1
    assert client.stats.connect_failures == 1
    assert metric("callgate_ami_connects_total", server=client.name, outcome="auth_failed") == 1
    await client.close()
    await server.wait_for(lambda: not server.connections)


# -- actions, lists, commands ----------------------------------------------------------------


async def test_responses_matched_by_action_id_with_events_interleaved(
    server: FakeAmiServer,
) -> None:
    """Two Setvar in flight; the server answers the second first, each response wrapped in
    recorded events and cut into 13-byte writes."""
    held: list[tuple[FakeAmiConnection, AmiMessage]] = []
    varsets = raw_events("VarSet")

    async def answer_both_reversed(conn: FakeAmiConnection, action: AmiMessage) -> None:
        held.append((conn, action))
        if len(held) < 2:
            return
        for i, (c, a) in enumerate(reversed(held)):
            response = encode_message(
                [
                    ("Response", "Success"),
                    ("ActionID", a.action_id or ""),
                    ("Message", "Variable Set"),
                    ("Variable", a.get("Variable") or ""),
                ]
            )
            payload = varsets[2 * i] + response + varsets[2 * i + 1]
            for piece in split_at(payload, range(13, len(payload), 13)):
                await c.send(piece)

    server.handlers["setvar"] = answer_both_reversed
    async with make_client(server) as client:
        sub = client.subscribe(["VarSet"])
        first, second = await asyncio.gather(
            client.action("Setvar", Variable="FIRST", Value="1"),
            client.action("Setvar", Variable="SECOND", Value="2"),
        )
        assert first.get("Variable") == "FIRST"
        assert second.get("Variable") == "SECOND"
        assert first.action_id != second.action_id
        got = [await sub.get() for _ in range(4)]
        assert got == [parsed(r) for r in varsets[:4]]
        assert sub.qsize() == 0


async def test_action_error_and_recorded_reload_answers(server: FakeAmiServer) -> None:
    async with make_client(server) as client:
        ok = await client.action("Reload", Module="res_pjsip.so")
        assert ok.get("Message") == "Module Reloaded"
        with pytest.raises(AmiActionError, match="No such module") as info:
            await client.action("Reload", Module="no_such_module.so")
        assert info.value.response is not None
        assert info.value.response.get("Response") == "Error"
        pong = await client.action("Ping")
        assert pong.get("Ping") == "Pong"


async def test_command_output_lines(server: FakeAmiServer) -> None:
    async with make_client(server) as client:
        assert await client.command("core show version") == [
            "Asterisk 22.10.1 built by root @ vm on a x86_64 running Linux on 2026-11-21 "
            "22:32:46 UTC"
        ]
        assert await client.command("module reload res_pjsip.so") == [
            "Module 'res_pjsip.so' reloaded successfully."
        ]
        assert await client.command("iax2 reload") == [""]
        endpoints = await client.command("pjsip show endpoints")
        assert endpoints == list(RECORDED_COMMANDS["pjsip show endpoints"][1])
        assert endpoints[-2] == "Objects found: 1"
        for missing in ("pjsip reload", "sip reload"):
            with pytest.raises(AmiActionError, match=f"No such command '{missing}'"):
                await client.command(missing)


async def test_events_interleaved_with_command_response(server: FakeAmiServer) -> None:
    newexten = raw_events("Newexten")[:3]
    server.interleave = list(newexten)
    client = make_client(server)
    sub = client.subscribe(["Newexten"])  # before connecting: sees the events around Login too
    async with client:
        lines = await client.command("core show uptime")
        assert lines == [
            "System uptime: 4 minutes, 59 seconds",
            "Last reload: 2 minutes, 30 seconds",
        ]
        # Login's answer took the first interleaved event, the command's the second.
        assert [await sub.get() for _ in range(2)] == [parsed(r) for r in newexten[:2]]


async def test_action_list_core_show_channels(server: FakeAmiServer) -> None:
    newchannels = [parsed(r) for r in raw_events("Newchannel")[:2]]
    server.channels = [
        FakeChannel.from_event(newchannels[0], application="AGI", duration="00:00:07"),
        FakeChannel.from_event(newchannels[1], application="Dial"),
    ]
    hangup, cdr = raw_events("Hangup")[0], raw_events("Cdr")[0]
    async with make_client(server) as client:
        sub = client.subscribe(["Hangup", "Cdr", "CoreShowChannel"])
        server.interleave = [hangup, cdr]  # between the items of the list
        items = await client.action_list("CoreShowChannels")
        sent = await server.wait_action("CoreShowChannels")
        assert [i.name for i in items] == ["CoreShowChannel", "CoreShowChannel"]
        assert {i.action_id for i in items} == {sent.action_id}
        assert [i.get("Uniqueid") for i in items] == [n.get("Uniqueid") for n in newchannels]
        assert items[0].get("Application") == "AGI"
        assert items[0].get("Duration") == "00:00:07"
        # The unrelated events went to the subscribers, the list items did not.
        assert [await sub.get() for _ in range(2)] == [parsed(hangup), parsed(cdr)]
        assert sub.qsize() == 0
        server.channels = []
        assert await client.action_list("CoreShowChannels") == []


async def test_action_timeout_leaves_the_connection_usable(server: FakeAmiServer) -> None:
    async def never(conn: FakeAmiConnection, action: AmiMessage) -> None:
        return None

    server.handlers["status"] = never
    async with make_client(server, action_timeout=0.2) as client:
        with pytest.raises(AmiTimeout):
            await client.action("Status")
        assert (await client.action("Ping")).get("Ping") == "Pong"
        assert client.connected


async def test_actions_fail_fast_when_not_connected(server: FakeAmiServer) -> None:
    client = make_client(server)
    with pytest.raises(AmiDisconnected):
        await client.action("Ping")
    with pytest.raises(ValueError, match="header injection"):
        async with client:
            await client.action("Setvar", Variable="X", Value="a\r\nAction: Originate")
    await server.wait_for(lambda: not server.connections)
    assert [a.name for a in server.actions] == ["Login", "Logoff"]


# -- events ------------------------------------------------------------------------------------


async def test_recorded_events_cut_anywhere_arrive_whole(server: FakeAmiServer) -> None:
    sample = RAW_EVENTS[:300]
    payload = b"".join(sample)
    rng = random.Random(11)
    cuts = sorted(rng.sample(range(1, len(payload)), 400))
    async with make_client(server) as client:
        sub = client.subscribe(["-none-"])
        sub.close()
        everything = client.subscribe({parsed(r).name or "" for r in sample})
        await server.push(payload, cut_at=cuts, pause=0.0005)
        got = [await everything.get() for _ in range(len(sample))]
        assert got == [parsed(r) for r in sample]
        assert sub.qsize() == 0


async def test_slow_consumer_never_blocks_the_reader(server: FakeAmiServer) -> None:
    varsets = raw_events("VarSet")[:250]
    async with make_client(server, queue_size=8) as client:
        oldest = client.subscribe(["VarSet"])  # default: drop the oldest
        newest = client.subscribe(["VarSet"], maxsize=8, overflow=Overflow.DROP_NEWEST)
        await server.push(varsets)  # one write, nobody consuming
        async with asyncio.timeout(1.0):
            pong = await client.action("Ping")  # answered while both queues are full
        assert pong.get("Ping") == "Pong"
        assert oldest.dropped == newest.dropped == 242
        assert client.stats.events_dropped == 2 * 242
        assert metric("callgate_ami_events_dropped_total", server=client.name) == 2 * 242
        assert [oldest.get_nowait() for _ in range(8)] == [parsed(r) for r in varsets[-8:]]
        assert [newest.get_nowait() for _ in range(8)] == [parsed(r) for r in varsets[:8]]


async def test_a_stalled_consumer_task_does_not_stall_pings(server: FakeAmiServer) -> None:
    async with make_client(server, queue_size=4, ping_interval=0.05, ping_timeout=0.5) as client:
        sub = client.subscribe(["VarSet"])
        stalled = asyncio.Event()

        async def consumer() -> None:
            await sub.get()
            await stalled.wait()  # never returns while the test runs

        task = asyncio.create_task(consumer())
        await server.push(raw_events("VarSet")[:100])
        before = len([a for a in server.actions if a.name == "Ping"])
        await server.wait_action("Ping", before + 3, within=2.0)
        assert client.connected
        assert client.stats.ping_timeouts == 0
        assert sub.dropped > 0
        task.cancel()
        await asyncio.wait([task])


# -- failures and reconnection -------------------------------------------------------------------


async def test_disconnect_mid_event_reconnects_with_resync(server: FakeAmiServer) -> None:
    newchannel = parsed(raw_events("Newchannel")[0])
    server.channels = [FakeChannel.from_event(newchannel)]
    resyncs: list[list[AmiMessage]] = []

    async def on_login(client: AmiClient) -> None:
        resyncs.append(await client.action_list("CoreShowChannels"))

    async def never(conn: FakeAmiConnection, action: AmiMessage) -> None:
        return None

    server.handlers["status"] = never
    hangups = raw_events("Hangup")
    async with make_client(server, on_login=on_login) as client:
        sub = client.subscribe(["Hangup"])
        assert [[i.get("Uniqueid") for i in r] for r in resyncs] == [["t1174-full"]]
        await server.push(hangups[0])
        pending = asyncio.create_task(client.action("Status"))
        await server.wait_action("Status")
        await server.drop(partial=hangups[1][:57])  # cut inside the Channel value
        with pytest.raises(AmiDisconnected):
            await pending
        await server.wait_logins(2)
        async with asyncio.timeout(5):
            await client.wait_connected()
        assert len(resyncs) == 2
        assert client.stats.disconnects == 1
        assert metric("callgate_ami_disconnects_total", server=client.name) == 1
        await server.push(hangups[2])
        assert await sub.get() == parsed(hangups[0])
        assert await sub.get() == parsed(hangups[2])  # the half event never surfaced
        assert sub.qsize() == 0


async def test_dead_peer_detected_by_ping_timeout(server: FakeAmiServer) -> None:
    logins: list[int] = []

    async def on_login(client: AmiClient) -> None:
        logins.append(server.logins)

    server.answer_pings = False
    async with make_client(
        server, ping_interval=0.05, ping_timeout=0.15, on_login=on_login
    ) as client:
        await server.wait_logins(2, within=5.0)
        server.answer_pings = True
        assert client.stats.ping_timeouts >= 1
        assert metric("callgate_ami_ping_timeouts_total", server=client.name) is not None
        async with asyncio.timeout(5):
            await client.wait_connected()
        assert (await client.action("Ping")).get("Ping") == "Pong"
        assert len(logins) >= 2
        assert server.accepted >= 2


async def test_oversized_message_drops_the_connection_and_reconnects(
    server: FakeAmiServer,
) -> None:
    async with make_client(server, max_message_bytes=4096) as client:
        await server.push(b"Event: Flood\r\n" + b"Variable: x=yyyyyyyyyyyyyyyy\r\n" * 400)
        await server.wait_logins(2)
        async with asyncio.timeout(5):
            await client.wait_connected()
        assert client.stats.disconnects == 1


async def test_start_retries_until_asterisk_appears() -> None:
    probe = FakeAmiServer(username=USER, secret=SECRET)
    await probe.start()
    port = probe.port
    await probe.close()
    client = AmiClient(
        "127.0.0.1",
        port,
        USER,
        SECRET,
        backoff_initial=0.02,
        backoff_max=0.05,
        name=f"test-{uuid.uuid4().hex[:8]}",
    )
    client.start()
    try:
        await asyncio.sleep(0.3)  # several attempts at 20-50 ms of backoff
        assert client.stats.connect_failures >= 2
        assert not client.connected
        assert metric("callgate_ami_connects_total", server=client.name, outcome="refused")
        async with FakeAmiServer(username=USER, secret=SECRET, port=port) as late:
            async with asyncio.timeout(5):
                await client.wait_connected()
            assert late.logins == 1
            await client.close()
    finally:
        await client.close()


async def test_failing_on_login_hook_is_retried(server: FakeAmiServer) -> None:
    calls: list[int] = []

    async def flaky(client: AmiClient) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database not ready")

    client = make_client(server, on_login=flaky)
    client.start()
    try:
        async with asyncio.timeout(5):
            await client.wait_connected()  # connected means: past a successful hook
        assert len(calls) == 2
        assert client.stats.connect_failures == 1
        assert metric("callgate_ami_connects_total", server=client.name, outcome="hook_failed")
    finally:
        await client.close()


def test_backoff_is_exponential_with_full_jitter() -> None:
    rng = random.Random(3)
    for attempt in range(12):
        cap = min(30.0, 0.5 * 2**attempt)
        samples = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(300)]
        assert all(0.0 <= s <= cap for s in samples)
        assert max(samples) > 0.9 * cap  # full jitter spans the whole range
        assert min(samples) < 0.1 * cap
    assert backoff_delay(10_000, 0.5, 30.0, rng) <= 30.0


# -- credentials ---------------------------------------------------------------------------------


async def test_secret_never_logged(server: FakeAmiServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with make_client(server) as client:
        await client.action("Ping")
        assert SECRET not in repr(client)
    async with make_client(server, md5=True) as client:
        await client.command("core show version")
    bad = make_client(server, md5=True, secret=SECRET + "-wrong")
    with pytest.raises(AmiAuthError) as info:
        await bad.connect()
    await bad.close()
    keys = [a.get("Key") for a in server.actions if a.name == "Login" and "Key" in a]
    assert len(keys) == 2 and all(keys)
    assert "Login" in caplog.text  # the actions were logged at DEBUG ...
    for credential in [SECRET, *keys]:
        assert credential is not None
        assert credential not in caplog.text  # ... without the credentials
        assert credential not in str(info.value)
    assert SECRET not in repr(server.actions)


async def test_from_settings_takes_the_masked_secret(server: FakeAmiServer) -> None:
    settings = AmiSettings(
        enabled=True, port=server.port, username=USER, secret=Secret(SECRET), md5=True
    )
    client = AmiClient.from_settings(settings, name=f"test-{uuid.uuid4().hex[:8]}")
    assert SECRET not in repr(client)
    async with client:
        assert (await server.wait_action("Login")).get("AuthType") == "md5"
        assert client.connected


async def test_close_fails_pending_actions(server: FakeAmiServer) -> None:
    async def never(conn: FakeAmiConnection, action: AmiMessage) -> None:
        return None

    server.handlers["status"] = never
    client = make_client(server)
    await client.connect()
    pending = asyncio.create_task(client.action("Status"))
    await server.wait_action("Status")
    await client.close()
    with pytest.raises(AmiError):
        await pending
    assert isinstance(pending.exception(), AmiDisconnected)
    await client.close()  # idempotent
