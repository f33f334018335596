"""AMI client: connect, log in, run actions, deliver events, stay connected.

One :class:`AmiClient` per Asterisk server. Its shape:

* **One reader task per connection.** It reads the socket, feeds the pure :class:`AmiParser` and
  dispatches each message synchronously: a response completes the action waiting on its
  ``ActionID``; an event carrying the ``ActionID`` of a running list action joins that list;
  any other event is offered to each subscriber's bounded queue with ``put_nowait``. The reader
  never awaits a consumer: Asterisk drops a client that does not read within its ``writetimeout``
  (100 ms). A full queue drops the oldest (or newest) event and counts it.
* **A pinger task.** ``Action: Ping`` every ``ping_interval``; no answer within ``ping_timeout``
  means a dead peer (half-open TCP): the connection is aborted and re-established. The socket read
  has its own deadline too, as a backstop (``2 * (ping_interval + ping_timeout)`` of silence).
* **A supervisor task** that reconnects forever, until :meth:`AmiClient.close`, with exponential
  backoff and full jitter, then runs the ``on_login`` hook (the listener resyncs its live channels
  with ``CoreShowChannels`` there: AMI has no replay). Actions pending when a connection drops
  fail with :class:`AmiDisconnected`; actions while disconnected fail at once, never queue.

Credentials never reach a log line or a repr: action fields named ``Secret`` or ``Key`` are
masked before logging, and :class:`AmiMessage` masks them in its repr.

Durations are float seconds (asyncio's unit), as in ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType

from callgate.ami import metrics
from callgate.ami.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MASK,
    SENSITIVE_KEYS,
    AmiMessage,
    AmiMessageKind,
    AmiParser,
    FieldValue,
    encode_action,
)
from callgate.ami.errors import (
    AmiActionError,
    AmiAuthError,
    AmiDisconnected,
    AmiError,
    AmiProtocolError,
    AmiTimeout,
)
from callgate.ami.metrics import ConnectOutcome
from callgate.config import AmiSettings, Secret

log = logging.getLogger(__name__)

OnLogin = Callable[["AmiClient"], Awaitable[None]]

_READ_SIZE = 65536
_CLOSE_WAIT = 1.0  # seconds to wait for a socket to close


class Overflow(StrEnum):
    """What a full subscriber queue gives up."""

    DROP_OLDEST = "drop_oldest"  # keep the newest events (the live view converges faster)
    DROP_NEWEST = "drop_newest"


@dataclass(slots=True)
class AmiStats:
    """Counters of one client, for tests and diagnostics (the metrics carry the same)."""

    connects: int = 0  # successful logins
    connect_failures: int = 0
    disconnects: int = 0  # established connections lost
    ping_timeouts: int = 0
    events: int = 0  # events received outside list actions
    events_dropped: int = 0


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(maximum, initial * 2**attempt)] (AWS architecture blog)."""
    cap = min(maximum, initial * (2 ** min(attempt, 62)))
    return rng.uniform(0.0, cap)


def scrub_fields(fields: Mapping[str, FieldValue] | None) -> dict[str, FieldValue]:
    """Action fields as they may be logged: credentials masked."""
    return {k: (MASK if k.lower() in SENSITIVE_KEYS else v) for k, v in (fields or {}).items()}


