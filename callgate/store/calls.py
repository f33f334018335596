"""The billing records (``calls``): listing, filters, streaming export, recalc and statistics.

* :class:`CallFilter` is the one set of filters of ``callgate calls list`` and ``callgate cdr
  list|export``; :func:`list_calls` returns the newest first, :func:`iter_calls` streams rows in
  time order through a server-side cursor (an export of millions never sits in memory).
* :func:`recalc` is ConnexCS's "Recalc CDR": the calls of one day longer than S seconds are
  re-rated to S2 seconds and the difference goes back to the balance. Each call is one
  transaction under the account lock; the adjustment is recorded twice, as a completed
  ``adjustment`` payment and in the call's note, and the call keeps its new billsec, so running it
  again changes nothing (a call already at S2 or shorter is never touched).
* :func:`call_stats` is the Stats tab: attempts, answered, ASR, ACD, PDD, peak CPS, hangup
  causes, overall or by day/month in the operator's zone. It streams the rows in time order
  (an index) and aggregates in Python, identically on both databases.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callgate.rating import Rate, buy_cost, cost, quantize_money
from callgate.schema.tables import CallStatus, PaymentKind, accounts, calls, rates
from callgate.store._errors_map import mapped_errors
from callgate.store.db import write_transaction
from callgate.store.errors import InvalidDataError
from callgate.store.payments import add_payment

log = logging.getLogger(__name__)

ZERO = Decimal(0)
STREAM_BATCH = 1000
RECALC_MARK = "recalc:"

# The columns of a listing and an export, in order (the CSV header).
EXPORT_COLUMNS: tuple[str, ...] = (
    "uniqueid",
    "account",
    "status",
    "started_at",
    "answered_at",
    "ended_at",
    "callerid",
    "dialed_number",
    "number",
    "prefix",
    "destination",
    "rate_table",
    "sell_rate",
    "buy_rate",
    "trunk",
    "billsec",
    "granted_seconds",
    "pdd_ms",
    "dial_status",
    "hangup_cause",
    "cost",
    "buy_cost",
    "script",
    "server",
    "note",
)


@dataclass(frozen=True, slots=True)
class CallFilter:
    """Filters of a listing; empty fields do not filter."""

    account_id: int | None = None
    since: datetime | None = None  # started_at >= since
    until: datetime | None = None  # started_at < until
    status: CallStatus | None = None
    destination: str = ""  # a number prefix, or part of the destination name
    trunk: str = ""
    dial_status: str = ""
    answered: bool | None = None


def _where(flt: CallFilter) -> list[Any]:
    c = calls.c
    clauses: list[Any] = []
    if flt.account_id is not None:
        clauses.append(c.account_id == flt.account_id)
    if flt.since is not None:
        clauses.append(c.started_at >= flt.since)
    if flt.until is not None:
        clauses.append(c.started_at < flt.until)
    if flt.status is not None:
        clauses.append(c.status == flt.status.value)
    if flt.destination:
        text = flt.destination.strip()
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append(
            or_(
                c.number.like(f"{escaped}%", escape="\\"),
                func.lower(c.destination).like(f"%{escaped.lower()}%", escape="\\"),
            )
        )
    if flt.trunk:
        clauses.append(c.trunk == flt.trunk)
    if flt.dial_status:
        clauses.append(c.dial_status == flt.dial_status.upper())
    if flt.answered is True:
        clauses.append(c.billsec > 0)
    elif flt.answered is False:
        clauses.append(c.billsec == 0)
    return clauses


def _listing() -> Select[Any]:
    return select(calls, accounts.c.number.label("account")).outerjoin(
        accounts, accounts.c.id == calls.c.account_id
    )


def _row(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {name: m[name] for name in EXPORT_COLUMNS} | {"account": m["account"] or ""}


async def list_calls(
    conn: AsyncConnection, flt: CallFilter = CallFilter(), *, limit: int = 50
) -> list[dict[str, Any]]:
    """The latest calls matching ``flt``, newest first (``EXPORT_COLUMNS`` keys)."""
    query = (
        _listing()
        .where(and_(True, *_where(flt)))
        .order_by(calls.c.started_at.desc(), calls.c.id.desc())
        .limit(limit)
    )
    async with mapped_errors("calls"):
        rows = (await conn.execute(query)).all()
    return [_row(row) for row in rows]


async def iter_calls(
    conn: AsyncConnection, flt: CallFilter = CallFilter(), *, batch: int = STREAM_BATCH
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every call matching ``flt`` in time order, streamed in lists of up to ``batch``."""
    query = (
        _listing()
        .where(and_(True, *_where(flt)))
        .order_by(calls.c.started_at, calls.c.id)
        .execution_options(yield_per=batch)
    )
    async with mapped_errors("calls export"):
        result = await conn.stream(query)
        try:
            async for partition in result.partitions(batch):
                yield [_row(row) for row in partition]
        finally:
            await result.close()


