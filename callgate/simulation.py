"""The whole decision of a call without Asterisk (ConnexCS's Simulate), for ``callgate simulate``
and the web console's Simulate page.

It runs the live flow's :class:`~callgate.agi.flows.call.CallDecision` (identification with IP
authentication and tech prefix, caller ID rules, rating, free package seconds, the ledger's
checks and grant, the Dial string) over read-only ports: nothing is reserved, held or charged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.agi.flows.call import CallDecision, CallState, flow_settings, route_grant
from callgate.config import Settings
from callgate.store import ledger
from callgate.store.accounts import fetch_account
from callgate.store.callstore import QuoteLedger, SimulatedRouting, SimulatedWholesale, SqlAccounts

SIMULATED_UNIQUEID = "simulated"


async def simulate_call(
    settings: Settings,
    engine: AsyncEngine,
    *,
    number: str,
    account_key: str = "",
    callerid: str = "",
    accountcode: str = "",
    source_ip: str = "",
    at: datetime,
) -> dict[str, Any]:
    """The decision for a call to ``number`` at ``at``, as plain data (``--json``'s keys)."""
    policy = flow_settings(settings)
    routing = SimulatedRouting(engine)
    wholesale = SimulatedWholesale(engine, zone=ZoneInfo(settings.billing.timezone))
    await routing.refresh()
    await wholesale.refresh()
    decision = CallDecision(
        accounts=SqlAccounts(engine),
        plans=routing,
        credit=QuoteLedger(engine),
        settings=policy,
        ips=wholesale,
        cli_rules=wholesale,
        packages=wholesale,
    )
    state = CallState(
        uniqueid=SIMULATED_UNIQUEID,
        script="call",
        started_at=at,
        channel="",
        callerid=callerid,
        dialled=number,
        source_address=source_ip,
    )
    verdict = await decision.decide(state, accountcode=accountcode, argument=account_key)
    result: dict[str, Any] = {
        "status": verdict.status,
        "reason": verdict.reason,
        "checks": [],
        "number": state.number,
        "routes": [],
        "granted_seconds": state.granted if verdict.status == "OK" else 0,
        "free_seconds": state.free.seconds if state.free is not None else 0,
        "reserve": "0",
        "callerid": state.presented_callerid or state.callerid,
        "dial": verdict.dial if verdict.status == "OK" else "",
    }
    checks: list[str] = result["checks"]
    if state.ip is not None:
        checks.append(
            f"identified by IP entry {state.ip.id} ({state.ip.address}, tech prefix "
            f"{state.ip.tech_prefix or '-'})"
        )
    if state.account is None:
        checks.append(verdict.reason)
        return result
    async with engine.connect() as conn:
        account = await fetch_account(conn, state.account.id)
        available = await ledger.available_credit(conn, account)
        in_use = await ledger.open_reservations(conn, account.id)
    result["account"] = {
        "id": account.id,
        "number": account.number,
        "alias": account.alias,
        "status": account.status.value,
        "balance": account.balance,
        "debit_limit": account.debit_limit,
        "in_use": in_use,
        "available": available,
    }
    if account.channel_limit is not None:
        checks.append(f"channels {in_use}/{account.channel_limit}")
    checks.append(f"available credit {available}")
    if state.free is not None:
        checks.append(f"package {state.free.package}: {state.free.seconds} free seconds")
    if state.presented_callerid:
        checks.append(f"caller ID presented as {state.presented_callerid}")
    if verdict.reason:
        checks.append(verdict.reason)
    if verdict.status == "OK" and not verdict.dial:
        checks.append("the first route has no active trunk: the server fails over")
    routes = []
    for position, route in enumerate(verdict.routes):
        if position == 0 and verdict.status == "OK":
            seconds, amount = state.granted, verdict.amount
        else:
            seconds, amount = route_grant(route, available, verdict.cap, state.free)
        routes.append(
            {
                "table": route.table,
                "priority": route.priority,
                "prefix": route.rate.prefix,
                "destination": route.rate.destination,
                "rate": route.rate.rate,
                "buy_rate": route.rate.buy_rate,
                "trunk": route.trunk or "",
                "granted_seconds": seconds,
                "reserve": amount,
            }
        )
    result["routes"] = routes
    if routes and verdict.status == "OK":
        result["reserve"] = routes[0]["reserve"]
    return result
