"""FastAGI load benchmark of the whole call flow, on PostgreSQL and on SQLite.

The server is the real thing: ``python -m callgate serve`` in a child process (its own core),
on a benchmark database (a call plan, a rate table, trunks, 2,000 accounts with ample credit).
The client is `callgate.agi.client` (a fake Asterisk 22: the header block, an answer to every
command, an emulated Dial whose talk time is simulated unless the call is held). It reports:

1. complete calls per second with the Dial answered at once (closed loop, N in flight);
2. p50 and p99 of header -> EXEC Dial at offered rates (open loop): by default 40 % of the
   bare ceiling measured just before the backend (``--rates 40%,300`` adds a fixed 300 calls/s);
3. for each phase, the CPU milliseconds per call of the callgate process and of the database
   server (PostgreSQL: the backends serving the benchmark database, from /proc/<pid>/stat;
   SQLite runs inside the callgate process, so its CPU is in the callgate figure);
4. the server's RSS with 5,000 calls held open in Dial, per held call;
5. in the same run, the bare ceiling: a bare asyncio server answering the same protocol
   commands with no work (``bench/agi_bare.py``'s raw server), so the result is a ratio; it is
   measured at the start and again just before each backend, whose ratio uses the latter (the
   shared VM's ceiling moves between minutes).

    python bench/agi_load.py                      # both databases, full run
    python bench/agi_load.py --calls 3000 --backend both --held 0
    python bench/agi_load.py --backend sqlite --calls 2000 --held 1000
    CALLGATE_DATABASE_CALL_PATH=core python bench/agi_load.py ...   # the SQLAlchemy call path

PostgreSQL comes from $CALLGATE_BENCH_PG_URL (default postgresql+asyncpg://postgres@127.0.0.1/
postgres); a throwaway database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import os
import signal
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
# the benchmark measures the checkout it lives in (and its serve child imports the same one)
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from agi_bare import bare_server
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
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CHECKOUT = str(Path(__file__).resolve().parents[1])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process so far (None when it is gone or unreadable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 onwards
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def pg_backends(database: str) -> list[int]:
    """The PostgreSQL backend processes serving ``database`` on this machine (their command
    line is ``postgres: <cluster>: <user> <database> <client> <state>``)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        words = args.split()
        if len(words) >= 5 and words[0] == "postgres:" and words[3] == database:
            found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU of the callgate process, of the database server and of this process (the fake
    Asterisk) over one phase of the run."""

    def __init__(self, server_pid: int, pg_database: str | None) -> None:
        self.server_pid, self.pg_database = server_pid, pg_database
        self._before: tuple[float, dict[int, float]] = (0.0, {})
        self._client_before = 0.0

    def _snapshot(self) -> tuple[float, dict[int, float]]:
        backends: dict[int, float] = {}
        if self.pg_database is not None:
            for pid in pg_backends(self.pg_database):
                used = cpu_seconds(pid)
                if used is not None:
                    backends[pid] = used
        return cpu_seconds(self.server_pid) or 0.0, backends

    def start(self) -> None:
        self._before = self._snapshot()
        self._client_before = time.process_time()

    def server_ms(self, calls: int) -> float:
        """The server process's CPU per call since :meth:`start`."""
        used = (cpu_seconds(self.server_pid) or 0.0) - self._before[0]
        return used * 1000 / max(calls, 1)

    def client_ms(self, calls: int) -> float:
        """This process's CPU per call since :meth:`start` (the fake Asterisk and the
        benchmark's own bookkeeping)."""
        return (time.process_time() - self._client_before) * 1000 / max(calls, 1)

    def report(self, result: LoadResult) -> str:
        """CPU ms per call of the phase (every call, a refused one too); the callgate process
        also per dialled call."""
        (server_before, db_before), (server_after, db_after) = self._before, self._snapshot()
        per_call = 1000 / max(result.calls, 1)
        server_ms = (server_after - server_before) * per_call
        dialled = len(result.setup_ms)
        per_dialled = (server_after - server_before) * 1000 / max(dialled, 1)
        if self.pg_database is None:
            database = "database: SQLite, inside the callgate process (counted there)"
        else:
            # a backend that started during the phase counts from 0; one that exited is lost
            # (the server's pool keeps its connections, so none should)
            used = sum(after - db_before.get(pid, 0.0) for pid, after in db_after.items())
            database = (
                f"PostgreSQL backends of the bench database ({len(db_after)}): "
                f"{used * per_call:.2f} ms"
            )
        return (
            f"   CPU per call: callgate process {server_ms:.2f} ms ({per_dialled:.2f} ms per "
            f"dialled call), {database}; the fake Asterisk (this process) "
            f"{self.client_ms(result.calls):.2f} ms"
        )


