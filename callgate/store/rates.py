"""Rate decks: CSV import and export, streaming rates out of the database, lookups, change notices.

The CSV format (RATING.md names, one header row, any column order)::

    prefix,destination,rate,connect_fee,disconnect_fee,disconnect_after,initial_block,increment,
    minimal_cost,buy_rate,buy_initial_block,buy_increment,valid_from,valid_to,week_start,week_end,
    trunk

Only `prefix` and `rate` are required; an empty cell means the default (0, or none for dates, the
week window and the trunk, which then is the rate table's). A2Billing's column names are accepted
as aliases (`COLUMN_ALIASES`). Times are ISO-8601; a time without a zone is on the operator's
wall clock (``settings.billing.timezone``) and stored in UTC. Every row becomes a
`callgate.rating.Rate`, so the deck is validated by the rating core itself (negative prices are
refused: RATING.md "we differ" #4). An import is all or nothing: the rows go in inside the
caller's transaction and the first bad line (reported with its line number and column, with up
to `MAX_PROBLEMS` more) aborts it. ``replace=True`` deletes the table's rates in the same
transaction, so readers see the old table or the new one, never half of either. A prefix may
appear once per validity (dates and week window, `validity_key`) in a table: twice in a deck,
or (without ``replace``) once in the deck and once in the table, is a bad line.

PostgreSQL loads with ``COPY`` (asyncpg ``copy_records_to_table`` on the transaction's own
connection); SQLite with ``executemany`` in big batches. Each import bumps the table's version and,
on PostgreSQL, sends ``NOTIFY callgate_rates, '<table id>'`` in the same transaction, so that
running servers (`callgate.store.ratecache.RateCache`) rebuild that table's index once the import
commits.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import gc
import io
import itertools
import logging
import sqlite3
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Container,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy import delete, func, select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeDecorator

from callgate.rating import (
    CallPlan,
    Interner,
    InvalidPlanError,
    InvalidRateError,
    PlanTable,
    PrefixIndex,
    Rate,
    parse_money,
)
from callgate.schema.tables import call_plan_rate_tables, call_plans, rate_tables, rates
from callgate.schema.types import MONEY_PLACES as STORED_MONEY_PLACES
from callgate.store import plans
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import InvalidDataError, StoreError
from callgate.store.plans import NOTIFY_CHANNEL, notify_rates_changed

__all__ = [
    "COLUMN_ALIASES",
    "CSV_COLUMNS",
    "MAX_PROBLEMS",
    "NOTIFY_CHANNEL",
    "ImportProblem",
    "ImportResult",
    "RateImportError",
    "attach_table",
    "detach_table",
    "fetch_plan_for_number",
    "format_csv_row",
    "import_rates",
    "iter_rates",
    "notify_rates_changed",
    "parse_deck",
    "plans_of_table",
    "rate_counts",
    "validity_key",
]

log = logging.getLogger(__name__)

MAX_PROBLEMS = 20  # bad lines reported by one failed import
COPY_TIMEOUT_SECONDS = 300.0  # one COPY batch (network await deadline)
PG_BATCH = 50_000
SQLITE_BATCH = 20_000
STREAM_BATCH = 10_000
READ_TIMEOUT_SECONDS = 60.0  # one cursor fetch (network await deadline)

CSV_COLUMNS = (
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
    "valid_from",
    "valid_to",
    "week_start",
    "week_end",
    "trunk",
)

COLUMN_ALIASES: Mapping[str, str] = {
    "dialprefix": "prefix",
    "rateinitial": "rate",
    "initblock": "initial_block",
    "billingblock": "increment",
    "connectcharge": "connect_fee",
    "disconnectcharge": "disconnect_fee",
    "buyrate": "buy_rate",
    "buyrateinitblock": "buy_initial_block",
    "buyrateincrement": "buy_increment",
    "startdate": "valid_from",
    "stopdate": "valid_to",
}

_MONEY = frozenset({"rate", "connect_fee", "disconnect_fee", "minimal_cost", "buy_rate"})
_SECONDS = frozenset(
    {"disconnect_after", "initial_block", "increment", "buy_initial_block", "buy_increment"}
)
_WEEK = frozenset({"week_start", "week_end"})
_TIMES = frozenset({"valid_from", "valid_to"})
# MySQL's "no date", as A2Billing exports an open stopdate
_ZERO_DATES = frozenset({"0000-00-00", "0000-00-00 00:00:00"})

# the order of the values in an insert record (after rate_table_id)
_DB_COLUMNS = ("rate_table_id", *plans.RATE_COLUMNS)


# --- errors and results --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportProblem:
    """One bad line of a deck: its line number (1 is the header), the column and what is wrong."""

    line: int
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", column {self.column}" if self.column else "")
        return f"{where}: {self.message}"


class RateImportError(InvalidDataError):
    """A deck was refused; nothing of it was imported. `problems` lists the bad lines."""

    def __init__(self, source: str, problems: Sequence[ImportProblem], *, more: bool) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        tail = "\n  ... (more bad lines not shown)" if more else ""
        count = f"{len(self.problems)}{'+' if more else ''}"
        super().__init__(f"{source}: {count} bad line(s), nothing imported:\n{lines}{tail}")


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did: rows added (and removed by ``replace``) and the table's new version."""

    table: str
    table_id: int
    imported: int
    deleted: int
    version: int


