"""One FastAGI session (one call) over an asyncio stream, with a deadline on every read.

Rules it keeps (DESIGN.md §3, §5):

* every command has a deadline; a command that timed out, was cancelled or met a protocol error
  leaves the stream out of step, so the session is marked broken and refuses further commands;
  the deadlines of a loop's commands are kept in one table swept by one timer (`_Deadlines`),
  not one ``asyncio.timeout`` timer each: a deadline fires up to `DEADLINE_TICK_S` late;
* ``HANGUP`` lines are consumed wherever they come (before or after a reply, twice) and only set
  `hung_up`; a ``511`` once HANGUP was seen raises `AgiHangup`;
* `close` always closes the socket: Asterisk never does, and a lingering session keeps the
  channel (and its CDR) alive.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import re
import time
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final

from callgate.agi.codec import (
    HANGUP,
    AgiEnv,
    AgiReply,
    ReplyReader,
    decode_line,
    encode_command,
    parse_header_block,
)
from callgate.agi.errors import (
    AgiCommandError,
    AgiHangup,
    AgiProtocolError,
    AgiTimeout,
)
from callgate.agi.metrics import AGI_COMMAND_TIMEOUTS

__all__ = [
    "DEADLINE_TICK_S",
    "DEFAULT_COMMAND_TIMEOUT_MS",
    "DEFAULT_HEADER_TIMEOUT_MS",
    "MAX_HEADER_LINES",
    "MAX_LINE_BYTES",
    "PLAYBACK_TIMEOUT_MS",
    "AgiSession",
    "UniqueidLogFilter",
    "close_writer",
    "current_uniqueid",
    "read_header_block",
    "release_transport",
]

log = logging.getLogger(__name__)

#: What :meth:`AgiSession.set_variables` sends in one MSet: names of variables or of functions
#: with a plain argument, values with no quote, comma, backslash, space or ``$`` (MSet strips
#: quotes, unescapes backslashes and splits on commas; EXEC does not expand ``${...}``).
PLAIN_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\([A-Za-z0-9_]+\))?")
PLAIN_VALUE: Final = re.compile(r"[A-Za-z0-9_.:@+*#-]*")
#: Asterisk boxes (their session's ``asterisk`` key) that answered EXEC MSet with -2.
_NO_MSET: set[str] = set()


def _plain(name: str, value: str) -> bool:
    return PLAIN_NAME.fullmatch(name) is not None and PLAIN_VALUE.fullmatch(value) is not None


def mset_args(pairs: Sequence[tuple[str, str | int]]) -> str:
    """The argument of ``EXEC MSet`` that sets ``pairs`` (plain names and values only)."""
    return ",".join(f"{name}={value}" for name, value in pairs)


#: The uniqueid of the call the current task serves ("-" outside a call), for logging.
current_uniqueid: contextvars.ContextVar[str] = contextvars.ContextVar(
    "callgate_agi_uniqueid", default="-"
)

#: StreamReader limit to use for AGI sockets: the longest line accepted.
MAX_LINE_BYTES: Final = 8192
MAX_HEADER_LINES: Final = 256
DEFAULT_HEADER_TIMEOUT_MS: Final = 5_000
DEFAULT_COMMAND_TIMEOUT_MS: Final = 10_000
#: Default deadline of commands that play sound (STREAM FILE, SAY NUMBER).
PLAYBACK_TIMEOUT_MS: Final = 120_000
_CLOSE_TIMEOUT_S: Final = 2.0
#: Period of the deadline sweep while a command waits: a deadline fires 0-50 ms after it passed.
DEADLINE_TICK_S: Final = 0.05


class UniqueidLogFilter(logging.Filter):
    """Stamps ``record.uniqueid`` from `current_uniqueid` (install it on a handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.uniqueid = current_uniqueid.get()
        return True


# --------------------------------------------------------------------------- deadlines


class _Deadlines:
    """The deadlines of the commands waiting on one event loop, and the one timer that expires
    them.

    Why not ``asyncio.timeout``: a call sends 7-9 commands, nearly all answered within a
    millisecond, and each ``asyncio.timeout`` builds a Timeout, pushes a TimerHandle on the
    loop's heap and cancels it unused (7-8 % of a bare FastAGI server's CPU). Here a waiting
    command costs a set insertion and removal; the sweep timer exists only while commands wait
    (it lapses one tick after the last one ended) and is armed at most once per tick, whatever
    the number of commands.

    Why a periodic sweep, not a heap with the timer at the earliest deadline: with lazy deletion
    the heap would hold every finished command until its deadline (10 s of ~8,000 commands a
    second at 950 calls/s), and an earlier deadline arriving would cancel and re-create the
    timer, which is the cost being removed. The price is precision: a deadline fires
    0-`DEADLINE_TICK_S` late, which does not matter for deadlines of seconds (10 s by default)
    or hours (Dial). A tick only scans the table once the earliest deadline it knows of (a
    lower bound kept on insertion, recomputed by each scan) has passed: with the default
    deadline that is about once per 10 s; at worst (short `wait_hangup` waits all the time) a
    scan every tick, which costs about 0.1 ms for 5,000 waiting commands (0.2 % of a CPU).

    Times are `time.monotonic()` at both ends (not ``loop.time()``, which uvloop caches), and
    the timer is relative (``call_later``), so any loop works.

    Expiry is `asyncio.Timeout`'s (CPython 3.11): the task is cancelled, and on exit the
    CancelledError becomes a TimeoutError only if no other cancellation was requested since
    the deadline was entered (``task.uncancel() <= cancelling``); an outside cancellation,
    even one arriving with the deadline, propagates as CancelledError.

    No reference to the loop or to a task is kept: the table sits in a WeakKeyDictionary keyed
    by the loop, and an entry holds its task by a weak reference, so a loop abandoned with a
    command still waiting is freed like any other.
    """

    __slots__ = ("_armed", "_earliest", "_waiting")

    def __init__(self) -> None:
        self._waiting: set[_Deadline] = set()
        #: a lower bound of the deadlines in `_waiting` (inf when none is known)
        self._earliest = math.inf
        #: whether the sweep timer is scheduled
        self._armed = False

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def armed(self) -> bool:
        """True while the sweep timer is scheduled."""
        return self._armed

    def add(self, deadline: _Deadline) -> None:
        self._waiting.add(deadline)
        if deadline.when < self._earliest:
            self._earliest = deadline.when
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_later(DEADLINE_TICK_S, self._tick)

    def discard(self, deadline: _Deadline) -> None:
        self._waiting.discard(deadline)

    def _tick(self) -> None:
        """The timer's callback: lapse when nothing waits, else re-arm and sweep."""
        if not self._waiting:
            self._armed = False
            self._earliest = math.inf
            return
        # re-armed first: an error in the sweep must not leave the waiting deadlines unswept
        asyncio.get_running_loop().call_later(DEADLINE_TICK_S, self._tick)
        self.sweep()

    def sweep(self, now: float | None = None) -> None:
        """Expire the deadlines passed at ``now`` (`time.monotonic()` by default): cancel their
        tasks. Call it from the loop's thread only."""
        if now is None:
            now = time.monotonic()
        if now < self._earliest:
            return
        waiting = self._waiting
        due: list[_Deadline] = []
        earliest = math.inf
        for deadline in waiting:
            when = deadline.when
            if when <= now:
                due.append(deadline)
            elif when < earliest:
                earliest = when
        self._earliest = earliest
        for deadline in due:
            waiting.discard(deadline)
            deadline.expire()


_DEADLINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines] = (
    weakref.WeakKeyDictionary()
)


