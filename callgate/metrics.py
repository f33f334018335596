"""callgate's call metrics and the ``/metrics`` endpoint.

Metrics live in :data:`REGISTRY`, a registry of our own (tests and embedders are not coupled to
prometheus_client's global one). The FastAGI and AMI client metrics (``callgate.agi.metrics``,
``callgate.ami.metrics``) still sit in the global registry; :func:`render` exposes both, plus the
process metrics, as one page.

Labels are bounded: ``status`` is a CALLGATE_STATUS, ``dial_status`` one of :data:`DIAL_STATUSES`
(anything else is ``other``), ``trunk`` a configured trunk name, ``result`` a closed set. Never an
account, a caller ID or a dialled number.

ASR and ACD are exported two ways:

* **counters** (the Prometheus way; Grafana computes over any range)::

      ASR = increase(callgate_calls_answered_total[5m]) / increase(callgate_calls_total[5m])
      ACD = increase(callgate_calls_billsec_total[5m]) / increase(callgate_calls_answered_total[5m])
      CPS = rate(callgate_call_attempts_total[1m])

* **gauges over a sliding window** of the last :data:`WINDOW_SECONDS` (computed at scrape time),
  ``callgate_asr_ratio`` and ``callgate_acd_seconds``, for a quick look without PromQL; and
  ``callgate_cps``, the attempts of the last second.

The HTTP endpoint is a tiny asyncio server (:class:`MetricsServer`): it closes cleanly with the
rest of ``callgate serve`` and every read has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

from callgate.schema.tables import CallStatus

log = logging.getLogger(__name__)

WINDOW_SECONDS = 300.0
REQUEST_TIMEOUT_SECONDS = 5.0
MAX_REQUEST_BYTES = 8192

# Dial statuses Asterisk documents for DIALSTATUS; anything else is "other", an empty one "none".
DIAL_STATUSES = frozenset(
    {
        "ANSWER",
        "BUSY",
        "NOANSWER",
        "CANCEL",
        "CONGESTION",
        "CHANUNAVAIL",
        "DONTCALL",
        "TORTURE",
        "INVALIDARGS",
    }
)
# Every CALLGATE_STATUS has its own label: the one list is the enum, never a copy of it.
CALL_STATUSES = frozenset(status.value for status in CallStatus)

REGISTRY = CollectorRegistry(auto_describe=True)

CALLS = Counter(
    "callgate_calls",
    "Finished calls by CALLGATE_STATUS and DIALSTATUS",
    ["status", "dial_status"],
    registry=REGISTRY,
)
CALLS_ANSWERED = Counter(
    "callgate_calls_answered", "Calls answered by the callee", registry=REGISTRY
)
CALLS_BILLSEC = Counter(
    "callgate_calls_billsec",
    "Billed seconds of answered calls (ACD = increase of this / increase of answered)",
    registry=REGISTRY,
)
CALLS_SHED = Counter(
    "callgate_calls_shed",
    "Calls refused because agi.max_setups calls were in set-up for agi.setup_wait_ms (overload)",
    registry=REGISTRY,
)
CALLS_SETUP_WAITED = Counter(
    "callgate_calls_setup_waited",
    "Calls that waited in line for a set-up slot (agi.max_setups were in set-up) and got one",
    registry=REGISTRY,
)
CALL_ATTEMPTS = Counter(
    "callgate_call_attempts",
    "Calls that reached a call flow (CPS = rate of this)",
    registry=REGISTRY,
)
PDD = Histogram(
    "callgate_pdd_seconds",
    "Post-dial delay: Dial to the first ring (RINGTIME_MS)",
    buckets=(0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0),
    registry=REGISTRY,
)
AGI_LATENCY = Histogram(
    "callgate_agi_latency_seconds",
    "callgate's own latency: the AGI header received to EXEC Dial sent",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
EVENT_LOOP_LAG = Histogram(
    "callgate_event_loop_lag_seconds",
    "How late the event loop ran a callback due every 25 ms: every live call waits this long",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
EVENT_LOOP_STALLS = Counter(
    "callgate_event_loop_stalls",
    "Holds of the event loop of [agi] loop_stall_ms or more (each logged with the loop's stack)",
    registry=REGISTRY,
)
LIVE_CALLS = Gauge(
    "callgate_live_calls",
    "Calls in progress (open reservations) by trunk",
    ["trunk"],
    registry=REGISTRY,
)
OPEN_RESERVATIONS = Gauge("callgate_open_reservations", "Reservations now open", registry=REGISTRY)
UNRESOLVED_RESERVATIONS = Gauge(
    "callgate_unresolved_reservations",
    "Expired reservations without a CDR, waiting for an operator",
    registry=REGISTRY,
)
REAPED = Counter(
    "callgate_reaper_reservations",
    "Expired reservations the reaper closed, by result (settled from the CDR, unresolved)",
    ["result"],
    registry=REGISTRY,
)
LIVE_CHANNELS = Gauge(
    "callgate_ami_live_channels",
    "Asterisk channels now up, as the AMI listener sees them",
    ["server"],
    registry=REGISTRY,
)
CDRS_STORED = Counter(
    "callgate_ami_cdrs_stored",
    "Asterisk Cdr events stored (replays are not counted)",
    ["server"],
    registry=REGISTRY,
)
RATES_INDEXED = Gauge(
    "callgate_rates_indexed", "Rates held in the in-memory prefix indexes", registry=REGISTRY
)
RATE_TABLES_INDEXED = Gauge(
    "callgate_rate_tables_indexed", "Rate tables loaded in memory", registry=REGISTRY
)


class CallWindow:
    """Finished calls and attempts of the recent past, for the windowed gauges.

    ``clock`` is monotonic seconds. Memory is bounded by the call rate times the window.
    """

    def __init__(
        self, window_seconds: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window_seconds
        self.clock = clock
        self._calls: deque[tuple[float, bool, int]] = deque()
        self._attempts: deque[float] = deque()

    def _trim(self, now: float) -> None:
        horizon = now - self.window
        calls = self._calls
        while calls and calls[0][0] < horizon:
            calls.popleft()
        attempts = self._attempts
        while attempts and attempts[0] < now - 1.0:
            attempts.popleft()

    def attempt(self) -> None:
        now = self.clock()
        self._attempts.append(now)
        self._trim(now)

    def finished(self, answered: bool, billsec: int) -> None:
        now = self.clock()
        self._calls.append((now, answered, billsec))
        self._trim(now)

    def asr(self) -> float:
        """Answered / finished over the window (0 when there were none)."""
        self._trim(self.clock())
        if not self._calls:
            return 0.0
        return sum(1 for _, answered, _ in self._calls if answered) / len(self._calls)

    def acd(self) -> float:
        """Mean billed seconds of the answered calls over the window."""
        self._trim(self.clock())
        answered = [billsec for _, ok, billsec in self._calls if ok]
        return sum(answered) / len(answered) if answered else 0.0

    def cps(self) -> int:
        """Attempts during the last second."""
        self._trim(self.clock())
        return len(self._attempts)


WINDOW = CallWindow()
ASR = Gauge(
    "callgate_asr_ratio",
    f"Answer-seizure ratio over the last {int(WINDOW_SECONDS)} s",
    registry=REGISTRY,
)
ACD = Gauge(
    "callgate_acd_seconds",
    f"Average call duration of answered calls over the last {int(WINDOW_SECONDS)} s",
    registry=REGISTRY,
)
CPS = Gauge("callgate_cps", "Call attempts during the last second", registry=REGISTRY)
ASR.set_function(lambda: WINDOW.asr())
ACD.set_function(lambda: WINDOW.acd())
CPS.set_function(lambda: float(WINDOW.cps()))


def dial_status_label(dial_status: str) -> str:
    status = dial_status.strip().upper()
    if not status:
        return "none"
    return status if status in DIAL_STATUSES else "other"


def status_label(status: str) -> str:
    return status if status in CALL_STATUSES else "other"


# -- observations (the call flow calls these) -------------------------------------------------


def observe_setup_wait() -> None:
    """A call waited in line for a set-up slot and got one."""
    CALLS_SETUP_WAITED.inc()


def observe_shed() -> None:
    """A call refused: ``agi.max_setups`` calls were in set-up for ``agi.setup_wait_ms``."""
    CALLS_SHED.inc()
    observe_attempt()
    observe_call("ERROR", "", 0, None)


def observe_attempt() -> None:
    """A call reached a call flow."""
    CALL_ATTEMPTS.inc()
    WINDOW.attempt()


def observe_call(status: str, dial_status: str, billsec: int, pdd_ms: int | None) -> None:
    """A call finished with CALLGATE_STATUS ``status`` (exactly once per call)."""
    CALLS.labels(status=status_label(status), dial_status=dial_status_label(dial_status)).inc()
    answered = dial_status.strip().upper() == "ANSWER"
    if answered:
        CALLS_ANSWERED.inc()
        CALLS_BILLSEC.inc(max(0, billsec))
    if pdd_ms is not None and pdd_ms >= 0:
        PDD.observe(pdd_ms / 1000)
    WINDOW.finished(answered, max(0, billsec))


def observe_agi_latency(seconds: float) -> None:
    """Time from the AGI header to EXEC Dial of a call's first attempt."""
    AGI_LATENCY.observe(max(0.0, seconds))