# --- parsing a deck (pure) -----------------------------------------------------------------------


class _Problem(Exception):
    def __init__(self, column: str | None, message: str) -> None:
        super().__init__(message)
        self.column = column
        self.message = message


def _parse_seconds(text_value: str, column: str) -> int:
    stripped = text_value.strip()
    if not stripped:
        return 0
    try:
        return int(stripped)
    except ValueError:
        raise _Problem(column, f"not a whole number of seconds: {text_value!r}") from None


def _parse_week(text_value: str, column: str) -> int | None:
    stripped = text_value.strip()
    if not stripped:
        return None
    try:
        return int(stripped)
    except ValueError:
        raise _Problem(column, f"not a minute of the week (0-10079): {text_value!r}") from None


def _parse_time(text_value: str, column: str, zone: tzinfo) -> datetime | None:
    stripped = text_value.strip()
    if not stripped or stripped in _ZERO_DATES:
        return None
    try:
        stamp = datetime.fromisoformat(stripped)
    except ValueError:
        raise _Problem(column, f"not an ISO-8601 time: {text_value!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=zone)
    return stamp.astimezone(UTC)


_RATE_FIELDS = tuple(f.name for f in dataclasses.fields(Rate))
_SLOT = {name: slot for slot, name in enumerate(_RATE_FIELDS)}
CACHE_LIMIT = 100_000  # distinct cell texts remembered per column
_ZERO_MONEY = Rate("0", Decimal(0)).connect_fee  # Rate's own shared zero (its default)


class _Cells(dict[Any, Any]):
    """Converted values by raw value: each distinct cell is converted once (a deck repeats)."""

    __slots__ = ("_convert",)

    def __init__(self, convert: Callable[[Any], Any]) -> None:
        super().__init__()
        self._convert = convert

    def __missing__(self, raw: Any) -> Any:
        value = self._convert(raw)  # raises _Problem for a bad cell, which is not remembered
        if len(self) < CACHE_LIMIT:
            self[raw] = value
        return value


class _DeckParser:
    """Turns the rows of a deck into validated `Rate` values, sharing repeated values."""

    def __init__(self, header: Sequence[str], zone: tzinfo, known_trunks: Iterable[str]) -> None:
        self._zone = zone
        self._trunks = frozenset(known_trunks)
        self._interner = Interner()
        positions: dict[str, int] = {}
        names: dict[str, str] = {}
        for position, raw in enumerate(header):
            given = raw.strip()
            key = given.lower()
            canonical = COLUMN_ALIASES.get(key, key)
            if canonical not in CSV_COLUMNS:
                allowed = ", ".join(CSV_COLUMNS)
                raise _Problem(given, f"unknown column {given!r} (known: {allowed})")
            if canonical in positions:
                raise _Problem(given, f"column {canonical!r} given twice")
            positions[canonical] = position
            names[canonical] = given
        for required in ("prefix", "rate"):
            if required not in positions:
                raise _Problem(None, f"the header has no {required!r} column")
        self.width = len(header)
        self._names = names
        self._prefix_at = positions["prefix"]
        # Rate's own defaults (shared objects) for the columns the deck leaves out or blank
        self._template: list[Any] = [f.default for f in dataclasses.fields(Rate)]
        self._plan = tuple(
            (_SLOT[name], position, _Cells(self._converter(name, names[name])))
            for name, position in positions.items()
            if name != "prefix"
        )

    def _converter(self, name: str, column: str) -> Callable[[str], Any]:
        default = self._template[_SLOT[name]]
        interner = self._interner
        zone = self._zone
        trunks = self._trunks

        def money(cell: str) -> Any:
            if not cell.strip():
                return default
            try:
                value = parse_money(cell, name)
            except InvalidRateError as exc:
                raise _Problem(column, exc.message) from None
            return _ZERO_MONEY if value == 0 and not value.is_signed() else interner.money(value)

        def seconds(cell: str) -> Any:
            return _parse_seconds(cell, column) if cell.strip() else default

        def week(cell: str) -> Any:
            return _parse_week(cell, column)

        def stamp(cell: str) -> Any:
            value = _parse_time(cell, column, zone)
            return None if value is None else interner.share(value)

        def trunk(cell: str) -> Any:
            found = cell.strip()
            if found and found not in trunks:
                raise _Problem(column, f"no trunk named {found!r}")
            return interner.share(found) if found else None

        def text_value(cell: str) -> Any:
            return interner.share(cell.strip())

        if name in _MONEY:
            return money
        if name in _SECONDS:
            return seconds
        if name in _WEEK:
            return week
        if name in _TIMES:
            return stamp
        if name == "trunk":
            return trunk
        return text_value  # destination

    def column_name(self, field: str) -> str:
        """The deck's own name of a Rate field (as written in the header)."""
        return self._names.get(field, field)

    def parse(self, row: Sequence[str]) -> Rate:
        if len(row) != self.width:
            raise _Problem(None, f"{len(row)} fields, the header has {self.width}")
        values = self._template.copy()
        for slot, position, cells in self._plan:
            values[slot] = cells[row[position]]
        values[0] = row[self._prefix_at].strip()
        try:
            return Rate(*values)
        except InvalidRateError as exc:
            raise _Problem(self.column_name(exc.field), exc.message) from None


def validity_key(rate: Rate) -> Any:
    """What makes two rates of one table the same price point: the prefix and the validity
    (dates and week window). Two with one key would leave the price of a call to chance.

    Just the prefix when the rate has no window (most decks: no tuple per row to keep)."""
    window = (rate.valid_from, rate.valid_to, rate.week_start, rate.week_end)
    return rate.prefix if window == (None, None, None, None) else (rate.prefix, *window)


def _describe_validity(key: Any) -> str:
    if isinstance(key, str):
        return f"prefix {key!r} (always valid)"
    prefix, valid_from, valid_to, week_start, week_end = key
    parts = [
        f"from {valid_from.isoformat()}" if valid_from else "",
        f"to {valid_to.isoformat()}" if valid_to else "",
        f"week minutes {week_start}-{week_end}" if week_start is not None else "",
    ]
    return f"prefix {prefix!r} ({', '.join(p for p in parts if p)})"


def parse_deck(
    lines: Iterable[str],
    *,
    zone: tzinfo,
    known_trunks: Iterable[str] = (),
    source: str = "<csv>",
    existing: Container[Any] = frozenset(),
    table: str = "the rate table",
) -> Iterator[tuple[int, Rate]]:
    """Parse a CSV deck (text lines, header first) into ``(line number, Rate)``.

    Line numbers are physical lines of the file (1 is the header; a quoted newline counts).
    Blank lines are skipped. Raises `RateImportError` after the first bad line, listing up to
    `MAX_PROBLEMS` bad lines (it keeps reading to find them, but yields nothing after the first).
    A rate whose :func:`validity_key` an earlier line of the deck has, or that is in
    ``existing`` (the keys already in the target table), is a bad line.
    """
    reader = csv.reader(lines)
    problems: list[ImportProblem] = []
    more = False
    seen: dict[Any, int] = {}
    try:
        header: list[str] = []
        for header in reader:
            if header:
                break
        if not header:
            problem = ImportProblem(1, None, "empty file: no header row")
            raise RateImportError(source, [problem], more=False)
        header[0] = header[0].removeprefix("\ufeff")  # a byte-order mark from a spreadsheet
        try:
            parser = _DeckParser(header, zone, known_trunks)
        except _Problem as bad:
            problem = ImportProblem(reader.line_num, bad.column, bad.message)
            raise RateImportError(source, [problem], more=False) from None
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            try:
                rate = parser.parse(row)
                key = validity_key(rate)
                earlier = seen.setdefault(key, reader.line_num)
                if earlier != reader.line_num:
                    raise _Problem(
                        parser.column_name("prefix"),
                        f"{_describe_validity(key)} repeats line {earlier}",
                    )
                if key in existing:
                    raise _Problem(
                        parser.column_name("prefix"),
                        f"{_describe_validity(key)} is already in {table} "
                        "(load the whole deck again with --replace)",
                    )
            except _Problem as bad:
                if len(problems) >= MAX_PROBLEMS:
                    more = True
                    break
                problems.append(ImportProblem(reader.line_num, bad.column, bad.message))
                continue
            if not problems:
                yield reader.line_num, rate
    except csv.Error as exc:
        problems.append(ImportProblem(reader.line_num, None, f"not valid CSV: {exc}"))
    if problems:
        raise RateImportError(source, problems, more=more)


def _format_money(value: Decimal) -> str:
    textual = format(value, "f")
    if "." in textual:
        textual = textual.rstrip("0").rstrip(".")
    return textual or "0"


def format_csv_row(rate: Rate) -> list[str]:
    """A rate as a CSV row in `CSV_COLUMNS` order (what ``rates export`` writes)."""

    def stamp(value: datetime | None) -> str:
        return "" if value is None else value.astimezone(UTC).isoformat()

    def week(value: int | None) -> str:
        return "" if value is None else str(value)

    return [
        rate.prefix,
        rate.destination,
        _format_money(rate.rate),
        _format_money(rate.connect_fee),
        _format_money(rate.disconnect_fee),
        str(rate.disconnect_after),
        str(rate.initial_block),
        str(rate.increment),
        _format_money(rate.minimal_cost),
        _format_money(rate.buy_rate),
        str(rate.buy_initial_block),
        str(rate.buy_increment),
        stamp(rate.valid_from),
        stamp(rate.valid_to),
        week(rate.week_start),
        week(rate.week_end),
        rate.trunk or "",
    ]


# --- import --------------------------------------------------------------------------------------


async def _refresh_statistics(conn: AsyncConnection) -> None:
    """ANALYZE the rates after a bulk load, so that reading a whole table scans it instead of
    probing the (table, prefix) index row by row (several times slower on SQLite, which has no
    statistics until ANALYZE). It reads the index only: 0.02 s per 100,000 rates on SQLite;
    PostgreSQL samples."""
    await conn.exec_driver_sql("ANALYZE rates")


async def _lock_table(conn: AsyncConnection, name: str) -> plans.RateTableRow:
    """The rate table, its row locked against concurrent imports (PostgreSQL)."""
    table = await plans.fetch_rate_table(conn, name)
    await conn.execute(
        select(rate_tables.c.id).where(rate_tables.c.id == table.id).with_for_update()
    )
    return table


class _Loader:
    """Loads validated rates into one rate table, batch by batch, in the caller's transaction.

    `encode` (plain CPU work, run in a worker thread) turns a batch into what the backend takes;
    `write` sends it. PostgreSQL: ``COPY rates FROM STDIN (FORMAT csv)`` on the transaction's
    own asyncpg connection (the text format costs the client a third of what the binary
    ``copy_records_to_table`` does, whose Decimal encoding dominated a large import). SQLite:
    ``executemany`` with the schema's own value conversions.
    """

    def __init__(self, conn: AsyncConnection, table_id: int, trunk_ids: Mapping[str, int]) -> None:
        self._conn = conn
        self._table_id = table_id
        self._trunk_ids = trunk_ids
        self.postgresql = conn.dialect.name == "postgresql"
        self.count = 0
        self._driver: Any = None
        self._text = _Cells(_text_value)
        if not self.postgresql:
            processors = _bind_processors(conn.dialect)
            # only the columns the schema converts (Money as scaled integers, UTC times)
            self._convert = [
                (slot, _Cells(process))
                for slot, process in enumerate(processors)
                if process is not None
            ]
            columns = ", ".join(_DB_COLUMNS)
            marks = ", ".join("?" for _ in _DB_COLUMNS)
            self._sql = f"INSERT INTO rates ({columns}) VALUES ({marks})"

    def _records(self, batch: Iterable[Rate]) -> Iterator[tuple[Any, ...]]:
        table_id, trunk_ids = self._table_id, self._trunk_ids
        for rate in batch:
            yield (
                table_id,
                rate.prefix,
                rate.destination,
                rate.rate,
                rate.connect_fee,
                rate.disconnect_fee,
                rate.disconnect_after,
                rate.initial_block,
                rate.increment,
                rate.minimal_cost,
                rate.buy_rate,
                rate.buy_initial_block,
                rate.buy_increment,
                None if rate.trunk is None else trunk_ids[rate.trunk],
                rate.valid_from,
                rate.valid_to,
                rate.week_start,
                rate.week_end,
            )

    def encode(self, batch: Sequence[Rate]) -> Any:
        """The batch as CSV bytes (PostgreSQL) or bound rows (SQLite). Thread-safe enough: one
        batch is encoded at a time."""
        if self.postgresql:
            text_of = self._text
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerows(
                [text_of[value] for value in record] for record in self._records(batch)
            )
            return buffer.getvalue().encode("utf-8")
        convert = self._convert
        rows: list[tuple[Any, ...]] = []
        for record in self._records(batch):
            values = list(record)
            for slot, cells in convert:
                value = values[slot]
                if value is not None:
                    values[slot] = cells[value]
            rows.append(tuple(values))
        return rows

    async def write(self, payload: Any, count: int) -> None:
        if self.postgresql:
            if self._driver is None:
                # the transaction's own connection: the COPY commits or rolls back with it (the
                # caller's earlier statements have begun the driver-level transaction)
                raw = await self._conn.get_raw_connection()
                self._driver = raw.driver_connection
            async with _driver_errors("COPY rates"):
                await self._driver.copy_to_table(
                    "rates",
                    source=io.BytesIO(payload),
                    columns=_DB_COLUMNS,
                    format="csv",
                    force_not_null=["prefix", "destination"],  # "" is text, not NULL
                    timeout=COPY_TIMEOUT_SECONDS,
                )
        else:
            await self._conn.exec_driver_sql(self._sql, payload)
        self.count += count


def _text_value(value: Any) -> Any:
    """A value as COPY's CSV text: plain decimals, ISO times; None stays None (NULL)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _bind_processors(dialect: Dialect) -> list[Callable[[Any], Any] | None]:
    """The schema's own conversions (Money as scaled integer on SQLite, UTC times) per column."""
    return [
        rates.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in _DB_COLUMNS
    ]


async def _validity_keys(conn: AsyncConnection, table_id: int) -> set[Any]:
    """The :func:`validity_key` of every rate already in a table (what a new deck may not
    repeat without ``replace``)."""
    c = rates.c
    query = select(c.prefix, c.valid_from, c.valid_to, c.week_start, c.week_end).where(
        c.rate_table_id == table_id
    )
    keys: set[Any] = set()
    for prefix, valid_from, valid_to, week_start, week_end in await conn.execute(query):
        window = (valid_from, valid_to, week_start, week_end)
        keys.add(prefix if window == (None, None, None, None) else (prefix, *window))
    return keys


async def import_rates(
    conn: AsyncConnection,
    table: str,
    lines: Iterable[str],
    *,
    zone: tzinfo,
    replace: bool = False,
    source: str = "<csv>",
    batch_size: int | None = None,
) -> ImportResult:
    """Import a CSV deck (text lines, header first) into a rate table.

    Runs in the caller's transaction, which must be a write transaction (`write_transaction`):
    on any error, raise and let the caller roll back, so nothing of the deck is kept. With
    `replace`, the table's rates are deleted first, in the same transaction. `zone` is the
    operator's zone for times written without one. Bumps the table's version and notifies.

    The deck is read and validated in a worker thread one batch ahead of the database, so that
    parsing (our CPU) and loading (the database's) overlap; `lines` is consumed from that
    thread, one batch at a time.
    """
    async with mapped_errors(f"import into {table}"):
        target = await _lock_table(conn, table)
        trunk_ids = {trunk.name: trunk.id for trunk in await plans.list_trunks(conn)}
        deleted = 0
        existing: set[Any] = set()
        if replace:
            result = await conn.execute(delete(rates).where(rates.c.rate_table_id == target.id))
            deleted = max(result.rowcount, 0)
        else:
            existing = await _validity_keys(conn, target.id)
        table_id = target.id
        loader = _Loader(conn, table_id, trunk_ids)
        size = batch_size or (PG_BATCH if loader.postgresql else SQLITE_BATCH)
        parsed = parse_deck(
            lines,
            zone=zone,
            known_trunks=trunk_ids,
            source=source,
            existing=existing,
            table=f"rate table {target.name!r}",
        )

        def next_batch() -> tuple[Any, int] | None:
            batch = [rate for _, rate in itertools.islice(parsed, size)]
            return (loader.encode(batch), len(batch)) if batch else None

        loading: asyncio.Task[None] | None = None
        try:
            while True:
                ready = await asyncio.to_thread(next_batch)  # while the last batch loads
                if loading is not None:
                    await loading
                    loading = None
                if ready is None:
                    break
                loading = asyncio.create_task(loader.write(*ready))
        finally:
            if loading is not None:  # a bad line or a cancel: let the load in flight finish
                await asyncio.gather(loading, return_exceptions=True)
        await _refresh_statistics(conn)
        await plans.bump_table_version(conn, table_id)  # and tells running servers
        version = await conn.scalar(
            select(rate_tables.c.version).where(rate_tables.c.id == table_id)
        )
    log.info(
        "imported %d rate(s) into %s from %s (replaced %d), version %s",
        loader.count,
        target.name,
        source,
        deleted,
        version,
    )
    return ImportResult(target.name, table_id, loader.count, deleted, int(version or 0))


# --- reading rates back --------------------------------------------------------------------------


_READ_COLUMNS = (
    "id",
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
    "valid_from",
    "valid_to",
    "week_start",
    "week_end",
    "trunk_id",
)
_MONEY_SCALE = 10**STORED_MONEY_PLACES


def _rates_sql(postgresql: bool, *, ordered: bool, prefixes: int | None) -> str:
    """The one query that reads rates out, on the driver's own connection (no ORM rows).

    Money comes out as an integer count of 10^-5 units on both backends (SQLite stores it so;
    on PostgreSQL the cast is exact for NUMERIC(20,5)), which the driver hands over far faster
    than a Decimal and which is decoded once per distinct value.
    """
    columns = ", ".join(
        f"CAST({name} * {_MONEY_SCALE} AS BIGINT)" if postgresql and name in _MONEY else name
        for name in _READ_COLUMNS
    )
    where = "rate_table_id = $1" if postgresql else "rate_table_id = ?"
    if prefixes is not None:
        where += (
            " AND prefix = ANY($2::text[])"
            if postgresql
            else f" AND prefix IN ({', '.join('?' * prefixes)})"
        )
    order = " ORDER BY id" if ordered else ""
    return f"SELECT {columns} FROM rates WHERE {where}{order}"


@asynccontextmanager
async def _driver_errors(what: str) -> AsyncIterator[None]:
    """Errors of the raw drivers (COPY, cursors) as store errors, as `mapped_errors` does."""
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError, sqlite3.Error) as exc:
        raise StoreError(f"{what}: {exc}") from exc


