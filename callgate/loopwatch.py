"""A watch on the event loop of ``callgate serve``: every live call waits while it is held.

All of callgate's calls share one event loop. A callback that runs long (a slow COMMIT, a CPU-bound
reload, a blocking call someone slipped in) holds every call's next AGI command behind it, and the
only symptom Asterisk sees is a slow Dial. :class:`LoopWatch` makes that visible:

* a loop callback beats every ``interval_ms`` (25) and observes how late it ran into the
  histogram ``callgate_event_loop_lag_seconds``;
* a daemon thread looks at the last beat when a stall could first be declared; when the beat is
  ``stall_ms`` late it takes the loop thread's stack at that moment (what is holding it), and
  when the loop beats again it logs one WARNING with how late that beat ran (the hold lasted at
  least that long) and that stack, counts it in
  ``callgate_event_loop_stalls_total`` and keeps the last :data:`KEPT_STALLS` in
  :attr:`LoopWatch.stalls`.

The thread only reads a monotonic timestamp and, on a stall, the interpreter's frames; it never
touches the loop's objects, so it cannot make a stall worse.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass

from callgate import metrics
from callgate.config import LOOP_BEAT_MS

log = logging.getLogger(__name__)

KEPT_STALLS = 10
STACK_FRAMES = 12


@dataclass(frozen=True, slots=True)
class Stall:
    """One hold of the event loop: how long, and what the loop was running when it was seen."""

    held_ms: int  # how late the beat ran: the hold lasted at least this long
    stack: str


class LoopWatch:
    """Beat on the loop every ``interval_ms``; report holds of ``stall_ms`` or more.

    ``start()`` and ``stop()`` are called on the loop being watched.
    """

    def __init__(self, stall_ms: int, interval_ms: int = LOOP_BEAT_MS) -> None:
        if stall_ms <= 0:
            raise ValueError("stall_ms must be more than 0")
        if interval_ms <= 0 or interval_ms >= stall_ms:
            raise ValueError("interval_ms must be more than 0 and less than stall_ms")
        self.stall_ms = stall_ms
        self.interval_ms = interval_ms
        self.stalls: deque[Stall] = deque(maxlen=KEPT_STALLS)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id = 0
        self._timer: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_beat = 0.0  # time.monotonic() of the last beat; written by the loop only
        self._due = 0.0  # when the next beat should run
        self._lock = threading.Lock()
        self._seen_stack: str | None = None  # the stack taken during the hold now in progress
        self._seen_at_beat = 0.0  # the last beat before that hold

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("LoopWatch already started")
        self._loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        now = time.monotonic()
        self._last_beat = now
        self._schedule(now)
        self._thread = threading.Thread(target=self._watch, name="callgate-loopwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval_ms / 1000
        self._timer = self._loop.call_later(self.interval_ms / 1000, self._beat)

    def _beat(self) -> None:
        now = time.monotonic()
        metrics.EVENT_LOOP_LAG.observe(max(0.0, now - self._due))
        with self._lock:
            stack, held_since = self._seen_stack, self._seen_at_beat
            self._seen_stack = None
            self._last_beat = now
        if stack is not None:
            held_ms = int((now - held_since - self.interval_ms / 1000) * 1000)
            self._report(Stall(held_ms=held_ms, stack=stack))
        self._schedule(now)

    def _report(self, stall: Stall) -> None:
        self.stalls.append(stall)
        metrics.EVENT_LOOP_STALLS.inc()
        log.warning(
            "event loop held for %d ms or more (every live call waited); it was running:\n%s",
            stall.held_ms,
            stall.stack,
        )

    def _watch(self) -> None:
        # wakes when a stall could first be declared, not at every beat: a wake-up costs CPU
        wait_ms: float = self.interval_ms + self.stall_ms
        while not self._stopping.wait(wait_ms / 1000):
            with self._lock:
                last, seen = self._last_beat, self._seen_stack is not None
            late_ms = (time.monotonic() - last) * 1000 - self.interval_ms
            if seen:  # the hold goes on: its beat will report it
                wait_ms = self.interval_ms
                continue
            if late_ms < self.stall_ms:
                wait_ms = max(1.0, self.stall_ms - late_ms)
                continue
            stack = self._loop_stack()
            with self._lock:
                if self._last_beat == last and self._seen_stack is None:
                    self._seen_stack, self._seen_at_beat = stack, last
            wait_ms = self.interval_ms

    def _loop_stack(self) -> str:
        frame = sys._current_frames().get(self._loop_thread_id)
        if frame is None:  # pragma: no cover - the loop thread has ended
            return "  (the loop's thread has ended)\n"
        return "".join(traceback.format_stack(frame, limit=STACK_FRAMES))
