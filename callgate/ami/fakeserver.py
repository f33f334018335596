"""A real asyncio AMI server for tests: :class:`FakeAmiServer`.

It listens on 127.0.0.1 (port 0 by default), greets with the banner of Asterisk 22.10.1, accepts a
plain or MD5 (``Challenge``) Login for one configured user and answers with the responses recorded
from that Asterisk (``tests/data/transcripts/ami-session.raw``; the tables below are copied from
it byte for byte, and ``tests/ami/test_ami_fakeserver.py`` proves it). It is for the tests of any
package: the AMI client, the listener, the confgen reload.

What a test controls:

* ``push(...)``: send raw event bytes (recorded ones: :func:`recorded_messages`) to the logged-in
  connections, cut at chosen byte offsets, several messages per write, with pauses.
* ``drop(partial=...)``: send the first bytes of an event, then close every connection.
* ``answer_pings = False``: a dead peer (the socket stays open, Pings go unanswered).
* ``channels``: what ``CoreShowChannels`` lists (:class:`FakeChannel`, from recorded events).
* ``interleave``: raw events written before each response or list item (events interleaved with
  responses, as Asterisk does).
* ``handlers[action_name_lower]``: a coroutine that answers an action instead of the defaults.
* ``actions``: every action received, with its secrets as sent (so a test can assert they were
  not *logged*); its repr masks ``Secret`` and ``Key``.

Answers that were not recorded are marked "not recorded" below; they follow Asterisk's
``manager.c`` / ``cli.c`` formats.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType

from callgate.ami.codec import AmiMessage, AmiParser, encode_message
from callgate.ami.errors import AmiProtocolError

log = logging.getLogger(__name__)

BANNER = b"Asterisk Call Manager/11.0.0\r\n"

# Recorded: `Action: Command` of Asterisk 22.10.1, by CLI command -> (Response, Output lines).
# GENERATED from tests/data/transcripts/ami-session.raw.
RECORDED_COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "core show version": (
        "Success",
        (
            (
                "Asterisk 22.10.1 built by root @ vm on a x86_64 running Linu"
                "x on 2026-11-21 22:32:46 UTC"
            ),
        ),
    ),
    "module show like res_agi": (
        "Success",
        (
            (
                "Module                         Description                  "
                "            Use Count  Status      Support Level"
            ),
            (
                "res_agi.so                     Asterisk Gateway Interface (A"
                "GI)         3          Running              core"
            ),
            "1 modules loaded",
        ),
    ),
    "core show uptime": (
        "Success",
        (
            "System uptime: 4 minutes, 59 seconds",
            "Last reload: 2 minutes, 30 seconds",
        ),
    ),
    "module reload res_agi.so": (
        "Success",
        ("The module 'res_agi.so' does not support reloads",),
    ),
    "module reload chan_iax2.so": (
        "Success",
        ("Module 'chan_iax2.so' reloaded successfully.",),
    ),
    "iax2 reload": (
        "Success",
        ("",),
    ),
    "module reload res_pjsip.so": (
        "Success",
        ("Module 'res_pjsip.so' reloaded successfully.",),
    ),
    "pjsip reload": (
        "Error",
        (
            (
                "No such command 'pjsip reload' (type 'core show help pjsip r"
                "eload' for other possible commands)"
            ),
        ),
    ),
    "pjsip show transports": (
        "Success",
        (
            "",
            (
                "Transport:  <TransportId........>  <Type>  <cos>  <tos>  <Bi"
                "ndAddress....................>"
            ),
            (
                "============================================================"
                "=============================="
            ),
            "",
            "Transport:  transport-udp             udp      0      0  127.0.0.1:5060",
            "",
            "Objects found: 1",
            "",
        ),
    ),
    "pjsip show endpoints": (
        "Success",
        (
            "",
            (
                " Endpoint:  <Endpoint/CID..................................."
                "..>  <State.....>  <Channels.>"
            ),
            (
                "    I/OAuth:  <AuthId/UserName.............................."
                ".............................>"
            ),
            "        Aor:  <Aor............................................>  <MaxContact>",
            (
                "      Contact:  <Aor/ContactUri..........................> <"
                "Hash....> <Status> <RTT(ms)..>"
            ),
            (
                "  Transport:  <TransportId........>  <Type>  <cos>  <tos>  <"
                "BindAddress..................>"
            ),
            (
                "   Identify:  <Identify/Endpoint............................"
                ".............................>"
            ),
            "        Match:  <criteria.........................>",
            (
                "    Channel:  <ChannelId...................................."
                "..>  <State.....>  <Time.....>"
            ),
            "        Exten: <DialedExten...........>  CLCID: <ConnectedLineCID.......>",
            (
                "============================================================"
                "=============================="
            ),
            "",
            (
                " Endpoint:  customer                                        "
                "     Not in use    0 of inf"
            ),
            "        Aor:  customer                                           1",
            (
                "      Contact:  customer/sip:customer@127.0.0.1:5070       5"
                "8658ab2c1 NonQual         nan"
            ),
            "  Transport:  transport-udp             udp      0      0  127.0.0.1:5060",
            "   Identify:  customer/customer",
            "        Match: 127.0.0.1/32",
            "",
            "",
            "Objects found: 1",
            "",
        ),
    ),
    "sip reload": (
        "Error",
        (
            (
                "No such command 'sip reload' (type 'core show help sip reloa"
                "d' for other possible commands)"
            ),
        ),
    ),
    "no such cli command": (
        "Error",
        (
            (
                "No such command 'no such cli command' (type 'core show help "
                "no such' for other possible commands)"
            ),
        ),
    ),
}

# Recorded events sent right after a successful Login with `Events: on`.
FULLY_BOOTED = AmiMessage(
    (
        ("Event", "FullyBooted"),
        ("Privilege", "system,all"),
        ("Uptime", "194"),
        ("LastReload", "44"),
        ("Status", "Fully Booted"),
    )
)

# Recorded `Action: CoreSettings` answer (after Response and ActionID).
CORE_SETTINGS: tuple[tuple[str, str], ...] = (
    ("AMIversion", "11.0.0"),
    ("AsteriskVersion", "22.10.1"),
    ("SystemName", ""),
    ("CoreMaxCalls", "500"),
    ("CoreMaxLoadAvg", "0.000000"),
    ("CoreRunUser", ""),
    ("CoreRunGroup", ""),
    ("CoreMaxFilehandles", "0"),
    ("CoreRealTimeEnabled", "No"),
    ("CoreCDRenabled", "Yes"),
    ("CoreHTTPenabled", "No"),
    ("SoundsSearchCustomDir", "No"),
)

# The channel snapshot fields of call events, in Asterisk's order (manager_channels.c).
SNAPSHOT_KEYS = (
    "Channel",
    "ChannelState",
    "ChannelStateDesc",
    "CallerIDNum",
    "CallerIDName",
    "ConnectedLineNum",
    "ConnectedLineName",
    "Language",
    "AccountCode",
    "Context",
    "Exten",
    "Priority",
    "Uniqueid",
    "Linkedid",
)

DEFAULT_MODULES = frozenset(
    {"res_pjsip.so", "cdr_manager.so", "chan_iax2.so", "res_agi.so", "chan_pjsip.so"}
)
NO_RELOAD_MODULES = frozenset({"res_agi.so"})  # recorded: "does not support reloads"

Handler = Callable[["FakeAmiConnection", AmiMessage], Awaitable[None]]


# -- the recorded session file ----------------------------------------------------------------


class Direction(StrEnum):
    RECV = "recv"  # bytes Asterisk sent
    SEND = "send"  # bytes the client sent


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    """One framed chunk of ``ami-session.raw``."""

    direction: Direction
    unix_ms: int
    declared_length: int  # the `<n> bytes` of the frame header
    data: bytes


_FRAME_HEADER = re.compile(rb"### (recv|send) (\d+)\.(\d+) (\d+) bytes\n")
_NEXT_HEADER = re.compile(rb"\n### (?:recv|send) \d+\.\d+ \d+ bytes\n")


def parse_session(data: bytes) -> list[RecordedFrame]:
    """Frames of ``### recv|send <unix-time> <n> bytes\\n<bytes>\\n``.

    The declared length is trusted when the next frame header (or the end) follows it; otherwise
    the body runs to the next header. (Four frames of the recording declare 26 bytes more than
    they hold; ``declared_length`` keeps what was declared.)
    """
    frames: list[RecordedFrame] = []
    pos = 0
    while pos < len(data):
        m = _FRAME_HEADER.match(data, pos)
        if m is None:
            raise ValueError(f"no frame header at byte {pos}: {data[pos : pos + 40]!r}")
        start = m.end()
        declared = int(m[4])
        end = start + declared
        if data[end : end + 1] == b"\n" and (
            end + 1 == len(data) or _FRAME_HEADER.match(data, end + 1)
        ):
            body, pos = data[start:end], end + 1
        else:
            nxt = _NEXT_HEADER.search(data, start - 1 if start else 0)
            while nxt is not None and nxt.start() < start - 1:
                nxt = _NEXT_HEADER.search(data, nxt.end())
            if nxt is None:
                body, pos = data[start:].removesuffix(b"\n"), len(data)
            else:
                body, pos = data[start : nxt.start()], nxt.start() + 1
        frac = m[3].decode().ljust(3, "0")[:3]
        frames.append(
            RecordedFrame(Direction(m[1].decode()), int(m[2]) * 1000 + int(frac), declared, body)
        )
    return frames


def load_session(path: str | Path) -> list[RecordedFrame]:
    return parse_session(Path(path).read_bytes())


def recorded_stream(frames: Iterable[RecordedFrame], direction: Direction) -> bytes:
    """All the bytes of one direction, concatenated (what the socket carried)."""
    return b"".join(f.data for f in frames if f.direction is direction)


_MESSAGE = re.compile(rb".*?\r\n\r\n", re.DOTALL)


def recorded_messages(
    frames: Iterable[RecordedFrame], direction: Direction = Direction.RECV
) -> list[bytes]:
    """The exact bytes of each message of one direction (the banner left out)."""
    stream = recorded_stream(frames, direction)
    if stream.startswith(b"Asterisk Call Manager/"):
        stream = stream[stream.index(b"\r\n") + 2 :]
    return [m[0] for m in _MESSAGE.finditer(stream)]


def split_at(data: bytes, offsets: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given byte offsets (out-of-range and duplicate offsets ignored)."""
    cuts = sorted({o for o in offsets if 0 < o < len(data)})
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# -- channels for CoreShowChannels ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FakeChannel:
    """A live channel as ``CoreShowChannels`` reports it."""

    snapshot: tuple[tuple[str, str], ...]  # SNAPSHOT_KEYS pairs
    application: str = "Dial"
    application_data: str = ""
    duration: str = "00:00:01"
    bridge_id: str = ""

    @classmethod
    def from_event(
        cls,
        event: AmiMessage,
        *,
        application: str = "Dial",
        application_data: str = "",
        duration: str = "00:00:01",
        bridge_id: str = "",
    ) -> FakeChannel:
        """From a recorded channel event (Newchannel, Newstate...): its snapshot fields."""
        snapshot = tuple((k, event.get(k) or "") for k in SNAPSHOT_KEYS)
        return cls(snapshot, application, application_data, duration, bridge_id)

    def event(self, action_id: str | None) -> AmiMessage:
        """The ``CoreShowChannel`` event (manager_channels.c, action_coreshowchannels)."""
        headers: list[tuple[str, str]] = [("Event", "CoreShowChannel")]
        if action_id is not None:
            headers.append(("ActionID", action_id))
        headers.extend(self.snapshot)
        headers += [
            ("BridgeId", self.bridge_id),
            ("Application", self.application),
            ("ApplicationData", self.application_data),
            ("Duration", self.duration),
        ]
        return AmiMessage(tuple(headers))