async def _raw_batches(
    conn: AsyncConnection,
    table_id: int,
    *,
    batch: int,
    ordered: bool = False,
    prefixes: Sequence[str] | None = None,
) -> AsyncGenerator[Sequence[Sequence[Any]], None]:
    """Rows of `_READ_COLUMNS`, `batch` at a time, through a cursor of the caller's transaction.

    The caller has run a statement on `conn` already, so the driver-level transaction is open
    (an asyncpg cursor needs one; on SQLite the read then sees one snapshot).
    """
    postgresql = conn.dialect.name == "postgresql"
    sql = _rates_sql(
        postgresql, ordered=ordered, prefixes=None if prefixes is None else len(prefixes)
    )
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    if postgresql:
        args: tuple[Any, ...] = (table_id,) if prefixes is None else (table_id, list(prefixes))
        cursor = await driver.cursor(sql, *args, timeout=READ_TIMEOUT_SECONDS)
        while True:
            chunk = await cursor.fetch(batch, timeout=READ_TIMEOUT_SECONDS)
            if not chunk:
                return
            yield chunk
    else:
        cursor = await driver.execute(sql, (table_id, *(prefixes or ())))
        try:
            while True:
                chunk = await cursor.fetchmany(batch)
                if not chunk:
                    return
                yield chunk
        finally:
            await cursor.close()


