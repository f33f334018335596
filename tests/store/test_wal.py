"""The WAL checkpoint thread: the call path's connection never checkpoints in its COMMIT, and the
thread copies the log into the database file so that the log stops growing."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from callgate.store.wal import WalCheckpointer


def _writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    return conn


def test_the_thread_checkpoints_what_commits_wrote(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    conn = _writer(path)
    for i in range(200):
        conn.execute("INSERT INTO t (v) VALUES (?)", ("x" * 500 + str(i),))
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 0
    checkpointer = WalCheckpointer(str(path), interval_ms=50)
    checkpointer.start()
    try:
        deadline = time.monotonic() + 5
        while checkpointer.last is None or checkpointer.last[1] < checkpointer.last[0]:
            assert time.monotonic() < deadline, f"not checkpointed: {checkpointer.last}"
            time.sleep(0.02)
        frames, copied = checkpointer.last
        assert frames > 0 and copied == frames
        # a second reader of the database file alone (no WAL) sees every row
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 200
    finally:
        checkpointer.stop()
        conn.close()
    assert not checkpointer.running
    assert "callgate-wal-checkpoint" not in {t.name for t in threading.enumerate()}
    assert checkpointer.failures == 0


def test_a_checkpointed_log_is_reused_instead_of_growing(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    conn = _writer(path)
    checkpointer = WalCheckpointer(str(path))
    check = sqlite3.connect(path, isolation_level=None)
    sizes = []
    try:
        for _ in range(5):
            for i in range(100):
                conn.execute("INSERT INTO t (v) VALUES (?)", ("y" * 500 + str(i),))
            assert checkpointer.checkpoint(check) is not None
            sizes.append(Path(f"{path}-wal").stat().st_size)
    finally:
        check.close()
        conn.close()
    assert sizes[-1] <= sizes[1], sizes  # the log restarts from its beginning


def test_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval_ms"):
        WalCheckpointer(str(tmp_path / "w.db"), interval_ms=0)


async def test_the_call_path_connection_leaves_checkpoints_to_its_thread(tmp_path: Path) -> None:
    import asyncio

    from callgate.store.lean_sqlite import LeanSqlite

    _writer(tmp_path / "c.db").close()
    lean = LeanSqlite(str(tmp_path / "c.db"), writer=asyncio.Lock(), grace_seconds=60)
    try:
        assert lean._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert lean.checkpointer.running
    finally:
        lean.close()
    assert not lean.checkpointer.running


async def test_engine_connections_opened_after_the_switch_do_not_autocheckpoint(
    tmp_path: Path,
) -> None:
    from sqlalchemy import text

    from callgate.store.db import checkpoint_in_thread, create_engine

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'e.db'}")
    try:
        async with engine.connect() as conn:
            before = (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one()
        checkpoint_in_thread(engine)
        await engine.dispose()
        async with engine.connect() as conn:
            after = (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one()
        checkpoint_in_thread(engine, on=False)
        await engine.dispose()
        async with engine.connect() as conn:
            again = (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one()
    finally:
        await engine.dispose()
    assert (before, after, again) == (1000, 0, 1000)