async def _admin(url: str, sql: str) -> None:
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def database_name(url: str) -> str | None:
    """The PostgreSQL database of a bench URL (None on SQLite)."""
    parsed = make_url(url)
    return parsed.database if parsed.get_backend_name() == "postgresql" else None


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
            # the child serves the callgate this benchmark imports (this checkout)
            "PYTHONPATH": os.pathsep.join(p for p in (CHECKOUT, os.environ.get("PYTHONPATH")) if p),
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


class StealSampler:
    """Samples /proc/stat every 20 ms while the open loop runs: how much of the box's CPU time
    the hypervisor took (steal) and how busy the box was, to read a burst of slow calls against
    (a shared VM can stop every process on it for tens of milliseconds)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int, int]] = []  # (monotonic, steal, idle, total)
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _read() -> tuple[int, int, int] | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            return fields[7], fields[3] + fields[4], sum(fields[:8])
        return None

    async def _run(self) -> None:
        while True:
            sample = self._read()
            if sample is not None:
                self.samples.append((time.monotonic(), *sample))
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def window(self, start: float, end: float) -> str:
        """Steal and busy shares of all CPUs over [start - 20 ms, end + 20 ms]."""
        inside = [s for s in self.samples if start - 0.02 <= s[0] <= end + 0.02]
        if len(inside) < 2:
            return "steal n/a"
        first, last = inside[0], inside[-1]
        total = last[3] - first[3]
        if total <= 0:
            return "steal n/a (under one clock tick)"
        steal = (last[1] - first[1]) / total
        busy = 1 - (last[2] - first[2]) / total
        return f"steal {steal:.0%}, CPUs busy {busy:.0%}"


@dataclasses.dataclass
class OpenLoop:
    """An open-loop run: the totals, and per call its start (s after the loop began) and its
    header->Dial time (None: not dialled)."""

    result: LoadResult
    began: float
    timeline: list[tuple[float, float | None]]
    steal: StealSampler

    def slow_bursts(self, slow_ms: float, gap: int = 5) -> list[str]:
        """Runs of calls over ``slow_ms``, joined across up to ``gap`` faster calls between."""
        slow = [i for i, (_, ms) in enumerate(self.timeline) if ms is not None and ms > slow_ms]
        runs: list[list[int]] = []
        for index in slow:
            if runs and index - runs[-1][-1] <= gap + 1:
                runs[-1].append(index)
            else:
                runs.append([index])
        lines = []
        for run in runs:
            first, last = run[0], run[-1]
            at = self.timeline[first][0]
            end = (
                self.timeline[last][0]
                + max(ms or 0.0 for _, ms in self.timeline[first : last + 1]) / 1000
            )
            worst = max(self.timeline[i][1] or 0.0 for i in run)
            box = self.steal.window(self.began + at, self.began + end)
            lines.append(
                f"   slow calls {first}-{last} ({len(run)} over {slow_ms:g} ms,"
                f" worst {worst:.1f} ms) from {at:.2f} s: {box}"
            )
        return lines


async def open_loop(port: int, rate: int, seconds: float) -> OpenLoop:
    """Offer ``rate`` calls per second for ``seconds``; each call runs on its own."""
    client = FakeAsterisk("127.0.0.1", port)
    tasks: list[asyncio.Task[object]] = []
    total = int(rate * seconds)
    steal = StealSampler()
    steal.start()
    started = time.monotonic()
    starts: list[float] = []
    for index in range(total):
        due = started + index / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        spec = _spec(index + 10_000_000 * rate, "call")
        starts.append(time.monotonic() - started)
        tasks.append(asyncio.create_task(client.call(spec, _answered_at_once(spec))))
    results = [await task for task in tasks]
    wall = (time.monotonic() - started) * 1000
    await steal.stop()
    ok = [r for r in results if r.ok]  # type: ignore[attr-defined]
    result = LoadResult(
        calls=total,
        completed=len(ok),
        lingered=0,
        failed=total - len(ok),
        wall_ms=wall,
        setup_ms=tuple(r.setup_ms for r in ok if r.setup_ms is not None),  # type: ignore[attr-defined]
        session_ms=tuple(r.duration_ms for r in ok),  # type: ignore[attr-defined]
    )
    timeline = [
        (at, r.setup_ms if r.ok else None)  # type: ignore[attr-defined]
        for at, r in zip(starts, results, strict=True)
    ]
    return OpenLoop(result, started, timeline, steal)


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


async def bare_at_rate(rate: int, seconds: float, slow_ms: float | None) -> str:
    """The same open loop against the bare asyncio server: the latency and the CPU the
    benchmark itself (the fake Asterisk, the loopback, a server that does nothing) costs at this
    rate, to read callgate's figures against."""
    async with bare_server("raw", max_sessions=12_000) as (port, pid):
        meter = CpuMeter(pid, None)
        meter.start()
        run = await open_loop(port, rate, seconds)
        result = run.result
        server_ms = meter.server_ms(result.calls)
    p = LoadResult.percentile
    line = (
        f"   the bare asyncio server at the same rate: {len(result.setup_ms)} of {result.calls}"
        f" dialled, header->Dial p50 {p(result.setup_ms, 50):.1f} ms"
        f" p99 {p(result.setup_ms, 99):.1f} ms; CPU per call: the bare server"
        f" {server_ms:.2f} ms, the fake Asterisk {meter.client_ms(result.calls):.2f} ms"
    )
    slow = run.slow_bursts(slow_ms) if slow_ms is not None else []
    return "\n".join([line, *slow])


