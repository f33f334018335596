"""Call plans, rate tables, rates and trunks: the routing and pricing data.

One call plan has many rate tables (with a priority), one rate table has many rates. A change to a
table's rates bumps its ``version``, which is how a running server knows to rebuild that table's
in-memory index.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import (
    EnabledStatus,
    ReservationStatus,
    RoutingMode,
    TrunkTechnology,
    accounts,
    call_plan_rate_tables,
    call_plans,
    dids,
    rate_tables,
    rates,
    reservations,
    trunks,
)
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import ConflictError, InvalidDataError, NotFoundError


@dataclass(frozen=True, slots=True)
class Trunk:
    id: int
    name: str
    technology: TrunkTechnology
    peer: str
    dial_prefix: str
    strip_digits: int
    dial_options: str
    failover_trunk_id: int | None
    channel_limit: int | None
    status: EnabledStatus


@dataclass(frozen=True, slots=True)
class CallPlanRow:
    id: int
    name: str
    routing_mode: RoutingMode
    max_call_seconds: int
    remove_international_prefix: bool
    description: str


@dataclass(frozen=True, slots=True)
class RateTableRow:
    id: int
    name: str
    trunk_id: int | None
    record_calls: bool
    description: str
    version: int
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class PlanTableLink:
    rate_table_id: int
    rate_table: str
    priority: int


@dataclass(frozen=True, slots=True)
class RemovedRateTable:
    """A rate table as it was before `remove_rate_table`, and how many rates went with it."""

    table: RateTableRow
    rates: int


SAMPLE_SIZE = 5  # rows named in a refusal ("used by 12 account(s): 1001, 1002, ...")


async def _lock(conn: AsyncConnection, table: Table, row_id: int) -> None:
    """Lock a row until the transaction ends (PostgreSQL; on SQLite a write transaction
    already holds the whole database): a removal checks what uses it, then deletes it."""
    await conn.execute(select(table.c.id).where(table.c.id == row_id).with_for_update())


def _sample(names: list[str], total: int | None = None) -> str:
    total = len(names) if total is None else total
    shown = ", ".join(names[:SAMPLE_SIZE])
    return shown + (", ..." if total > SAMPLE_SIZE else "")


def _trunk(row: Any) -> Trunk:
    m = row._mapping
    return Trunk(
        id=m["id"],
        name=m["name"],
        technology=TrunkTechnology(m["technology"]),
        peer=m["peer"],
        dial_prefix=m["dial_prefix"],
        strip_digits=m["strip_digits"],
        dial_options=m["dial_options"],
        failover_trunk_id=m["failover_trunk_id"],
        channel_limit=m["channel_limit"],
        status=EnabledStatus(m["status"]),
    )


def _plan(row: Any) -> CallPlanRow:
    m = row._mapping
    return CallPlanRow(
        id=m["id"],
        name=m["name"],
        routing_mode=RoutingMode(m["routing_mode"]),
        max_call_seconds=m["max_call_seconds"],
        remove_international_prefix=bool(m["remove_international_prefix"]),
        description=m["description"],
    )


def _table(row: Any) -> RateTableRow:
    m = row._mapping
    return RateTableRow(
        id=m["id"],
        name=m["name"],
        trunk_id=m["trunk_id"],
        record_calls=bool(m["record_calls"]),
        description=m["description"],
        version=m["version"],
        updated_at=m["updated_at"],
    )


# --- trunks -------------------------------------------------------------------------------------


async def create_trunk(
    conn: AsyncConnection,
    *,
    name: str,
    technology: TrunkTechnology | str,
    peer: str,
    dial_prefix: str = "",
    strip_digits: int = 0,
    dial_options: str = "",
    failover: str | None = None,
    channel_limit: int | None = None,
    status: EnabledStatus | str = EnabledStatus.ACTIVE,
) -> Trunk:
    try:
        tech = TrunkTechnology(technology)
    except ValueError as exc:
        allowed = ", ".join(t.value for t in TrunkTechnology)
        raise InvalidDataError(f"unknown technology {technology!r} (one of {allowed})") from exc
    failover_id = (await fetch_trunk(conn, failover)).id if failover else None
    async with mapped_errors(f"trunk {name}"):
        if await conn.scalar(select(trunks.c.id).where(trunks.c.name == name)) is not None:
            raise ConflictError(f"trunk {name!r} exists")
        row = (
            await conn.execute(
                insert(trunks)
                .values(
                    name=name,
                    technology=tech.value,
                    peer=peer,
                    dial_prefix=dial_prefix,
                    strip_digits=strip_digits,
                    dial_options=dial_options,
                    failover_trunk_id=failover_id,
                    channel_limit=channel_limit,
                    status=str(status),
                )
                .returning(trunks)
            )
        ).one()
        return _trunk(row)


async def fetch_trunk(conn: AsyncConnection, name: str) -> Trunk:
    row = (await conn.execute(select(trunks).where(trunks.c.name == name))).first()
    if row is None:
        raise NotFoundError(f"no trunk named {name!r}")
    return _trunk(row)


async def list_trunks(conn: AsyncConnection) -> list[Trunk]:
    return [_trunk(r) for r in await conn.execute(select(trunks).order_by(trunks.c.name))]


async def update_trunk(conn: AsyncConnection, name: str, **changes: Any) -> Trunk:
    """Change a trunk's fields (``failover`` takes a trunk name, or "" to clear it)."""
    current = await fetch_trunk(conn, name)
    values: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None:
            continue
        if key == "failover":
            values["failover_trunk_id"] = (await fetch_trunk(conn, value)).id if value else None
        elif key == "technology":
            values[key] = TrunkTechnology(value).value
        elif key == "status":
            values[key] = EnabledStatus(value).value
        elif key in {"peer", "dial_prefix", "strip_digits", "dial_options", "channel_limit"}:
            values[key] = value
        else:
            raise InvalidDataError(f"unknown trunk field {key!r}")
    if values:
        async with mapped_errors(f"trunk {name}"):
            await conn.execute(update(trunks).where(trunks.c.id == current.id).values(**values))
    return await fetch_trunk(conn, name)


