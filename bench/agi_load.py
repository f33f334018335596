"""FastAGI load benchmark of the whole call flow, on PostgreSQL and on SQLite.

The server is the real thing: ``python -m callgate serve`` in a child process (its own core),
on a benchmark database (a call plan, a rate table, trunks, 2,000 accounts with ample credit).
The client is `callgate.agi.client` (a fake Asterisk 22: the header block, an answer to every
command, an emulated Dial whose talk time is simulated unless the call is held). It reports:

1. complete calls per second with the Dial answered at once (closed loop, N in flight);
2. p50 and p99 of header -> EXEC Dial at 100 and at 300 offered calls per second (open loop);
3. the server's RSS with 5,000 calls held open in Dial, per held call;
4. in the same run, the bare ceiling: a bare asyncio server answering the same protocol
   commands with no work (``bench/agi_bare.py``'s raw server), so the result is a ratio.

    python bench/agi_load.py                      # both databases, full run
    python bench/agi_load.py --backend sqlite --calls 2000 --held 1000

PostgreSQL comes from $CALLGATE_BENCH_PG_URL (default postgresql+asyncpg://postgres@127.0.0.1/
postgres); a throwaway database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agi_bare import measure as measure_bare

from callgate.agi.client import (
    AsteriskEmulator,
    ChannelSpec,
    DialOutcome,
    FakeAsterisk,
    LoadResult,
    run_load,
)
from callgate.schema.migrate import upgrade
from callgate.store import accounts as account_store
from callgate.store import plans
from callgate.store.db import create_engine, write_transaction

ACCOUNTS = 2000
HELD_RATE = 100  # calls per second while filling the held calls
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


async def _admin(url: str, sql: str) -> None:
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def bench_database(backend: str) -> AsyncIterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite+aiosqlite:///{folder}/bench.db"
        return
    admin = os.environ.get("CALLGATE_BENCH_PG_URL", DEFAULT_PG)
    name = f"cgbench_{uuid.uuid4().hex[:8]}"
    await _admin(admin, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def seed(url: str) -> None:
    engine = create_engine(url)
    try:
        await upgrade(engine)
        async with write_transaction(engine) as conn:
            await plans.create_trunk(conn, name="carrier", technology="PJSIP", peer="carrier")
            plan = await plans.create_call_plan(conn, name="bench", max_call_seconds=3600)
            await plans.create_rate_table(conn, name="bench", trunk="carrier")
            await plans.attach_rate_table(conn, "bench", "bench")
            await plans.add_rates(
                conn,
                "bench",
                [
                    {"prefix": str(p), "destination": f"dest {p}", "rate": Decimal("0.05")}
                    for p in range(1, 1000)
                ],
            )
            taken: set[str] = set()
            for n in range(ACCOUNTS):
                await account_store.create_account(
                    conn,
                    call_plan_id=plan.id,
                    number=f"{9000000000 + n}",
                    alias=f"bench{n}",
                    balance=Decimal("1000000"),
                    taken=taken,
                )
    finally:
        await engine.dispose()


class Server:
    """``python -m callgate serve`` in a child process."""

    def __init__(self, url: str, port: int, log: Path) -> None:
        self.url, self.port, self.log = url, port, log
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Server:
        env = {
            **os.environ,
            "CALLGATE_DATABASE_URL": self.url,
            "CALLGATE_AGI_MAX_SESSIONS": "12000",
            "CALLGATE_METRICS_ENABLED": "false",
            "CALLGATE_AMI_ENABLED": "false",
        }
        self._log_file = self.log.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "callgate",
            "serve",
            "--port",
            str(self.port),
            env=env,
            stdout=self._log_file,
            stderr=self._log_file,
        )
        for _ in range(600):
            try:
                _r, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if self.proc.returncode is not None:
                    raise RuntimeError(
                        f"serve exited {self.proc.returncode}: see {self.log}"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return self
        raise RuntimeError("serve did not start")

    def rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(60):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._log_file.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spec(index: int, script: str) -> ChannelSpec:
    return ChannelSpec(
        script=script,
        uniqueid=f"{time.time():.0f}.{index}.{uuid.uuid4().hex[:6]}",
        channel=f"PJSIP/customer-{index:08x}",
        accountcode=f"{9000000000 + index % ACCOUNTS}",
        extension=f"{(index % 998) + 1}5550100",
    )


def _answered_at_once(spec: ChannelSpec) -> AsteriskEmulator:
    return AsteriskEmulator(spec, dial_outcomes=[DialOutcome.answered(30_000)], hangup_delay_ms=0)


async def open_loop(port: int, rate: int, seconds: float) -> LoadResult:
    """Offer ``rate`` calls per second for ``seconds``; each call runs on its own."""
    client = FakeAsterisk("127.0.0.1", port)
    tasks: list[asyncio.Task[object]] = []
    total = int(rate * seconds)
    started = time.monotonic()
    for index in range(total):
        due = started + index / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        spec = _spec(index + 10_000_000 * rate, "call")
        tasks.append(asyncio.create_task(client.call(spec, _answered_at_once(spec))))
    results = [await task for task in tasks]
    wall = (time.monotonic() - started) * 1000
    ok = [r for r in results if r.ok]  # type: ignore[attr-defined]
    return LoadResult(
        calls=total,
        completed=len(ok),
        lingered=0,
        failed=total - len(ok),
        wall_ms=wall,
        setup_ms=tuple(r.setup_ms for r in ok if r.setup_ms is not None),  # type: ignore[attr-defined]
        session_ms=tuple(r.duration_ms for r in ok),  # type: ignore[attr-defined]
    )


async def held_calls(server: Server, count: int) -> tuple[int, int, int]:
    """Hold ``count`` calls in Dial; return (RSS before, RSS while held, calls seen in Dial)."""
    before = server.rss_kb()
    in_dial = 0
    all_in = asyncio.Event()

    class Holder(AsteriskEmulator):
        def __call__(self, command):  # type: ignore[no-untyped-def]
            nonlocal in_dial
            if command.is_dial:
                in_dial += 1
                if in_dial >= count:
                    all_in.set()
            return super().__call__(command)

    client = FakeAsterisk("127.0.0.1", server.port, linger_timeout_ms=400_000)

    async def one(index: int) -> None:
        spec = _spec(index + 50_000_000, "call")
        holder = Holder(
            spec, dial_outcomes=[DialOutcome.answered(300_000)], real_time=True, hangup_delay_ms=0
        )
        await client.call(spec, holder)

    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    for index in range(count):  # Asterisk's calls arrive at a rate, not all in one second
        delay = started + index / HELD_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index)))

    async def progress() -> None:
        while True:
            await asyncio.sleep(10)
            print(f"   ... {in_dial} of {count} calls in Dial", flush=True)

    reporter = asyncio.create_task(progress())
    try:
        async with asyncio.timeout(240):
            await all_in.wait()
        await asyncio.sleep(1.0)
        during = server.rss_kb()
    finally:
        reporter.cancel()
        for task in tasks:  # hang up every held call (the server logs them as cut)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return before, during, in_dial


def _fmt(result: LoadResult) -> str:
    p = LoadResult.percentile
    dialled = len(result.setup_ms)
    return (
        f"{result.completed}/{result.calls} ok ({dialled} dialled, {result.completed - dialled} "
        f"refused), {dialled / (result.wall_ms / 1000):,.0f} dialled/s, "
        f"header->Dial p50 {p(result.setup_ms, 50):.1f} ms p99 {p(result.setup_ms, 99):.1f} ms"
    )


async def run_backend(backend: str, args: argparse.Namespace) -> None:
    async with bench_database(backend) as url:
        print(f"== {backend}: seeding {ACCOUNTS} accounts ...", flush=True)
        await seed(url)
        log = Path(tempfile.gettempdir()) / f"callgate-bench-{backend}.log"
        port = _free_port()
        async with Server(url, port, log) as server:
            await run_load(
                "127.0.0.1",
                port,
                calls=300,
                concurrency=50,
                responder_factory=_answered_at_once,
                spec_factory=_spec,
            )  # warm-up
            closed = await run_load(
                "127.0.0.1",
                port,
                calls=args.calls,
                concurrency=args.concurrency,
                responder_factory=_answered_at_once,
                spec_factory=_spec,
            )
            print(f"closed loop, {args.concurrency} in flight: {_fmt(closed)}", flush=True)
            for rate in (100, 300):
                offered = await open_loop(port, rate, args.seconds)
                print(f"open loop, {rate} calls/s offered: {_fmt(offered)}", flush=True)
        if args.held:  # a fresh server: the overload of the last run must not linger
            async with Server(url, _free_port(), log.with_suffix(".held.log")) as server:
                before, during, seen = await held_calls(server, args.held)
                per_call = (during - before) * 1024 / max(seen, 1)
                print(
                    f"held in Dial: {seen} calls, server RSS {before / 1024:.0f} MB -> "
                    f"{during / 1024:.0f} MB = {per_call / 1024:.1f} KB per held call",
                    flush=True,
                )
        print(f"   (server log: {log})")
        # dialled calls per second: a call refused by load shedding is not a completed call
        args.results[backend] = len(closed.setup_ms) / (closed.wall_ms / 1000)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["pg", "sqlite", "both"], default="both")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="open-loop duration")
    parser.add_argument("--held", type=int, default=5000, help="calls held in Dial (0: skip)")
    args = parser.parse_args()
    args.results = {}
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    bare = await measure_bare("raw", args.calls, args.concurrency)
    print(f"bare asyncio ceiling (same commands, no work): {_fmt(bare)}", flush=True)
    for backend in ["pg", "sqlite"] if args.backend == "both" else [args.backend]:
        await run_backend(backend, args)
    for backend, rate in args.results.items():
        ratio = rate / bare.sessions_per_second if bare.sessions_per_second else 0.0
        print(f"{backend}: {rate:,.0f} dialled calls/s = {ratio:.0%} of the bare ceiling")


if __name__ == "__main__":
    asyncio.run(main())
