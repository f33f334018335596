"""SQLite's WAL checkpoints, run by a thread of their own instead of inside a COMMIT.

By default SQLite checkpoints in the COMMIT that takes the write-ahead log past 1,000 pages: it
copies the log into the database file and fsyncs both, before that COMMIT returns. The call
path's commits run on the event loop (:mod:`callgate.store.lean_sqlite`), so every live call
waited for the disk: in one benchmark run on this machine's ext4 disk 112 commits took over 5 ms
(7-17 ms, and up to 263 ms), with none on tmpfs; the p99 of header->Dial was those stalls.

So while the call path runs on SQLite, the connections of the process have automatic
checkpoints off (``PRAGMA wal_autocheckpoint = 0``;
:func:`callgate.store.db.checkpoint_in_thread`) and :class:`WalCheckpointer` runs
``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval_ms`` on a connection of its own, in a
daemon thread. A passive checkpoint never
takes the write lock and never waits: writers go on appending to the log while it copies, and
the fsyncs block only this thread. When a checkpoint has copied the whole log, the next writer
starts the log again from its beginning, so the file stops growing.

Other processes on the same file (an operator's ``callgate payments add``) keep SQLite's
automatic checkpoints; theirs run in their own COMMITs, not on this process's loop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL_MS = 500
# a log still this long after a checkpoint means a reader holds an old snapshot: say so
LONG_LOG_FRAMES = 50_000  # about 200 MB of 4 KiB pages
WARN_EVERY_SECONDS = 60


class WalCheckpointer:
    """Checkpoints the database at ``path`` every ``interval_ms`` until :meth:`stop`."""

    def __init__(self, path: str, *, interval_ms: int = CHECKPOINT_INTERVAL_MS) -> None:
        if interval_ms <= 0:
            raise ValueError("interval_ms must be positive")
        self.path = path
        self.interval_ms = interval_ms
        self.checkpoints = 0  # passes that ran
        self.last: tuple[int, int] | None = None  # (frames in the log, of them copied)
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_at: float = -WARN_EVERY_SECONDS  # monotonic clock

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="callgate-wal-checkpoint", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """End the thread after one last checkpoint (so the log is copied on a clean stop)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            self.failures += 1
            log.error("WAL checkpoints of %s cannot run: %s; the log will grow", self.path, exc)
            return
        try:
            conn.execute("PRAGMA synchronous = NORMAL")
            while True:
                stopping = self._stop.wait(self.interval_ms / 1000)
                self.checkpoint(conn)
                if stopping:
                    return
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int] | None:
        """One passive checkpoint on ``conn``: (frames in the log, frames copied so far), or
        None when it failed (it is retried at the next interval)."""
        try:
            row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            self.failures += 1
            self._warn("WAL checkpoint of %s failed, retrying: %s", self.path, exc)
            return None
        busy, frames, copied = (int(value) for value in row)
        self.checkpoints += 1
        self.last = (frames, copied)
        if frames - copied >= LONG_LOG_FRAMES:
            self._warn(
                "the WAL of %s holds %d frames a reader still needs (busy=%d): a long read"
                " transaction keeps it from being copied, and the file grows",
                self.path,
                frames - copied,
                busy,
            )
        return frames, copied

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning(message, *args)