async def trunk_uses(conn: AsyncConnection, trunk_id: int) -> list[str]:
    """What still names a trunk, one phrase per kind of use (empty: nothing does): other trunks
    failing over to it, rate tables with it as default, rates naming it, DIDs coming in on it."""
    uses: list[str] = []
    failover = [
        row.name
        for row in await conn.execute(
            select(trunks.c.name)
            .where((trunks.c.failover_trunk_id == trunk_id) & (trunks.c.id != trunk_id))
            .order_by(trunks.c.name)
        )
    ]
    if failover:
        uses.append(
            f"failover of trunk(s) {_sample(failover)} (`callgate trunks update "
            f'{failover[0]} --failover ""` clears it)'
        )
    tables = [
        row.name
        for row in await conn.execute(
            select(rate_tables.c.name)
            .where(rate_tables.c.trunk_id == trunk_id)
            .order_by(rate_tables.c.name)
        )
    ]
    if tables:
        uses.append(
            f"default trunk of rate table(s) {_sample(tables)} (`callgate tables update "
            f"{tables[0]} --trunk OTHER` or `--no-trunk`)"
        )
    by_table = (
        await conn.execute(
            select(rate_tables.c.name, func.count())
            .select_from(rates.join(rate_tables, rate_tables.c.id == rates.c.rate_table_id))
            .where(rates.c.trunk_id == trunk_id)
            .group_by(rate_tables.c.name)
            .order_by(rate_tables.c.name)
        )
    ).all()
    if by_table:
        counts = [f"{count} in {table}" for table, count in by_table]
        uses.append(
            f"named by rate(s): {_sample(counts)} (import those decks again with another "
            "trunk, with --replace)"
        )
    numbers = [
        row.number
        for row in await conn.execute(
            select(dids.c.number)
            .where(dids.c.provider_trunk_id == trunk_id)
            .order_by(dids.c.number)
        )
    ]
    if numbers:
        uses.append(f"provider trunk of {len(numbers)} DID(s): {_sample(numbers)}")
    return uses