def _result_processor(name: str, dialect: Dialect) -> Callable[[Any], Any] | None:
    """The schema's own decoding of a raw value of column `name` (UtcDateTime)."""
    kind = rates.c[name].type
    if dialect.name == "postgresql" and isinstance(kind, TypeDecorator):
        # asyncpg hands back aware datetimes itself: only our layer is left
        decorator: TypeDecorator[Any] = kind
        return lambda raw: decorator.process_result_value(raw, dialect)
    return kind.dialect_impl(dialect).result_processor(dialect, None)


class _RowDecoder:
    """Raw driver rows -> `Rate` values, each distinct money/time/name value decoded once."""

    def __init__(self, dialect: Dialect, interner: Interner, trunks: Mapping[int, str]) -> None:
        stamp = _result_processor("valid_from", dialect)

        def decode_money(raw: Any) -> Any:
            # an integer count of 10^-5 units: exactly what `Money` gives back (5 places);
            # zero is Rate's own shared zero, which its construction checks fastest
            if raw is None:
                return None
            if raw == 0:
                return _ZERO_MONEY
            return interner.money(Decimal(raw).scaleb(-STORED_MONEY_PLACES))

        def decode_time(raw: Any) -> Any:
            if raw is None:
                return None
            return interner.share(stamp(raw) if stamp is not None else raw)

        def trunk_name(trunk_id: Any) -> Any:
            return None if trunk_id is None else interner.share(trunks[trunk_id])

        self._money = _Cells(decode_money)
        self._times = _Cells(decode_time)
        self._names = _Cells(interner.share)
        self._trunks = _Cells(trunk_name)

    def rate(self, row: Sequence[Any]) -> Rate:
        return self.decode((row,))[0]

    def decode(self, rows: Iterable[Sequence[Any]]) -> list[Rate]:
        """Rows of `_READ_COLUMNS` as `Rate` values (built positionally, in Rate's field order)."""
        money, times, names, trunks = self._money, self._times, self._names, self._trunks
        make = Rate.from_store  # the database's constraints hold; see Rate.from_store
        return [
            make(
                row[1],  # prefix
                money[row[3]],  # rate
                money[row[4]],  # connect_fee
                money[row[5]],  # disconnect_fee
                row[6],  # disconnect_after
                row[7],  # initial_block
                row[8],  # increment
                money[row[9]],  # minimal_cost
                money[row[10]],  # buy_rate
                row[11],  # buy_initial_block
                row[12],  # buy_increment
                times[row[13]],  # valid_from
                times[row[14]],  # valid_to
                row[15],  # week_start
                row[16],  # week_end
                names[row[2]],  # destination
                trunks[row[17]],  # trunk
                row[0],  # id
            )
            for row in rows
        ]

    def checked(self, rows: Sequence[Sequence[Any]], table_id: int) -> list[Rate]:
        """`decode`, with a rate the import would have refused reported as a store error."""
        try:
            return self.decode(rows)
        except InvalidRateError as exc:  # written by hand, past the import checks
            for row in rows:
                try:
                    self.rate(row)
                except InvalidRateError:
                    bad = f"id {row[0]} (prefix {row[1]!r})"
                    raise InvalidDataError(f"rate table {table_id}, rate {bad}: {exc}") from exc
            raise  # pragma: no cover - one row failed above


