"""The reaper loop and the live-call gauges, run by ``callgate serve`` beside the listener.

The SQL is :mod:`callgate.store.reconcile`; this module only schedules it. ``callgate calls reap``
runs one pass by hand. A pass that fails (database down) is logged and retried at the next tick:
nothing is lost, the reservations simply stay open a little longer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

from sqlalchemy.ext.asyncio import AsyncEngine

from callgate import metrics
from callgate.store.errors import StoreError
from callgate.store.reconcile import ReapOutcome, live_counts, reap

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def reap_once(
    engine: AsyncEngine, *, zone: tzinfo, now: datetime | None = None, limit: int = 500
) -> list[ReapOutcome]:
    """One reaper pass; counts its outcomes in the metrics."""
    outcomes = await reap(engine, now=now or _utcnow(), zone=zone, limit=limit)
    for outcome in outcomes:
        metrics.REAPED.labels(result=outcome.result.value).inc()
        if outcome.result.value == "unresolved":
            log.warning(
                "reaper: %s (account id %d) has no Asterisk CDR: marked unresolved; "
                "resolve it with `callgate calls reconcile`",
                outcome.uniqueid,
                outcome.account_id,
            )
    return outcomes


async def run_reaper(
    engine: AsyncEngine,
    *,
    interval_seconds: float,
    zone: tzinfo,
    clock: Callable[[], datetime] = _utcnow,
) -> None:
    """Reap every ``interval_seconds`` until cancelled."""
    while True:
        try:
            async with asyncio.timeout(max(60.0, interval_seconds * 4)):
                await reap_once(engine, zone=zone, now=clock())
        except (StoreError, TimeoutError) as exc:
            log.warning("reaper pass failed, retrying in %.0fs: %s", interval_seconds, exc)
        except Exception:  # a bug must not stop billing reconciliation for good
            log.exception("reaper pass crashed; retrying in %.0fs", interval_seconds)
        await asyncio.sleep(interval_seconds)


async def refresh_live_gauges(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        counts = await live_counts(conn)
    metrics.set_live_calls(counts.by_trunk, counts.open_total, counts.unresolved)


async def run_live_gauges(engine: AsyncEngine, *, interval_seconds: float = 5.0) -> None:
    """Keep the live-calls-per-trunk and open-reservation gauges fresh until cancelled."""
    while True:
        try:
            async with asyncio.timeout(max(10.0, interval_seconds * 4)):
                await refresh_live_gauges(engine)
        except Exception as exc:  # the database is down: the gauges wait for it
            log.debug("live call gauges not refreshed: %s", exc)
        await asyncio.sleep(interval_seconds)
