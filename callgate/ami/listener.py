"""AMI listener: channel events -> ``live_channels``, ``Cdr`` events -> ``asterisk_cdrs``.

Shape:

* The :class:`~callgate.ami.client.AmiClient` reader puts the events into a bounded
  subscription queue and never waits (Asterisk drops a client that does not read within its
  100 ms ``writetimeout``). :meth:`AmiListener.run` consumes that queue and writes in batches:
  whatever is queued when it wakes, up to ``batch_size`` events, in one transaction.
* The truth about channels is a model in memory (one per Asterisk server); the table is its
  projection. Each batch writes only the channels that changed. Cdr events are stored
  idempotently (a fingerprint), so a replayed event is stored once.
* **Resync.** AMI has no replay: after every login (the client's ``on_login`` hook,
  :meth:`AmiListener.on_login`) the listener rebuilds the live view from ``CoreShowChannels``.
  Ordering is kept with markers put in the same queue as the events: ``begin`` before the
  action is sent, ``ready`` once its list arrived. Events before ``begin`` are older than the
  snapshot (applied, then replaced by it); channel events between the markers are held and
  replayed on top of the snapshot (each event is an idempotent upsert or a delete, so replaying
  one that the snapshot already reflects is harmless). The hook returns only once the snapshot
  is applied and written, so ``client.connected`` means "logged in and resynced".
* A database that fails keeps the changes in memory (bounded by what the model and the pending
  CDRs hold) and retries; the queue keeps draining, so the socket reader never stalls.

Times: Newchannel's arrival (our clock) is a channel's start; a resync derives it from the
``Duration`` CoreShowChannel reports. Cdr times are stored as Asterisk sent them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate import metrics
from callgate.ami.client import AmiClient, AmiSubscription, Overflow
from callgate.ami.codec import AmiMessage
from callgate.store.cdrs import AsteriskCdr, cdr_from_fields, store_cdrs
from callgate.store.channels import LiveChannel, replace_channels, write_channels
from callgate.store.db import write_transaction
from callgate.store.errors import StoreError

log = logging.getLogger(__name__)

CHANNEL_EVENTS = frozenset(
    {
        "newchannel",
        "newstate",
        "newaccountcode",
        "newcallerid",
        "dialbegin",
        "dialend",
        "bridgeenter",
        "bridgeleave",
        "hangup",
    }
)
CDR_EVENT = "cdr"
MARKER_EVENT = "CallgateResync"  # never sent by Asterisk: our own marker in the queue
EVENTS = CHANNEL_EVENTS | {CDR_EVENT, MARKER_EVENT.lower()}
UNKNOWN = "<unknown>"
MAX_HELD_EVENTS = 100_000  # channel events held during one resync
MAX_PENDING_CDRS = 100_000  # CDRs kept in memory while the database is down


@dataclass(slots=True)
class _Channel:
    """A channel of the in-memory model (mutable; snapshotted into LiveChannel rows)."""

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
    bridge_id: str = ""
    bridged_to: str = ""
    answered_at: datetime | None = None

    def row(self, server: str) -> LiveChannel:
        return LiveChannel(
            uniqueid=self.uniqueid,
            channel=self.channel[:128],
            started_at=self.started_at,
            updated_at=self.updated_at,
            linkedid=self.linkedid[:64],
            accountcode=self.accountcode[:64],
            callerid=self.callerid[:64],
            destination=self.destination[:64],
            context=self.context[:80],
            state=self.state[:32],
            application=self.application[:64],
            bridged_to=self.bridged_to[:128],
            server=server,
            answered_at=self.answered_at,
        )


def _known(value: str | None) -> str:
    return "" if value is None or value == UNKNOWN else value


def parse_duration(text: str | None) -> int:
    """``HH:MM:SS`` (CoreShowChannel's Duration) in seconds; 0 when unreadable."""
    try:
        parts = [int(p) for p in (text or "").split(":")]
    except ValueError:
        return 0
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + part
    return max(0, seconds)


def cdr_from_event(event: AmiMessage, received_at: datetime | None = None) -> AsteriskCdr:
    return cdr_from_fields(event.headers, received_at=received_at)


@dataclass(frozen=True, slots=True)
class ListenerStats:
    events: int
    batches: int
    cdrs_stored: int
    cdrs_duplicate: int
    resyncs: int
    write_failures: int
    channels: int


class AmiListener:
    """Feeds the live view and the Asterisk CDR table from one AMI client.

    Wire it before the client starts::

        listener = AmiListener(engine, server="asterisk")
        client = AmiClient.from_settings(settings.ami, on_login=listener.on_login)
        listener.attach(client)
        client.start()
        await listener.run()        # until cancelled
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        server: str = "asterisk",
        asterisk: str = "",
        batch_size: int = 500,
        queue_size: int = 20_000,
        resync_timeout: float = 30.0,
        retry_seconds: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.engine = engine
        self.server = server
        #: the key of this Asterisk in the call tables (its system name or address, as the
        #: FastAGI side keys its calls): stored on each CDR so the reaper matches the right one
        #: ("": unnamed, matched to a reservation of any Asterisk)
        self.asterisk = asterisk
        self.batch_size = batch_size
        self.queue_size = queue_size
        self.resync_timeout = resync_timeout
        self.retry_seconds = retry_seconds
        self.clock = clock
        self._sub: AmiSubscription | None = None
        self._channels: dict[str, _Channel] = {}
        self._bridges: dict[str, set[str]] = {}
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        self._rewrite_all = False
        self._pending_cdrs: list[AsteriskCdr] = []
        self._held: list[AmiMessage] | None = None  # channel events during a resync
        self._holding_token: str | None = None
        self._snapshots: dict[str, list[AmiMessage]] = {}
        self._resync_done: dict[str, asyncio.Future[None]] = {}
        self._tokens = itertools.count(1)
        self._retry_at: float | None = None
        self._events = 0
        self._batches = 0
        self._cdrs_stored = 0
        self._cdrs_seen = 0
        self._resyncs = 0
        self._write_failures = 0
        self._m_channels = metrics.LIVE_CHANNELS.labels(server=server)
        self._m_cdrs = metrics.CDRS_STORED.labels(server=server)
        self._idle = asyncio.Event()
        self._idle.set()

    # -- wiring ---------------------------------------------------------------------------------

    def attach(self, client: AmiClient) -> AmiSubscription:
        """Subscribe to ``client``'s events (before it starts, so nothing is missed)."""
        if self._sub is not None:
            raise RuntimeError("listener already attached")
        self._sub = client.subscribe(EVENTS, maxsize=self.queue_size, overflow=Overflow.DROP_OLDEST)
        return self._sub

    @property
    def stats(self) -> ListenerStats:
        return ListenerStats(
            events=self._events,
            batches=self._batches,
            cdrs_stored=self._cdrs_stored,
            cdrs_duplicate=self._cdrs_seen - self._cdrs_stored - len(self._pending_cdrs),
            resyncs=self._resyncs,
            write_failures=self._write_failures,
            channels=len(self._channels),
        )

    def channels(self) -> list[LiveChannel]:
        """The in-memory live view (what the table will hold after the next write)."""
        return [c.row(self.server) for c in self._channels.values()]

    async def wait_idle(self) -> None:
        """Wait until every queued event is applied and written (for tests and shutdown)."""
        while True:
            await self._idle.wait()
            sub = self._sub
            if sub is None or (sub.qsize() == 0 and not self._unwritten()):
                return
            await asyncio.sleep(0.01)

    # -- the login hook ---------------------------------------------------------------------------

    async def on_login(self, client: AmiClient) -> None:
        """Rebuild the live view from ``CoreShowChannels``; returns once it is written."""
        sub = self._sub
        if sub is None:
            raise RuntimeError("listener not attached to a client")
        token = f"{id(self)}-{next(self._tokens)}"
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._resync_done[token] = done
        sub.offer(_marker("begin", token))
        try:
            listed = False
            try:
                items = await client.action_list("CoreShowChannels")
                listed = True
            finally:
                if not listed:  # failed or cancelled: stop holding events
                    sub.offer(_marker("abort", token))
            self._snapshots[token] = items
            sub.offer(_marker("ready", token))
            async with asyncio.timeout(self.resync_timeout):
                await asyncio.shield(done)
        finally:
            self._resync_done.pop(token, None)
            self._snapshots.pop(token, None)

    # -- the consumer -------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume the events until cancelled."""
        sub = self._sub
        if sub is None:
            raise RuntimeError("listener not attached to a client")
        loop = asyncio.get_running_loop()
        while True:
            batch: list[AmiMessage] = []
            timeout = None
            if self._retry_at is not None:
                timeout = max(0.0, self._retry_at - loop.time())
            try:
                async with asyncio.timeout(timeout):
                    batch.append(await sub.get())
            except TimeoutError:
                pass
            self._idle.clear()
            try:
                while len(batch) < self.batch_size:
                    try:
                        batch.append(sub.get_nowait())
                    except asyncio.QueueEmpty:
                        break
                await self._apply(batch)
                if self._retry_at is None or loop.time() >= self._retry_at:
                    await self._flush()
            except Exception:  # a bug must not stop the listener: log it, keep consuming
                log.exception("AMI %s: listener batch failed", self.server)
            finally:
                if sub.qsize() == 0:
                    self._idle.set()

    async def _apply(self, batch: Sequence[AmiMessage]) -> None:
        for event in batch:
            name = (event.name or "").lower()
            self._events += 1
            if name == CDR_EVENT:
                self._cdrs_seen += 1
                self._pending_cdrs.append(
                    replace(cdr_from_event(event, self.clock()), asterisk=self.asterisk)
                )
                if len(self._pending_cdrs) > MAX_PENDING_CDRS:
                    lost = self._pending_cdrs.pop(0)
                    log.error("AMI %s: CDR backlog full, dropped %s", self.server, lost.uniqueid)
            elif name == MARKER_EVENT.lower():
                await self._on_marker(event)
            elif name in CHANNEL_EVENTS:
                if self._held is not None:
                    if len(self._held) < MAX_HELD_EVENTS:
                        self._held.append(event)
                    continue
                self._on_channel_event(name, event)
        if batch:
            self._batches += 1

    async def _on_marker(self, event: AmiMessage) -> None:
        phase = event.get("Phase")
        token = event.get("Token") or ""
        if phase == "begin":
            await self._flush()  # what came before is older than the snapshot
            self._held = []
            self._holding_token = token
            return
        if token != self._holding_token:
            return  # a marker of a resync that was superseded
        held, self._held, self._holding_token = self._held or [], None, None
        if phase == "ready":
            items = self._snapshots.get(token)
            if items is not None:
                self._load_snapshot(items)
            for event_held in held:
                self._on_channel_event((event_held.name or "").lower(), event_held)
            self._resyncs += 1
            ok = await self._flush()
            done = self._resync_done.get(token)
            if done is not None and not done.done():
                if ok:
                    done.set_result(None)
                else:
                    done.set_exception(StoreError("cannot write the resynced live channels"))
            return
        for event_held in held:  # abort: the resync failed, keep what the events say
            self._on_channel_event((event_held.name or "").lower(), event_held)

    # -- the model ------------------------------------------------------------------------------

    def _load_snapshot(self, items: Sequence[AmiMessage]) -> None:
        now = self.clock()
        self._channels.clear()
        self._bridges.clear()
        for item in items:
            uniqueid = item.get("Uniqueid") or ""
            if not uniqueid:
                continue
            started = now - timedelta(seconds=parse_duration(item.get("Duration")))
            chan = _Channel(uniqueid, item.get("Channel") or "", started, now)
            self._update(chan, item)
            chan.application = item.get("Application") or ""
            chan.bridge_id = item.get("BridgeId") or ""
            if chan.bridge_id:
                self._bridges.setdefault(chan.bridge_id, set()).add(uniqueid)
            self._channels[uniqueid] = chan
        for members in self._bridges.values():
            self._link(members)
        self._rewrite_all = True
        self._dirty.clear()
        self._deleted.clear()
        self._m_channels.set(len(self._channels))

    def _update(self, chan: _Channel, event: AmiMessage) -> None:
        """The snapshot fields every channel event carries."""
        now = self.clock()
        chan.updated_at = now
        chan.channel = event.get("Channel") or chan.channel
        chan.linkedid = event.get("Linkedid") or chan.linkedid
        code = event.get("AccountCode")
        if code:
            chan.accountcode = code
        callerid = _known(event.get("CallerIDNum"))
        if callerid:
            chan.callerid = callerid
        context = event.get("Context")
        if context:
            chan.context = context
        exten = _known(event.get("Exten"))
        if exten and not chan.destination and exten not in {"s", "h"}:
            chan.destination = exten
        state = event.get("ChannelStateDesc")
        if state:
            chan.state = state
            if state == "Up" and chan.answered_at is None:
                chan.answered_at = now

    def _channel_for(self, event: AmiMessage) -> _Channel | None:
        uniqueid = event.get("Uniqueid") or ""
        if not uniqueid:
            return None
        chan = self._channels.get(uniqueid)
        if chan is None:  # we missed its Newchannel (a gap): start tracking it now
            now = self.clock()
            chan = _Channel(uniqueid, event.get("Channel") or "", now, now)
            self._channels[uniqueid] = chan
            self._deleted.discard(uniqueid)
        return chan

    def _on_channel_event(self, name: str, event: AmiMessage) -> None:
        if name == "hangup":
            uniqueid = event.get("Uniqueid") or ""
            chan = self._channels.pop(uniqueid, None)
            if chan is not None:
                self._unbridge(chan)
            self._dirty.discard(uniqueid)
            self._deleted.add(uniqueid)
            self._m_channels.set(len(self._channels))
            return
        chan = self._channel_for(event)
        if chan is None:
            return
        self._update(chan, event)
        if name == "dialbegin":
            chan.application = "Dial"
        elif name == "bridgeenter":
            bridge = event.get("BridgeUniqueid") or ""
            if bridge:
                self._unbridge(chan)
                chan.bridge_id = bridge
                members = self._bridges.setdefault(bridge, set())
                members.add(chan.uniqueid)
                self._link(members)
        elif name == "bridgeleave":
            self._unbridge(chan)
        self._dirty.add(chan.uniqueid)
        self._m_channels.set(len(self._channels))

    def _link(self, members: set[str]) -> None:
        chans = [self._channels[u] for u in sorted(members) if u in self._channels]
        for chan in chans:
            others = [o.channel for o in chans if o is not chan]
            bridged = others[0] if others else ""
            if chan.bridged_to != bridged:
                chan.bridged_to = bridged
                self._dirty.add(chan.uniqueid)

    def _unbridge(self, chan: _Channel) -> None:
        bridge = chan.bridge_id
        if not bridge:
            return
        chan.bridge_id = ""
        chan.bridged_to = ""
        members = self._bridges.get(bridge)
        if members is None:
            return
        members.discard(chan.uniqueid)
        if members:
            self._link(members)
        else:
            del self._bridges[bridge]

    # -- writing --------------------------------------------------------------------------------

    def _unwritten(self) -> bool:
        return bool(self._dirty or self._deleted or self._rewrite_all or self._pending_cdrs)

    async def _flush(self) -> bool:
        """Write what changed; False (and a retry later) when the database failed."""
        if not self._unwritten():
            self._retry_at = None
            return True
        rewrite = self._rewrite_all
        dirty = [self._channels[u].row(self.server) for u in self._dirty if u in self._channels]
        deleted = set(self._deleted)
        everything = [c.row(self.server) for c in self._channels.values()] if rewrite else []
        cdrs = list(self._pending_cdrs)
        try:
            # the process's one writer discipline (SQLite: the writer lock, BEGIN IMMEDIATE):
            # a deferred transaction that reads the fingerprints then inserts could not take
            # the write lock after a settle committed ("database is locked" at once)
            async with write_transaction(self.engine) as conn:
                if rewrite:
                    await replace_channels(conn, self.server, everything)
                else:
                    await write_channels(conn, dirty, deleted)
                stored = await store_cdrs(conn, cdrs)
        except (StoreError, SQLAlchemyError, OSError) as exc:  # connect errors are raw
            self._write_failures += 1
            self._retry_at = asyncio.get_running_loop().time() + self.retry_seconds
            log.warning(
                "AMI %s: cannot write %d channel change(s) and %d CDR(s), retrying in %.1fs: %s",
                self.server,
                len(dirty) + len(deleted) + len(everything),
                len(cdrs),
                self.retry_seconds,
                exc,
            )
            return False
        self._retry_at = None
        if rewrite:
            self._rewrite_all = False
        self._dirty.difference_update(c.uniqueid for c in dirty)
        self._deleted.difference_update(deleted)
        del self._pending_cdrs[: len(cdrs)]
        self._cdrs_stored += stored
        if stored:
            self._m_cdrs.inc(stored)
        return True


def _marker(phase: str, token: str) -> AmiMessage:
    return AmiMessage((("Event", MARKER_EVENT), ("Phase", phase), ("Token", token)))