async def remove_trunk(conn: AsyncConnection, name: str) -> Trunk:
    """Delete a trunk; refused (`ConflictError`, saying what) while anything names it.

    Call records keep the trunk's name as text, so history is unaffected. Run it in a write
    transaction (`callgate.store.db.write_transaction`); returns the trunk as it was.
    """
    async with mapped_errors(f"trunk {name}"):
        await _lock(conn, trunks, (await fetch_trunk(conn, name)).id)
        current = await fetch_trunk(conn, name)
        uses = await trunk_uses(conn, current.id)
        if uses:
            raise ConflictError(f"trunk {name!r} is still used: {'; '.join(uses)}; nothing removed")
        await conn.execute(delete(trunks).where(trunks.c.id == current.id))
    return current


# --- call plans and rate tables ------------------------------------------------------------------


async def create_call_plan(
    conn: AsyncConnection,
    *,
    name: str,
    routing_mode: RoutingMode | str = RoutingMode.LCR,
    max_call_seconds: int = 36000,
    remove_international_prefix: bool = True,
    description: str = "",
) -> CallPlanRow:
    mode = RoutingMode(routing_mode)
    if max_call_seconds <= 0:
        raise InvalidDataError("max_call_seconds must be positive")
    async with mapped_errors(f"call plan {name}"):
        if await conn.scalar(select(call_plans.c.id).where(call_plans.c.name == name)):
            raise ConflictError(f"call plan {name!r} exists")
        row = (
            await conn.execute(
                insert(call_plans)
                .values(
                    name=name,
                    routing_mode=mode.value,
                    max_call_seconds=max_call_seconds,
                    remove_international_prefix=remove_international_prefix,
                    description=description,
                )
                .returning(call_plans)
            )
        ).one()
        return _plan(row)


async def fetch_call_plan(conn: AsyncConnection, name_or_id: str | int) -> CallPlanRow:
    column = call_plans.c.id if isinstance(name_or_id, int) else call_plans.c.name
    row = (await conn.execute(select(call_plans).where(column == name_or_id))).first()
    if row is None:
        raise NotFoundError(f"no call plan {name_or_id!r}: configure the call plan first")
    return _plan(row)


async def list_call_plans(conn: AsyncConnection) -> list[CallPlanRow]:
    return [_plan(r) for r in await conn.execute(select(call_plans).order_by(call_plans.c.name))]


def _check_name(kind: str, name: str) -> None:
    if not name.strip():
        raise InvalidDataError(f"a {kind}'s name cannot be empty")


async def update_call_plan(
    conn: AsyncConnection,
    name: str,
    *,
    new_name: str | None = None,
    routing_mode: RoutingMode | str | None = None,
    max_call_seconds: int | None = None,
    remove_international_prefix: bool | None = None,
    description: str | None = None,
) -> CallPlanRow:
    """Change a call plan's fields (None: unchanged). Running servers are told (NOTIFY on
    PostgreSQL, their poll otherwise) when what they route by changes: name, mode, length."""
    current = await fetch_call_plan(conn, name)
    values: dict[str, Any] = {}
    if new_name is not None and new_name != current.name:
        _check_name("call plan", new_name)
        if await conn.scalar(select(call_plans.c.id).where(call_plans.c.name == new_name)):
            raise ConflictError(f"call plan {new_name!r} exists")
        values["name"] = new_name
    if routing_mode is not None:
        try:
            mode = RoutingMode(routing_mode)
        except ValueError as exc:
            allowed = ", ".join(m.value for m in RoutingMode)
            raise InvalidDataError(
                f"unknown routing mode {routing_mode!r} (one of {allowed})"
            ) from exc
        if mode != current.routing_mode:
            values["routing_mode"] = mode.value
    if max_call_seconds is not None:
        if max_call_seconds <= 0:
            raise InvalidDataError("max_call_seconds must be positive")
        if max_call_seconds != current.max_call_seconds:
            values["max_call_seconds"] = max_call_seconds
    if (
        remove_international_prefix is not None
        and remove_international_prefix != current.remove_international_prefix
    ):
        values["remove_international_prefix"] = remove_international_prefix
    if description is not None and description != current.description:
        values["description"] = description
    if values:
        async with mapped_errors(f"call plan {name}"):
            await conn.execute(
                update(call_plans).where(call_plans.c.id == current.id).values(**values)
            )
        if values.keys() & {"name", "routing_mode", "max_call_seconds"}:
            for link in await plan_tables(conn, current.id):
                await notify_rates_changed(conn, link.rate_table_id)
    return await fetch_call_plan(conn, current.id)