# -- the server -------------------------------------------------------------------------------


class FakeAmiConnection:
    """One client connection of the fake server."""

    def __init__(
        self, server: FakeAmiServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.actions: list[AmiMessage] = []
        self.authenticated = False
        self.events = False
        self.challenge: str | None = None
        self.closing = False

    async def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(data)
        with contextlib.suppress(OSError):
            await self.writer.drain()

    async def respond(self, action: AmiMessage, *headers: tuple[str, str], status: str) -> None:
        """``Response: <status>``, the action's ActionID, then ``headers`` (interleave first)."""
        await self.send_interleaved()
        pairs: list[tuple[str, str]] = [("Response", status)]
        if action.action_id is not None:
            pairs.append(("ActionID", action.action_id))
        pairs.extend(headers)
        await self.send(encode_message(pairs))

    async def send_interleaved(self) -> None:
        if self.server.interleave:
            await self.send(self.server.interleave.pop(0))

    def close(self) -> None:
        self.closing = True
        self.writer.close()


class FakeAmiServer:
    """A real TCP AMI server on 127.0.0.1 for tests. ``async with FakeAmiServer() as server``."""

    def __init__(
        self,
        *,
        username: str = "callgate",
        secret: str = "callgate-secret",
        host: str = "127.0.0.1",
        port: int = 0,
        banner: bytes = BANNER,
        modules: Iterable[str] = DEFAULT_MODULES,
        send_fully_booted: bool = True,
    ) -> None:
        self.username = username
        self.secret = secret
        self.host = host
        self._port = port
        self.banner = banner
        self.modules = set(modules)
        self.send_fully_booted = send_fully_booted
        self.answer_pings = True
        self.channels: list[FakeChannel] = []
        self.interleave: list[bytes] = []
        self.handlers: dict[str, Handler] = {}
        self.actions: list[AmiMessage] = []
        self.connections: list[FakeAmiConnection] = []
        self.accepted = 0
        self.logins = 0
        self.failed_logins = 0
        self._server: asyncio.Server | None = None
        self._rng = random.Random(5038)
        self._changed = asyncio.Event()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeAmiServer not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self._port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.writer.transport.abort()
        await self.wait_for(lambda: not self.connections, within=5.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeAmiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- test controls ---------------------------------------------------------------------

    def live(self) -> list[FakeAmiConnection]:
        """Connections logged in with events on."""
        return [c for c in self.connections if c.authenticated and c.events and not c.closing]

    async def push(
        self,
        data: bytes | Iterable[bytes],
        *,
        cut_at: Iterable[int] = (),
        pause: float = 0.0,
    ) -> None:
        """Write ``data`` (one or several messages) to every live connection, one write per
        piece cut at the byte offsets ``cut_at``, sleeping ``pause`` seconds between pieces."""
        payload = data if isinstance(data, bytes) else b"".join(data)
        pieces = split_at(payload, cut_at)
        for conn in self.live():
            for i, piece in enumerate(pieces):
                if i and pause:
                    await asyncio.sleep(pause)
                await conn.send(piece)

    async def push_events(self, events: Iterable[AmiMessage]) -> None:
        await self.push(b"".join(e.to_bytes() for e in events))

    async def drop(self, partial: bytes = b"") -> None:
        """Send ``partial`` (the head of an event), then close every connection."""
        for conn in list(self.connections):
            if partial:
                await conn.send(partial)
            conn.close()
        await self.wait_for(lambda: not self.connections, within=5.0)

    def _notify(self) -> None:
        """Wake the ``wait_*`` helpers: something they may wait for changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], *, within: float = 5.0) -> None:
        """Wait until ``predicate()`` is true; TimeoutError after ``within`` seconds."""
        async with asyncio.timeout(within):
            while not predicate():
                await self._changed.wait()

    async def wait_logins(self, count: int, *, within: float = 5.0) -> None:
        await self.wait_for(lambda: self.logins >= count, within=within)

    async def wait_action(self, name: str, count: int = 1, *, within: float = 5.0) -> AmiMessage:
        """The ``count``-th action named ``name`` received, once it arrived."""

        def found() -> list[AmiMessage]:
            return [a for a in self.actions if (a.name or "").lower() == name.lower()]

        await self.wait_for(lambda: len(found()) >= count, within=within)
        return found()[count - 1]

    # -- protocol --------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = FakeAmiConnection(self, reader, writer)
        self.connections.append(conn)
        self.accepted += 1
        self._notify()
        parser = AmiParser(expect_banner=False)
        try:
            await conn.send(self.banner)
            while not conn.closing:
                data = await reader.read(65536)
                if not data:
                    break
                for action in parser.feed(data):
                    self.actions.append(action)
                    conn.actions.append(action)
                    self._notify()
                    log.debug("fake AMI <- %r", action)  # the repr masks Secret and Key
                    await self._answer(conn, action)
                    if conn.closing:
                        break
        except (OSError, AmiProtocolError) as exc:
            log.debug("fake AMI connection ended: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self.connections.remove(conn)
            self._notify()

    async def _answer(self, conn: FakeAmiConnection, action: AmiMessage) -> None:
        name = (action.get("Action") or "").lower()
        handler = self.handlers.get(name)
        if handler is not None:
            await handler(conn, action)
            return
        if name == "challenge":
            await self._challenge(conn, action)
        elif name == "login":
            await self._login(conn, action)
        elif name == "logoff":
            await conn.respond(action, ("Message", "Thanks for all the fish."), status="Goodbye")
            conn.close()
        elif not conn.authenticated:
            # not recorded: manager.c answers "Permission denied" before Login
            await conn.respond(action, ("Message", "Permission denied"), status="Error")
        elif name == "ping":
            if self.answer_pings:
                stamp = f"{time.time():.6f}"
                await conn.respond(action, ("Ping", "Pong"), ("Timestamp", stamp), status="Success")
        elif name == "command":
            await self._command(conn, action)
        elif name == "reload":
            await self._reload(conn, action)
        elif name == "coreshowchannels":
            await self._core_show_channels(conn, action)
        elif name == "coresettings":
            await conn.respond(action, *CORE_SETTINGS, status="Success")
        elif name == "setvar":
            await conn.respond(action, ("Message", "Variable Set"), status="Success")
        elif name == "originate":
            msg = "Originate successfully queued"
            await conn.respond(action, ("Message", msg), status="Success")
        else:
            # not recorded: manager.c's answer to an unknown action
            await conn.respond(action, ("Message", "Invalid/unknown command"), status="Error")

    async def _challenge(self, conn: FakeAmiConnection, action: AmiMessage) -> None:
        if (action.get("AuthType") or "").lower() != "md5":
            await conn.respond(action, ("Message", "Must specify AuthType"), status="Error")
            return
        conn.challenge = str(self._rng.randrange(100_000_000, 999_999_999))
        await conn.respond(action, ("Challenge", conn.challenge), status="Success")

    async def _login(self, conn: FakeAmiConnection, action: AmiMessage) -> None:
        user_ok = action.get("Username") == self.username
        if (action.get("AuthType") or "").lower() == "md5":
            expected = None
            if conn.challenge is not None:
                expected = hashlib.md5((conn.challenge + self.secret).encode()).hexdigest()
            ok = user_ok and expected is not None and action.get("Key") == expected
        else:
            ok = user_ok and action.get("Secret") == self.secret
        if not ok:
            self.failed_logins += 1
            await conn.respond(action, ("Message", "Authentication failed"), status="Error")
            conn.close()  # Asterisk ends the session after a failed login
            return
        conn.authenticated = True
        conn.events = (action.get("Events") or "on").lower() != "off"
        self.logins += 1
        self._notify()
        await conn.respond(action, ("Message", "Authentication accepted"), status="Success")
        if conn.events and self.send_fully_booted:
            await conn.send(FULLY_BOOTED.to_bytes())

    async def _command(self, conn: FakeAmiConnection, action: AmiMessage) -> None:
        cli = " ".join((action.get("Command") or "").split())
        status, output = self._cli(cli)
        await conn.respond(
            action,
            ("Message", "Command output follows"),
            *(("Output", line) for line in output),
            status=status,
        )

    def _cli(self, cli: str) -> tuple[str, Sequence[str]]:
        recorded = RECORDED_COMMANDS.get(cli)
        if recorded is not None:
            return recorded
        words = cli.split()
        if len(words) == 3 and words[:2] == ["module", "reload"]:
            module = words[2]
            # not recorded beyond res_pjsip/chan_iax2/res_agi: cli.c's handle_reload texts
            if module not in self.modules:
                return "Success", (f"No such module '{module}'",)
            if module in NO_RELOAD_MODULES:
                return "Success", (f"The module '{module}' does not support reloads",)
            return "Success", (f"Module '{module}' reloaded successfully.",)
        best = " ".join(words[:2])
        return "Error", (
            f"No such command '{cli}' (type 'core show help {best}' for other possible commands)",
        )

    async def _reload(self, conn: FakeAmiConnection, action: AmiMessage) -> None:
        module = action.get("Module")
        if module is None or module in self.modules:
            await conn.respond(action, ("Message", "Module Reloaded"), status="Success")
        else:
            await conn.respond(action, ("Message", "No such module"), status="Error")

    async def _core_show_channels(self, conn: FakeAmiConnection, action: AmiMessage) -> None:
        # not recorded (no channel was up when recording): manager_channels.c's list format
        await conn.respond(
            action,
            ("EventList", "start"),
            ("Message", "Channels will follow"),
            status="Success",
        )
        for channel in list(self.channels):
            await conn.send_interleaved()
            await conn.send(channel.event(action.action_id).to_bytes())
        await conn.send_interleaved()
        complete: list[tuple[str, str]] = [("Event", "CoreShowChannelsComplete")]
        if action.action_id is not None:
            complete.append(("ActionID", action.action_id))
        complete += [("EventList", "Complete"), ("ListItems", str(len(self.channels)))]
        await conn.send(encode_message(complete))