async def iter_rates(
    conn: AsyncConnection,
    table_id: int,
    *,
    interner: Interner | None = None,
    batch: int = STREAM_BATCH,
    ordered: bool = False,
) -> AsyncIterator[list[Rate]]:
    """The rates of a rate table as `Rate` values, streamed in lists of up to `batch`.

    Rows come through a cursor of the caller's transaction and are decoded batch by batch, so
    a million rates never sit in memory twice (as rows and as rates). Repeated values are shared
    through `interner`. `ordered` sorts by id (the import order; for export). Each batch is
    decoded in a worker thread while the next one is fetched, so the event loop keeps serving
    calls during a large load; the cyclic garbage collector is paused while a batch is decoded
    (rates hold no cycles), which saves a third of the time of a large load. The connection is
    busy fetching ahead while the caller holds a batch: do not use `conn` until the end.
    """
    interner = interner or Interner()
    async with mapped_errors(f"rates of table {table_id}"):
        trunk_names = {t.id: t.name for t in await plans.list_trunks(conn)}
    decoder = _RowDecoder(conn.dialect, interner, trunk_names)

    def decode(rows: Sequence[Sequence[Any]]) -> list[Rate]:
        collecting = gc.isenabled()
        gc.disable()
        try:
            return decoder.checked(rows, table_id)
        finally:
            if collecting:
                gc.enable()

    async with mapped_errors(f"rates of table {table_id}"), _driver_errors(f"rates of {table_id}"):
        fetched = _raw_batches(conn, table_id, batch=batch, ordered=ordered)
        following: asyncio.Future[Sequence[Sequence[Any]]] | None = None
        try:
            following = asyncio.ensure_future(anext(fetched))
            while True:
                try:
                    rows = await following
                except StopAsyncIteration:
                    following = None
                    return
                following = asyncio.ensure_future(anext(fetched))  # fetch while we decode
                yield await asyncio.to_thread(decode, rows)
        finally:
            if following is not None:
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
            await fetched.aclose()


