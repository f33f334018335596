"""Prometheus metrics of the AMI client.

Labels are bounded: ``server`` is the configured name of an Asterisk server (one per AMI
connection in the settings), ``outcome`` is one of :class:`ConnectOutcome`.
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import Counter, Gauge


class ConnectOutcome(StrEnum):
    OK = "ok"
    REFUSED = "refused"  # TCP connect failed or the socket broke during login
    TIMEOUT = "timeout"
    AUTH_FAILED = "auth_failed"
    PROTOCOL_ERROR = "protocol_error"
    HOOK_FAILED = "hook_failed"  # on_login (the resync) raised


AMI_CONNECTED = Gauge(
    "callgate_ami_connected", "1 while logged in to this Asterisk's AMI, else 0", ["server"]
)
AMI_CONNECTS = Counter(
    "callgate_ami_connects_total", "AMI connection attempts by outcome", ["server", "outcome"]
)
AMI_DISCONNECTS = Counter(
    "callgate_ami_disconnects_total", "Established AMI connections that were lost", ["server"]
)
AMI_PING_TIMEOUTS = Counter(
    "callgate_ami_ping_timeouts_total",
    "Pings unanswered within ping_timeout (the connection is then dropped)",
    ["server"],
)
AMI_EVENTS = Counter("callgate_ami_events_total", "AMI events received", ["server"])
AMI_EVENTS_DROPPED = Counter(
    "callgate_ami_events_dropped_total",
    "AMI events dropped because a subscriber's queue was full",
    ["server"],
)
