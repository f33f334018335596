"""Bare ceiling of the FastAGI load benchmark: complete sessions per second with no work.

The server sends the commands callgate's `call` flow sends for a dialled call (4 commands: one
``EXEC MSet`` of CALLGATE_ACCOUNT, CALLGATE_MAXSEC and the cleared answer stamp, ``EXEC Dial``
with U() and L(), one GET FULL VARIABLE of the outcome, one ``EXEC MSet`` of CALLGATE_STATUS and
CALLGATE_HANGUPCAUSE) and does nothing else: no database, no rating. Until 2026-12-08 callgate
and this server sent 7 and 9 commands (one variable per SET VARIABLE, the outcome in five reads);
ceilings measured before then are not comparable with later ones. It runs in a child process (so
client and server each get a core) in one of two forms:

* ``agi``: callgate's `AgiServer` + `AgiSession` (our protocol layer, deadlines and all);
* ``raw``: a hand-written asyncio server that writes the same commands and reads replies with no
  parsing beyond skipping ``HANGUP`` lines: the ceiling of asyncio itself on this machine.

The client is `callgate.agi.client.run_load` (the fake Asterisk 22, simulated talk time).
The full benchmark (bench/agi_load.py) reuses `run_load` against the real flows.

    /work/venv/bin/python bench/agi_bare.py --calls 5000 --concurrency 100 --mode both
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator

from callgate.agi.client import AsteriskEmulator, ChannelSpec, DialOutcome, LoadResult, run_load
from callgate.agi.codec import encode_command
from callgate.agi.flows.call import ANSWER_STAMP, OUTCOME_EXPR
from callgate.agi.server import AgiServer
from callgate.agi.session import MAX_LINE_BYTES, AgiSession, mset_args

LIMIT = "L(3600000:60000:30000)"


BEFORE_DIAL: list[tuple[str, str | int]] = [
    ("CALLGATE_ACCOUNT", "acct-1001"),
    ("CALLGATE_MAXSEC", 3600),
    (ANSWER_STAMP, ""),
]
OUTCOME: list[tuple[str, str | int]] = [("CALLGATE_STATUS", "OK"), ("CALLGATE_HANGUPCAUSE", 16)]


def commands_for(uniqueid: str, extension: str) -> list[bytes]:
    """The command lines of one bare call, as the raw server sends them."""
    return [
        encode_command("EXEC", "MSet", mset_args(BEFORE_DIAL)),
        encode_command(
            "EXEC", "Dial", f"PJSIP/{extension}@carrier,60,U(callgate-answered^{uniqueid}){LIMIT}"
        ),
        encode_command("GET FULL VARIABLE", OUTCOME_EXPR),
        encode_command("EXEC", "MSet", mset_args(OUTCOME)),
    ]


async def bare_flow(session: AgiSession) -> None:
    """The same commands through AgiSession."""
    env = session.env
    await session.set_variables(BEFORE_DIAL)
    await session.exec(
        "Dial",
        f"PJSIP/{env.extension}@carrier,60,U(callgate-answered^{env.uniqueid}){LIMIT}",
        timeout_ms=4 * 3600 * 1000,
    )
    await session.get_full_variable(OUTCOME_EXPR)
    await session.set_variables(OUTCOME)


async def raw_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(30):
            env: dict[bytes, bytes] = {}
            while (line := await reader.readuntil(b"\n")) != b"\n":
                key, _, value = line.rstrip(b"\n").partition(b": ")
                env[key] = value
            uniqueid = env[b"agi_uniqueid"].decode()
            extension = env[b"agi_extension"].decode()
            for command in commands_for(uniqueid, extension):
                writer.write(command)
                while (await reader.readuntil(b"\n")) == b"HANGUP\n":
                    pass
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()


async def serve(mode: str, max_sessions: int) -> None:
    """Child process: serve until stdin closes; print the port on the first stdout line."""
    stop = asyncio.Event()
    if mode == "agi":
        agi = AgiServer({"call": bare_flow}, port=0, max_sessions=max_sessions)
        await agi.start()
        port = agi.port
    else:
        raw = await asyncio.start_server(raw_session, "127.0.0.1", 0, limit=MAX_LINE_BYTES)
        port = raw.sockets[0].getsockname()[1]
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), stop.set)
    await stop.wait()
    if mode == "agi":
        await agi.shutdown(1)
    else:
        raw.close()
        await raw.wait_closed()


def responder(spec: ChannelSpec) -> AsteriskEmulator:
    return AsteriskEmulator(spec, dial_outcomes=[DialOutcome.answered(61_000)], hangup_delay_ms=0)


async def measure_in_process(mode: str, calls: int, concurrency: int) -> LoadResult:
    """Server and client on one event loop (one core, no cross-process wake-ups)."""
    if mode == "agi":
        agi = AgiServer({"call": bare_flow}, port=0, max_sessions=concurrency * 2)
        await agi.start()
        port = agi.port
    else:
        raw = await asyncio.start_server(raw_session, "127.0.0.1", 0, limit=MAX_LINE_BYTES)
        port = raw.sockets[0].getsockname()[1]
    try:
        await run_load(
            "127.0.0.1",
            port,
            calls=min(200, calls),
            concurrency=concurrency,
            responder_factory=responder,
        )
        return await run_load(
            "127.0.0.1", port, calls=calls, concurrency=concurrency, responder_factory=responder
        )
    finally:
        if mode == "agi":
            await agi.shutdown(1)
        else:
            raw.close()
            await raw.wait_closed()


@contextlib.asynccontextmanager
async def bare_server(mode: str, max_sessions: int) -> AsyncIterator[tuple[int, int]]:
    """The bare server (``mode`` "raw" or "agi") in a child process: yields (port, pid)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        mode,
        "--max-sessions",
        str(max_sessions),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        async with asyncio.timeout(30):
            port = int(await child.stdout.readline())
        yield port, child.pid
    finally:
        child.stdin.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await child.wait()
        if child.returncode is None:
            child.kill()
            await child.wait()


async def measure(mode: str, calls: int, concurrency: int) -> LoadResult:
    async with bare_server(mode, concurrency * 2) as (port, _pid):
        await run_load(
            "127.0.0.1",
            port,
            calls=min(200, calls),
            concurrency=concurrency,
            responder_factory=responder,
        )  # warm-up
        return await run_load(
            "127.0.0.1",
            port,
            calls=calls,
            concurrency=concurrency,
            responder_factory=responder,
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--mode", choices=["agi", "raw", "both"], default="both")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run server and client on one event loop instead of a child process",
    )
    parser.add_argument("--serve", choices=["agi", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--max-sessions", type=int, default=10_000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        await serve(args.serve, args.max_sessions)
        return
    print(
        f"python {sys.version.split()[0]}; {args.calls} calls, concurrency {args.concurrency}, "
        f"{len(commands_for('u', '1'))} AGI commands per call, server "
        + ("on the same event loop" if args.in_process else "in a child process")
    )
    modes = ["raw", "agi"] if args.mode == "both" else [args.mode]
    for mode in modes:
        started = time.monotonic()
        run = measure_in_process if args.in_process else measure
        result = await run(mode, args.calls, args.concurrency)
        print(f"{mode:>4}: {result.summary()}  [{time.monotonic() - started:.1f} s total]")
        if result.errors:
            print(f"      errors: {dict(result.errors)}")


if __name__ == "__main__":
    asyncio.run(main())