async def rate_counts(conn: AsyncConnection) -> dict[int, int]:
    """How many rates each rate table holds, by table id."""
    query = select(rates.c.rate_table_id, func.count()).group_by(rates.c.rate_table_id)
    return {int(row[0]): int(row[1]) for row in await conn.execute(query)}


async def plans_of_table(conn: AsyncConnection, table_id: int) -> list[tuple[str, int]]:
    """The call plans a rate table is in, with its priority there: ``[(plan name, priority)]``."""
    query = (
        select(call_plans.c.name, call_plan_rate_tables.c.priority)
        .join(call_plan_rate_tables, call_plan_rate_tables.c.call_plan_id == call_plans.c.id)
        .where(call_plan_rate_tables.c.rate_table_id == table_id)
        .order_by(call_plans.c.name)
    )
    return [(row[0], int(row[1])) for row in await conn.execute(query)]


# --- plans -------------------------------------------------------------------------------------


async def attach_table(conn: AsyncConnection, plan: str, table: str, *, priority: int = 1) -> None:
    """`plans.attach_rate_table`, then tell running servers (the plan's tables changed)."""
    await plans.attach_rate_table(conn, plan, table, priority=priority)
    await notify_rates_changed(conn, (await plans.fetch_rate_table(conn, table)).id)


