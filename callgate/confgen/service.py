"""What the ``callgate confgen`` commands do, with the database and the file system.

* :func:`load_snapshot` reads every friend, the IP-auth addresses and the stale marks in one
  transaction;
* :func:`render_files` (pure) and :func:`write_files` (atomic, only when changed) make the files;
* :func:`clear_written` clears the stale marks the snapshot saw, for the targets written (a
  friend changed meanwhile keeps its mark);
* :func:`sync_realtime` writes the Realtime tables (see :mod:`callgate.confgen.realtime`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.confgen import realtime
from callgate.confgen.errors import RealtimeConflictError, RealtimeError
from callgate.confgen.files import WriteResult, write_if_changed
from callgate.confgen.render import FILE_NAMES, render_target
from callgate.store._errors_map import mapped_errors
from callgate.store.friends import (
    ConfTarget,
    Friend,
    FriendKind,
    StaleMark,
    clear_stale,
    fetch_realtime_owned,
    list_friends,
    list_identify_addresses,
    save_realtime_owned,
    stale_marks,
)

FILE_TARGETS = (ConfTarget.PJSIP, ConfTarget.SIP, ConfTarget.IAX)


@asynccontextmanager
async def _realtime_errors() -> AsyncIterator[None]:
    """Database errors of the Realtime database as RealtimeError (it may be another server)."""
    try:
        yield
    except asyncio.CancelledError:
        raise
    except (SQLAlchemyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise RealtimeError(f"Realtime database: {first}") from exc


async def init_realtime(realtime_engine: AsyncEngine) -> realtime.InitReport:
    """Create the absent Realtime tables."""
    async with _realtime_errors():
        return await realtime.init_tables(realtime_engine)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything confgen renders, read in one transaction."""

    sip: tuple[Friend, ...]
    iax: tuple[Friend, ...]
    ips: Mapping[int, tuple[str, ...]]
    stale: Mapping[ConfTarget, StaleMark]
    realtime_owned: Mapping[str, list[str]] | None  # None: Realtime never synced


async def load_snapshot(engine: AsyncEngine) -> Snapshot:
    async with mapped_errors("read friends"), engine.connect() as conn:
        async with conn.begin():
            return Snapshot(
                sip=tuple(await list_friends(conn, FriendKind.SIP)),
                iax=tuple(await list_friends(conn, FriendKind.IAX)),
                ips=await list_identify_addresses(conn),
                stale=await stale_marks(conn),
                realtime_owned=await fetch_realtime_owned(conn),
            )


def render_files(snapshot: Snapshot, targets: Iterable[ConfTarget]) -> dict[ConfTarget, str]:
    """The text of each file target (pure; UnsafeValueError before anything is written)."""
    return {t: render_target(t, snapshot.sip, snapshot.iax, snapshot.ips) for t in targets}


def write_files(directory: str | Path, texts: Mapping[ConfTarget, str]) -> list[WriteResult]:
    """Write each text to ``directory/<file name>``, atomically, only when changed."""
    base = Path(directory)
    return [write_if_changed(base / FILE_NAMES[t], text) for t, text in texts.items()]


async def clear_written(
    engine: AsyncEngine, snapshot: Snapshot, targets: Iterable[ConfTarget]
) -> int:
    marks = [snapshot.stale[t] for t in targets if t in snapshot.stale]
    if not marks:
        return 0
    async with mapped_errors("clear stale marks"), engine.begin() as conn:
        return await clear_stale(conn, marks)


async def sync_realtime(engine: AsyncEngine, realtime_engine: AsyncEngine) -> realtime.SyncReport:
    """Make the Realtime tables hold exactly today's friends (only rows callgate owns).

    Order, so that a crash never orphans a row: check conflicts (read only); record the union
    of old and new keys as owned; write the rows in one Realtime transaction; record the new
    keys and clear the Realtime stale mark seen at the start.
    """
    snapshot = await load_snapshot(engine)
    rows = realtime.realtime_rows(snapshot.sip, snapshot.iax, snapshot.ips)
    previous = dict(snapshot.realtime_owned or {})
    async with _realtime_errors(), realtime_engine.connect() as conn:
        conflicts = await realtime.find_conflicts(conn, rows, previous)
    if conflicts:
        raise RealtimeConflictError(
            "rows exist that callgate did not write; rename the friend or remove them: "
            + ", ".join(conflicts)
        )
    wanted = realtime.owned_keys(rows)
    union = {
        name: sorted(set(previous.get(name, [])) | set(wanted.get(name, [])))
        for name in set(previous) | set(wanted)
    }
    async with mapped_errors("record Realtime rows"), engine.begin() as conn:
        await save_realtime_owned(conn, union)
    async with _realtime_errors(), realtime_engine.begin() as conn:
        report = await realtime.write_rows(conn, rows, union)
    async with mapped_errors("record Realtime rows"), engine.begin() as conn:
        await save_realtime_owned(conn, wanted)
        mark = snapshot.stale.get(ConfTarget.REALTIME)
        if mark is not None:
            await clear_stale(conn, [mark])
    return report
