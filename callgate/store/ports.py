"""What the call flows need from the rest of callgate, as small interfaces (one per use case).

They are declared here, beside the store errors the adapters raise; ``callgate.cli.serve`` builds
the real ones (``callgate.store.callstore``: SQL and the rate cache) and hands them in, and the
flows never touch SQL. They share two plain values with the store: the
billing record :class:`~callgate.store.ledger.CallRecord` and the ``Pricer`` signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from callgate.rating import CallPlan
from callgate.store.clirules import CliDecision
from callgate.store.dids import Did
from callgate.store.ips import IpEntry
from callgate.store.ledger import CallRecord, Limits, Pricer
from callgate.store.packages import FreeAllowance

NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class CallerAccount:
    """The paying account of a call, as the flows see it."""

    id: int
    number: str
    alias: str
    call_plan_id: int
    status: str
    language: str
    balance: Decimal
    debit_limit: Decimal
    expired: bool = False


@dataclass(frozen=True, slots=True)
class TrunkInfo:
    """How to dial out through a trunk."""

    name: str
    technology: str  # PJSIP, SIP, IAX2, DAHDI, Local
    peer: str
    dial_prefix: str = ""
    strip_digits: int = 0
    dial_options: str = ""
    failover: str | None = None
    active: bool = True


@dataclass(frozen=True, slots=True)
class Grant:
    """A reservation the ledger made: how long the call may last and what is held for it."""

    granted_seconds: int
    amount: Decimal
    available: Decimal


@dataclass(frozen=True, slots=True)
class SettledCall:
    charged: Decimal
    balance: Decimal
    already_settled: bool


class Refused(Exception):
    """The ledger or a check refused the call; ``status`` is the CALLGATE_STATUS."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class AccountLookup(Protocol):
    async def find_for_call(
        self, *, accountcode: str, argument: str, callerid: str
    ) -> CallerAccount | None:
        """The account by accountcode, then the AGI argument (number or alias), then caller ID."""
        ...

    async def find_by_pin(self, pin: str) -> CallerAccount | None:
        """The account whose number is ``pin`` (calling-card mode)."""
        ...

    async def find_by_id(self, account_id: int) -> CallerAccount | None:
        """The account with that id (IP authentication, DIDs)."""
        ...


class RoutePlans(Protocol):
    def plan(self, plan_id: int) -> CallPlan | None:
        """The call plan with its in-memory rate indexes (no SQL)."""
        ...

    def remove_international_prefix(self, plan_id: int) -> bool:
        """Whether the plan strips 00/011... before rating."""
        ...

    def trunk(self, name: str) -> TrunkInfo | None:
        """A trunk by name (in memory)."""
        ...

    def records(self, table_name: str) -> bool:
        """Whether calls rated from that rate table are recorded (in memory)."""
        ...

    async def plan_for(self, plan_id: int, number: str) -> CallPlan | None:
        """The call plan to rate ``number`` with: the server's in-memory plan (no SQL); for
        ``callgate simulate``, the plan with only the rates that can match ``number``."""
        ...


class CreditGate(Protocol):
    """The call decision's part of the ledger: authorise a new call and grant its seconds."""

    async def reserve(
        self,
        *,
        account_id: int,
        uniqueid: str,
        price: Pricer,
        now: datetime,
        trunk: str,
        rate_id: int | None,
        limits: Limits = NO_LIMITS,
        asterisk: str = "",
    ) -> Grant:
        """Reserve under the account lock; raises Refused (NO_CREDIT, CHANNEL_LIMIT...).
        ``limits``: the IP authentication entry's channel and CPS limits. A call is keyed by
        (``asterisk``, ``uniqueid``): two Asterisk boxes can issue the same uniqueid.
        (``simulate``'s implementation runs the same checks and price and reserves nothing.)"""
        ...


class Ledger(CreditGate, Protocol):
    async def regrant(
        self,
        *,
        uniqueid: str,
        price: Pricer,
        now: datetime,
        trunk: str,
        rate_id: int | None,
        asterisk: str = "",
    ) -> Grant:
        """Recompute the reservation for a failover route; raises Refused when unpayable."""
        ...

    async def settle(self, record: CallRecord) -> SettledCall:
        """Charge, close the reservation and write the billing record (idempotent)."""
        ...

    async def release(self, uniqueid: str, note: str, *, asterisk: str = "") -> None:
        """Close a reservation without a charge."""
        ...

    async def record_attempt(self, record: CallRecord) -> None:
        """Write the billing record of an attempt that was never reserved."""
        ...


# ---------------------------------------------------------------- wholesale (issue 8)


class IpDirectory(Protocol):
    def match_ip(self, source: str, dialled: str) -> IpEntry | None:
        """The ingress IP entry for a call from ``source`` (``ip``, ``ip:port``...) dialling
        ``dialled`` (longest tech prefix wins), in memory; None when none matches."""
        ...


class CliPolicy(Protocol):
    def check_cli(self, account_id: int, callerid: str) -> CliDecision:
        """The account's caller ID rules applied to ``callerid`` (in memory)."""
        ...


class FreeSeconds(Protocol):
    """The call decision's part of the packages: the free seconds of a new call."""

    def covered(self, account_id: int, number: str) -> bool:
        """Whether one of the account's packages covers ``number`` (in memory, no SQL)."""
        ...

    async def hold(
        self,
        *,
        account_id: int,
        uniqueid: str,
        number: str,
        cap: int,
        now: datetime,
        asterisk: str = "",
    ) -> FreeAllowance | None:
        """Hold the call's free seconds (None: nothing left; ``simulate``'s implementation
        holds nothing)."""
        ...


class PackageLedger(FreeSeconds, Protocol):
    async def settle(self, uniqueid: str, used_seconds: int, *, asterisk: str = "") -> None:
        """Record the free seconds the call used (idempotent)."""
        ...

    async def release(self, uniqueid: str, *, asterisk: str = "") -> None:
        """Give the held free seconds back (the call never went out)."""
        ...


class DidDirectory(Protocol):
    async def find_did(self, number: str) -> Did | None:
        """The DID for an inbound number (digits), or None."""
        ...


class CallExtras(Protocol):
    async def set_recording(self, uniqueid: str, path: str, *, asterisk: str = "") -> None:
        """Store the recording's file on the call's billing record."""
        ...


class AlertHook(Protocol):
    def account_changed(self, account_id: int) -> None:
        """The account's balance or calls changed: evaluate its alerts (in the background)."""
        ...
