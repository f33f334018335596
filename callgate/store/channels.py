"""The live view of Asterisk's channels (table ``live_channels``), written by the AMI listener.

The listener keeps the truth in memory (one model per Asterisk server) and projects it here in
batches: :func:`write_channels` for what changed since the last batch, :func:`replace_channels`
after a resync (``CoreShowChannels`` on every login). Rows belong to one ``server``; a resync
replaces that server's rows only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import live_channels
from callgate.store._errors_map import mapped_errors

_CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True, slots=True)
class LiveChannel:
    """One channel up on an Asterisk server."""

    uniqueid: str
    channel: str
    started_at: datetime
    updated_at: datetime
    linkedid: str = ""
    accountcode: str = ""
    callerid: str = ""
    destination: str = ""
    context: str = ""
    state: str = ""
    application: str = ""
    bridged_to: str = ""
    server: str = ""
    answered_at: datetime | None = None

    def duration_seconds(self, now: datetime) -> int:
        return max(0, int((now - self.started_at).total_seconds()))

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(LiveChannel))


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


async def write_channels(
    conn: AsyncConnection, upserts: Sequence[LiveChannel], deletes: Iterable[str] = ()
) -> None:
    """Insert or replace ``upserts`` and delete the channels ``deletes`` (by uniqueid)."""
    ids = sorted({c.uniqueid for c in upserts} | set(deletes))
    async with mapped_errors("live channels"):
        for chunk in _chunks(ids):
            await conn.execute(delete(live_channels).where(live_channels.c.uniqueid.in_(chunk)))
        if upserts:
            await conn.execute(insert(live_channels), [c.values() for c in upserts])


async def replace_channels(
    conn: AsyncConnection, server: str, channels: Sequence[LiveChannel]
) -> None:
    """Make ``channels`` the whole live view of ``server``."""
    ids = [c.uniqueid for c in channels]
    async with mapped_errors("live channels"):
        await conn.execute(delete(live_channels).where(live_channels.c.server == server))
        for chunk in _chunks(ids):  # the same call id seen from another server name
            await conn.execute(delete(live_channels).where(live_channels.c.uniqueid.in_(chunk)))
        if channels:
            await conn.execute(insert(live_channels), [c.values() for c in channels])


async def list_channels(
    conn: AsyncConnection,
    *,
    accountcodes: Sequence[str] = (),
    server: str | None = None,
) -> list[LiveChannel]:
    """The live channels, oldest first (of these account codes when given)."""
    c = live_channels.c
    query = select(live_channels).order_by(c.started_at, c.uniqueid)
    if accountcodes:
        query = query.where(or_(*(c.accountcode == code for code in accountcodes)))
    if server is not None:
        query = query.where(c.server == server)
    async with mapped_errors("live channels"):
        rows = (await conn.execute(query)).all()
    return [LiveChannel(**{name: row._mapping[name] for name in _FIELDS}) for row in rows]
