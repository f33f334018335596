"""Benchmark of rates end to end: CSV import into SQLite and PostgreSQL, the server's rate cache.

    /work/venv/bin/python bench/rating.py [--count 1000000] [--seconds 3] [--seed 1]
        [--pg-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres] [--no-pg]

Writes a generated deck of N distinct prefixes (bench/rating_index.py's generator: country codes
plus 1 to 9 digits; 1 % of the prefixes also carry a weekend rate, so N * 1.01 rows) as a CSV
file with RATING.md's column names, then:

1. imports it with `callgate.store.rates.import_rates` (what ``callgate rates import`` runs:
   parse, validate every row as a `Rate`, load, commit) into a fresh SQLite file and into a
   throwaway PostgreSQL database (created on the server of --pg-url, dropped at the end);
2. in a FRESH process (so that RSS is what a server holding the rates would use, not the
   leftovers of the import), starts a `RateCache` on the database (PostgreSQL when reachable,
   else SQLite): the time to stream the rates out and build the index, the RSS after it, then
   lookups/s (`PrefixIndex.lookup` through the cached plan) and quotes/s (`quote`) on 100,000
   dialled numbers (80 % extend a deck prefix).

Targets on the 2-core box: import <= 30 s into PostgreSQL, build <= 10 s, RSS <= 500 MB,
lookups >= 250,000/s.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rating_index import (
    AT,
    Deck,
    Stopwatch,
    make_deck,
    make_numbers,
    peak_rss_mb,
    per_second,
    rss_mb,
)
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from callgate.rating import InsufficientCreditError, NoRateError, quote
from callgate.schema.migrate import upgrade
from callgate.store import plans
from callgate.store.db import create_engine, write_transaction
from callgate.store.ratecache import RateCache
from callgate.store.rates import CSV_COLUMNS, import_rates

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
UTC = ZoneInfo("UTC")


def write_deck(path: Path, deck: Deck) -> int:
    """The generated deck as CSV with RATING.md's column names; returns the number of rows."""
    rows = 0
    blank = ""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for prefix, sell, buy, block, step, destination, window, _ in deck.rows():
            week_start, week_end = window if window is not None else (blank, blank)
            # prefix, destination, rate, connect_fee, disconnect_fee, disconnect_after,
            # initial_block, increment, minimal_cost, buy_rate, buy_initial_block, buy_increment,
            # valid_from, valid_to, week_start, week_end, trunk ("" = the default)
            writer.writerow(
                (prefix, destination, sell, blank, blank, blank, block, step, blank, buy)
                + (block, step, blank, blank, week_start, week_end, blank)
            )
            rows += 1
    return rows