async def detach_table(conn: AsyncConnection, plan: str, table: str) -> None:
    """`plans.detach_rate_table`, then tell running servers."""
    await plans.detach_rate_table(conn, plan, table)
    await notify_rates_changed(conn, (await plans.fetch_rate_table(conn, table)).id)


def _trunk_name(trunk_id: int | None, names: Mapping[int, str]) -> str | None:
    return None if trunk_id is None else names.get(trunk_id)


async def fetch_plan_for_number(conn: AsyncConnection, plan: str | int, number: str) -> CallPlan:
    """A `CallPlan` holding only the rates that can match `number` (for one-off lookups).

    Reads the rates whose prefix is a prefix of `number` from each of the plan's tables (an
    index probe per table) into small indexes, so that `callgate.rating.quote` on the result
    answers exactly as the server's full in-memory index would, without loading the tables.
    """
    plan_row = await plans.fetch_call_plan(conn, plan)
    links = await plans.plan_tables(conn, plan_row.id)
    if not (number.isascii() and number.isdigit()):
        raise InvalidDataError(f"not a number (digits only): {number!r}")
    candidates = [number[:length] for length in range(1, min(len(number), 32) + 1)]
    trunk_names = {t.id: t.name for t in await plans.list_trunks(conn)}
    interner = Interner()
    decoder = _RowDecoder(conn.dialect, interner, trunk_names)
    tables: list[PlanTable] = []
    for link in links:
        table = await plans.fetch_rate_table(conn, link.rate_table_id)
        found: list[Rate] = []
        async with _driver_errors(f"rates of {table.name}"):
            async for rows in _raw_batches(
                conn, table.id, batch=STREAM_BATCH, ordered=True, prefixes=candidates
            ):
                found.extend(decoder.checked(rows, table.id))
        index = PrefixIndex(
            table.name,
            found,
            default_trunk=_trunk_name(table.trunk_id, trunk_names),
            version=table.version,
        )
        tables.append(PlanTable(table.name, link.priority, index))
    try:
        return CallPlan(
            plan_row.name,
            plan_row.routing_mode,
            plan_row.max_call_seconds,
            tuple(tables),
        )
    except InvalidPlanError as exc:
        raise InvalidDataError(f"call plan {plan_row.name!r}: {exc}") from exc