def set_live_calls(by_trunk: Iterable[tuple[str, int]], open_total: int, unresolved: int) -> None:
    """Replace the live-call gauges (a trunk that has no call any more disappears)."""
    LIVE_CALLS.clear()
    for trunk, count in by_trunk:
        LIVE_CALLS.labels(trunk=trunk or "none").set(count)
    OPEN_RESERVATIONS.set(open_total)
    UNRESOLVED_RESERVATIONS.set(unresolved)


def track_rates(count_rates: Callable[[], tuple[int, int]]) -> None:
    """Compute the rate-index gauges at scrape time: ``count_rates() -> (tables, rates)``."""
    RATE_TABLES_INDEXED.set_function(lambda: float(count_rates()[0]))
    RATES_INDEXED.set_function(lambda: float(count_rates()[1]))


# -- exposition ---------------------------------------------------------------------------------


class _Union:
    """A collector yielding the metrics of several registries."""

    def __init__(self, *registries: CollectorRegistry) -> None:
        self._registries = registries

    def collect(self) -> Iterator[Metric]:
        for registry in self._registries:
            yield from registry.collect()


def exposition_registry() -> CollectorRegistry:
    """Ours plus prometheus_client's global registry (AGI, AMI client and process metrics)."""
    union = CollectorRegistry()
    union.register(_Union(REGISTRY, prometheus_client.REGISTRY))
    return union


def render(registry: CollectorRegistry | None = None) -> bytes:
    """The text exposition format of every callgate metric."""
    return generate_latest(registry or exposition_registry())


class MetricsServer:
    """``GET /metrics`` over plain HTTP/1.x on asyncio; one request per connection."""

    def __init__(self, host: str, port: int, *, registry: CollectorRegistry | None = None) -> None:
        self.host = host
        self._port = port
        self._registry = registry or exposition_registry()
        self._server: asyncio.Server | None = None
        self.requests = 0

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("metrics server not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Bind and listen (raises OSError when the address is taken)."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, limit=MAX_REQUEST_BYTES
        )

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body, ctype = self._respond(head)
            self.requests += 1
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("ascii")
                + body
            )
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            log.debug("metrics: bad or slow request dropped")
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    def _respond(self, head: bytes) -> tuple[str, bytes, str]:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3 or parts[0] not in {"GET", "HEAD"}:
            return "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
        path = parts[1].split("?", 1)[0]
        if path not in {"/metrics", "/"}:
            return "404 Not Found", b"GET /metrics\n", "text/plain"
        body = render(self._registry)
        return "200 OK", b"" if parts[0] == "HEAD" else body, CONTENT_TYPE_LATEST