def _fmt(result: LoadResult) -> str:
    p = LoadResult.percentile
    dialled = len(result.setup_ms)
    return (
        f"{result.completed}/{result.calls} ok ({dialled} dialled, {result.completed - dialled} "
        f"refused), {dialled / (result.wall_ms / 1000):,.0f} dialled/s, "
        f"header->Dial p50 {p(result.setup_ms, 50):.1f} ms p99 {p(result.setup_ms, 99):.1f} ms"
    )


def offered_rates(spec: str, bare_rate: float) -> list[int]:
    """``40%,300`` -> [40 % of the bare ceiling, 300] calls per second."""
    rates: list[int] = []
    for item in spec.split(","):
        item = item.strip()
        if item.endswith("%"):
            rates.append(max(1, round(bare_rate * float(item[:-1]) / 100)))
        elif item:
            rates.append(int(item))
    return rates


@contextlib.asynccontextmanager
async def py_spy(pid: int, prefix: str | None, name: str) -> AsyncIterator[None]:
    """With ``--profile PREFIX``: py-spy samples the serve process (without pausing it) while the
    block runs, into PREFIX-NAME.txt as collapsed stacks (one line per stack: frames;... count)."""
    if prefix is None:
        yield
        return
    out = f"{prefix}-{name}.txt"
    spy = await asyncio.create_subprocess_exec(
        "py-spy",
        "record",
        "--nonblocking",
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        out,
        "--pid",
        str(pid),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)  # attached before the load starts
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        await spy.wait()
        print(f"   py-spy profile of callgate serve: {out}", flush=True)