def _deadlines_of(loop: asyncio.AbstractEventLoop) -> _Deadlines:
    """The deadline table of ``loop`` (made on first use)."""
    table = _DEADLINES.get(loop)
    if table is None:
        table = _DEADLINES[loop] = _Deadlines()
    return table


class _Deadline:
    """A reusable deadline (one per session; commands are serialised): ``with
    deadline.within(seconds):`` raises `TimeoutError` from the block when it is still running
    ``seconds`` later (0-`DEADLINE_TICK_S` later, see `_Deadlines`). Use it from one loop only
    (the loop's table is bound on first use), inside a task, never nested in itself."""

    __slots__ = ("_cancelling", "_expired", "_table", "_task", "when")

    def __init__(self) -> None:
        self._table: _Deadlines | None = None
        self._task: weakref.ref[asyncio.Task[Any]] | None = None
        self._cancelling = 0
        self._expired = False
        #: `time.monotonic()` when it expires
        self.when = math.inf

    def within(self, seconds: float) -> _Deadline:
        self.when = time.monotonic() + seconds
        return self

    def __enter__(self) -> None:
        if self._task is not None:
            raise RuntimeError("deadline already entered")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline must be used inside a task")
        table = self._table
        if table is None:
            table = self._table = _deadlines_of(asyncio.get_running_loop())
        self._task = weakref.ref(task)
        self._cancelling = task.cancelling()
        self._expired = False
        table.add(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._table is not None and self._task is not None
        self._table.discard(self)
        task = self._task()
        self._task = None
        if self._expired:
            self._expired = False
            if (
                task is not None
                and task.uncancel() <= self._cancelling
                and exc_type is asyncio.CancelledError
            ):
                raise TimeoutError from exc

    def expire(self) -> None:
        """Cancel the task waiting on this deadline (the sweep calls it once it has passed)."""
        task = self._task() if self._task is not None else None
        if task is not None:
            self._expired = True
            task.cancel()


async def _read_line(reader: asyncio.StreamReader, what: str) -> bytes:
    """One LF-terminated line. EOF -> `AgiProtocolError` (``.eof`` is set on it)."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        detail = f" after {len(exc.partial)} bytes of a line" if exc.partial else ""
        error = AgiProtocolError(f"peer closed the connection while reading {what}{detail}")
        raise error from exc
    except asyncio.LimitOverrunError as exc:
        raise AgiProtocolError(
            f"line too long while reading {what} (> {exc.consumed} bytes)"
        ) from exc


async def read_header_block(
    reader: asyncio.StreamReader,
    *,
    timeout_ms: int = DEFAULT_HEADER_TIMEOUT_MS,
    max_lines: int = MAX_HEADER_LINES,
) -> bytes:
    """Read the header block up to and including its empty line, within ``timeout_ms`` (plus
    up to `DEADLINE_TICK_S`, see `AgiSession.command`).

    The line length is capped by the reader's ``limit``, the line count by ``max_lines``.
    Raises `AgiTimeout` or `AgiProtocolError` (EOF, too many or too long lines).
    """
    lines: list[bytes] = []
    try:
        with _Deadline().within(timeout_ms / 1000):
            while True:
                line = await _read_line(reader, "the header block")
                if line in (b"\n", b"\r\n"):
                    lines.append(line)
                    return b"".join(lines)
                if len(lines) >= max_lines:
                    raise AgiProtocolError(f"header block longer than {max_lines} lines")
                lines.append(line)
    except TimeoutError as exc:
        raise AgiTimeout(
            f"header block not complete after {timeout_ms} ms ({len(lines)} lines)"
        ) from exc


class AgiSession:
    """One call's FastAGI conversation. Build it with `open` (reads the header) or directly
    with an already parsed `AgiEnv`. Commands are serialised; each has a deadline."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        env: AgiEnv,
        *,
        command_timeout_ms: int = DEFAULT_COMMAND_TIMEOUT_MS,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.env = env
        self.command_timeout_ms = command_timeout_ms
        #: which Asterisk sent the call (the server sets it: ``[agi] system_names``, else the
        #: peer's address); with the uniqueid it is the call's key
        self.asterisk = ""
        self._parser = ReplyReader()
        self._lock = asyncio.Lock()
        #: the deadline of the running command (or `wait_hangup`), reused: they are serialised
        self._deadline = _Deadline()
        self._broken: str | None = None
        self._closed = False
        self.hung_up = False
        #: `time.monotonic()` when the first HANGUP line was read, else None.
        self.hung_up_at: float | None = None
        self.commands_sent = 0

    @classmethod
    async def open(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        header_timeout_ms: int = DEFAULT_HEADER_TIMEOUT_MS,
        command_timeout_ms: int = DEFAULT_COMMAND_TIMEOUT_MS,
        max_header_lines: int = MAX_HEADER_LINES,
    ) -> AgiSession:
        """Read and parse the header block, then return the session. Does not close the
        writer on error: the caller owns it."""
        block = await read_header_block(
            reader, timeout_ms=header_timeout_ms, max_lines=max_header_lines
        )
        env = parse_header_block(block)
        return cls(reader, writer, env, command_timeout_ms=command_timeout_ms)

    # ------------------------------------------------------------------ state

    @property
    def uniqueid(self) -> str:
        return self.env.uniqueid

    @property
    def broken(self) -> bool:
        """True once a command failed in a way that leaves the stream out of step."""
        return self._broken is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def _mark_hangup(self) -> None:
        if not self.hung_up:
            self.hung_up = True
            self.hung_up_at = time.monotonic()
            log.debug("HANGUP received on %s", self.env.channel)

    # ------------------------------------------------------------------ core

    async def command(
        self, command: str, *args: str | int, timeout_ms: int | None = None
    ) -> AgiReply:
        """Send one command and return its final 200 reply.

        Raises `AgiHangup` (511 after HANGUP, or EOF after HANGUP), `AgiCommandError` (510, 511,
        520 with usage, other 5xx), `AgiTimeout` (deadline: ``timeout_ms`` or the session's
        ``command_timeout_ms``; the session is broken afterwards), `AgiProtocolError`
        (malformed reply, EOF, broken or closed session). `ValueError` for an argument holding
        CR/LF/NUL (nothing is sent).

        The deadline runs from when the command is sent (after waiting for the session's
        previous command) and fires 0-`DEADLINE_TICK_S` (50 ms) after it has passed: the
        deadlines of all commands on a loop are swept by one timer (`_Deadlines`), as a
        per-command ``asyncio.timeout`` timer costs more than the command itself. A
        cancellation from outside (shutdown, the caller's own timeout) stays a CancelledError,
        even when it arrives together with the deadline.
        """
        line = encode_command(command, *args)
        text = line[:-1].decode("utf-8")
        deadline_ms = self.command_timeout_ms if timeout_ms is None else timeout_ms
        async with self._lock:
            if self._closed:
                raise AgiProtocolError(f"session is closed; cannot send {text!r}")
            if self._broken is not None:
                raise AgiProtocolError(f"session is broken ({self._broken}); cannot send {text!r}")
            in_flight = True
            try:
                with self._deadline.within(deadline_ms / 1000):
                    self._writer.write(line)
                    self.commands_sent += 1
                    await self._writer.drain()
                    reply = await self._read_reply(text)
                in_flight = False
            except TimeoutError as exc:
                self._broken = f"{text!r} timed out after {deadline_ms} ms"
                AGI_COMMAND_TIMEOUTS.inc()
                raise AgiTimeout(f"no reply to {text!r} within {deadline_ms} ms") from exc
            except OSError as exc:  # ConnectionResetError, BrokenPipeError... (not timeouts)
                self._broken = f"connection lost during {text!r}"
                if self.hung_up:
                    raise AgiHangup("connection lost after HANGUP", command=text) from exc
                raise AgiProtocolError(f"connection lost during {text!r}: {exc}") from exc
            finally:
                if in_flight and self._broken is None:
                    # Cancelled or a protocol error: the reply may still come; never reuse.
                    self._broken = f"{text!r} did not complete"
        return self._check(reply, text)

    async def _read_reply(self, text: str) -> AgiReply:
        while True:
            try:
                raw = await _read_line(self._reader, f"the reply to {text!r}")
            except AgiProtocolError as exc:
                if self.hung_up and self._reader.at_eof():
                    raise AgiHangup(
                        "peer closed the connection after HANGUP", command=text
                    ) from exc
                raise
            event = self._parser.feed(decode_line(raw))
            if event is HANGUP:
                self._mark_hangup()
            elif event is not None:
                return event

    async def wait_hangup(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` for an unsolicited ``HANGUP`` line while no command runs
        (Asterisk sends it ~40 ms after the reply of the command during which the caller hung
        up, e.g. EXEC Dial). Returns `hung_up` (at once when HANGUP was already seen). The
        wait may last up to `DEADLINE_TICK_S` longer (see `command`). A timeout leaves the
        session usable; any other line, or EOF, is a protocol error and
        breaks the session."""
        async with self._lock:
            if self.hung_up or self._closed or self._broken is not None:
                return self.hung_up
            try:
                with self._deadline.within(timeout_ms / 1000):
                    # readuntil leaves a partial line in the buffer when cancelled: nothing lost.
                    raw = await _read_line(self._reader, "an unsolicited HANGUP")
            except TimeoutError:
                return False
            except AgiProtocolError as exc:
                self._broken = f"while idle: {exc}"
                raise
            line = decode_line(raw)
            if line != "HANGUP":
                self._broken = f"unsolicited line {line[:80]!r}"
                raise AgiProtocolError(f"unsolicited line while idle: {line[:80]!r}")
            self._mark_hangup()
            return True

    def _check(self, reply: AgiReply, text: str) -> AgiReply:
        if reply.code == 200:
            return reply
        if reply.code == 511 and self.hung_up:
            raise AgiHangup("command needs a live channel", command=text)
        raise AgiCommandError(reply.code, reply.text, reply.usage, command=text)

    # ------------------------------------------------------------------ convenience

    async def answer(self) -> None:
        """ANSWER the channel. Raises `AgiHangup` when Asterisk could not (result -1)."""
        reply = await self.command("ANSWER")
        if reply.result == -1:
            raise AgiHangup("ANSWER failed", command="ANSWER")

    async def get_variable(self, name: str, *, timeout_ms: int | None = None) -> str | None:
        """GET VARIABLE: the value, or None when the variable is not set (``result=0``)."""
        reply = await self.command("GET VARIABLE", name, timeout_ms=timeout_ms)
        if reply.result == 1:
            return reply.data if reply.data is not None else ""
        return None

    async def get_full_variable(self, expr: str, *, timeout_ms: int | None = None) -> str | None:
        """GET FULL VARIABLE: the expansion of ``expr`` (``${...}`` expressions), or None."""
        reply = await self.command("GET FULL VARIABLE", expr, timeout_ms=timeout_ms)
        if reply.result == 1:
            return reply.data if reply.data is not None else ""
        return None

    async def set_variable(self, name: str, value: str | int) -> None:
        """SET VARIABLE (also dialplan functions: ``CDR(x)``, ``SHARED(X)``)."""
        await self.command("SET VARIABLE", name, value)

    async def set_variables(self, pairs: Sequence[tuple[str, str | int]]) -> None:
        """Set several variables (or dialplan functions) in one round trip when it is safe.

        Two or more pairs whose names and values are all plain (:data:`PLAIN_NAME`,
        :data:`PLAIN_VALUE`: nothing MSet would unquote, unescape or split on) go as one
        ``EXEC MSet(name1=value1,name2=value2,...)``, a core Asterisk application since 13.8; any
        other pair, or an Asterisk where MSet is missing (``-2``), gets its own SET VARIABLE, in
        order."""
        texts = [(name, str(value)) for name, value in pairs]
        if (
            len(texts) >= 2
            and self.asterisk not in _NO_MSET
            and all(_plain(name, value) for name, value in texts)
        ):
            if await self.exec("MSet", mset_args(texts)) != -2:
                return
            _NO_MSET.add(self.asterisk)
            log.warning(
                "Asterisk %s has no MSet application: setting variables one by one",
                self.asterisk or "(unnamed)",
            )
        for name, value in texts:
            await self.set_variable(name, value)

    async def exec(self, app: str, args: str = "", *, timeout_ms: int | None = None) -> int:
        """EXEC an application with ``args`` sent as ONE argument (Asterisk only passes argv[2]
        to the application). Asterisk does not expand ``${...}`` in it. Returns the application's
        result: for Dial ``0`` (BUSY, CONGESTION, NOANSWER, CANCEL, caller alive) or ``-1``
        (a bridged call ended); ``-2`` means no such application. EXEC Dial blocks for the
        whole call: pass a ``timeout_ms`` longer than the longest call."""
        reply = await self.command("EXEC", app, args, timeout_ms=timeout_ms)
        if reply.result is None:
            raise AgiProtocolError(f"EXEC {app} reply without an integer result: {reply.lines}")
        return reply.result

    async def verbose(self, message: str, level: int = 1) -> None:
        await self.command("VERBOSE", message, level)

    async def get_data(
        self,
        prompt: str,
        timeout_ms: int,
        max_digits: int,
        *,
        deadline_ms: int | None = None,
    ) -> tuple[str, bool]:
        """GET DATA: play ``prompt`` and collect up to ``max_digits`` DTMF digits.

        Returns ``(digits, timed_out)``; digits keep leading zeros. ``timeout_ms`` is Asterisk's
        inter-digit timeout; the command deadline (``deadline_ms``) defaults to the session's
        command timeout plus one ``timeout_ms`` per digit plus 60 s for the prompt. A ``-1``
        result (prompt failed or channel gone) raises `AgiHangup` after HANGUP, else
        `AgiCommandError`."""
        if deadline_ms is None:
            deadline_ms = self.command_timeout_ms + timeout_ms * (max_digits + 1) + 60_000
        reply = await self.command(
            "GET DATA", prompt, timeout_ms, max_digits, timeout_ms=deadline_ms
        )
        if reply.result == -1:
            if self.hung_up:
                raise AgiHangup("GET DATA failed", command=f"GET DATA {prompt}")
            raise AgiCommandError(200, "GET DATA failed (result=-1)", command=f"GET DATA {prompt}")
        digits = reply.result_text
        if not digits.isdigit():
            digits = "".join(c for c in digits if c.isdigit() or c in "*#")
        return digits, reply.data == "timeout"

    async def stream_file(
        self, name: str, escape_digits: str = "", *, timeout_ms: int = PLAYBACK_TIMEOUT_MS
    ) -> int:
        """STREAM FILE: 0 when played, the ASCII code of the digit that stopped it, -1 on
        failure (missing file)."""
        reply = await self.command("STREAM FILE", name, escape_digits, timeout_ms=timeout_ms)
        return reply.result if reply.result is not None else -1

    async def say_number(
        self, number: int, escape_digits: str = "", *, timeout_ms: int = PLAYBACK_TIMEOUT_MS
    ) -> int:
        reply = await self.command("SAY NUMBER", number, escape_digits, timeout_ms=timeout_ms)
        return reply.result if reply.result is not None else -1

    async def hangup(self) -> None:
        """HANGUP the channel (Asterisk answers ``200 result=1`` then sends a HANGUP line).
        The socket stays open until `close`."""
        await self.command("HANGUP")

    async def close(self) -> None:
        """Close the socket (idempotent, never raises a network error). Always call it: Asterisk
        never closes a FastAGI socket itself."""
        if self._closed:
            return
        self._closed = True
        await close_writer(self._writer)

    async def __aenter__(self) -> AgiSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a stream writer and wait (bounded) for the transport to go."""
    writer.close()
    try:
        with _Deadline().within(_CLOSE_TIMEOUT_S):
            await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        log.debug("closing AGI socket: %r", exc)
    else:
        release_transport(writer)


def _nothing_to_read() -> None:
    """The read callback of a transport that is gone."""


def release_transport(writer: asyncio.StreamWriter) -> None:
    """Let a closed connection's transport be freed at once, not by the cyclic GC.

    CPython's selector socket transport (3.11 at least) keeps a bound method of itself,
    ``_read_ready_cb``: every connection is a reference cycle that only the cyclic garbage
    collector frees (about 1,000 transports a second of garbage at 950 calls/s, each with its
    socket, collected in batches). Once the connection is lost (the loop no longer reads it)
    the callback is replaced by a function that holds nothing, so the transport goes when its
    last reference does. uvloop's transports, and transports without the attribute, are left
    alone.
    """
    transport = writer.transport
    if transport.is_closing() and getattr(transport, "_read_ready_cb", None) is not None:
        transport._read_ready_cb = _nothing_to_read  # type: ignore[attr-defined]
