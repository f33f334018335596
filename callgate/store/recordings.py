"""Call recordings: the MixMonitor files the call flow started, as stored on the calls."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import accounts, calls
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import NotFoundError


@dataclass(frozen=True, slots=True)
class Recording:
    uniqueid: str
    account: str  # the account's number ("" for none)
    started_at: datetime
    number: str
    billsec: int
    path: str


async def list_recordings(
    conn: AsyncConnection, account_id: int | None = None, *, limit: int = 100
) -> list[Recording]:
    """The latest recorded calls (of one account, or of all), newest first."""
    query = (
        select(
            calls.c.uniqueid,
            accounts.c.number.label("account_number"),
            calls.c.started_at,
            calls.c.number,
            calls.c.dialed_number,
            calls.c.billsec,
            calls.c.recording,
        )
        .select_from(calls.outerjoin(accounts, accounts.c.id == calls.c.account_id))
        .where(calls.c.recording != "")
        .order_by(calls.c.started_at.desc(), calls.c.id.desc())
        .limit(limit)
    )
    if account_id is not None:
        query = query.where(calls.c.account_id == account_id)
    async with mapped_errors("recordings"):
        rows = (await conn.execute(query)).all()
    return [
        Recording(
            r.uniqueid,
            r.account_number or "",
            r.started_at,
            r.number or r.dialed_number,
            r.billsec,
            r.recording,
        )
        for r in rows
    ]


async def recording_path(conn: AsyncConnection, uniqueid: str) -> str:
    """The recording file of one call; NotFoundError when the call was not recorded."""
    async with mapped_errors("recording"):
        path = await conn.scalar(select(calls.c.recording).where(calls.c.uniqueid == uniqueid))
    if not path:
        raise NotFoundError(f"no recording for call {uniqueid!r}")
    return str(path)