async def remove_call_plan(
    conn: AsyncConnection, name: str
) -> tuple[CallPlanRow, list[PlanTableLink]]:
    """Delete a call plan and its links to rate tables (not the tables).

    Refused (`ConflictError`, with how many and a few account numbers) while accounts use it;
    nothing else references a call plan. Run it in a write transaction; returns the plan and
    its links as they were.
    """
    async with mapped_errors(f"call plan {name}"):
        await _lock(conn, call_plans, (await fetch_call_plan(conn, name)).id)
        current = await fetch_call_plan(conn, name)
        used = int(
            await conn.scalar(
                select(func.count())
                .select_from(accounts)
                .where(accounts.c.call_plan_id == current.id)
            )
            or 0
        )
        if used:
            numbers = [
                row.number
                for row in await conn.execute(
                    select(accounts.c.number)
                    .where(accounts.c.call_plan_id == current.id)
                    .order_by(accounts.c.number)
                    .limit(SAMPLE_SIZE)
                )
            ]
            raise ConflictError(
                f"call plan {name!r} is used by {used} account(s) ({_sample(numbers, used)}): "
                f"move them to another plan first (`callgate accounts batch-update --plan {name} "
                "--set plan=OTHER`); nothing removed"
            )
        links = await plan_tables(conn, current.id)
        await conn.execute(
            delete(call_plan_rate_tables).where(call_plan_rate_tables.c.call_plan_id == current.id)
        )
        await conn.execute(delete(call_plans).where(call_plans.c.id == current.id))
        for link in links:
            await notify_rates_changed(conn, link.rate_table_id)
    return current, links


async def create_rate_table(
    conn: AsyncConnection,
    *,
    name: str,
    trunk: str | None = None,
    record_calls: bool = False,
    description: str = "",
) -> RateTableRow:
    trunk_id = (await fetch_trunk(conn, trunk)).id if trunk else None
    async with mapped_errors(f"rate table {name}"):
        if await conn.scalar(select(rate_tables.c.id).where(rate_tables.c.name == name)):
            raise ConflictError(f"rate table {name!r} exists")
        row = (
            await conn.execute(
                insert(rate_tables)
                .values(
                    name=name, trunk_id=trunk_id, record_calls=record_calls, description=description
                )
                .returning(rate_tables)
            )
        ).one()
        return _table(row)


async def fetch_rate_table(conn: AsyncConnection, name_or_id: str | int) -> RateTableRow:
    column = rate_tables.c.id if isinstance(name_or_id, int) else rate_tables.c.name
    row = (await conn.execute(select(rate_tables).where(column == name_or_id))).first()
    if row is None:
        raise NotFoundError(f"no rate table {name_or_id!r}")
    return _table(row)


async def list_rate_tables(conn: AsyncConnection) -> list[RateTableRow]:
    query = select(rate_tables).order_by(rate_tables.c.name)
    return [_table(r) for r in await conn.execute(query)]


