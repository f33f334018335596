"""The call flows: ``call`` (direct dialling) and ``card`` (calling card).

``call`` (DESIGN.md §5): identify the account (``agi_accountcode``, then the first AGI argument,
then the caller ID) -> check it -> normalise the number -> rate it through the account's call plan
-> reserve under the account lock -> ``EXEC Dial`` through the route's trunk with
``U(callgate-answered^<uniqueid>)L(<granted ms>[:<warn>[:<repeat>]])``, failing over on
CHANUNAVAIL or CONGESTION (to the trunk's failover trunk, then to the next route, with the grant
recomputed for that route) -> read the answer stamp, the end time, DIALSTATUS,
ANSWEREDTIME_MS, HANGUPCAUSE -> settle -> set CALLGATE_STATUS / CALLGATE_ACCOUNT /
CALLGATE_MAXSEC / CALLGATE_HANGUPCAUSE -> the server closes the socket.

The decision up to the first Dial string (identify, checks, rating, grant) is
:class:`CallDecision`, shared with ``callgate simulate``, which runs it over read-only ports.

Fail closed: any error before Dial ends the session without dialling. Once Dial has run, a call
whose outcome cannot be read, or whose settle fails, keeps its reservation open: the reaper
settles it from Asterisk's CDR, so no call goes unbilled.

Billsec is the called party's talk time: the end stamp minus the answer stamp the ``U()``
subroutine took on Asterisk's clock at the callee's answer (exact to a few ms, also when the
caller was answered before Dial). DIALSTATUS=ANSWER with no stamp is a configuration error: it is
logged and billed from ANSWEREDTIME_MS, never treated as a free call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from callgate import metrics as call_metrics
from callgate.agi.errors import AgiError, AgiHangup
from callgate.agi.session import AgiSession
from callgate.config import Settings
from callgate.rating import (
    InsufficientCreditError,
    Rate,
    RatingError,
    Route,
    buy_cost,
    cost,
    find_routes,
    grant,
    max_duration,
)
from callgate.rating.numbers import NumberRules, normalise_number
from callgate.schema.tables import CallStatus
from callgate.store.errors import StoreError
from callgate.store.ips import IpEntry
from callgate.store.ledger import CallRecord, Limits
from callgate.store.packages import FreeAllowance
from callgate.store.ports import (
    AccountLookup,
    AlertHook,
    CallerAccount,
    CallExtras,
    CliPolicy,
    CreditGate,
    FreeSeconds,
    IpDirectory,
    Ledger,
    PackageLedger,
    Refused,
    RoutePlans,
    TrunkInfo,
)

log = logging.getLogger(__name__)
calls_log = logging.getLogger("callgate.calls")

# CALLGATE_STATUS -> the Q.850 cause the dialplan hangs up with (CALLGATE_HANGUPCAUSE)
HANGUP_CAUSES: dict[str, int] = {
    "OK": 16,  # normal clearing
    "NO_ACCOUNT": 21,  # call rejected
    "INACTIVE": 21,
    "EXPIRED": 21,
    "NO_CREDIT": 21,
    "NO_RATE": 3,  # no route to destination
    "CHANNEL_LIMIT": 34,  # no circuit/channel available
    "CPS_LIMIT": 42,  # switching equipment congestion
    "ROUTE_FAILED": 34,
    "ERROR": 41,  # temporary failure
    "CLI_REJECTED": 21,  # call rejected: the caller ID rules deny it
}
FAILOVER_STATUSES = frozenset({"CHANUNAVAIL", "CONGESTION"})
MAX_TRUNK_CHAIN = 4
NOW_MS_EXPR = "${STRFTIME(,,%s%3q)}"
ANSWER_STAMP = "SHARED(CALLGATE_ANSWER_MS)"
# what the flow reads after Dial: end stamp, answer stamp, DIALSTATUS, ANSWEREDTIME_MS,
# HANGUPCAUSE, RINGTIME_MS (the post-dial delay)
OUTCOME_EXPR = "|".join(
    (
        NOW_MS_EXPR,
        "${" + ANSWER_STAMP + "}",
        "${DIALSTATUS}",
        "${ANSWEREDTIME_MS}",
        "${HANGUPCAUSE}",
        "${RINGTIME_MS}",
    )
)


@dataclass(frozen=True, slots=True)
class FlowSettings:
    """Policy for the flows, built from the settings by the composition root."""

    international_prefixes: tuple[str, ...] = ("011", "00")
    dial_ring_seconds: int = 60
    dial_warning_seconds: int = 30
    dial_warning_repeat_seconds: int = 0
    max_call_seconds: int = 36000
    timezone: str = "UTC"
    server: str = ""
    answer_subroutine: str = "callgate-answered"
    # calling card prompts (Asterisk core sounds by default)
    card_pin_prompt: str = "agent-pass"
    card_invalid_prompt: str = "vm-incorrect"
    card_number_prompt: str = "vm-enter-num-to-call"
    card_no_credit_prompt: str = "vm-goodbye"
    card_you_have_prompt: str = "vm-youhave"
    card_minutes_prompt: str = "minutes"
    card_pin_tries: int = 3
    card_digit_timeout_ms: int = 6000
    card_lockout_failures: int = 5
    card_lockout_seconds: int = 900
    # wholesale: where MixMonitor writes recordings ("" = never record), and how to read the
    # SIP source address of a call per channel technology (IP authentication)
    recordings_dir: str = ""
    # direct-dial calls allowed between their header and their Dial at once; beyond it a new
    # call waits in line for a slot up to setup_wait_ms (at most max_setups calls wait), else is
    # refused (cause 42) instead of queueing for the database until everything times out: a
    # burst waits a moment, a lasting overload is refused and the calls admitted keep their
    # set-up time
    max_setups: int = 50
    setup_wait_ms: int = 200
    source_address_exprs: tuple[tuple[str, str], ...] = (
        ("PJSIP", "${CHANNEL(pjsip,remote_addr)}"),
        ("SIP", "${CHANNEL(recvip)}"),
        ("IAX2", "${CHANNEL(peerip)}"),
    )


@dataclass(slots=True)
class Attempt:
    """What one dial attempt returned."""

    dial_status: str = ""
    answered_ms: int | None = None  # Asterisk clock, epoch ms, at the callee's answer
    ended_ms: int | None = None  # Asterisk clock, epoch ms, when Dial returned
    answeredtime_ms: int | None = None
    hangup_cause: int | None = None
    ring_ms: int | None = None


@dataclass(slots=True)
class CallState:
    """Everything the flow learns about one call, for the billing record."""

    uniqueid: str
    script: str
    started_at: datetime
    channel: str
    callerid: str
    asterisk: str = ""  # the Asterisk that sent the call: with uniqueid, the call's key
    account: CallerAccount | None = None
    dialled: str = ""
    number: str = ""
    route: Route | None = None
    granted: int = 0
    reserved: bool = False
    dialled_out: bool = False
    attempt: Attempt = field(default_factory=Attempt)
    billsec: int = 0
    note: str = ""
    in_setup: bool = False
    # wholesale
    source_address: str = ""
    ip: IpEntry | None = None  # the IP authentication entry that identified the caller
    presented_callerid: str = ""  # the caller ID presented to the carrier ("" = as received)
    callerid_set: bool = False
    free: FreeAllowance | None = None  # free package seconds held for this call
    surcharge: Rate | None = None  # a second rate billed for the same seconds (DID retail)
    dial_destination: str = ""  # dial this instead of the route's trunk (DID destinations)
    recording: str = ""
    # variables for the dialplan not sent yet: they go in the same round trip as the next set
    # (the answer stamp cleared before Dial, or the outcome)
    pending_vars: dict[str, str | int] = field(default_factory=dict)

    def take_vars(self, *more: tuple[str, str | int]) -> list[tuple[str, str | int]]:
        """The pending variables followed by ``more``, to send now; none pending afterwards."""
        pairs = [*self.pending_vars.items(), *more]
        self.pending_vars.clear()
        return pairs


def dial_string(trunk: TrunkInfo, number: str) -> str:
    """The Dial destination for ``number`` through ``trunk``."""
    digits = number[trunk.strip_digits :] if trunk.strip_digits else number
    digits = trunk.dial_prefix + digits
    tech = trunk.technology
    if tech == "PJSIP":
        return f"PJSIP/{digits}@{trunk.peer}"
    if tech == "Local":
        return f"Local/{digits}@{trunk.peer}"
    return f"{tech}/{trunk.peer}/{digits}"


def limit_option(granted_seconds: int, warning_seconds: int, repeat_seconds: int) -> str:
    """``L(ms[:warn[:repeat]])``; never ``L(0)`` (A2Billing's bug #5)."""
    if granted_seconds <= 0:
        raise ValueError("a call is never dialled without time")
    parts = [str(granted_seconds * 1000)]
    if 0 < warning_seconds < granted_seconds:
        parts.append(str(warning_seconds * 1000))
        if repeat_seconds > 0:
            parts.append(str(repeat_seconds * 1000))
    return f"L({':'.join(parts)})"


def dial_arguments(
    settings: FlowSettings, trunk: TrunkInfo, state: CallState, granted_seconds: int
) -> str:
    """The Dial application's arguments for one attempt of the call through ``trunk``."""
    options = (
        f"U({settings.answer_subroutine}^{state.uniqueid})"
        + limit_option(
            granted_seconds, settings.dial_warning_seconds, settings.dial_warning_repeat_seconds
        )
        + trunk.dial_options
    )
    destination = state.dial_destination or dial_string(trunk, state.number)
    return f"{destination},{settings.dial_ring_seconds},{options}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The call decision. ``status`` "OK": authorised, the grant is in the state (reserved by
    the live ledger, quoted by simulate's), ``routes`` in dialling order, ``dial`` the first
    Dial's arguments ("" when the first route has no active trunk)."""

    status: str
    reason: str = ""
    routes: tuple[Route, ...] = ()
    cap: int = 0
    dial: str = ""
    amount: Decimal = Decimal(0)  # what the grant holds of the credit


class CallDecision:
    """The decision of a direct-dial call, one code for the live flow and ``callgate
    simulate``: identify the account (IP authentication with its tech prefix, accountcode,
    argument, caller ID) -> caller ID rules -> normalise -> rate (LCR) -> free package seconds
    -> the ledger's checks and grant -> the first Dial string.

    Its inputs are in the :class:`CallState` (uniqueid, caller ID, dialled number, source
    address, start time); it talks to Asterisk never. What it writes is what its ports write:
    the live ledger reserves and the live packages hold; simulate's ports do neither.
    """

    def __init__(
        self,
        *,
        accounts: AccountLookup,
        plans: RoutePlans,
        credit: CreditGate,
        settings: FlowSettings = FlowSettings(),
        ips: IpDirectory | None = None,
        cli_rules: CliPolicy | None = None,
        packages: FreeSeconds | None = None,
    ) -> None:
        self.accounts = accounts
        self.plans = plans
        self.credit = credit
        self.settings = settings
        self.ips = ips
        self.cli_rules = cli_rules
        self.packages = packages
        self.zone = ZoneInfo(settings.timezone)

    async def decide(self, state: CallState, *, accountcode: str, argument: str) -> Verdict:
        """Identify, then :meth:`authorise`."""
        refused = await self.identify(state, accountcode=accountcode, argument=argument)
        return refused if refused is not None else await self.authorise(state)

    async def identify(
        self, state: CallState, *, accountcode: str, argument: str
    ) -> Verdict | None:
        """Set ``state.account`` (and ``state.ip``); a Verdict when no account is found."""
        try:
            account = await self._identify_by_ip(state, accountcode)
            if account is None:
                account = await self.accounts.find_for_call(
                    accountcode=accountcode, argument=argument, callerid=state.callerid
                )
        except StoreError as exc:
            return Verdict("ERROR", f"account lookup failed: {exc}")
        if account is None:
            return Verdict("NO_ACCOUNT", "no account for this call")
        state.account = account
        return None

    async def _identify_by_ip(self, state: CallState, accountcode: str) -> CallerAccount | None:
        """IP authentication, for calls without an accountcode: the SIP source address matched
        against the ingress IP entries (longest tech prefix)."""
        if accountcode or self.ips is None or not state.source_address:
            return None
        entry = self.ips.match_ip(state.source_address, state.dialled)
        if entry is None:
            return None
        account = await self.accounts.find_by_id(entry.account_id)
        if account is not None:
            state.ip = entry
            log.debug("%s: %s identified by IP entry %s", state.uniqueid, account.number, entry.id)
        return account

    async def authorise(self, state: CallState) -> Verdict:
        """The checks, the rating and the grant of the identified account's call."""
        account = state.account
        assert account is not None
        refused = self._check_cli(state)
        if refused is not None:
            return refused
        try:
            state.number = normalise_for_plan(
                self.plans,
                self.settings,
                account.call_plan_id,
                state.dialled,
                tech_prefix=state.ip.tech_prefix if state.ip else "",
                strip_digits=state.ip.strip_digits if state.ip else 0,
            )
        except RatingError as exc:
            return Verdict("NO_RATE", str(exc))
        try:
            plan = await self.plans.plan_for(account.call_plan_id, state.number)
        except StoreError as exc:
            return Verdict("ERROR", f"rates unavailable: {exc}")
        if plan is None:
            return Verdict("NO_RATE", "the account's call plan has no rates")
        at = state.started_at.astimezone(self.zone)
        routes = find_routes(plan, state.number, at)
        if not routes:
            return Verdict("NO_RATE", f"no rate for {state.number}")
        cap = min(plan.max_call_seconds, self.settings.max_call_seconds)
        route = routes[0]
        state.route = route
        await self._hold_free(state, cap)
        try:
            reserved = await self.credit.reserve(
                account_id=account.id,
                uniqueid=state.uniqueid,
                price=_pricer(route, cap, _free_seconds(state)),
                now=state.started_at,
                trunk=route.trunk or "",
                rate_id=route.rate.id,
                limits=_limits(state),
                asterisk=state.asterisk,
            )
        except Refused as exc:
            return Verdict(exc.status, exc.reason, routes, cap)
        except StoreError as exc:
            return Verdict("ERROR", f"reservation failed: {exc}", routes, cap)
        state.reserved = True
        state.granted = reserved.granted_seconds
        chain = self.trunk_chain(route.trunk)
        dial = dial_arguments(self.settings, chain[0], state, state.granted) if chain else ""
        return Verdict("OK", "", routes, cap, dial, reserved.amount)

    def _check_cli(self, state: CallState) -> Verdict | None:
        """The account's caller ID rules; sets the caller ID to present."""
        assert state.account is not None
        presented = state.callerid
        if self.cli_rules is not None:
            decision = self.cli_rules.check_cli(state.account.id, state.callerid)
            if not decision.allowed:
                reason = f"caller ID {state.callerid!r} denied by rule {decision.rule_id}"
                return Verdict("CLI_REJECTED", reason)
            presented = decision.presented
        if state.ip is not None and state.ip.cli_prefix and presented:
            presented = state.ip.cli_prefix + presented
        state.presented_callerid = presented if presented != state.callerid else ""
        return None

    async def _hold_free(self, state: CallState, cap: int) -> None:
        """Hold the free package seconds of a covered call (billing goes on without them if the
        hold fails: the reservation that follows fails closed on a broken database anyway)."""
        account = state.account
        if self.packages is None or account is None:
            return
        if not self.packages.covered(account.id, state.number):
            return
        try:
            state.free = await self.packages.hold(
                account_id=account.id,
                uniqueid=state.uniqueid,
                number=state.number,
                cap=cap,
                now=state.started_at,
                asterisk=state.asterisk,
            )
        except StoreError as exc:
            log.error("%s: package hold failed, no free seconds: %s", state.uniqueid, exc)

    def trunk_chain(self, first: str | None) -> list[TrunkInfo]:
        """The active trunks to try for a route: its trunk, then the failover trunks."""
        chain: list[TrunkInfo] = []
        seen: set[str] = set()
        name = first
        while name and name not in seen and len(chain) < MAX_TRUNK_CHAIN:
            seen.add(name)
            trunk = self.plans.trunk(name)
            if trunk is None:
                log.warning("trunk %s is not configured", name)
                break
            if trunk.active:
                chain.append(trunk)
            name = trunk.failover
        return chain


def parse_outcome(expanded: str | None) -> Attempt:
    """The fields of :data:`OUTCOME_EXPR` as Asterisk expanded them."""
    fields = (expanded or "").split("|")
    fields += [""] * (6 - len(fields))
    return Attempt(
        ended_ms=_int(fields[0]),
        answered_ms=_int(fields[1]),
        dial_status=fields[2].strip(),
        answeredtime_ms=_int(fields[3]),
        hangup_cause=_int(fields[4]),
        ring_ms=_int(fields[5]),
    )


def talk_seconds(attempt: Attempt) -> tuple[int, str]:
    """Billsec of an attempt (ceil of the talk ms) and a note when it had to fall back."""
    if attempt.dial_status != "ANSWER":
        return 0, ""
    if attempt.answered_ms is not None and attempt.ended_ms is not None:
        talk_ms = max(0, attempt.ended_ms - attempt.answered_ms)
        return math.ceil(talk_ms / 1000), ""
    note = "ANSWER without the U() answer stamp: is the callgate-answered subroutine loaded?"
    if attempt.answeredtime_ms is not None:
        return math.ceil(attempt.answeredtime_ms / 1000), note + " Billed from ANSWEREDTIME_MS."
    return 0, note + " No ANSWEREDTIME_MS either."


def _int(value: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    try:
        return int(value.strip().split(".")[0])
    except ValueError:
        return None


def _epoch_ms_to_datetime(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


class CallFlows:
    """The ``call`` and ``card`` handlers, with their ports."""

    def __init__(
        self,
        *,
        accounts: AccountLookup,
        plans: RoutePlans,
        ledger: Ledger,
        settings: FlowSettings = FlowSettings(),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ips: IpDirectory | None = None,
        cli_rules: CliPolicy | None = None,
        packages: PackageLedger | None = None,
        extras: CallExtras | None = None,
        alerts: AlertHook | None = None,
    ) -> None:
        self.accounts = accounts
        self.plans = plans
        self.ledger = ledger
        self.ips = ips
        self.cli_rules = cli_rules
        self.packages = packages
        self.extras = extras
        self.alerts = alerts
        self.settings = settings
        self.clock = clock
        self.zone = ZoneInfo(settings.timezone)
        self.decision = CallDecision(
            accounts=accounts,
            plans=plans,
            credit=ledger,
            settings=settings,
            ips=ips,
            cli_rules=cli_rules,
            packages=packages,
        )
        self._card_failures: dict[str, tuple[int, float]] = {}
        self.setups = 0  # direct-dial calls between their header and their Dial
        self.shed = 0  # calls refused because max_setups were in set-up
        self.waited = 0  # calls that waited in line for a set-up slot and got one
        #: calls waiting for a set-up slot, first come first served; a slot that frees is handed
        #: to the first of them (`setups` keeps counting it), so no newcomer overtakes the line
        self._setup_line: deque[asyncio.Future[None]] = deque()

    # ------------------------------------------------------------------ entry points

    async def call(self, session: AgiSession) -> None:
        """Direct dialling: ``AGI(agi://host/call[,account[,number]])``."""
        if not await self._admitted():
            await self._shed(session)
            return
        state = self._new_state(session, "call")
        state.in_setup = True
        try:
            await self._call(session, state)
        finally:
            self._leave_setup(state)

    async def _admitted(self) -> bool:
        """Take a set-up slot: at once when one is free and nobody waits, else in line for up to
        ``setup_wait_ms``; at most ``max_setups`` calls wait. False: no slot (to be shed)."""
        if self.setups < self.settings.max_setups and not self._setup_line:
            self.setups += 1
            return True
        if self.settings.setup_wait_ms <= 0 or len(self._setup_line) >= self.settings.max_setups:
            return False  # a line as long as the slots are many: the overload lasts, shed now
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._setup_line.append(turn)
        try:
            async with asyncio.timeout(self.settings.setup_wait_ms / 1000):
                await turn
        except TimeoutError:
            # the wait was cancelled, and with it `turn`, unless a slot was handed over first
            if turn.done() and not turn.cancelled():
                self._waited_in_line()
                return True
            self._leave_line(turn)
            return False
        except asyncio.CancelledError:  # cancelled in line: give back a slot handed over meanwhile
            if turn.done() and not turn.cancelled():
                self._free_setup_slot()
            self._leave_line(turn)
            raise
        self._waited_in_line()
        return True

    def _waited_in_line(self) -> None:
        self.waited += 1
        call_metrics.observe_setup_wait()

    def _leave_line(self, turn: asyncio.Future[None]) -> None:
        if turn in self._setup_line:
            self._setup_line.remove(turn)

    def _free_setup_slot(self) -> None:
        """A set-up slot frees: it goes to the first call in line, else back to the pool."""
        while self._setup_line:
            turn = self._setup_line.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.setups -= 1

    def _leave_setup(self, state: CallState) -> None:
        if state.in_setup:
            state.in_setup = False
            self._free_setup_slot()

    async def _shed(self, session: AgiSession) -> None:
        """Refuse a call without touching the database: callgate is overloaded."""
        self.shed += 1
        call_metrics.observe_shed()
        calls_log.warning(
            "uniqueid=%s status=ERROR note='overloaded: %d calls in set-up, %d waiting'",
            session.env.uniqueid,
            self.setups,
            len(self._setup_line),
        )
        try:
            await session.set_variables(
                [("CALLGATE_STATUS", "ERROR"), ("CALLGATE_HANGUPCAUSE", 42)]  # congestion
            )
        except AgiError as exc:
            log.debug("cannot tell the dialplan it was shed: %s", exc)

    async def _call(self, session: AgiSession, state: CallState) -> None:
        env = session.env
        args = env.args
        state.dialled = args[1] if len(args) > 1 and args[1] else env.extension
        try:
            state.source_address = await self._source_address(session)
        except AgiError as exc:
            await self._finish(session, state, "ERROR", f"account lookup failed: {exc}")
            return
        refused = await self.decision.identify(
            state, accountcode=env.accountcode, argument=args[0] if args else ""
        )
        if refused is not None:
            await self._finish(session, state, refused.status, refused.reason)
            return
        await self._guarded(session, state)

    async def card(self, session: AgiSession) -> None:
        """Calling card: answer, PIN, destination, "you have N minutes", dial."""
        state = self._new_state(session, "card")
        s = self.settings
        if self._locked_out(state.callerid):
            await self._finish(session, state, "NO_ACCOUNT", "caller ID locked out")
            return
        try:
            await session.answer()
            account: CallerAccount | None = None
            for _ in range(s.card_pin_tries):
                pin, _timed_out = await session.get_data(
                    s.card_pin_prompt, s.card_digit_timeout_ms, 20
                )
                if pin:
                    account = await self.accounts.find_by_pin(pin)
                if account is not None:
                    break
                self._card_failure(state.callerid)
                if self._locked_out(state.callerid):
                    break
                await session.stream_file(s.card_invalid_prompt)
            if account is None:
                await self._finish(session, state, "NO_ACCOUNT", "no valid PIN entered")
                return
            self._card_failures.pop(state.callerid, None)
            state.account = account
            if account.language:
                await session.set_variable("CHANNEL(language)", account.language)
            number, _timed_out = await session.get_data(
                s.card_number_prompt, s.card_digit_timeout_ms, 30
            )
            state.dialled = number
        except AgiHangup:
            await self._finish(session, state, "ERROR", "caller hung up during the prompts")
            return
        except (AgiError, StoreError) as exc:
            await self._finish(session, state, "ERROR", f"calling card prompt failed: {exc}")
            return
        await self._guarded(session, state, announce=True)

    # ------------------------------------------------------------------ the shared path

    async def _guarded(
        self, session: AgiSession, state: CallState, *, announce: bool = False
    ) -> None:
        """Authorise and dial; an unexpected error before Dial releases the reservation."""
        try:
            await self._authorise_and_dial(session, state, announce=announce)
        except Exception:
            log.exception("%s: unexpected error in the %s flow", state.uniqueid, state.script)
            if state.dialled_out:
                raise  # the reservation stays open: the reaper settles it from the CDR
            if state.reserved:
                await self._release(state, "unexpected error before Dial")
            await self._set_outcome(session, "ERROR", state)
            raise

    def _new_state(self, session: AgiSession, script: str) -> CallState:
        call_metrics.observe_attempt()
        env = session.env
        return CallState(
            uniqueid=env.uniqueid,
            script=script,
            started_at=self.clock(),
            channel=env.channel,
            callerid=env.callerid,
            asterisk=session.asterisk,
        )

    async def _authorise_and_dial(
        self, session: AgiSession, state: CallState, *, announce: bool = False
    ) -> None:
        account = state.account
        assert account is not None
        verdict = await self.decision.authorise(state)
        if verdict.status != "OK":
            await self._finish(session, state, verdict.status, verdict.reason)
            return
        routes, cap = verdict.routes, verdict.cap
        if self.alerts is not None:  # "channels" alerts see the call now, in the background
            self.alerts.account_changed(account.id)
        try:
            state.pending_vars["CALLGATE_ACCOUNT"] = account.number
            state.pending_vars["CALLGATE_MAXSEC"] = state.granted
            if announce:
                await self._announce(session, state.granted)
            await self._dial_routes(session, state, routes, cap)
        except AgiError as exc:
            if not state.dialled_out:
                await self._release(state, f"before Dial: {exc}")
                await self._finish(session, state, "ERROR", f"AGI failed before Dial: {exc}")
                return
            # Dial ran but its outcome is unknown: keep the reservation for the reaper
            self._log_call(state, "ERROR", Decimal(0), f"outcome unknown after Dial: {exc}")
            return
        await self._settle(session, state)

    async def _announce(self, session: AgiSession, granted: int) -> None:
        s = self.settings
        await session.stream_file(s.card_you_have_prompt)
        await session.say_number(max(1, granted // 60))
        await session.stream_file(s.card_minutes_prompt)

    async def _dial_routes(
        self, session: AgiSession, state: CallState, routes: tuple[Route, ...], cap: int
    ) -> None:
        for position, route in enumerate(routes):
            if position > 0:
                try:
                    regranted = await self.ledger.regrant(
                        uniqueid=state.uniqueid,
                        price=_pricer(route, cap, _free_seconds(state)),
                        now=self.clock(),
                        trunk=route.trunk or "",
                        rate_id=route.rate.id,
                        asterisk=state.asterisk,
                    )
                except Refused as exc:
                    log.info("%s: failover route %s refused: %s", state.uniqueid, route.table, exc)
                    continue
                state.route = route
                state.granted = regranted.granted_seconds
                state.pending_vars["CALLGATE_MAXSEC"] = state.granted
            for trunk in self._trunk_chain(route.trunk):
                state.attempt = await self._dial_once(session, state, trunk)
                if state.attempt.dial_status not in FAILOVER_STATUSES:
                    return
                log.info(
                    "%s: %s on trunk %s, failing over",
                    state.uniqueid,
                    state.attempt.dial_status,
                    trunk.name,
                )
                if session.hung_up:
                    return

    def _trunk_chain(self, first: str | None) -> list[TrunkInfo]:
        return self.decision.trunk_chain(first)

    async def _dial_once(self, session: AgiSession, state: CallState, trunk: TrunkInfo) -> Attempt:
        s = self.settings
        args = dial_arguments(s, trunk, state, state.granted)
        await self._before_dial(session, state)
        await session.set_variables(state.take_vars((ANSWER_STAMP, "")))
        if not state.dialled_out:  # callgate's own latency: the AGI header to the first Dial
            call_metrics.observe_agi_latency((self.clock() - state.started_at).total_seconds())
        state.dialled_out = True
        deadline_ms = (s.dial_ring_seconds + state.granted + 120) * 1000
        self._leave_setup(state)  # a call in Dial costs no set-up work
        await session.exec("Dial", args, timeout_ms=deadline_ms)
        # one round trip (GET FULL VARIABLE works after a hangup); Asterisk expands left to
        # right, so the end of the call is stamped first
        return parse_outcome(await session.get_full_variable(OUTCOME_EXPR))

    async def _settle(self, session: AgiSession, state: CallState) -> None:
        attempt = state.attempt
        route = state.route
        assert route is not None and state.account is not None
        billsec, note = talk_seconds(attempt)
        if note:
            log.error("%s: %s", state.uniqueid, note)
        # L() cuts the callee at the grant; anything measured beyond it is the few ms between
        # Dial returning and our end stamp, never talk the customer had
        charged_seconds = min(billsec, state.granted)
        state.billsec = charged_seconds
        state.note = note
        status = "OK"
        if attempt.dial_status in FAILOVER_STATUSES or not attempt.dial_status:
            status = "ROUTE_FAILED"
        record = self._record(state, status)
        record = replace(
            record,
            cost=_charge(state, route, charged_seconds),
            buy_cost=_buy_charge(state, route, charged_seconds),
        )
        try:
            settled = await self.ledger.settle(record)
        except StoreError as exc:
            log.error(
                "%s: settle failed, the reservation stays open for the reaper: %s",
                state.uniqueid,
                exc,
            )
            self._log_call(state, "ERROR", record.cost, f"settle failed: {exc}")
            await self._set_outcome(session, status, state)
            return
        await self._after_settle(state, charged_seconds)
        self._log_call(state, status, settled.charged, note)
        await self._set_outcome(session, status, state)

    def _record(self, state: CallState, status: str) -> CallRecord:
        attempt = state.attempt
        route = state.route
        return CallRecord(
            uniqueid=state.uniqueid,
            status=CallStatus(status),
            started_at=state.started_at,
            account_id=state.account.id if state.account else None,
            script=state.script,
            channel=state.channel,
            callerid=state.callerid,
            dialed_number=state.dialled[:64],
            number=state.number,
            prefix=route.rate.prefix if route else "",
            destination=route.rate.destination if route else "",
            rate_table=route.table if route else "",
            rate_id=route.rate.id if route else None,
            sell_rate=route.rate.rate if route else None,
            buy_rate=route.rate.buy_rate if route else None,
            trunk=(route.trunk or "") if route else "",
            answered_at=_epoch_ms_to_datetime(attempt.answered_ms)
            if attempt.dial_status == "ANSWER"
            else None,
            ended_at=_epoch_ms_to_datetime(attempt.ended_ms),
            billsec=state.billsec,
            granted_seconds=state.granted,
            pdd_ms=attempt.ring_ms,
            dial_status=attempt.dial_status,
            hangup_cause=attempt.hangup_cause,
            server=self.settings.server,
            note=state.note,
            asterisk=state.asterisk,
        )

    # ------------------------------------------------------------------ endings

    async def _finish(
        self, session: AgiSession, state: CallState, status: str, reason: str
    ) -> None:
        """End a call that was not dialled: record the attempt, tell the dialplan why."""
        log.info("%s: %s (%s)", state.uniqueid, status, reason)
        state.note = reason
        if state.reserved:
            await self._release(state, reason)
        await self._release_free(state)
        try:
            await self.ledger.record_attempt(self._record(state, status))
        except StoreError as exc:
            log.error("%s: cannot record the refused attempt: %s", state.uniqueid, exc)
        self._log_call(state, status, Decimal(0), reason)
        await self._set_outcome(session, status, state)

    async def _release(self, state: CallState, reason: str) -> None:
        try:
            await self.ledger.release(state.uniqueid, reason, asterisk=state.asterisk)
            state.reserved = False
        except StoreError as exc:
            log.error("%s: cannot release the reservation: %s", state.uniqueid, exc)

    async def _set_outcome(
        self, session: AgiSession, status: str, state: CallState | None = None
    ) -> None:
        """Tell the dialplan, with the call's variables not sent yet (these variables work after
        a hangup too); never raises."""
        outcome: list[tuple[str, str | int]] = [
            ("CALLGATE_STATUS", status),
            ("CALLGATE_HANGUPCAUSE", HANGUP_CAUSES.get(status, 41)),
        ]
        try:
            await session.set_variables(state.take_vars(*outcome) if state else outcome)
        except AgiError as exc:
            log.debug("cannot set CALLGATE_STATUS=%s: %s", status, exc)

    def _log_call(self, state: CallState, status: str, charged: Decimal, reason: str) -> None:
        attempt = state.attempt  # one call: one `calls` line, one metrics observation
        call_metrics.observe_call(status, attempt.dial_status, state.billsec, attempt.ring_ms)
        account = state.account.number if state.account else "-"
        calls_log.info(
            "uniqueid=%s account=%s destination=%s billsec=%d cost=%s status=%s dialstatus=%s "
            "cause=%s%s",
            state.uniqueid,
            account,
            state.number or state.dialled or "-",
            state.billsec,
            charged,
            status,
            state.attempt.dial_status or "-",
            state.attempt.hangup_cause if state.attempt.hangup_cause is not None else "-",
            f" note={reason!r}" if reason else "",
        )

    # ------------------------------------------------------------------ wholesale (issue 8)

    async def _source_address(self, session: AgiSession) -> str:
        """The SIP source address Asterisk reports for the channel, for IP authentication of
        calls without an accountcode ("" when not needed or not known)."""
        env = session.env
        if env.accountcode or self.ips is None:
            return ""
        tech = env.type or env.channel.split("/", 1)[0]
        expr = dict(self.settings.source_address_exprs).get(tech, "")
        if not expr:
            return ""
        return (await session.get_full_variable(expr) or "").strip()

    async def _release_free(self, state: CallState) -> None:
        if self.packages is None or state.free is None:
            return
        try:
            await self.packages.release(state.uniqueid, asterisk=state.asterisk)
            state.free = None
        except StoreError as exc:
            log.error("%s: cannot release the package hold: %s", state.uniqueid, exc)

    async def _before_dial(self, session: AgiSession, state: CallState) -> None:
        """Present the rewritten caller ID (it goes with the stamp cleared next, in the same
        round trip) and start the recording, once, before Dial."""
        if state.presented_callerid and not state.callerid_set:
            state.pending_vars["CALLERID(num)"] = state.presented_callerid
            state.callerid_set = True
        route = state.route
        folder = self.settings.recordings_dir
        if state.recording or not folder or route is None or not self.plans.records(route.table):
            return
        path = recording_path(folder, state.uniqueid)
        # b: only the bridged audio (no ringing, no prompts); the file is named after the call
        result = await session.exec("MixMonitor", f"{path},b")
        if result == 0:
            state.recording = path
        else:
            log.error(
                "%s: MixMonitor failed (result %s): the call is not recorded",
                state.uniqueid,
                result,
            )

    async def _after_settle(self, state: CallState, charged_seconds: int) -> None:
        """Free seconds used, the recording's path, the account's alerts (never raises)."""
        if self.packages is not None and state.free is not None:
            try:
                await self.packages.settle(
                    state.uniqueid,
                    min(charged_seconds, state.free.seconds),
                    asterisk=state.asterisk,
                )
            except StoreError as exc:
                log.error("%s: cannot record the package use: %s", state.uniqueid, exc)
        if self.extras is not None and state.recording:
            try:
                await self.extras.set_recording(
                    state.uniqueid, state.recording, asterisk=state.asterisk
                )
            except StoreError as exc:
                log.error("%s: cannot store the recording path: %s", state.uniqueid, exc)
        if self.alerts is not None and state.account is not None:
            self.alerts.account_changed(state.account.id)

    # ------------------------------------------------------------------ calling card lockout

    def _card_failure(self, callerid: str) -> None:
        count, _ = self._card_failures.get(callerid, (0, 0.0))
        self._card_failures[callerid] = (count + 1, time.monotonic())

    def _locked_out(self, callerid: str) -> bool:
        count, last = self._card_failures.get(callerid, (0, 0.0))
        if count < self.settings.card_lockout_failures:
            return False
        if time.monotonic() - last > self.settings.card_lockout_seconds:
            self._card_failures.pop(callerid, None)
            return False
        return True


def _pricer(
    route: Route, cap: int, free_seconds: int = 0
) -> Callable[[Decimal], tuple[int, Decimal]]:
    def price(available: Decimal) -> tuple[int, Decimal]:
        if free_seconds > 0:
            return free_grant(route.rate, available, cap, free_seconds)
        seconds, amount = grant(route, available, cap)
        if seconds <= 0:
            raise InsufficientCreditError(route.rate.prefix, available, cost(route.rate, 1))
        return seconds, amount

    return price


def free_grant(rate: Rate, available: Decimal, cap: int, free_seconds: int) -> tuple[int, Decimal]:
    """Grant with free package seconds: the free seconds first, then what ``available`` pays
    at ``rate`` for the seconds beyond them; the reservation is the cost of those alone."""
    free = min(free_seconds, cap)
    paid = max_duration(rate, available, cap - free) if cap > free else 0
    return free + paid, cost(rate, paid)


def _free_seconds(state: CallState) -> int:
    return state.free.seconds if state.free is not None else 0


def _limits(state: CallState) -> Limits:
    """The IP authentication entry's limits, counted by its key in the reservations."""
    entry = state.ip
    if entry is None:
        return Limits()
    return Limits(
        source_address=entry.limit_key,
        address_channel_limit=entry.channel_limit,
        address_cps_limit=entry.cps_limit,
    )


def _charge(state: CallState, route: Route, seconds: int) -> Decimal:
    """What the customer pays: the seconds beyond the free ones, plus any surcharge (DID)."""
    free = min(seconds, _free_seconds(state))
    amount = cost(route.rate, seconds - free)
    if state.surcharge is not None:
        amount += cost(state.surcharge, seconds)
    return amount


def _buy_charge(state: CallState, route: Route, seconds: int) -> Decimal:
    amount = buy_cost(route.rate, seconds)
    if state.surcharge is not None:
        amount += buy_cost(state.surcharge, seconds)
    return amount


def recording_path(folder: str, uniqueid: str) -> str:
    """``<folder>/<uniqueid>.wav`` (the uniqueid's unsafe characters replaced)."""
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in uniqueid)
    return f"{folder.rstrip('/')}/{safe}.wav"


def normalise_for_plan(
    plans: RoutePlans,
    settings: FlowSettings,
    plan_id: int,
    dialled: str,
    *,
    tech_prefix: str = "",
    strip_digits: int = 0,
) -> str:
    """The number the flow rates for ``dialled`` under the plan's rules (RatingError if none);
    ``tech_prefix``/``strip_digits`` come from the IP authentication entry of the caller."""
    rules = NumberRules(
        international_prefixes=settings.international_prefixes,
        remove_international_prefix=plans.remove_international_prefix(plan_id),
        tech_prefix=tech_prefix,
        strip_digits=strip_digits,
    )
    return normalise_number(dialled, rules)


def route_grant(
    route: Route, available: Decimal, cap: int, free: FreeAllowance | None = None
) -> tuple[int, Decimal]:
    """What a failover route would grant and hold (the pricer of :meth:`Ledger.regrant`);
    (0, 0) when the credit cannot pay its first block."""
    try:
        return _pricer(route, cap, free.seconds if free is not None else 0)(available)
    except InsufficientCreditError:
        return 0, Decimal(0)


def flow_settings(settings: Settings) -> FlowSettings:
    """The flows' policy from the settings."""
    billing = settings.billing
    return FlowSettings(
        international_prefixes=tuple(billing.international_prefixes),
        dial_ring_seconds=billing.dial_ring_seconds,
        dial_warning_seconds=billing.dial_warning_seconds,
        dial_warning_repeat_seconds=billing.dial_warning_repeat_seconds,
        max_call_seconds=billing.max_call_seconds,
        timezone=billing.timezone,
        server=settings.server_name or socket.gethostname(),
        max_setups=settings.agi.max_setups,
        setup_wait_ms=settings.agi.setup_wait_ms,
        recordings_dir=settings.wholesale.recordings_dir,
        source_address_exprs=(
            ("PJSIP", settings.wholesale.source_address_pjsip),
            ("SIP", settings.wholesale.source_address_sip),
            ("IAX2", settings.wholesale.source_address_iax2),
        ),
    )
