"""PostgreSQL CPU of each call-path operation of the lean ledger, one at a time.

``bench/agi_load.py`` gives the PostgreSQL CPU of a whole call under load; this says which
operation it goes to. On a throwaway database seeded as agi_load's (2,000 accounts), the lean
PostgreSQL call path (:class:`callgate.store.lean_pg.LeanPostgres`) runs on one connection, and
each operation runs ``--count`` times in a row: the account lookup (with the reserve's state),
the reserve (its own state read and ``callgate_reserve_if_unchanged``), the settle, and
``SELECT 1`` for the cost of a round trip itself. For each it prints the backend's CPU per
operation (from /proc/<pid>/stat of the one backend serving the connection, so PostgreSQL must
run on this machine) and the wall time.

    python bench/pg_ops.py                 # 2,000 of each
    python bench/pg_ops.py --count 10000

``CALLGATE_BENCH_PG_URL`` names the server (default: postgres@127.0.0.1:5432, database
postgres), as for agi_load.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agi_load import ACCOUNTS, bench_database, cpu_seconds, seed

from callgate.schema.tables import CallStatus
from callgate.store.lean_pg import LeanPostgres
from callgate.store.ledger import CallRecord

RATE = Decimal("0.05")  # a minute at agi_load's rate


def price(available: Decimal) -> tuple[int, Decimal]:
    """A minute for RATE (agi_load's accounts hold ample credit)."""
    return 60, RATE


async def measure(
    name: str, backend_pid: int, count: int, operation: Callable[[int], Awaitable[object]]
) -> None:
    cpu_before, wall_before = cpu_seconds(backend_pid), time.perf_counter()
    for n in range(count):
        await operation(n)
    wall = time.perf_counter() - wall_before
    cpu_after = cpu_seconds(backend_pid)
    if cpu_before is None or cpu_after is None:
        raise SystemExit(f"cannot read the CPU of backend {backend_pid}: is PostgreSQL local?")
    print(
        f"{name:<36} PostgreSQL CPU {(cpu_after - cpu_before) / count * 1e3:6.3f} ms"
        f"   wall {wall / count * 1e3:6.3f} ms"
    )


async def run(count: int) -> None:
    async with bench_database("pg") as url:
        print(f"seeding {ACCOUNTS} accounts ...")
        await seed(url)
        lean = await LeanPostgres.connect(url, grace_seconds=30, min_size=1, max_size=1)
        try:
            pool = lean._pool  # the one connection: its backend is the one measured
            backend_pid = await pool.fetchval("SELECT pg_backend_pid()")
            numbers = [str(9000000000 + n) for n in range(ACCOUNTS)]
            ids: list[int] = []
            now = datetime.now(UTC)

            async def lookup(n: int) -> None:
                found = await lean.find_for_call(
                    accountcode=numbers[n % ACCOUNTS], argument="", callerid=""
                )
                assert found is not None, numbers[n % ACCOUNTS]
                if len(ids) < ACCOUNTS:
                    ids.append(found.id)

            async def reserve(n: int) -> None:
                await lean.reserve(
                    account_id=ids[n % ACCOUNTS],
                    uniqueid=f"bench.{n}",
                    price=price,
                    now=now,
                    trunk="carrier",
                    rate_id=None,
                )

            async def settle(n: int) -> None:
                settled = await lean.settle(
                    CallRecord(
                        uniqueid=f"bench.{n}",
                        status=CallStatus.OK,
                        started_at=now,
                        ended_at=now + timedelta(seconds=30),
                        account_id=ids[n % ACCOUNTS],
                        billsec=30,
                        cost=RATE / 2,
                    )
                )
                assert not settled.already_settled, n

            async def round_trip(n: int) -> None:
                # through the leases, as the ledger's statements: the pool's one connection
                # stays leased by them, so the pool itself has none to give
                await lean._leases.run("fetchval", "SELECT 1")

            print(f"{count:,} of each on one connection (backend {backend_pid}):")
            await measure("account lookup (by number)", backend_pid, count, lookup)
            # the reserve measured alone reads its own state (the call flow's reserve right
            # after its lookup uses the lookup's: lean_pg's module text)
            lean._looked_up.clear()
            await measure("reserve (state read + function)", backend_pid, count, reserve)
            await measure("settle (one statement)", backend_pid, count, settle)
            await measure("SELECT 1 (a round trip)", backend_pid, count, round_trip)
        finally:
            await lean.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=2000, help="operations of each kind")
    args = parser.parse_args()
    if args.count < ACCOUNTS:
        parser.error(f"--count must be at least {ACCOUNTS} (one lookup per account first)")
    asyncio.run(run(args.count))


if __name__ == "__main__":
    main()