async def run_backend(backend: str, args: argparse.Namespace) -> None:
    async with bench_database(backend) as url:
        print(f"== {backend}: seeding {ACCOUNTS} accounts ...", flush=True)
        await seed(url)
        log = Path(tempfile.gettempdir()) / f"callgate-bench-{backend}.log"
        port = _free_port()
        async with Server(url, port, log) as server:
            assert server.proc is not None
            cpu = CpuMeter(server.proc.pid, database_name(url))
            await run_load(
                "127.0.0.1",
                port,
                calls=300,
                concurrency=50,
                responder_factory=_answered_at_once,
                spec_factory=_spec,
            )  # warm-up
            # the ceiling again, just before this backend's phases: on a shared VM it moved by a
            # fifth within one run (and 358-1,511/s across runs), so the ratio compares neighbours
            bare = await measure_bare("raw", args.calls, args.concurrency)
            ceiling = bare.sessions_per_second
            print(f"bare asyncio ceiling, just before {backend}: {_fmt(bare)}", flush=True)
            cpu.start()
            async with py_spy(server.proc.pid, args.profile, f"{backend}-closed"):
                closed = await run_load(
                    "127.0.0.1",
                    port,
                    calls=args.calls,
                    concurrency=args.concurrency,
                    responder_factory=_answered_at_once,
                    spec_factory=_spec,
                )
            print(f"closed loop, {args.concurrency} in flight: {_fmt(closed)}", flush=True)
            print(cpu.report(closed), flush=True)
            for rate in offered_rates(args.rates, ceiling):
                share = rate / ceiling if ceiling else 0.0
                cpu.start()
                async with py_spy(server.proc.pid, args.profile, f"{backend}-{rate}"):
                    run = await open_loop(port, rate, args.seconds)
                offered = run.result
                print(
                    f"open loop, {rate} calls/s offered ({share:.0%} of the bare ceiling): "
                    f"{_fmt(offered)}",
                    flush=True,
                )
                print(cpu.report(offered), flush=True)
                if args.slow_ms is not None:
                    for line in run.slow_bursts(args.slow_ms):
                        print(line, flush=True)
                print(await bare_at_rate(rate, args.seconds, args.slow_ms), flush=True)
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
        args.results[backend] = (len(closed.setup_ms) / (closed.wall_ms / 1000), ceiling)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["pg", "sqlite", "both"], default="both")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="open-loop duration")
    parser.add_argument("--held", type=int, default=5000, help="calls held in Dial (0: skip)")
    parser.add_argument(
        "--rates",
        default="40%",
        help="open-loop offered rates, calls/s or a %% of the bare ceiling (default 40%%)",
    )
    parser.add_argument(
        "--slow-ms",
        type=float,
        default=None,
        help="list the open loop's runs of calls slower than this (header->Dial), with the CPU"
        " steal and load of the box while they ran",
    )
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        default=None,
        help="sample callgate serve with py-spy during the closed loop and each open-loop run"
        " (pip install py-spy), into PREFIX-BACKEND-closed.txt and PREFIX-BACKEND-RATE.txt as"
        " collapsed stacks",
    )
    args = parser.parse_args()
    args.results = {}
    call_path = os.environ.get("CALLGATE_DATABASE_CALL_PATH", "lean (default)")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {_cpu_model()}")
    print(f"[database] call_path: {call_path}")
    event_loop = os.environ.get("CALLGATE_AGI_EVENT_LOOP", "asyncio (default)")
    uvloop_installed = importlib.util.find_spec("uvloop") is not None
    print(
        f"[agi] event_loop of callgate serve: {event_loop}"
        f" (uvloop {'installed' if uvloop_installed else 'not installed'});"
        " the bare ceiling and the fake Asterisk run on asyncio's loop"
    )
    bare = await measure_bare("raw", args.calls, args.concurrency)
    print(f"bare asyncio ceiling (same commands, no work): {_fmt(bare)}", flush=True)
    for backend in ["pg", "sqlite"] if args.backend == "both" else [args.backend]:
        await run_backend(backend, args)
    for backend, (rate, ceiling) in args.results.items():
        ratio = rate / ceiling if ceiling else 0.0
        first = rate / bare.sessions_per_second if bare.sessions_per_second else 0.0
        print(
            f"{backend}: {rate:,.0f} dialled calls/s = {ratio:.0%} of the bare ceiling measured "
            f"just before it ({ceiling:,.0f}/s; {first:.0%} of the first one)"
        )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    asyncio.run(main())
