"""AgiServer over real loopback sockets: limits, routing, failures, shutdown. Every assertion is
in the test body; handlers only record what happened."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
import weakref
from collections.abc import AsyncIterator, Mapping

import pytest
from prometheus_client import REGISTRY

from callgate.agi.client import ChannelSpec, Emit, FakeAsterisk, ReceivedCommand, build_header_block
from callgate.agi.errors import AgiTimeout
from callgate.agi.server import AgiServer, Handler, install_signal_handlers
from callgate.agi.session import AgiSession, current_uniqueid

DEADLINE_S = 5.0


@contextlib.asynccontextmanager
async def serving(
    routes: Mapping[str, Handler],
    *,
    header_timeout_ms: int = 2000,
    command_timeout_ms: int = 2000,
    max_sessions: int = 100,
    allow: tuple[str, ...] = (),
) -> AsyncIterator[AgiServer]:
    server = AgiServer(
        routes,
        port=0,
        header_timeout_ms=header_timeout_ms,
        command_timeout_ms=command_timeout_ms,
        max_sessions=max_sessions,
        allow=allow,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(1)


async def noop_flow(session: AgiSession) -> None:
    await session.verbose("hello", 1)


async def read_until_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    try:
        async with asyncio.timeout(DEADLINE_S):
            return await reader.read()
    except ConnectionError:
        return b""


@contextlib.asynccontextmanager
async def raw_peer(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def a_normal_call_works(server: AgiServer) -> None:
    result = await FakeAsterisk("127.0.0.1", server.port, linger_timeout_ms=2000).call()
    assert result.ok, result
    assert result.lines == ("VERBOSE hello 1",)


# --------------------------------------------------------------------------- header problems


async def test_zero_byte_connect_does_not_hang_or_crash() -> None:
    async with serving({"call": noop_flow}) as server:
        for _ in range(20):
            async with raw_peer(server.port):
                pass
        async with asyncio.timeout(DEADLINE_S):
            await server.wait_idle()
        assert server.active_sessions == 0
        await a_normal_call_works(server)
        assert server.connections_handled == 21


async def test_connection_closed_mid_header() -> None:
    header = build_header_block(ChannelSpec())
    async with serving({"call": noop_flow}) as server:
        async with raw_peer(server.port) as (_, writer):
            writer.write(header[:100])
            await writer.drain()
        async with asyncio.timeout(DEADLINE_S):
            await server.wait_idle()
        await a_normal_call_works(server)


async def test_header_that_never_ends_hits_the_deadline() -> None:
    header = build_header_block(ChannelSpec())
    async with serving({"call": noop_flow}, header_timeout_ms=200) as server:
        async with raw_peer(server.port) as (reader, writer):
            started = time.monotonic()
            writer.write(header[:-1])  # everything but the final empty line
            await writer.drain()
            rest = await read_until_eof(reader)
            waited = time.monotonic() - started
        assert rest == b""  # closed without a single command
        assert 0.15 <= waited < 2.0
        await a_normal_call_works(server)


async def test_slow_header_trickle_still_hits_the_deadline() -> None:
    async with serving({"call": noop_flow}, header_timeout_ms=300) as server:
        async with raw_peer(server.port) as (reader, writer):
            started = time.monotonic()
            with contextlib.suppress(ConnectionError):
                for _ in range(30):
                    writer.write(b"agi_x: y\n")
                    await writer.drain()
                    await asyncio.sleep(0.05)
            assert await read_until_eof(reader) == b""
            assert time.monotonic() - started < 2.5


@pytest.mark.parametrize(
    "garbage",
    [b"a" * 20_000, b"agi_x: y\n" * 300 + b"\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
    ids=["line-too-long", "too-many-lines", "http"],
)
async def test_bad_header_is_closed(garbage: bytes) -> None:
    calls: list[str] = []

    async def flow(session: AgiSession) -> None:
        calls.append(session.env.uniqueid)

    async with serving({"call": flow}) as server:
        async with raw_peer(server.port) as (reader, writer):
            with contextlib.suppress(ConnectionError):
                writer.write(garbage)
                await writer.drain()
            assert await read_until_eof(reader) == b""
        async with asyncio.timeout(DEADLINE_S):
            await server.wait_idle()
    assert calls == []


# --------------------------------------------------------------------------- admission


async def test_allowlist_refuses_other_addresses(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    async def flow(session: AgiSession) -> None:
        calls.append(session.env.uniqueid)

    async with serving({"call": flow}, allow=("10.0.0.0/8", "192.168.1.7")) as server:
        result = await FakeAsterisk("127.0.0.1", server.port).call()
        rejected = server.rejected_connections
    assert result.server_closed and result.commands == ()
    assert rejected == 1
    assert calls == []
    assert "not in the allowlist" in caplog.text

    async with serving({"call": flow}, allow=("10.0.0.0/8", "127.0.0.0/8")) as server:
        assert (await FakeAsterisk("127.0.0.1", server.port).call()).ok
    async with serving({"call": flow}, allow=("127.0.0.1",)) as server:
        assert (await FakeAsterisk("127.0.0.1", server.port).call()).ok
    assert len(calls) == 2


async def test_max_sessions_refuses_instead_of_queueing(caplog: pytest.LogCaptureFixture) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def flow(session: AgiSession) -> None:
        await session.verbose("holding", 1)
        entered.set()
        await release.wait()

    async with serving({"call": flow}, max_sessions=1) as server:
        client = FakeAsterisk("127.0.0.1", server.port, linger_timeout_ms=3000)
        first = asyncio.create_task(client.call(ChannelSpec(uniqueid="first")))
        async with asyncio.timeout(DEADLINE_S):
            await entered.wait()
        live_while_holding = server.active_sessions
        second = await client.call(ChannelSpec(uniqueid="second"))
        release.set()
        first_result = await first
        third = await client.call(ChannelSpec(uniqueid="third"))
        rejected = server.rejected_connections
    assert live_while_holding == 1
    assert second.server_closed and second.commands == ()
    assert rejected == 1
    assert first_result.ok and first_result.lines == ("VERBOSE holding 1",)
    assert third.ok
    assert "max_sessions" in caplog.text


# --------------------------------------------------------------------------- routing, failures


async def test_unknown_script_gets_verbose_and_is_closed() -> None:
    async with serving({"call": noop_flow}) as server:
        spec = ChannelSpec(script="nope/thing?x=1")
        result = await FakeAsterisk("127.0.0.1", server.port).call(spec)
    assert result.ok
    assert result.lines == ('VERBOSE "callgate: unknown script nope/thing" 1',)


async def test_routing_ignores_the_query_string() -> None:
    seen: list[tuple[str, str]] = []

    async def card(session: AgiSession) -> None:
        seen.append((session.env.script, session.env.query["mode"]))

    async with serving({"call": noop_flow, "card": card}) as server:
        result = await FakeAsterisk("127.0.0.1", server.port).call(
            ChannelSpec(script="card?mode=t")
        )
    assert result.ok and result.commands == ()
    assert seen == [("card", "t")]


async def test_handler_exception_is_logged_with_uniqueid_and_server_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    uniqueids: list[str] = []

    async def broken(session: AgiSession) -> None:
        uniqueids.append(current_uniqueid.get())
        await session.verbose("about to fail", 1)
        raise RuntimeError("boom")

    caplog.set_level(logging.ERROR, logger="callgate.agi.server")
    async with serving({"call": noop_flow, "broken": broken}) as server:
        client = FakeAsterisk("127.0.0.1", server.port, linger_timeout_ms=2000)
        crashed = await client.call(ChannelSpec(script="broken", uniqueid="u-crash"))
        await a_normal_call_works(server)
    assert crashed.ok  # the server closed the socket
    assert crashed.lines == ('VERBOSE "about to fail" 1',)
    assert uniqueids == ["u-crash"]
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "u-crash" in record.getMessage()
    assert record.exc_info is not None and "boom" in str(record.exc_info[1])


async def test_command_timeout_closes_the_socket() -> None:
    errors: list[Exception] = []

    async def flow(session: AgiSession) -> None:
        try:
            await session.command("NOOP", timeout_ms=100)
        except AgiTimeout as exc:
            errors.append(exc)
            raise

    def silent(command: ReceivedCommand) -> list[Emit]:
        return []  # Asterisk never answers

    async with serving({"call": flow}) as server:
        result = await FakeAsterisk("127.0.0.1", server.port).call(responder=silent)
    assert result.server_closed and not result.lingered
    assert result.lines == ("NOOP",)
    assert len(errors) == 1


async def test_handler_that_forgets_to_close_still_gets_closed() -> None:
    async def flow(session: AgiSession) -> None:
        await session.hangup()  # and returns without close()

    async with serving({"call": flow}) as server:
        result = await FakeAsterisk("127.0.0.1", server.port, linger_timeout_ms=2000).call()
    assert result.ok and not result.lingered
    assert result.lines == ("HANGUP",)


# --------------------------------------------------------------------------- shutdown


async def test_shutdown_waits_for_live_sessions_then_cancels_the_rest() -> None:
    started: dict[str, asyncio.Event] = {"quick": asyncio.Event(), "stuck": asyncio.Event()}
    finished: list[str] = []
    cancelled: list[str] = []

    async def quick(session: AgiSession) -> None:
        await session.verbose("quick", 1)
        started["quick"].set()
        await asyncio.sleep(0.2)
        await session.verbose("done", 1)
        finished.append("quick")

    async def stuck(session: AgiSession) -> None:
        await session.verbose("stuck", 1)
        started["stuck"].set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("stuck")
            raise

    server = AgiServer({"quick": quick, "stuck": stuck}, port=0)
    await server.start()
    port = server.port
    client = FakeAsterisk("127.0.0.1", port, linger_timeout_ms=5000)
    calls = [
        asyncio.create_task(client.call(ChannelSpec(script="quick", uniqueid="q"))),
        asyncio.create_task(client.call(ChannelSpec(script="stuck", uniqueid="s"))),
    ]
    async with asyncio.timeout(DEADLINE_S):
        await asyncio.gather(*(event.wait() for event in started.values()))
    before = server.active_sessions
    t0 = time.monotonic()
    await server.shutdown(0.6)
    took = time.monotonic() - t0
    quick_result, stuck_result = await asyncio.gather(*calls)

    assert before == 2
    assert 0.5 <= took < 3.0
    assert finished == ["quick"] and cancelled == ["stuck"]
    assert quick_result.ok and quick_result.lines == ("VERBOSE quick 1", "VERBOSE done 1")
    assert stuck_result.ok and stuck_result.lines == ("VERBOSE stuck 1",)
    assert server.active_sessions == 0
    with pytest.raises(OSError):
        async with asyncio.timeout(DEADLINE_S):
            await asyncio.open_connection("127.0.0.1", port)


async def test_shutdown_returns_at_once_when_idle() -> None:
    server = AgiServer({"call": noop_flow}, port=0)
    await server.start()
    t0 = time.monotonic()
    await server.shutdown(30)
    assert time.monotonic() - t0 < 1.0
    assert server.sockets == () or all(s.fileno() == -1 for s in server.sockets)


async def test_cancelling_shutdown_cancels_the_sessions_too() -> None:
    entered = asyncio.Event()
    cancelled: list[bool] = []

    async def stuck(session: AgiSession) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    server = AgiServer({"call": stuck}, port=0)
    await server.start()
    call = asyncio.create_task(FakeAsterisk("127.0.0.1", server.port).call())
    async with asyncio.timeout(DEADLINE_S):
        await entered.wait()
    shutdown = asyncio.create_task(server.shutdown(60))
    await asyncio.sleep(0.05)
    shutdown.cancel()
    with pytest.raises(asyncio.CancelledError):
        await shutdown
    result = await call
    assert cancelled == [True]
    assert result.server_closed


async def test_sigterm_drains_gracefully() -> None:
    server = AgiServer({"call": noop_flow}, port=0)
    await server.start()
    loop = asyncio.get_running_loop()
    remove = install_signal_handlers(loop, server, 1)
    try:
        await a_normal_call_works(server)
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(DEADLINE_S):
            await server.wait_stopped()
    finally:
        remove()
    assert server.shutdown_requested
    assert server.active_sessions == 0


# --------------------------------------------------------------------------- metrics


def _sample(name: str, outcome: str | None = None) -> float:
    labels = {"outcome": outcome} if outcome is not None else {}
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_admissions_and_outcomes() -> None:
    async def crash(session: AgiSession) -> None:
        raise RuntimeError("bug")

    before = {
        "refused": _sample("callgate_agi_connections_total", "over_limit"),
        "unknown": _sample("callgate_agi_sessions_total", "unknown_script"),
        "crashed": _sample("callgate_agi_sessions_total", "crashed"),
        "ok": _sample("callgate_agi_sessions_total", "ok"),
        "no_header": _sample("callgate_agi_sessions_total", "no_header"),
        "timeouts": _sample("callgate_agi_command_timeouts_total"),
    }
    entered = asyncio.Event()
    release = asyncio.Event()

    async def hold(session: AgiSession) -> None:
        entered.set()
        await release.wait()

    def silent(command: ReceivedCommand) -> list[Emit]:
        return []

    async def times_out(session: AgiSession) -> None:
        await session.command("NOOP", timeout_ms=50)

    routes: dict[str, Handler] = {
        "call": noop_flow,
        "crash": crash,
        "hold": hold,
        "slow": times_out,
    }
    async with serving(routes, max_sessions=1) as server:
        client = FakeAsterisk("127.0.0.1", server.port)
        assert (await client.call()).ok
        assert (await client.call(ChannelSpec(script="nope"))).ok
        assert (await client.call(ChannelSpec(script="crash"))).ok
        assert (await client.call(ChannelSpec(script="slow"), silent)).ok
        async with raw_peer(server.port):
            pass
        async with asyncio.timeout(DEADLINE_S):
            await server.wait_idle()
        holding = asyncio.create_task(client.call(ChannelSpec(script="hold")))
        async with asyncio.timeout(DEADLINE_S):
            await entered.wait()
        active = _sample("callgate_agi_active_sessions")
        assert (await client.call()).commands == ()
        release.set()
        assert (await holding).ok
    assert active >= 1
    assert _sample("callgate_agi_connections_total", "over_limit") == before["refused"] + 1
    assert _sample("callgate_agi_sessions_total", "unknown_script") == before["unknown"] + 1
    assert _sample("callgate_agi_sessions_total", "crashed") == before["crashed"] + 1
    assert _sample("callgate_agi_sessions_total", "ok") == before["ok"] + 2
    assert _sample("callgate_agi_sessions_total", "no_header") == before["no_header"] + 1
    assert _sample("callgate_agi_command_timeouts_total") == before["timeouts"] + 1


async def test_a_closed_session_is_freed_without_the_cyclic_gc() -> None:
    transports: list[weakref.ref[asyncio.BaseTransport]] = []

    async def flow(session: AgiSession) -> None:
        transports.append(weakref.ref(session._writer.transport))  # the socket's transport
        await session.verbose("hello", 1)

    gc.disable()  # only reference counting may free it
    try:
        async with serving({"call": flow}) as server:
            for _ in range(3):
                await a_normal_call_works(server)
        # the server has shut down: every session task has finished
        assert len(transports) == 3
        assert [ref() for ref in transports] == [None, None, None]
    finally:
        gc.enable()