async def prepare(url: str) -> None:
    """Migrate, then one trunk, one rate table and one call plan."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        await upgrade(engine)
        async with engine.begin() as conn:
            await plans.create_trunk(conn, name="carrier-a", technology="PJSIP", peer="carrier-a")
            await plans.create_rate_table(conn, name="deck", trunk="carrier-a")
            await plans.create_call_plan(conn, name="retail", max_call_seconds=14_400)
            await plans.attach_rate_table(conn, "retail", "deck")
    finally:
        await engine.dispose()


def backend_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds used so far by a local PostgreSQL backend process (None if unreadable)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed_import(url: str, deck: Path) -> tuple[Stopwatch, int, float | None]:
    """Import the CSV file as ``callgate rates import`` does; the time includes the commit.

    Also returns the CPU seconds the PostgreSQL backend spent (when it runs on this host).
    """
    engine = create_engine(url, poolclass=NullPool)
    try:
        with Stopwatch() as watch, deck.open(encoding="utf-8", newline="") as handle:
            async with write_transaction(engine) as conn:
                pid = None
                if engine.dialect.name == "postgresql":
                    pid = int(await conn.scalar(text("SELECT pg_backend_pid()")) or 0)
                before = backend_cpu_seconds(pid)
                result = await import_rates(conn, "deck", handle, zone=UTC, source=deck.name)
                after = backend_cpu_seconds(pid)
        server = None if before is None or after is None else after - before
        return watch, result.imported, server
    finally:
        await engine.dispose()


async def admin(url: str, sql: str) -> None:
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with asyncio.timeout(30), engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


# --- the fresh "server" process ----------------------------------------------------------------


async def serve_phase(url: str, numbers_file: Path, seconds: float) -> dict[str, Any]:
    baseline = rss_mb()
    engine = create_engine(url, poolclass=NullPool)
    cache = RateCache(engine, listen=False, poll_seconds=3600)
    try:
        with Stopwatch() as build:
            await cache.start()
    finally:
        await cache.close()
        await engine.dispose()
    gc.collect()
    after = rss_mb()
    plan = cache.plan_named("retail")
    assert plan is not None
    index = plan.tables[0].index
    numbers = numbers_file.read_text(encoding="ascii").split()  # noqa: ASYNC240 - a bench

    lookups = per_second(lambda number: index.lookup(number, AT), numbers, seconds)
    available = Decimal("5.00000")

    def one_quote(number: str) -> object:
        try:
            return quote(plan, number, available, 36_000, AT)
        except (NoRateError, InsufficientCreditError) as refused:
            return refused

    quotes = per_second(one_quote, numbers, seconds)
    hits = sum(1 for number in numbers[:10_000] if index.lookup(number, AT))
    return {
        "backend": engine.dialect.name,
        "rates": len(index),
        "prefixes": index.prefix_count,
        "build": str(build),
        "build_seconds": build.wall,
        "rss_start_mb": baseline,
        "rss_after_build_mb": after,
        "peak_rss_mb": peak_rss_mb(),
        "lookups_per_second": lookups,
        "quotes_per_second": quotes,
        "hit_percent": hits / 100,
    }


def run_serve_phase(url: str, numbers_file: Path, seconds: float) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--serve-phase",
        url,
        "--numbers",
        str(numbers_file),
        "--seconds",
        str(seconds),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=1800)
    result: dict[str, Any] = json.loads(output.stdout)
    return result


# --- main --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1_000_000, help="distinct prefixes")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput measure")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pg-url", default=os.environ.get("CALLGATE_TEST_PG_URL", DEFAULT_PG))
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--serve-phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--numbers", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve_phase:
        figures = asyncio.run(serve_phase(args.serve_phase, Path(args.numbers), args.seconds))
        print(json.dumps(figures))
        return 0

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="callgate-bench-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        generated = make_deck(args.count, rng)
        deck = workdir / "deck.csv"
        rows = write_deck(deck, generated)
        numbers = make_numbers(generated.prefixes, 100_000, rng)
        numbers_file = workdir / "numbers.txt"
        numbers_file.write_text("\n".join(numbers), encoding="ascii")
        del generated, numbers
        size_mb = deck.stat().st_size / 1e6
        print(
            f"deck               {rows:>12,} rows, {args.count:,} prefixes, {size_mb:.0f} MB "
            f"(generated in {time.perf_counter() - started:.1f} s)"
        )

        sqlite_url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        asyncio.run(prepare(sqlite_url))
        watch, imported, _ = asyncio.run(timed_import(sqlite_url, deck))
        assert imported == rows
        print(f"import SQLite      {watch}  ({rows / watch.wall:,.0f} rows/s, executemany)")

        serve_url = sqlite_url
        pg_db = f"callgate_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        pg_url = make_url(args.pg_url).set(database=pg_db).render_as_string(hide_password=False)
        pg_ready = False
        if not args.no_pg:
            try:
                asyncio.run(admin(args.pg_url, f'CREATE DATABASE "{pg_db}"'))
                pg_ready = True
            except (OSError, TimeoutError, SQLAlchemyError) as exc:
                print(f"import PostgreSQL  skipped: {exc}")
        try:
            if pg_ready:
                asyncio.run(prepare(pg_url))
                watch, imported, server = asyncio.run(timed_import(pg_url, deck))
                assert imported == rows
                server_cpu = "" if server is None else f"; server {server:.2f} s CPU"
                print(
                    f"import PostgreSQL  {watch}  ({rows / watch.wall:,.0f} rows/s, COPY"
                    f"{server_cpu}; target <= 30 s)"
                )
                serve_url = pg_url
            figures = run_serve_phase(serve_url, numbers_file, args.seconds)
        finally:
            if pg_ready:
                asyncio.run(admin(args.pg_url, f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)'))

    print(
        f"cache build        {figures['build']}  (RateCache.start from {figures['backend']}: "
        f"{figures['rates']:,} rates, {figures['prefixes']:,} prefixes; target <= 10 s)"
    )
    print(
        f"RSS after build    {figures['rss_after_build_mb']:>12.0f} MB (fresh process, "
        f"{figures['rss_start_mb']:.0f} MB at start, peak {figures['peak_rss_mb']:.0f} MB;"
        " target <= 500 MB)"
    )
    print(
        f"lookups            {figures['lookups_per_second']}  (target >= 250,000/s; "
        f"{figures['hit_percent']:.0f} % hit)"
    )
    print(f"quotes             {figures['quotes_per_second']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
