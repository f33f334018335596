"""The FastAGI server: listen, filter peers, cap sessions, route by script, drain on shutdown.

One task per connection, tracked by the server. Whatever happens in a session (bad header,
timeout, handler exception, cancellation) the socket is closed in a ``finally``: Asterisk never
closes it and a lingering session keeps the channel alive (DESIGN.md §5).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final

from callgate.agi.errors import AgiError, AgiHangup, AgiProtocolError, AgiTimeout
from callgate.agi.metrics import (
    AGI_ACTIVE_SESSIONS,
    AGI_CONNECTIONS,
    AGI_SESSIONS,
    ConnectionOutcome,
    SessionOutcome,
)
from callgate.agi.session import (
    DEFAULT_COMMAND_TIMEOUT_MS,
    DEFAULT_HEADER_TIMEOUT_MS,
    MAX_HEADER_LINES,
    MAX_LINE_BYTES,
    AgiSession,
    close_writer,
    current_uniqueid,
)

__all__ = ["AgiServer", "Handler", "install_signal_handlers"]

log = logging.getLogger(__name__)

Handler = Callable[[AgiSession], Awaitable[None]]
_IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_CANCEL_WAIT_S: Final = 5.0


def _parse_allow(allow: Sequence[str]) -> tuple[_IpNetwork, ...]:
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in allow)


@functools.lru_cache(maxsize=4096)  # every call parses its Asterisk's address: a few boxes
def _ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address (``::ffff:10.0.0.5`` is ``10.0.0.5``, no zone id); None if it is none."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def _normal_address(text: str) -> str:
    """An address as the key of a call: ``::ffff:10.0.0.5`` is ``10.0.0.5``, no zone id."""
    address = _ip_of(text)
    return text if address is None else str(address)


def parse_system_names(items: Sequence[str]) -> dict[str, str]:
    """``["10.0.0.5=ast-a", ...]`` as {address: name}; raises ValueError on a bad entry."""
    names: dict[str, str] = {}
    for item in items:
        address, sep, name = item.partition("=")
        address, name = address.strip(), name.strip()
        if not sep or not address or not name:
            raise ValueError(f"agi.system_names entry {item!r}: expected address=name")
        try:
            ipaddress.ip_address(address)
        except ValueError as exc:
            raise ValueError(
                f"agi.system_names entry {item!r}: {address!r} is not an IP address"
            ) from exc
        if len(name) > 64:
            raise ValueError(f"agi.system_names entry {item!r}: the name is over 64 characters")
        names[_normal_address(address)] = name
    return names


def asterisk_key(peer: object, names: Mapping[str, str]) -> str:
    """Which Asterisk a FastAGI peer is: its configured system name, else its address."""
    if not isinstance(peer, tuple) or not peer:
        return ""
    address = _normal_address(str(peer[0]))
    return names.get(address, address)


class AgiServer:
    """FastAGI server.

    ``routes`` maps a script (``agi://host:port/<script>?query``, without the query) to its
    handler. ``allow`` lists IP addresses / CIDRs allowed to connect (empty: anyone).
    Connections beyond ``max_sessions`` are closed at once (Asterisk's AGI() then returns
    FAILURE and the dialplan fails closed) rather than queued.
    """

    def __init__(
        self,
        routes: Mapping[str, Handler],
        *,
        host: str = "127.0.0.1",
        port: int = 4573,
        allow: Sequence[str] = (),
        system_names: Mapping[str, str] | None = None,
        max_sessions: int = 1000,
        header_timeout_ms: int = DEFAULT_HEADER_TIMEOUT_MS,
        command_timeout_ms: int = DEFAULT_COMMAND_TIMEOUT_MS,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_header_lines: int = MAX_HEADER_LINES,
        backlog: int = 1024,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        self._routes = dict(routes)
        self._host = host
        self._port = port
        self._allow = _parse_allow(allow)
        self._system_names = dict(system_names or {})
        self._max_sessions = max_sessions
        self._header_timeout_ms = header_timeout_ms
        self._command_timeout_ms = command_timeout_ms
        self._max_line_bytes = max_line_bytes
        self._max_header_lines = max_header_lines
        self._backlog = backlog
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None
        self.rejected_connections = 0
        self.connections_handled = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind and start accepting. ``port=0`` picks a free port (see `port`)."""
        if self._server is not None:
            raise RuntimeError("AgiServer already started")
        self._server = await asyncio.start_server(
            self._on_connect,
            self._host,
            self._port,
            limit=self._max_line_bytes,
            backlog=self._backlog,
        )
        log.info("FastAGI listening on %s", ", ".join(self._addresses()))

    def _addresses(self) -> list[str]:
        return [f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in self.sockets]

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        if self._server is None:
            return ()
        return tuple(self._server.sockets)

    @property
    def port(self) -> int:
        """The bound port (the real one when started with ``port=0``)."""
        sockets = self.sockets
        if not sockets:
            raise RuntimeError("AgiServer is not listening")
        port: int = sockets[0].getsockname()[1]
        return port

    @property
    def active_sessions(self) -> int:
        return sum(1 for task in self._tasks if not task.done())

    @property
    def closing(self) -> bool:
        return self._closing

    async def shutdown(self, drain_seconds: float) -> None:
        """Stop accepting, let live sessions finish for up to ``drain_seconds``, then cancel the
        rest and wait (bounded) for their ``finally`` blocks, which close their sockets. If the
        caller is cancelled meanwhile, the sessions are cancelled too and the cancellation
        propagates."""
        self._closing = True
        try:
            if self._server is not None:
                self._server.close()
            live = {task for task in self._tasks if not task.done()}
            if live:
                log.info("draining %d FastAGI sessions for up to %s s", len(live), drain_seconds)
                await asyncio.wait(live, timeout=drain_seconds)
        finally:
            remaining = [task for task in self._tasks if not task.done()]
            if remaining:
                log.warning("cancelling %d FastAGI sessions still live", len(remaining))
                for task in remaining:
                    task.cancel()
                await asyncio.wait(remaining, timeout=_CANCEL_WAIT_S)
            if self._server is not None:
                await self._server.wait_closed()
            self._stopped.set()
            log.info("FastAGI server stopped")

    @property
    def shutdown_requested(self) -> bool:
        return self._closing or self._shutdown_task is not None

    def cancel_sessions(self) -> int:
        """Cancel every live session now (their sockets close in their ``finally``)."""
        live = [task for task in self._tasks if not task.done()]
        for task in live:
            task.cancel()
        return len(live)

    async def wait_idle(self) -> None:
        """Wait until no session is live (new ones may start right after)."""
        while live := [task for task in self._tasks if not task.done()]:
            await asyncio.wait(live)

    async def wait_stopped(self) -> None:
        """Wait until `shutdown` completed (for a composition root that installed signals)."""
        await self._stopped.wait()

    def request_shutdown(self, drain_seconds: float) -> asyncio.Task[None]:
        """Start `shutdown` in a task (idempotent; used by the signal handlers)."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(
                self.shutdown(drain_seconds), name="agi-shutdown"
            )
        return self._shutdown_task

    async def __aenter__(self) -> AgiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown(0)

    # ------------------------------------------------------------------ connections

    def _allowed(self, peer: object) -> bool:
        if not self._allow:
            return True
        if not isinstance(peer, tuple) or not peer:
            return False
        address = _ip_of(str(peer[0]))
        return address is not None and any(address in network for network in self._allow)

    def _refuse(self, writer: asyncio.StreamWriter, outcome: ConnectionOutcome) -> None:
        self.rejected_connections += 1
        AGI_CONNECTIONS.labels(outcome.value).inc()
        writer.close()

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not self._allowed(peer):
            log.warning("FastAGI connection from %s refused: not in the allowlist", peer)
            self._refuse(writer, ConnectionOutcome.NOT_ALLOWED)
            return
        if self._closing:
            log.warning("FastAGI connection from %s refused: shutting down", peer)
            self._refuse(writer, ConnectionOutcome.SHUTTING_DOWN)
            return
        if len(self._tasks) >= self._max_sessions:
            log.warning(
                "FastAGI connection from %s refused: %d sessions live (max_sessions)",
                peer,
                self._max_sessions,
            )
            self._refuse(writer, ConnectionOutcome.OVER_LIMIT)
            return
        AGI_CONNECTIONS.labels(ConnectionOutcome.ACCEPTED.value).inc()
        task = asyncio.get_running_loop().create_task(
            self._serve(reader, writer, peer), name=f"agi-session-{peer}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object
    ) -> None:
        session: AgiSession | None = None
        outcome = SessionOutcome.CANCELLED
        AGI_ACTIVE_SESSIONS.inc()
        try:
            try:
                session = await AgiSession.open(
                    reader,
                    writer,
                    header_timeout_ms=self._header_timeout_ms,
                    command_timeout_ms=self._command_timeout_ms,
                    max_header_lines=self._max_header_lines,
                )
            except AgiTimeout as exc:
                outcome = SessionOutcome.HEADER_TIMEOUT
                log.warning("FastAGI header from %s: %s", peer, exc)
                return
            except AgiProtocolError as exc:
                # A zero-byte connect (health check, port scan) lands here too.
                outcome = SessionOutcome.NO_HEADER
                log.info("FastAGI header from %s: %s", peer, exc)
                return
            session.asterisk = asterisk_key(peer, self._system_names)
            current_uniqueid.set(session.env.uniqueid)
            outcome = await self._dispatch(session)
        finally:
            if session is not None:
                await session.close()
            else:
                await close_writer(writer)
            self.connections_handled += 1
            AGI_ACTIVE_SESSIONS.dec()
            AGI_SESSIONS.labels(outcome.value).inc()

    async def _dispatch(self, session: AgiSession) -> SessionOutcome:
        env = session.env
        handler = self._routes.get(env.script)
        if handler is None:
            log.warning(
                "FastAGI unknown script %r (uniqueid %s, channel %s)",
                env.script,
                env.uniqueid,
                env.channel,
            )
            try:
                await session.verbose(f"callgate: unknown script {env.script}", 1)
            except AgiError as exc:
                log.info("VERBOSE for unknown script failed: %s", exc)
            return SessionOutcome.UNKNOWN_SCRIPT
        try:
            await handler(session)
        except AgiHangup as exc:
            log.info("FastAGI %s uniqueid %s: caller hung up: %s", env.script, env.uniqueid, exc)
            return SessionOutcome.HANGUP
        except AgiError as exc:
            log.warning("FastAGI %s uniqueid %s failed: %r", env.script, env.uniqueid, exc)
            return SessionOutcome.AGI_ERROR
        except Exception:
            log.exception("FastAGI handler %s crashed (uniqueid %s)", env.script, env.uniqueid)
            return SessionOutcome.CRASHED
        return SessionOutcome.OK


def install_signal_handlers(
    loop: asyncio.AbstractEventLoop, server: AgiServer, drain_seconds: float
) -> Callable[[], None]:
    """On SIGTERM/SIGINT start a graceful `AgiServer.shutdown` (a second signal cancels the
    live sessions at once). Returns a function that removes the handlers."""
    signals = (signal.SIGTERM, signal.SIGINT)

    def on_signal(signum: signal.Signals) -> None:
        if server.shutdown_requested:
            log.warning("%s again: cancelling live sessions now", signum.name)
            server.cancel_sessions()
            return
        log.info("%s: draining FastAGI sessions (up to %s s)", signum.name, drain_seconds)
        server.request_shutdown(drain_seconds)

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)

    def remove() -> None:
        for signum in signals:
            loop.remove_signal_handler(signum)

    return remove
