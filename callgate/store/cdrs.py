"""Asterisk's own CDRs, as AMI ``Cdr`` events delivered them (table ``asterisk_cdrs``).

They are the reconciliation source: when a FastAGI session died before it settled, the reaper
settles the reservation from the billing CDR of that call (DESIGN.md §6). Storing is idempotent:
each event has a fingerprint (SHA-256 over its fields, :func:`fingerprint`) and the same event
seen twice (a replay, a second listener) is stored once.

Times are Asterisk's local wall clock without a zone (``YYYY-MM-DD HH:MM:SS``), stored as sent;
:func:`parse_local_time` reads them in the operator's zone (``billing.timezone``).

The billing CDR of a call (transcripts/README.md): the caller's leg whose ``LastApplication`` is
``Dial``; its ``UniqueID`` is the AGI channel's uniqueid (the reservation's key). A call that
failed over has several Dial CDRs on that channel: the answered one (longest billsec) bills.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime, tzinfo
from typing import Any

from sqlalchemy import case, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import asterisk_cdrs
from callgate.store._errors_map import mapped_errors

_NOT_FINGERPRINTED = frozenset({"privilege", "actionid"})
LOCAL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# Disposition of a CDR -> the DIALSTATUS the call flow would have read.
DISPOSITION_DIAL_STATUS = {
    "ANSWERED": "ANSWER",
    "NO ANSWER": "NOANSWER",
    "BUSY": "BUSY",
    "CONGESTION": "CONGESTION",
    "FAILED": "CHANUNAVAIL",
}


@dataclass(frozen=True, slots=True)
class AsteriskCdr:
    """One AMI ``Cdr`` event (field names of the ``asterisk_cdrs`` table)."""

    fingerprint: str
    uniqueid: str
    linkedid: str = ""
    accountcode: str = ""
    source: str = ""
    destination: str = ""
    destination_context: str = ""
    callerid: str = ""
    channel: str = ""
    destination_channel: str = ""
    last_application: str = ""
    last_data: str = ""
    start_time: str = ""
    answer_time: str = ""
    end_time: str = ""
    duration: int = 0
    billsec: int = 0
    disposition: str = ""
    amaflags: str = ""
    userfield: str = ""
    raw: str = ""  # every field of the event, JSON
    received_at: datetime | None = None
    asterisk: str = ""  # which Asterisk sent it (the AMI listener's key)

    def values(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _FIELDS}
        if out["received_at"] is None:
            out["received_at"] = datetime.now(UTC)
        return out

    @property
    def dial_status(self) -> str:
        return DISPOSITION_DIAL_STATUS.get(self.disposition.upper(), self.disposition.upper())


_FIELDS = tuple(f.name for f in dataclass_fields(AsteriskCdr))


def fingerprint(fields: Iterable[tuple[str, str]]) -> str:
    """SHA-256 over an event's fields, sorted by key (``Privilege`` and ``ActionID`` left out)."""
    pairs = sorted((k.lower(), v) for k, v in fields if k.lower() not in _NOT_FINGERPRINTED)
    data = json.dumps(pairs, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def _int(text: str | None) -> int:
    try:
        return max(0, int((text or "0").strip() or "0"))
    except ValueError:
        return 0


def cdr_from_fields(
    fields: Sequence[tuple[str, str]], *, received_at: datetime | None = None
) -> AsteriskCdr:
    """An :class:`AsteriskCdr` from the headers of a ``Cdr`` event (keys case-insensitive)."""
    first: dict[str, str] = {}
    for key, value in fields:
        first.setdefault(key.lower(), value)

    def get(name: str, limit: int) -> str:
        return first.get(name.lower(), "")[:limit]

    return AsteriskCdr(
        fingerprint=fingerprint(fields),
        uniqueid=get("UniqueID", 64),
        linkedid=get("LinkedID", 64),
        accountcode=get("AccountCode", 64),
        source=get("Source", 64),
        destination=get("Destination", 64),
        destination_context=get("DestinationContext", 80),
        callerid=get("CallerID", 128),
        channel=get("Channel", 128),
        destination_channel=get("DestinationChannel", 128),
        last_application=get("LastApplication", 64),
        last_data=first.get("lastdata", ""),
        start_time=get("StartTime", 32),
        answer_time=get("AnswerTime", 32),
        end_time=get("EndTime", 32),
        duration=_int(first.get("duration")),
        billsec=_int(first.get("billableseconds")),
        disposition=get("Disposition", 16),
        amaflags=get("AMAFlags", 16),
        userfield=get("UserField", 255),
        raw=json.dumps([[k, v] for k, v in fields if k.lower() != "privilege"], ensure_ascii=False),
        received_at=received_at,
    )


def parse_local_time(text: str, zone: tzinfo) -> datetime | None:
    """An Asterisk CDR time (local, no zone) as an aware UTC datetime; None when empty/bad."""
    text = text.strip()
    if not text:
        return None
    try:
        naive = datetime.strptime(text, LOCAL_TIME_FORMAT)
    except ValueError:
        return None
    return naive.replace(tzinfo=zone).astimezone(UTC)


def _insert_ignoring_duplicates(conn: AsyncConnection) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(asterisk_cdrs).on_conflict_do_nothing(
            index_elements=["fingerprint"]
        )
    if conn.dialect.name == "sqlite":
        return sqlite.insert(asterisk_cdrs).on_conflict_do_nothing(index_elements=["fingerprint"])
    return insert(asterisk_cdrs)  # pragma: no cover - two backends only


async def store_cdrs(conn: AsyncConnection, cdrs: Sequence[AsteriskCdr]) -> int:
    """Store the CDRs not stored yet; returns how many were new. Idempotent."""
    if not cdrs:
        return 0
    unique: dict[str, AsteriskCdr] = {}
    for cdr in cdrs:
        unique.setdefault(cdr.fingerprint, cdr)
    async with mapped_errors("store Asterisk CDRs"):
        known = set(
            (
                await conn.scalars(
                    select(asterisk_cdrs.c.fingerprint).where(
                        asterisk_cdrs.c.fingerprint.in_(list(unique))
                    )
                )
            ).all()
        )
        fresh = [cdr.values() for fp, cdr in unique.items() if fp not in known]
        if fresh:
            await conn.execute(_insert_ignoring_duplicates(conn), fresh)
    return len(fresh)


def _row_to_cdr(row: Any) -> AsteriskCdr:
    m = row._mapping
    return AsteriskCdr(**{name: m[name] for name in _FIELDS})


async def billing_cdr(
    conn: AsyncConnection, uniqueid: str, *, asterisk: str | None = None
) -> AsteriskCdr | None:
    """The billing CDR of the call whose AGI channel had ``uniqueid``, if AMI recorded it.

    The caller's leg with ``LastApplication: Dial`` and this UniqueID; failing that, a Dial CDR
    whose LinkedID is this uniqueid (the AGI ran on the call's first channel). Among several
    (failover), the answered one with the longest billsec.
    """
    c = asterisk_cdrs.c
    where = [c.last_application == "Dial", or_(c.uniqueid == uniqueid, c.linkedid == uniqueid)]
    if asterisk is not None:  # that Asterisk's, or one stored before CDRs named their Asterisk
        where.append(or_(c.asterisk == asterisk, c.asterisk == ""))
    query = (
        select(asterisk_cdrs)
        .where(*where)
        .order_by(
            case((c.uniqueid == uniqueid, 0), else_=1),
            case((c.disposition == "ANSWERED", 0), else_=1),
            c.billsec.desc(),
            c.id,
        )
        .limit(1)
    )
    async with mapped_errors("billing CDR"):
        row = (await conn.execute(query)).first()
    return None if row is None else _row_to_cdr(row)


async def list_cdrs(
    conn: AsyncConnection, *, uniqueid: str | None = None, limit: int = 100
) -> list[AsteriskCdr]:
    """The latest stored Asterisk CDRs (of one call when ``uniqueid`` is given)."""
    c = asterisk_cdrs.c
    query = select(asterisk_cdrs).order_by(c.id.desc()).limit(limit)
    if uniqueid:
        query = query.where(or_(c.uniqueid == uniqueid, c.linkedid == uniqueid))
    async with mapped_errors("Asterisk CDRs"):
        rows = (await conn.execute(query)).all()
    return [_row_to_cdr(row) for row in rows]
