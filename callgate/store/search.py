"""The account search criteria, built once and shared by list, batch update, delete-all and export.

A2Billing's "Search Customers" combines several criteria; so does :class:`AccountCriteria`: every
criterion given must hold (AND). Matching rules, the same everywhere:

- ``number``, ``alias``, ``callerid``: exact, unless the pattern holds ``*`` (any run of
  characters), e.g. ``--number '4420*'``; the alias (a login) in any case.
- ``name``: case-insensitive, against the first name, the last name or "first last"; exact unless
  it holds ``*``.
- ``group``, ``plan``: by name (exact). ``statuses``: any of them. ``language``, ``currency``:
  exact (the currency case-insensitively).
- ``balance_min``/``balance_max``: inclusive, base currency. ``created_from`` inclusive,
  ``created_before`` exclusive (the CLI turns ``--created-to DAY`` into the next midnight).
- ``ip``: an address or a CIDR block, matched against ``account_ips``: an account matches when one
  of its addresses or blocks overlaps the one given (the address itself, a block containing it,
  or an address inside the block given); host names match exactly.
- ``text``: free text, case-insensitive substring of the first or last name, company, e-mail,
  account number or alias.

:func:`account_filter` turns criteria into one SQL boolean over ``accounts`` (subqueries only, no
joins), so the same expression can drive a SELECT, an UPDATE or a DELETE. Everything is filtered,
sorted and paged in SQL; only the IP overlap test runs in Python, over ``account_ips``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import (
    AccountStatus,
    account_callerids,
    account_ips,
    accounts,
    call_plans,
    customer_groups,
)
from callgate.store.errors import InvalidDataError

_ESCAPE = "\\"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AccountCriteria:
    """Which accounts an operation applies to; empty means every account."""

    number: str | None = None
    alias: str | None = None
    name: str | None = None
    group: str | None = None
    plan: str | None = None
    statuses: tuple[AccountStatus, ...] = ()
    balance_min: Decimal | None = None
    balance_max: Decimal | None = None
    created_from: datetime | None = None
    created_before: datetime | None = None
    language: str | None = None
    currency: str | None = None
    callerid: str | None = None
    ip: str | None = None
    text: str | None = None

    def is_empty(self) -> bool:
        """True when no criterion is given (the operation would apply to every account)."""
        return all(getattr(self, f.name) in (None, (), "") for f in dataclasses.fields(self))

    def describe(self) -> str:
        """The criteria given, for messages: ``status=active, group=wholesale``."""
        parts: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value in (None, (), ""):
                continue
            if isinstance(value, tuple):
                value = ",".join(str(v) for v in value)
            parts.append(f"{f.name}={value}")
        return ", ".join(parts) or "all accounts"


def _like_pattern(pattern: str, *, glob: bool) -> str:
    escaped = (
        pattern.replace(_ESCAPE, _ESCAPE * 2)
        .replace("%", _ESCAPE + "%")
        .replace("_", _ESCAPE + "_")
    )
    return escaped.replace("*", "%") if glob else f"%{escaped}%"


def _match(column: Any, pattern: str, *, ci: bool = False) -> ColumnElement[bool]:
    """Exact match, or a LIKE when the pattern holds ``*``; ``ci`` compares in lower case."""
    left = func.lower(column) if ci else column
    value = pattern.lower() if ci else pattern
    if "*" in value:
        return left.like(_like_pattern(value, glob=True), escape=_ESCAPE)
    return left == value


def parse_ip(text: str) -> IpNetwork | str:
    """An address or CIDR block as a network (a host is a /32 or /128), else the text itself.

    A stored value that is neither (a host name) is returned lower-cased, to be matched exactly.
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return text.strip().lower()


def _ip_matches(wanted: IpNetwork | str, stored: IpNetwork | str) -> bool:
    if isinstance(wanted, str) or isinstance(stored, str):
        return wanted == stored
    if wanted.version != stored.version:
        return False
    return wanted.overlaps(stored)


async def _accounts_with_ip(conn: AsyncConnection, ip: str) -> list[int]:
    wanted = parse_ip(ip)
    if isinstance(wanted, str) and not wanted:
        raise InvalidDataError("the IP criterion is empty")
    found: set[int] = set()
    rows = await conn.execute(select(account_ips.c.account_id, account_ips.c.address))
    for account_id, address in rows:
        if account_id not in found and _ip_matches(wanted, parse_ip(address)):
            found.add(account_id)
    return sorted(found)


async def account_filter(conn: AsyncConnection, criteria: AccountCriteria) -> ColumnElement[bool]:
    """One SQL condition over ``accounts`` for ``criteria`` (usable in SELECT, UPDATE, DELETE)."""
    c = accounts.c
    conditions: list[ColumnElement[bool]] = []
    if criteria.number:
        conditions.append(_match(c.number, criteria.number))
    if criteria.alias:
        conditions.append(_match(c.alias, criteria.alias, ci=True))  # a login: any case
    if criteria.name:
        full = func.lower(c.first_name + " " + c.last_name)
        name = criteria.name
        conditions.append(
            or_(
                _match(c.first_name, name, ci=True),
                _match(c.last_name, name, ci=True),
                _match(full, name, ci=True),
            )
        )
    if criteria.group:
        conditions.append(
            c.group_id.in_(
                select(customer_groups.c.id).where(customer_groups.c.name == criteria.group)
            )
        )
    if criteria.plan:
        conditions.append(
            c.call_plan_id.in_(select(call_plans.c.id).where(call_plans.c.name == criteria.plan))
        )
    if criteria.statuses:
        conditions.append(c.status.in_([str(s) for s in criteria.statuses]))
    if criteria.balance_min is not None:
        conditions.append(c.balance >= criteria.balance_min)
    if criteria.balance_max is not None:
        conditions.append(c.balance <= criteria.balance_max)
    if criteria.created_from is not None:
        conditions.append(c.created_at >= criteria.created_from)
    if criteria.created_before is not None:
        conditions.append(c.created_at < criteria.created_before)
    if criteria.language:
        conditions.append(c.language == criteria.language)
    if criteria.currency:
        conditions.append(c.currency == criteria.currency.upper())
    if criteria.callerid:
        conditions.append(
            c.id.in_(
                select(account_callerids.c.account_id).where(
                    _match(account_callerids.c.callerid, criteria.callerid)
                )
            )
        )
    if criteria.ip:
        ids = await _accounts_with_ip(conn, criteria.ip)
        conditions.append(c.id.in_(ids) if ids else false())
    if criteria.text:
        pattern = _like_pattern(criteria.text.lower(), glob=False)
        conditions.append(
            or_(
                *(
                    func.lower(column).like(pattern, escape=_ESCAPE)
                    for column in (
                        c.first_name,
                        c.last_name,
                        c.company,
                        c.email,
                        c.number,
                        c.alias,
                    )
                )
            )
        )
    return and_(true(), *conditions)