class AmiSubscription:
    """A bounded queue of events for one consumer. Iterate it, or ``await get()``.

    ``dropped`` counts the events lost to a full queue: a consumer that sees it grow has a gap
    and should resync (``CoreShowChannels``).
    """

    def __init__(
        self,
        client: AmiClient,
        maxsize: int,
        names: frozenset[str] | None,
        overflow: Overflow,
    ) -> None:
        if maxsize < 1:
            raise ValueError("a subscription queue must be bounded (maxsize >= 1)")
        self._client = client
        self._queue: asyncio.Queue[AmiMessage] = asyncio.Queue(maxsize)
        self._names = names
        self._overflow = overflow
        self.dropped = 0

    def wants(self, message: AmiMessage) -> bool:
        if self._names is None:
            return True
        return (message.name or "").lower() in self._names

    def offer(self, message: AmiMessage) -> bool:
        """Enqueue without ever waiting; False when an event was dropped."""
        try:
            self._queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            if self._overflow is Overflow.DROP_OLDEST:
                self._queue.get_nowait()
                self._queue.put_nowait(message)
            return False

    async def get(self) -> AmiMessage:
        return await self._queue.get()

    def get_nowait(self) -> AmiMessage:
        """The next event; raises ``asyncio.QueueEmpty``."""
        return self._queue.get_nowait()

    def qsize(self) -> int:
        return self._queue.qsize()

    @property
    def maxsize(self) -> int:
        return self._queue.maxsize

    def close(self) -> None:
        """Stop receiving events."""
        self._client._unsubscribe(self)

    def __aiter__(self) -> AmiSubscription:
        return self

    async def __anext__(self) -> AmiMessage:
        return await self._queue.get()


@dataclass(slots=True, eq=False)
class _Waiter:
    future: asyncio.Future[AmiMessage]
    is_list: bool
    response: AmiMessage | None = None  # a list's ack, held until its Complete event
    events: list[AmiMessage] = field(default_factory=list)