async def update_rate_table(
    conn: AsyncConnection,
    name: str,
    *,
    new_name: str | None = None,
    trunk: str | None = None,
    record_calls: bool | None = None,
    description: str | None = None,
) -> RateTableRow:
    """Change a rate table's fields (None: unchanged; ``trunk`` takes a trunk name, or "" to
    clear the default trunk).

    A new name or default trunk changes the table's routes, so it bumps the version (running
    servers rebuild the index, at once on PostgreSQL); ``record_calls`` and ``description`` do
    not (servers read ``record_calls`` with the trunks, on their 30 s refresh).
    """
    current = await fetch_rate_table(conn, name)
    values: dict[str, Any] = {}
    if new_name is not None and new_name != current.name:
        _check_name("rate table", new_name)
        if await conn.scalar(select(rate_tables.c.id).where(rate_tables.c.name == new_name)):
            raise ConflictError(f"rate table {new_name!r} exists")
        values["name"] = new_name
    if trunk is not None:
        trunk_id = (await fetch_trunk(conn, trunk)).id if trunk else None
        if trunk_id != current.trunk_id:
            values["trunk_id"] = trunk_id
    if record_calls is not None and record_calls != current.record_calls:
        values["record_calls"] = record_calls
    if description is not None and description != current.description:
        values["description"] = description
    if values:
        async with mapped_errors(f"rate table {name}"):
            await conn.execute(
                update(rate_tables).where(rate_tables.c.id == current.id).values(**values)
            )
            if values.keys() & {"name", "trunk_id"}:
                await bump_table_version(conn, current.id)
    return await fetch_rate_table(conn, current.id)


async def open_reservations_on_table(conn: AsyncConnection, table_id: int) -> int:
    """Reservations still open or unresolved (calls not settled yet) priced by the table's rates."""
    query = (
        select(func.count())
        .select_from(reservations.join(rates, rates.c.id == reservations.c.rate_id))
        .where(
            reservations.c.status.in_(
                [ReservationStatus.OPEN.value, ReservationStatus.UNRESOLVED.value]
            )
            & (rates.c.rate_table_id == table_id)
        )
    )
    return int(await conn.scalar(query) or 0)


async def remove_rate_table(
    conn: AsyncConnection, name: str, *, with_rates: bool = False
) -> RemovedRateTable:
    """Delete a rate table and its rates. Run it in a write transaction.

    Refused (`ConflictError`) while the table is in a call plan (detach it first), while calls
    priced by its rates are not settled (open or unresolved reservations: settling needs the
    rate), and, unless ``with_rates``, while it holds rates. Call records keep what they were
    charged (table name, prefix, prices and cost are copied into ``calls``, whose ``rate_id``
    is no foreign key), as after ``rates import --replace``.
    """
    async with mapped_errors(f"rate table {name}"):
        await _lock(conn, rate_tables, (await fetch_rate_table(conn, name)).id)
        current = await fetch_rate_table(conn, name)
        in_plans = [
            row.name
            for row in await conn.execute(
                select(call_plans.c.name)
                .join(
                    call_plan_rate_tables,
                    call_plan_rate_tables.c.call_plan_id == call_plans.c.id,
                )
                .where(call_plan_rate_tables.c.rate_table_id == current.id)
                .order_by(call_plans.c.name)
            )
        ]
        if in_plans:
            raise ConflictError(
                f"rate table {name!r} is in call plan(s) {', '.join(in_plans)}: detach it first "
                f"(`callgate plans detach {in_plans[0]} {name}`); nothing removed"
            )
        pending = await open_reservations_on_table(conn, current.id)
        if pending:
            raise ConflictError(
                f"rate table {name!r} prices {pending} call(s) not settled yet (open or "
                "unresolved reservations): remove it once they end or are settled "
                "(`callgate calls reconcile`); nothing removed"
            )
        count = int(
            await conn.scalar(
                select(func.count()).select_from(rates).where(rates.c.rate_table_id == current.id)
            )
            or 0
        )
        if count and not with_rates:
            raise ConflictError(
                f"rate table {name!r} holds {count} rate(s), which would be deleted with it: "
                "add --yes to remove it and its rates; nothing removed"
            )
        await conn.execute(delete(rates).where(rates.c.rate_table_id == current.id))
        await conn.execute(delete(rate_tables).where(rate_tables.c.id == current.id))
    return RemovedRateTable(current, count)


