"""The composition root: build the real parts from the settings and run them together.

``callgate serve`` and ``callgate demo`` both use :class:`Runtime`: a database engine, the rate
cache (every rate table's prefix index in memory), trunks and plan options in memory, the SQL
ledger, the call flows and the FastAGI server. Background tasks (trunk refresh; later the AMI
listener, the reaper and metrics) run beside the server and stop with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine

from callgate import metrics
from callgate.agi.flows.call import MAX_TRUNK_CHAIN, CallFlows, flow_settings
from callgate.agi.flows.did import DidFlow
from callgate.agi.server import AgiServer, asterisk_key, parse_system_names
from callgate.alerts import AlertService, SmtpSender
from callgate.ami.client import AmiClient
from callgate.ami.listener import AmiListener
from callgate.ami.reaper import run_live_gauges, run_reaper
from callgate.config import Settings
from callgate.loopwatch import LoopWatch
from callgate.store.callstore import RoutingData, SqlAccounts, SqlLedger, WholesaleData
from callgate.store.db import create_engine, is_sqlite
from callgate.store.errors import StoreError
from callgate.store.lean_pg import LeanPostgres
from callgate.store.lean_sqlite import LeanSqlite, sqlite_file
from callgate.store.ports import AccountLookup, Ledger
from callgate.store.ratecache import RateCache

log = logging.getLogger(__name__)

ROUTING_REFRESH_SECONDS = 30


class StartupError(Exception):
    """The server cannot start (database, rates, bind): exit code 3."""


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    cache: RateCache
    routing: RoutingData
    flows: CallFlows
    server: AgiServer
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    metrics_server: metrics.MetricsServer | None = None
    ami: AmiClient | None = None
    listener: AmiListener | None = None
    loopwatch: LoopWatch | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        async def runner() -> None:
            await factory()

        self.tasks.append(asyncio.create_task(runner(), name=name))

    async def stop(self, drain_seconds: float) -> None:
        """Drain the FastAGI sessions, stop the background tasks, close everything."""
        try:
            if not self.server.closing:
                await self.server.shutdown(drain_seconds)
        finally:
            for task in self.tasks:
                task.cancel()
            for task in self.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.cache.close()
            for close in self.closers:
                await close()
            await self.engine.dispose()


async def _refresh_routing(routing: RoutingData) -> None:
    while True:
        await asyncio.sleep(ROUTING_REFRESH_SECONDS)
        try:
            await routing.refresh()
        except Exception:
            log.exception("refreshing trunks and plan options failed; keeping the old ones")


def reservation_grace(settings: Settings) -> int:
    """How long past its grant a reservation may stay open before the reaper takes it.

    A live session can still hold it while its Dial attempts ring: up to ``dial_ring_seconds``
    on each trunk of a failover chain. The configured grace comes on top, so the reaper never
    settles a call that is still ringing or talking.
    """
    billing = settings.billing
    return billing.reservation_grace_seconds + billing.dial_ring_seconds * MAX_TRUNK_CHAIN


async def _nothing_to_close() -> None:
    return None


@dataclass(frozen=True)
class CallPath:
    """The account lookup and the ledger of the call flows, and how to close them."""

    accounts: AccountLookup
    ledger: Ledger
    close: Callable[[], Awaitable[None]] = _nothing_to_close


async def open_call_path(
    settings: Settings, engine: AsyncEngine, *, grace_seconds: int, server: str
) -> CallPath:
    """The call path's SQL: ``[database] call_path = "lean"`` (the default) runs it on the
    backend's own driver, ``"core"`` on SQLAlchemy Core. PostgreSQL:
    :class:`~callgate.store.lean_pg.LeanPostgres`, an asyncpg pool of its own on the same
    database; SQLite: :class:`~callgate.store.lean_sqlite.LeanSqlite`, the stdlib sqlite3 on the
    event loop, sharing the engine's writer lock (an in-memory database has no file to share:
    it runs on core). Raises StoreError when the lean connection cannot be opened."""
    if settings.database.call_path == "lean":
        if not is_sqlite(engine):
            lean_pg = await LeanPostgres.connect(
                engine.url, grace_seconds=grace_seconds, server=server
            )
            return CallPath(lean_pg, lean_pg, lean_pg.close)
        if sqlite_file(engine) is not None:
            lean = LeanSqlite.for_engine(engine, grace_seconds=grace_seconds, server=server)
            await engine.dispose()  # the pooled connections reopen without autocheckpoints
            return CallPath(lean, lean, lean.aclose)
        log.warning("database.call_path = lean needs an SQLite file; in memory, using core")
    return CallPath(
        SqlAccounts(engine), SqlLedger(engine, grace_seconds=grace_seconds, server=server)
    )


async def open_runtime(
    settings: Settings, *, engine: AsyncEngine | None = None, monitoring: bool = False
) -> Runtime:
    """Build and start everything; raises :class:`StartupError` when the server cannot start.

    ``monitoring`` (``callgate serve``) adds :func:`start_monitoring`'s tasks."""
    engine = engine or create_engine(settings.database_url)
    cache = RateCache(engine)
    try:
        await cache.start()
    except Exception as exc:
        await engine.dispose()
        raise StartupError(f"cannot load the rates: {exc}") from exc
    routing = RoutingData(engine, cache.plan)
    zone = ZoneInfo(settings.billing.timezone)
    wholesale = WholesaleData(engine, zone=zone, grace_seconds=reservation_grace(settings))
    alerts = AlertService(engine, SmtpSender(settings.smtp), zone=zone)
    try:
        await routing.refresh()
        await wholesale.refresh()
        await alerts.refresh()
        await alerts.warn_if_no_relay()  # e-mails that would wait silently for a relay
    except Exception as exc:
        await cache.close()
        await engine.dispose()
        raise StartupError(f"cannot load the trunks: {exc}") from exc
    policy = flow_settings(settings)
    try:
        system_names = parse_system_names(settings.agi.system_names)
    except ValueError as exc:
        await cache.close()
        await engine.dispose()
        raise StartupError(str(exc)) from exc
    try:
        call_path = await open_call_path(
            settings, engine, grace_seconds=reservation_grace(settings), server=policy.server
        )
    except StoreError as exc:
        await cache.close()
        await engine.dispose()
        raise StartupError(f"cannot open the call path: {exc}") from exc
    flows = CallFlows(
        accounts=call_path.accounts,
        plans=routing,
        ledger=call_path.ledger,
        settings=policy,
        ips=wholesale,
        cli_rules=wholesale,
        packages=wholesale,
        extras=wholesale,
        alerts=alerts,
    )
    agi = settings.agi
    server = AgiServer(
        {"call": flows.call, "card": flows.card, "did": DidFlow(flows, wholesale).did},
        host=agi.host,
        port=agi.port,
        allow=agi.allow,
        system_names=system_names,
        max_sessions=agi.max_sessions,
        header_timeout_ms=agi.header_timeout_ms,
        command_timeout_ms=agi.command_timeout_ms,
    )
    runtime = Runtime(settings, engine, cache, routing, flows, server, closers=[call_path.close])
    try:
        await server.start()
    except OSError as exc:
        await cache.close()
        await call_path.close()
        await engine.dispose()
        raise StartupError(f"cannot listen on {agi.host}:{agi.port}: {exc}") from exc
    runtime.spawn("routing-refresh", lambda: _refresh_routing(routing))
    runtime.spawn("wholesale", lambda: _run_wholesale(wholesale, alerts, settings))
    if monitoring:
        try:
            await start_monitoring(runtime)
        except StartupError:
            await runtime.stop(0)
            raise
    return runtime


