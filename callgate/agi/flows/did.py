"""The ``did`` flow: an inbound number routed to its destination and billed to its customer.

``AGI(agi://host:4573/did[,<number>])`` — the DID is the argument, else ``agi_extension`` (else
``agi_dnid`` when the extension is ``s``). The flow looks the DID up, takes its customer account,
and then, like the ``call`` flow:

- reserve on the customer's account (its channel and CPS limits apply) for the DID's retail price
  per minute (billed per second);
- ``EXEC Dial`` the destination with ``U(callgate-answered^<uniqueid>)L(<granted ms>)``: an
  account's SIP/IAX friend (``PJSIP/<alias>``...) or an extension (``Local/<exten>@<context>``)
  as is; a NUMBER through the customer's call plan (its first route and that trunk's failover
  chain), where the customer pays the DID retail price plus the outbound route's price for the
  same seconds;
- settle: the charge goes through the same ledger; the provider's cost per minute (plus the
  outbound route's buy price) is the record's ``buy_cost``, the provider trunk its ``trunk``.

Refusals: an unknown, inactive or unassigned DID -> ``NO_ACCOUNT``; the customer's account
unusable, out of credit or over its limits -> the ledger's status (``NO_CREDIT``,
``CHANNEL_LIMIT``...). The monthly retail price is charged by ``callgate dids charge``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal

from callgate.agi.errors import AgiError
from callgate.agi.flows.call import (
    FAILOVER_STATUSES,
    CallFlows,
    CallState,
    _pricer,
    normalise_for_plan,
)
from callgate.agi.session import AgiSession
from callgate.rating import InsufficientCreditError, Rate, RatingError, Route, cost, find_routes
from callgate.schema.tables import EnabledStatus
from callgate.store.dids import DestinationKind, Did, normalise_did
from callgate.store.errors import InvalidDataError, StoreError
from callgate.store.ports import DidDirectory, Refused, TrunkInfo

log = logging.getLogger(__name__)

DID_TABLE = "did"  # the rate table name on the billing record of a DID call


def did_rate(did: Did) -> Rate:
    """The DID's prices as a rate: retail per minute, provider cost as the buy rate, per second."""
    return Rate(
        prefix=did.number,
        rate=did.retail_rate,
        buy_rate=did.provider_cost,
        destination=f"DID {did.number}",
        trunk=did.provider_trunk or None,
    )


def combined_pricer(
    first: Rate, second: Rate, cap: int
) -> Callable[[Decimal], tuple[int, Decimal]]:
    """Grant for a call billed at two rates for the same seconds: the largest d <= cap with
    cost(first, d) + cost(second, d) <= available (both never decrease as d grows)."""

    def total(seconds: int) -> Decimal:
        return cost(first, seconds) + cost(second, seconds)

    def price(available: Decimal) -> tuple[int, Decimal]:
        if cap < 1 or total(1) > available:
            raise InsufficientCreditError(first.prefix, available, total(1))
        low, high = 1, cap
        while low < high:
            middle = (low + high + 1) // 2
            if total(middle) <= available:
                low = middle
            else:
                high = middle - 1
        return low, total(low)

    return price


class DidFlow:
    """The ``did`` handler; it shares the call flow's ports, Dial and settle."""

    def __init__(self, flows: CallFlows, dids: DidDirectory) -> None:
        self.flows = flows
        self.dids = dids

    async def did(self, session: AgiSession) -> None:
        flows = self.flows
        env = session.env
        state = flows._new_state(session, "did")
        inbound = env.args[0] if env.args and env.args[0] else env.extension
        if inbound in ("", "s", "unknown"):
            inbound = env.dnid
        state.dialled = inbound
        try:
            number = normalise_did(inbound)
        except InvalidDataError as exc:
            await flows._finish(session, state, "NO_ACCOUNT", str(exc))
            return
        try:
            did = await self.dids.find_did(number)
            account = None
            if did is not None and did.account_id is not None:
                account = await flows.accounts.find_by_id(did.account_id)
        except StoreError as exc:
            await flows._finish(session, state, "ERROR", f"DID lookup failed: {exc}")
            return
        if did is None or did.status is not EnabledStatus.ACTIVE or account is None:
            await flows._finish(session, state, "NO_ACCOUNT", f"no active, assigned DID {number}")
            return
        state.account = account
        try:
            await self._route_and_dial(session, state, did)
        except Exception:
            log.exception("%s: unexpected error in the did flow", state.uniqueid)
            if state.dialled_out:
                raise  # the reservation stays open: the reaper settles it from the CDR
            if state.reserved:
                await flows._release(state, "unexpected error before Dial")
            await flows._set_outcome(session, "ERROR", state)
            raise

    async def _route_and_dial(self, session: AgiSession, state: CallState, did: Did) -> None:
        flows = self.flows
        account = state.account
        assert account is not None
        rate = did_rate(did)
        cap = flows.settings.max_call_seconds
        chain: list[TrunkInfo]
        if did.kind is DestinationKind.NUMBER:
            plan = flows.plans.plan(account.call_plan_id)
            try:
                state.number = normalise_for_plan(
                    flows.plans, flows.settings, account.call_plan_id, did.destination
                )
            except RatingError as exc:
                await flows._finish(session, state, "NO_RATE", str(exc))
                return
            at = state.started_at.astimezone(flows.zone)
            routes = find_routes(plan, state.number, at) if plan is not None else ()
            if not routes:
                await flows._finish(session, state, "NO_RATE", f"no rate for {state.number}")
                return
            route = routes[0]
            cap = min(cap, plan.max_call_seconds if plan is not None else cap)
            state.surcharge = rate  # the DID's retail and provider prices, same seconds
            price = combined_pricer(route.rate, rate, cap)
            chain = flows._trunk_chain(route.trunk)
            if not chain:
                await flows._finish(session, state, "ROUTE_FAILED", "no active trunk for the route")
                return
        else:
            route = Route(rate, DID_TABLE, 0, did.provider_trunk or None)
            state.number = did.number
            state.dial_destination = did.destination
            price = _pricer(route, cap)
            chain = [TrunkInfo(name=did.provider_trunk or DID_TABLE, technology="Local", peer="")]
        state.route = route
        try:
            reserved = await flows.ledger.reserve(
                account_id=account.id,
                uniqueid=state.uniqueid,
                price=price,
                now=state.started_at,
                trunk=route.trunk or "",
                rate_id=None,
                asterisk=state.asterisk,
            )
        except Refused as exc:
            await flows._finish(session, state, exc.status, exc.reason)
            return
        except StoreError as exc:
            await flows._finish(session, state, "ERROR", f"reservation failed: {exc}")
            return
        state.reserved = True
        state.granted = reserved.granted_seconds
        try:
            state.pending_vars["CALLGATE_ACCOUNT"] = account.number
            state.pending_vars["CALLGATE_MAXSEC"] = state.granted
            for trunk in chain:
                state.attempt = await flows._dial_once(session, state, trunk)
                if state.attempt.dial_status not in FAILOVER_STATUSES or session.hung_up:
                    break
        except AgiError as exc:
            if not state.dialled_out:
                await flows._release(state, f"before Dial: {exc}")
                await flows._finish(session, state, "ERROR", f"AGI failed before Dial: {exc}")
                return
            flows._log_call(state, "ERROR", Decimal(0), f"outcome unknown after Dial: {exc}")
            return
        await flows._settle(session, state)