async def attach_rate_table(
    conn: AsyncConnection, plan: str, table: str, *, priority: int = 1
) -> None:
    """Add a rate table to a call plan (or change its priority: lower is preferred)."""
    if priority < 0:
        raise InvalidDataError("priority must be >= 0")
    plan_row = await fetch_call_plan(conn, plan)
    table_row = await fetch_rate_table(conn, table)
    async with mapped_errors(f"attach {table} to {plan}"):
        where = (call_plan_rate_tables.c.call_plan_id == plan_row.id) & (
            call_plan_rate_tables.c.rate_table_id == table_row.id
        )
        exists = await conn.scalar(
            select(func.count()).select_from(call_plan_rate_tables).where(where)
        )
        if exists:
            await conn.execute(update(call_plan_rate_tables).where(where).values(priority=priority))
        else:
            await conn.execute(
                insert(call_plan_rate_tables).values(
                    call_plan_id=plan_row.id, rate_table_id=table_row.id, priority=priority
                )
            )


async def detach_rate_table(conn: AsyncConnection, plan: str, table: str) -> None:
    plan_row = await fetch_call_plan(conn, plan)
    table_row = await fetch_rate_table(conn, table)
    result = await conn.execute(
        delete(call_plan_rate_tables).where(
            (call_plan_rate_tables.c.call_plan_id == plan_row.id)
            & (call_plan_rate_tables.c.rate_table_id == table_row.id)
        )
    )
    if result.rowcount == 0:
        raise NotFoundError(f"rate table {table!r} is not in call plan {plan!r}")


async def plan_tables(conn: AsyncConnection, plan_id: int) -> list[PlanTableLink]:
    """The rate tables of a call plan, by priority."""
    query = (
        select(rate_tables.c.id, rate_tables.c.name, call_plan_rate_tables.c.priority)
        .join(call_plan_rate_tables, call_plan_rate_tables.c.rate_table_id == rate_tables.c.id)
        .where(call_plan_rate_tables.c.call_plan_id == plan_id)
        .order_by(call_plan_rate_tables.c.priority, rate_tables.c.name)
    )
    return [PlanTableLink(r.id, r.name, r.priority) for r in await conn.execute(query)]


# --- rates ---------------------------------------------------------------------------------------

RATE_COLUMNS = (
    "prefix",
    "destination",
    "rate",
    "connect_fee",
    "disconnect_fee",
    "disconnect_after",
    "initial_block",
    "increment",
    "minimal_cost",
    "buy_rate",
    "buy_initial_block",
    "buy_increment",
    "trunk_id",
    "valid_from",
    "valid_to",
    "week_start",
    "week_end",
)


async def add_rates(
    conn: AsyncConnection, table: str | int, rows: Iterable[Mapping[str, Any]]
) -> int:
    """Insert rates into a rate table and bump its version; returns how many were added."""
    table_row = await fetch_rate_table(conn, table)
    batch: list[dict[str, Any]] = []
    count = 0
    async with mapped_errors(f"rates of {table_row.name}"):
        for row in rows:
            unknown = set(row) - set(RATE_COLUMNS)
            if unknown:
                raise InvalidDataError(f"unknown rate field(s): {', '.join(sorted(unknown))}")
            batch.append({"rate_table_id": table_row.id, **row})
            if len(batch) >= 5000:
                await conn.execute(insert(rates), batch)
                count += len(batch)
                batch = []
        if batch:
            await conn.execute(insert(rates), batch)
            count += len(batch)
        await bump_table_version(conn, table_row.id)
    return count


NOTIFY_CHANNEL = "callgate_rates"


async def notify_rates_changed(conn: AsyncConnection, table_id: int) -> None:
    """Tell running servers that a rate table (or a plan's tables) changed.

    On PostgreSQL: ``pg_notify('callgate_rates', '<table id>')``, delivered when the caller's
    transaction commits (and not at all if it rolls back). On SQLite there is no such channel:
    servers see the version change on their next poll.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": NOTIFY_CHANNEL, "payload": str(table_id)},
        )


async def bump_table_version(conn: AsyncConnection, table_id: int) -> None:
    """Mark a rate table changed: servers rebuild its index when they see the new version
    (at once on PostgreSQL, through NOTIFY; at their next poll on SQLite)."""
    await conn.execute(
        update(rate_tables)
        .where(rate_tables.c.id == table_id)
        .values(version=rate_tables.c.version + 1, updated_at=func.now())
    )
    await notify_rates_changed(conn, table_id)