def _count_rates(cache: RateCache) -> tuple[int, int]:
    indexes = [cache.index(table_id) for table_id in cache.versions]
    return len(indexes), sum(len(index) for index in indexes if index is not None)


async def _hold(close: Callable[[], Awaitable[None]]) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        await close()


async def _listen(listener: AmiListener, client: AmiClient) -> None:
    try:
        await listener.run()
    finally:
        await client.close()


async def _watching(watch: LoopWatch) -> None:
    watch.start()
    try:
        await asyncio.Event().wait()
    finally:
        watch.stop()


async def start_monitoring(runtime: Runtime) -> None:
    """The metrics endpoint, the loop watch, the reaper, the live gauges and (``[ami] enabled``)
    the AMI listener. Only the metrics bind can fail start-up; AMI reconnects in the background."""
    settings, engine = runtime.settings, runtime.engine
    if settings.agi.loop_stall_ms:
        watch = runtime.loopwatch = LoopWatch(settings.agi.loop_stall_ms)
        runtime.spawn("loop-watch", lambda: _watching(watch))
    metrics.track_rates(lambda: _count_rates(runtime.cache))
    if settings.metrics.enabled:
        http = metrics.MetricsServer(settings.metrics.host, settings.metrics.port)
        try:
            await http.start()
        except OSError as exc:
            where = f"{settings.metrics.host}:{settings.metrics.port}"
            raise StartupError(f"cannot serve metrics on {where}: {exc}") from exc
        runtime.metrics_server = http
        runtime.spawn("metrics-http", lambda: _hold(http.close))
    zone = ZoneInfo(settings.billing.timezone)
    interval = float(settings.billing.reaper_interval_seconds)
    runtime.spawn("reaper", lambda: run_reaper(engine, interval_seconds=interval, zone=zone))
    runtime.spawn("live-gauges", lambda: run_live_gauges(engine))
    if settings.ami.enabled:
        names = parse_system_names(settings.agi.system_names)  # checked at start-up
        listener = AmiListener(
            engine, server="asterisk", asterisk=asterisk_key((settings.ami.host,), names)
        )
        client = AmiClient.from_settings(settings.ami, on_login=listener.on_login)
        listener.attach(client)
        client.start()
        runtime.ami, runtime.listener = client, listener
        runtime.spawn("ami-listener", lambda: _listen(listener, client))


async def _run_wholesale(
    wholesale: WholesaleData, alerts: AlertService, settings: Settings
) -> None:
    """Reload IP entries, caller ID rules and package coverage with the trunks; evaluate every
    account with alerts periodically (payments and other servers' calls); drain on stop."""
    every = max(1, settings.wholesale.alert_check_seconds)
    waited = 0
    try:
        while True:
            await asyncio.sleep(ROUTING_REFRESH_SECONDS)
            waited += ROUTING_REFRESH_SECONDS
            try:
                await wholesale.refresh()
                if waited >= every:
                    waited = 0
                    await alerts.check_all()
            except Exception:
                log.exception("wholesale refresh or alert check failed; keeping the old data")
    finally:
        await alerts.aclose()


def with_agi_port(settings: Settings, host: str, port: int) -> Settings:
    return replace(settings, agi=replace(settings.agi, host=host, port=port))