# -- days in the operator's zone ------------------------------------------------------------------


def parse_when(text: str | None, zone: tzinfo, field: str) -> datetime | None:
    """``YYYY-MM-DD`` (local midnight in the operator's zone) or ISO-8601 (local if no zone),
    as UTC; None for no text. Raises InvalidDataError naming ``field``."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(0), tzinfo=zone).astimezone(UTC)
        stamp = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidDataError(f"{field}: not a date or ISO time: {text!r}") from exc
    return (stamp.replace(tzinfo=zone) if stamp.tzinfo is None else stamp).astimezone(UTC)


def day_bounds(day: date, zone: tzinfo) -> tuple[datetime, datetime]:
    """[start, end) of a local day, in UTC."""
    start = datetime.combine(day, time(0), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


# -- recalc ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recalculated:
    uniqueid: str
    account_id: int
    old_billsec: int
    new_billsec: int
    old_cost: Decimal
    new_cost: Decimal
    refund: Decimal
    note: str = ""


@dataclass(frozen=True, slots=True)
class RecalcResult:
    calls: tuple[Recalculated, ...]
    dry_run: bool

    @property
    def refunded(self) -> Decimal:
        return sum((c.refund for c in self.calls), ZERO)


async def _rate_of(conn: AsyncConnection, rate_id: int | None) -> Rate | None:
    if rate_id is None:
        return None
    row = (await conn.execute(select(rates).where(rates.c.id == rate_id))).first()
    if row is None:
        return None
    m = row._mapping
    return Rate(
        m["prefix"],
        m["rate"],
        connect_fee=m["connect_fee"],
        disconnect_fee=m["disconnect_fee"],
        disconnect_after=m["disconnect_after"],
        initial_block=m["initial_block"],
        increment=m["increment"],
        minimal_cost=m["minimal_cost"],
        buy_rate=m["buy_rate"],
        buy_initial_block=m["buy_initial_block"],
        buy_increment=m["buy_increment"],
        destination=m["destination"],
        id=m["id"],
    )


async def _recost(conn: AsyncConnection, row: Any, seconds: int) -> tuple[Decimal, Decimal, str]:
    """(cost, buy cost, note) of the call ``row`` re-rated to ``seconds``; never above before."""
    rate = await _rate_of(conn, row.rate_id)
    if rate is not None:
        new_cost, new_buy, note = cost(rate, seconds), buy_cost(rate, seconds), ""
    else:  # the rate is gone: scale what was charged
        old = int(row.billsec)
        new_cost = quantize_money(row.cost * seconds / old) if old else ZERO
        new_buy = quantize_money(row.buy_cost * seconds / old) if old else ZERO
        note = f" (rate {row.rate_id} is gone: cost scaled)"
    return min(new_cost, row.cost), min(new_buy, row.buy_cost), note


async def recalc(
    engine: AsyncEngine,
    *,
    since: datetime,
    until: datetime,
    longer_than: int,
    new_duration: int,
    dry_run: bool = False,
    limit: int = 100_000,
) -> RecalcResult:
    """Re-rate the calls started in [since, until) longer than ``longer_than`` seconds to
    ``new_duration`` seconds and refund the difference (idempotent, see the module doc)."""
    if longer_than < 0 or new_duration < 0:
        raise InvalidDataError("--longer-than and --new-duration must be >= 0")
    c = calls.c
    candidates = (
        select(c.uniqueid)
        .where(
            c.started_at >= since,
            c.started_at < until,
            c.billsec > longer_than,
            c.billsec > new_duration,
            c.account_id.is_not(None),
        )
        .order_by(c.started_at, c.id)
        .limit(limit)
    )
    async with mapped_errors("recalc"), engine.connect() as conn:
        uniqueids = list((await conn.scalars(candidates)).all())
    done: list[Recalculated] = []
    for uniqueid in uniqueids:
        item = await _recalc_one(
            engine, uniqueid, longer_than=longer_than, new_duration=new_duration, dry_run=dry_run
        )
        if item is not None:
            done.append(item)
    return RecalcResult(tuple(done), dry_run)


async def _recalc_one(
    engine: AsyncEngine, uniqueid: str, *, longer_than: int, new_duration: int, dry_run: bool
) -> Recalculated | None:
    async with mapped_errors("recalc"), write_transaction(engine) as conn:
        head = (
            await conn.execute(select(calls.c.account_id).where(calls.c.uniqueid == uniqueid))
        ).first()
        if head is None or head.account_id is None:
            return None
        await conn.execute(  # the account lock first, as the ledger does
            select(accounts.c.id).where(accounts.c.id == head.account_id).with_for_update()
        )
        row = (
            await conn.execute(select(calls).where(calls.c.uniqueid == uniqueid).with_for_update())
        ).first()
        if row is None or row.billsec <= longer_than or row.billsec <= new_duration:
            return None  # done already (a concurrent or earlier run)
        new_cost, new_buy, why = await _recost(conn, row, new_duration)
        refund = row.cost - new_cost
        note = (
            f"{RECALC_MARK} billsec {row.billsec} -> {new_duration}, cost {row.cost} -> "
            f"{new_cost}, refunded {refund}{why}"
        )
        item = Recalculated(
            uniqueid,
            int(row.account_id),
            int(row.billsec),
            new_duration,
            row.cost,
            new_cost,
            refund,
            note,
        )
        if dry_run:
            return item
        await conn.execute(
            update(calls)
            .where(calls.c.id == row.id)
            .values(
                billsec=new_duration,
                cost=new_cost,
                buy_cost=new_buy,
                note=(f"{row.note}; {note}" if row.note else note)[:4000],
            )
        )
        if refund > 0:
            await add_payment(
                conn,
                int(row.account_id),
                refund,
                kind=PaymentKind.ADJUSTMENT,
                description=f"CDR recalc of call {uniqueid}: billsec {row.billsec} -> "
                f"{new_duration}",
            )
        log.info("recalc %s: %s", uniqueid, note)
        return item


# -- statistics ---------------------------------------------------------------------------------


class StatsPeriod(StrEnum):
    ALL = "all"
    DAY = "day"
    MONTH = "month"


@dataclass(slots=True)
class CallStats:
    """The Stats tab over one period."""

    period: str
    attempts: int = 0
    answered: int = 0
    billsec: int = 0
    cost: Decimal = ZERO
    pdd_ms_total: int = 0
    pdd_count: int = 0
    peak_cps: int = 0
    peak_channels: int = 0  # the most calls up at once (from start to end)
    hangup_causes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    _second: datetime | None = None
    _in_second: int = 0
    _ends: list[datetime] = field(default_factory=list)  # a heap: the ends of calls still up

    @property
    def asr(self) -> Decimal:
        """Answered / attempts, in percent (2 places)."""
        if not self.attempts:
            return Decimal("0.00")
        return (Decimal(100 * self.answered) / self.attempts).quantize(Decimal("0.01"))

    @property
    def acd(self) -> Decimal:
        """Mean billed seconds of the answered calls (1 place)."""
        if not self.answered:
            return Decimal("0.0")
        return (Decimal(self.billsec) / self.answered).quantize(Decimal("0.1"))

    @property
    def pdd_ms(self) -> int | None:
        """Mean post-dial delay (Dial to first ring) of the calls that have one."""
        return round(self.pdd_ms_total / self.pdd_count) if self.pdd_count else None

    def add(self, started: datetime, billsec: int, dial_status: str, pdd_ms: int | None,
            hangup_cause: int | None, status: str, charged: Decimal,
            ended: datetime | None = None) -> None:  # fmt: skip
        """Count one call; calls come in start order. A call without an end time is up for
        its billed seconds."""
        self.attempts += 1
        end = ended if ended is not None else started + timedelta(seconds=billsec)
        while self._ends and self._ends[0] < started:
            heapq.heappop(self._ends)
        heapq.heappush(self._ends, max(end, started))
        self.peak_channels = max(self.peak_channels, len(self._ends))
        if dial_status == "ANSWER" or billsec > 0:
            self.answered += 1
            self.billsec += billsec
        self.cost += charged
        if pdd_ms is not None:
            self.pdd_ms_total += pdd_ms
            self.pdd_count += 1
        self.hangup_causes["none" if hangup_cause is None else str(hangup_cause)] += 1
        self.statuses[status] += 1
        second = started.replace(microsecond=0)
        if second == self._second:
            self._in_second += 1
        else:
            self._second, self._in_second = second, 1
        self.peak_cps = max(self.peak_cps, self._in_second)

    def as_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "attempts": self.attempts,
            "answered": self.answered,
            "asr_percent": self.asr,
            "acd_seconds": self.acd,
            "billsec": self.billsec,
            "cost": self.cost,
            "pdd_ms": self.pdd_ms,
            "peak_cps": self.peak_cps,
            "peak_channels": self.peak_channels,
            "hangup_causes": dict(sorted(self.hangup_causes.items())),
            "statuses": dict(sorted(self.statuses.items())),
        }


def _period_key(started: datetime, by: StatsPeriod, zone: tzinfo) -> str:
    if by is StatsPeriod.ALL:
        return "all"
    local = started.astimezone(zone)
    return local.strftime("%Y-%m-%d" if by is StatsPeriod.DAY else "%Y-%m")


async def call_stats(
    conn: AsyncConnection,
    flt: CallFilter = CallFilter(),
    *,
    by: StatsPeriod = StatsPeriod.ALL,
    zone: tzinfo = UTC,
) -> list[CallStats]:
    """Statistics of the calls matching ``flt``, per period in time order."""
    c = calls.c
    query = (
        select(
            c.started_at,
            c.billsec,
            c.dial_status,
            c.pdd_ms,
            c.hangup_cause,
            c.status,
            c.cost,
            c.ended_at,
        )
        .where(and_(True, *_where(flt)))
        .order_by(c.started_at, c.id)
        .execution_options(yield_per=STREAM_BATCH)
    )
    out: dict[str, CallStats] = {}
    async with mapped_errors("call statistics"):
        result = await conn.stream(query)
        try:
            async for partition in result.partitions(STREAM_BATCH):
                for started, billsec, dial_status, pdd, cause, status, charged, ended in partition:
                    key = _period_key(started, by, zone)
                    stats = out.get(key)
                    if stats is None:
                        stats = out[key] = CallStats(key)
                    stats.add(started, billsec, dial_status, pdd, cause, status, charged, ended)
        finally:
            await result.close()
    if not out and by is StatsPeriod.ALL:
        out["all"] = CallStats("all")
    return list(out.values())


def parse_statuses(values: Sequence[str]) -> list[CallStatus]:
    try:
        return [CallStatus(v.upper()) for v in values]
    except ValueError as exc:
        raise InvalidDataError(str(exc)) from exc
