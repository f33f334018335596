"""Prometheus metrics of the FastAGI server.

Labels are bounded: ``outcome`` is one of :class:`ConnectionOutcome` or :class:`SessionOutcome`.
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import Counter, Gauge


class ConnectionOutcome(StrEnum):
    ACCEPTED = "accepted"
    NOT_ALLOWED = "not_allowed"  # peer address outside the allowlist
    OVER_LIMIT = "over_limit"  # max_sessions reached: closed at once, never queued
    SHUTTING_DOWN = "shutting_down"


class SessionOutcome(StrEnum):
    OK = "ok"  # the handler returned
    NO_HEADER = "no_header"  # closed before or during the header, or a malformed header
    HEADER_TIMEOUT = "header_timeout"
    UNKNOWN_SCRIPT = "unknown_script"
    HANGUP = "hangup"  # the handler ended on AgiHangup
    AGI_ERROR = "agi_error"  # the handler ended on another AgiError (timeout, protocol, 5xx)
    CRASHED = "crashed"  # the handler raised something else (a bug)
    CANCELLED = "cancelled"  # cancelled, e.g. at the end of a shutdown drain


AGI_CONNECTIONS = Counter(
    "callgate_agi_connections_total", "FastAGI connections by admission outcome", ["outcome"]
)
AGI_SESSIONS = Counter(
    "callgate_agi_sessions_total", "Finished FastAGI sessions by outcome", ["outcome"]
)
AGI_ACTIVE_SESSIONS = Gauge("callgate_agi_active_sessions", "FastAGI sessions now live")
AGI_COMMAND_TIMEOUTS = Counter(
    "callgate_agi_command_timeouts_total",
    "AGI commands that exceeded their deadline (the session is then closed)",
)