class _Connection:
    """One TCP connection and the actions waiting on it."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: AmiParser
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = parser
        self.pending: dict[str, _Waiter] = {}
        self.reader_task: asyncio.Task[None] | None = None
        self.closed = False

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise AmiDisconnected("AMI connection is closed")
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (OSError, RuntimeError) as exc:
            raise AmiDisconnected(f"AMI write failed: {exc}") from exc

    def fail_pending(self, reason: str) -> None:
        self.closed = True
        for waiter in self.pending.values():
            if not waiter.future.done():
                waiter.future.set_exception(AmiDisconnected(reason))
        self.pending.clear()

    def abort(self) -> None:
        self.closed = True
        self.writer.transport.abort()


class AmiClient:
    """An AMI connection to one Asterisk that stays up until :meth:`close`.

    ``await connect()`` makes the first connection and raises if it fails (wrong secret:
    :class:`AmiAuthError`); ``start()`` instead retries in the background from the start.
    Both then keep the connection up forever with backoff.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str | Secret,
        *,
        events: bool | str = True,
        md5: bool = False,
        connect_timeout: float = 5.0,
        action_timeout: float = 10.0,
        ping_interval: float = 20.0,
        ping_timeout: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        queue_size: int = 10000,
        on_login: OnLogin | None = None,
        name: str = "asterisk",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        rng: random.Random | None = None,
    ) -> None:
        for label, value in (
            ("connect_timeout", connect_timeout),
            ("action_timeout", action_timeout),
            ("ping_interval", ping_interval),
            ("ping_timeout", ping_timeout),
            ("backoff_initial", backoff_initial),
            ("backoff_max", backoff_max),
        ):
            if value <= 0:
                raise ValueError(f"{label} must be > 0")
        if isinstance(secret, Secret):
            secret = secret.value
        if any(c in username + secret for c in "\r\n\x00"):
            raise ValueError("AMI username or secret contains CR, LF or NUL")
        self.host = host
        self.port = port
        self.username = username
        self._secret = secret
        self._events = events if isinstance(events, str) else ("on" if events else "off")
        self.md5 = md5
        self._connect_timeout = connect_timeout
        self._action_timeout = action_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._queue_size = queue_size
        self._on_login = on_login
        self.name = name
        self._max_message_bytes = max_message_bytes
        self._rng = rng or random.Random()
        self._ids = itertools.count(1)
        self._id_prefix = f"cg-{secrets.token_hex(3)}-"
        self._subs: list[AmiSubscription] = []
        self._conn: _Connection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False
        self._connected = asyncio.Event()
        self.stats = AmiStats()
        self._m_events = metrics.AMI_EVENTS.labels(server=name)  # hot path: resolve labels once
        self._m_dropped = metrics.AMI_EVENTS_DROPPED.labels(server=name)
        metrics.AMI_CONNECTED.labels(server=name).set(0)

    @classmethod
    def from_settings(
        cls,
        settings: AmiSettings,
        *,
        on_login: OnLogin | None = None,
        name: str = "asterisk",
        events: bool | str = True,
    ) -> AmiClient:
        """The client described by ``[ami]`` of the settings."""
        return cls(
            settings.host,
            settings.port,
            settings.username,
            settings.secret,
            events=events,
            md5=settings.md5,
            ping_interval=float(settings.ping_interval_seconds),
            backoff_max=float(settings.reconnect_max_seconds),
            on_login=on_login,
            name=name,
        )

    def __repr__(self) -> str:
        return (
            f"AmiClient(name={self.name!r}, host={self.host!r}, port={self.port}, "
            f"username={self.username!r}, secret={MASK!r}, md5={self.md5}, "
            f"connected={self.connected})"
        )

    # -- state ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while logged in and past ``on_login`` (the ``callgate_ami_connected`` gauge)."""
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Wait until logged in (wrap it in ``asyncio.timeout``)."""
        await self._connected.wait()

    def _set_connected(self, up: bool) -> None:
        if up:
            self._connected.set()
        else:
            self._connected.clear()
        metrics.AMI_CONNECTED.labels(server=self.name).set(1 if up else 0)

    # -- lifecycle -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and log in now (raising on failure), then stay connected in the background."""
        self._check_startable()
        conn = await self._establish()
        self._supervisor = asyncio.create_task(self._supervise(conn), name=f"ami-{self.name}")

    def start(self) -> None:
        """Connect in the background, retrying with backoff until it works (never raises)."""
        self._check_startable()
        self._supervisor = asyncio.create_task(self._supervise(None), name=f"ami-{self.name}")

    def _check_startable(self) -> None:
        if self._closed:
            raise AmiDisconnected("AMI client is closed")
        if self._supervisor is not None:
            raise RuntimeError("AMI client already started")

    async def close(self) -> None:
        """Log off (best effort), stop reconnecting, fail pending actions. Idempotent."""
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if conn is not None and not conn.closed:
            with contextlib.suppress(AmiError):
                await self._call_on(conn, "Logoff", None, min(1.0, self._action_timeout))
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.wait([supervisor])
        elif conn is not None:
            await self._discard(conn)
        self._conn = None
        self._set_connected(False)

    async def __aenter__(self) -> AmiClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- events --------------------------------------------------------------------------------

    def subscribe(
        self,
        names: Iterable[str] | None = None,
        *,
        maxsize: int | None = None,
        overflow: Overflow = Overflow.DROP_OLDEST,
    ) -> AmiSubscription:
        """A bounded queue of events (only ``names``, case-insensitive, when given)."""
        wanted = None if names is None else frozenset(n.lower() for n in names)
        sub = AmiSubscription(self, maxsize or self._queue_size, wanted, overflow)
        self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: AmiSubscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    def _publish(self, message: AmiMessage) -> None:
        self.stats.events += 1
        self._m_events.inc()
        for sub in self._subs:
            if sub.wants(message) and not sub.offer(message):
                self.stats.events_dropped += 1
                self._m_dropped.inc()
                if sub.dropped == 1 or sub.dropped % 1000 == 0:
                    log.warning(
                        "AMI %s: subscriber queue full (%d), %d event(s) dropped so far",
                        self.name,
                        sub.maxsize,
                        sub.dropped,
                    )

    # -- actions -------------------------------------------------------------------------------

    async def action(self, name: str, /, **fields: FieldValue) -> AmiMessage:
        """Send an action and return its response; AmiActionError on ``Response: Error``.

        A list value repeats the header (``Variable=["A=1", "B=2"]``). ``ActionID`` is ours.
        """
        response = await self._call(name, fields, is_list=False)
        _raise_for_error(response)
        return response

    async def action_list(self, name: str, /, **fields: FieldValue) -> list[AmiMessage]:
        """A list action (``CoreShowChannels``...): its item events, without the Complete one."""
        waiter_events: list[AmiMessage] = []
        response = await self._call(name, fields, is_list=True, into=waiter_events)
        _raise_for_error(response)
        return waiter_events

    async def command(self, cli: str) -> list[str]:
        """Run a CLI command; its ``Output`` lines, as sent (``iax2 reload`` gives ``[""]``).

        ``Response: Error`` (``No such command ...``) raises AmiActionError with the output as
        the message. Note ``module reload res_agi.so`` succeeds at the AMI level and says
        ``does not support reloads`` in its output: callers check the text.
        """
        response = await self._call("Command", {"Command": cli}, is_list=False)
        lines = response.output
        if (response.response or "").lower() == "error":
            raise AmiActionError("\n".join(lines) or response.get("Message") or "error", response)
        return lines

    async def _call(
        self,
        name: str,
        fields: Mapping[str, FieldValue] | None,
        *,
        is_list: bool,
        into: list[AmiMessage] | None = None,
    ) -> AmiMessage:
        conn = self._conn
        if conn is None or conn.closed:
            raise AmiDisconnected(f"AMI {self.name} is not connected")
        return await self._call_on(
            conn, name, fields, self._action_timeout, is_list=is_list, into=into
        )

    async def _call_on(
        self,
        conn: _Connection,
        name: str,
        fields: Mapping[str, FieldValue] | None,
        deadline: float,
        *,
        is_list: bool = False,
        into: list[AmiMessage] | None = None,
    ) -> AmiMessage:
        action_id = f"{self._id_prefix}{next(self._ids)}"
        data = encode_action(name, action_id, fields)  # ValueError before anything is sent
        waiter = _Waiter(asyncio.get_running_loop().create_future(), is_list)
        if conn.closed:
            raise AmiDisconnected(f"AMI {self.name} is not connected")
        conn.pending[action_id] = waiter
        log.debug("AMI %s -> %s %s %s", self.name, name, action_id, scrub_fields(fields))
        try:
            async with asyncio.timeout(deadline):
                await conn.send(data)
                response = await waiter.future
        except TimeoutError as exc:
            raise AmiTimeout(f"AMI {name} got no answer within {deadline}s") from exc
        finally:
            conn.pending.pop(action_id, None)
        if into is not None:
            into.extend(waiter.events)
        return response

    # -- connection ----------------------------------------------------------------------------

    async def _open(self) -> _Connection:
        """TCP connect, banner, reader task, login. Raises; leaves nothing open on failure."""
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError as exc:
            raise AmiTimeout(f"AMI connect to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise AmiDisconnected(f"AMI connect to {self.host}:{self.port}: {exc}") from exc
        conn = _Connection(reader, writer, AmiParser(max_message_bytes=self._max_message_bytes))
        ok = False
        try:
            early: list[AmiMessage] = []
            try:
                async with asyncio.timeout(self._connect_timeout):
                    while conn.parser.banner is None:
                        data = await reader.read(_READ_SIZE)
                        if not data:
                            raise AmiDisconnected("AMI peer closed before its banner")
                        early.extend(conn.parser.feed(data))
            except TimeoutError as exc:
                raise AmiTimeout("no AMI banner within connect_timeout") from exc
            except OSError as exc:
                raise AmiDisconnected(f"AMI read failed: {exc}") from exc
            log.debug("AMI %s banner: %s", self.name, conn.parser.banner)
            conn.reader_task = asyncio.create_task(
                self._read_loop(conn, early), name=f"ami-{self.name}-reader"
            )
            await self._login(conn)
            ok = True
            return conn
        finally:
            if not ok:
                await self._discard(conn)

    async def _login(self, conn: _Connection) -> None:
        fields: dict[str, FieldValue]
        if self.md5:
            challenge = await self._call_on(
                conn, "Challenge", {"AuthType": "md5"}, self._action_timeout
            )
            if (challenge.response or "").lower() != "success":
                raise AmiAuthError(f"AMI MD5 challenge refused: {challenge.get('Message')}")
            nonce = challenge.get("Challenge")
            if not nonce:
                raise AmiProtocolError("AMI Challenge response without a Challenge")
            key = hashlib.md5((nonce + self._secret).encode("utf-8")).hexdigest()
            fields = {"AuthType": "md5", "Username": self.username, "Key": key}
        else:
            fields = {"Username": self.username, "Secret": self._secret}
        fields["Events"] = self._events
        response = await self._call_on(conn, "Login", fields, self._action_timeout)
        if (response.response or "").lower() != "success":
            raise AmiAuthError(
                f"AMI login as {self.username!r} refused: {response.get('Message') or 'error'}"
            )

    async def _establish(self) -> _Connection:
        """Open, log in, run on_login, mark connected. Raises AmiError; cleans up on failure."""
        try:
            conn = await self._open()
        except AmiError as exc:
            self._note_failure(_outcome(exc))
            raise
        ok = False
        try:
            self._conn = conn  # actions work from here: the hook needs them
            log.info(
                "AMI %s: logged in to %s:%d as %s", self.name, self.host, self.port, self.username
            )
            if self._on_login is not None:
                try:
                    await self._on_login(self)
                except Exception as exc:
                    log.exception("AMI %s: on_login hook failed; reconnecting", self.name)
                    self._note_failure(ConnectOutcome.HOOK_FAILED)
                    raise AmiError("on_login hook failed") from exc
            self.stats.connects += 1
            metrics.AMI_CONNECTS.labels(server=self.name, outcome=ConnectOutcome.OK).inc()
            self._set_connected(True)  # logged in *and* resynced
            ok = True
            return conn
        finally:
            if not ok:
                self._conn = None
                self._set_connected(False)
                await self._discard(conn)

    def _note_failure(self, outcome: ConnectOutcome) -> None:
        self.stats.connect_failures += 1
        metrics.AMI_CONNECTS.labels(server=self.name, outcome=outcome).inc()

    async def _supervise(self, conn: _Connection | None) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while not self._closed:
            if conn is None:
                try:
                    conn = await self._establish()
                except AmiError as exc:
                    delay = backoff_delay(
                        attempt, self._backoff_initial, self._backoff_max, self._rng
                    )
                    attempt += 1
                    log.warning(
                        "AMI %s: cannot connect to %s:%d (%s); retrying in %.2fs",
                        self.name, self.host, self.port, exc, delay,
                    )  # fmt: skip
                    await asyncio.sleep(delay)
                    continue
            up_since = loop.time()
            await self._watch(conn)
            conn = None
            if self._closed:
                return
            if loop.time() - up_since >= self._backoff_max:
                attempt = 0  # it was a stable connection: start the backoff again
            delay = backoff_delay(attempt, self._backoff_initial, self._backoff_max, self._rng)
            attempt += 1
            log.warning("AMI %s: connection lost; reconnecting in %.2fs", self.name, delay)
            await asyncio.sleep(delay)

    async def _watch(self, conn: _Connection) -> None:
        """Run the pinger until the reader ends (connection lost), then clean up."""
        assert conn.reader_task is not None
        pinger = asyncio.create_task(self._ping_loop(conn), name=f"ami-{self.name}-ping")
        try:
            await asyncio.wait([conn.reader_task])
        finally:
            pinger.cancel()
            await asyncio.wait([pinger])
            for task in (conn.reader_task, pinger):
                self._reap(task)
            if self._conn is conn:
                self._conn = None
            self._set_connected(False)
            if not self._closed:
                self.stats.disconnects += 1
                metrics.AMI_DISCONNECTS.labels(server=self.name).inc()
            await self._discard(conn)

    def _reap(self, task: asyncio.Task[None]) -> None:
        """Retrieve a finished task's unexpected exception: log it, never lose it."""
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            log.error("AMI %s: task %s crashed", self.name, task.get_name(), exc_info=exc)

    async def _ping_loop(self, conn: _Connection) -> None:
        while not conn.closed:
            await asyncio.sleep(self._ping_interval)
            try:
                await self._call_on(conn, "Ping", None, self._ping_timeout)
            except AmiTimeout:
                self.stats.ping_timeouts += 1
                metrics.AMI_PING_TIMEOUTS.labels(server=self.name).inc()
                log.warning(
                    "AMI %s: no Pong within %.1fs, peer presumed dead; dropping the connection",
                    self.name,
                    self._ping_timeout,
                )
                conn.abort()
                return
            except AmiDisconnected:
                return

    async def _read_loop(self, conn: _Connection, early: list[AmiMessage]) -> None:
        # A backstop behind the pinger (which detects first): twice a ping round of silence.
        idle = 2 * (self._ping_interval + self._ping_timeout)
        reason = "AMI connection lost"
        try:
            for message in early:
                self._dispatch(conn, message)
            while True:
                try:
                    async with asyncio.timeout(idle):
                        data = await conn.reader.read(_READ_SIZE)
                except TimeoutError:
                    reason = f"AMI peer silent for {idle:.1f}s"
                    log.warning("AMI %s: %s; dropping the connection", self.name, reason)
                    return
                if not data:
                    reason = "AMI connection closed by the peer"
                    log.info("AMI %s: %s", self.name, reason)
                    return
                for message in conn.parser.feed(data):
                    self._dispatch(conn, message)
        except AmiProtocolError as exc:
            reason = f"AMI protocol error: {exc}"
            log.error("AMI %s: %s; dropping the connection", self.name, reason)
        except OSError as exc:
            reason = f"AMI read failed: {exc}"
            log.warning("AMI %s: %s", self.name, reason)
        finally:
            conn.fail_pending(reason)
            conn.writer.transport.abort()

    def _dispatch(self, conn: _Connection, message: AmiMessage) -> None:
        """Route one message. Synchronous on purpose: the reader never waits on anyone."""
        kind = message.kind
        action_id = message.action_id
        waiter = conn.pending.get(action_id) if action_id is not None else None
        if kind is AmiMessageKind.RESPONSE:
            log.debug("AMI %s <- %r", self.name, message)
            if waiter is None or waiter.future.done():
                log.debug("AMI %s: response to an unknown ActionID %s", self.name, action_id)
                return
            if (
                waiter.is_list
                and (message.response or "").lower() == "success"
                and (message.get("EventList") or "").lower() == "start"
            ):
                waiter.response = message  # the items and the Complete event follow
            else:
                waiter.future.set_result(message)
            return
        if kind is AmiMessageKind.EVENT:
            if waiter is not None and waiter.is_list and not waiter.future.done():
                if message.completes_list:
                    waiter.future.set_result(waiter.response or message)
                else:
                    waiter.events.append(message)
                return
            self._publish(message)
            return
        log.debug("AMI %s: dropped a message that is neither response nor event", self.name)

    async def _discard(self, conn: _Connection) -> None:
        conn.closed = True
        task = conn.reader_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        conn.fail_pending("AMI connection closed")
        conn.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_CLOSE_WAIT):
                await conn.writer.wait_closed()


def _raise_for_error(response: AmiMessage) -> None:
    if (response.response or "").lower() == "error":
        raise AmiActionError(response.get("Message") or "error", response)


def _outcome(exc: AmiError) -> ConnectOutcome:
    if isinstance(exc, AmiAuthError):
        return ConnectOutcome.AUTH_FAILED
    if isinstance(exc, AmiTimeout):
        return ConnectOutcome.TIMEOUT
    if isinstance(exc, AmiProtocolError):
        return ConnectOutcome.PROTOCOL_ERROR
    return ConnectOutcome.REFUSED
