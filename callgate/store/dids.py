"""DIDs: inbound numbers, where their calls go, and what they cost and earn.

A DID has a destination — an account's SIP/IAX friend (``PJSIP/<alias>``, ``SIP/<alias>``,
``IAX2/<alias>``), an extension (``Local/<exten>@<context>``) or another number (digits, dialled
out through the customer's call plan) — a provider (the trunk the number comes in on, and its
cost per minute) and a customer (the account billed, at the retail price per minute; the monthly
retail price is charged by ``callgate dids charge``, once per account, DID and month).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callgate.schema.tables import ChargeKind, EnabledStatus, accounts, dids, trunks
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import InvalidDataError, NotFoundError
from callgate.store.owners import refuse_taken
from callgate.store.packages import PeriodCharge, charge_once, never_reuse_a_charged_id

_FRIEND = re.compile(r"(PJSIP|SIP|IAX2)/[A-Za-z0-9_.@+\-]+")
_LOCAL = re.compile(r"Local/[0-9A-Za-z_*#+\-]+@[A-Za-z0-9_\-]+")
_NUMBER = re.compile(r"\+?[0-9]{3,32}")


class DestinationKind(StrEnum):
    FRIEND = "friend"  # PJSIP/<alias>, SIP/<alias>, IAX2/<alias>: dialled as is
    EXTENSION = "extension"  # Local/<exten>@<context>: dialled as is
    NUMBER = "number"  # dialled out through the customer's call plan


def parse_destination(text: str) -> tuple[DestinationKind, str]:
    value = text.strip()
    if _FRIEND.fullmatch(value):
        return DestinationKind.FRIEND, value
    if _LOCAL.fullmatch(value):
        return DestinationKind.EXTENSION, value
    if _NUMBER.fullmatch(value):
        return DestinationKind.NUMBER, value
    raise InvalidDataError(
        f"a DID destination is PJSIP/<alias>, SIP/<alias>, IAX2/<alias>, "
        f"Local/<exten>@<context> or a number: {text!r}"
    )


# a DID as people write it: an optional leading +, groups of digits (one may be in brackets)
# with at most one space, dash or dot between groups: +1 (555) 123-0000, 44 20 7946 0000
_DID_GROUP = r"(?:\([0-9]+\)|[0-9]+)"
_DID_TEXT = re.compile(rf"\+?{_DID_GROUP}(?:[ .\-]?{_DID_GROUP})*")
DID_MIN_DIGITS = 3
DID_MAX_DIGITS = 32  # dids.number is String(32)


def normalise_did(number: str) -> str:
    """The DID's digits, with the usual visual separators dropped.

    Anything else is refused rather than rewritten (``44-hello-9`` is not DID 449): ASCII digits
    only, one optional leading ``+``, a single space, dash or dot between groups of digits, a
    group possibly in brackets (``+1 (555) 123-0000``), and
    :data:`DID_MIN_DIGITS`..:data:`DID_MAX_DIGITS` digits in all. Only characters that can never
    be part of a number are dropped, so no two different texts a person means as different
    numbers become one DID.
    """
    text = number.strip()
    if not (text.isascii() and _DID_TEXT.fullmatch(text)):
        raise InvalidDataError(
            f"not a DID number: {number!r} (digits with an optional leading +; a space, dash, "
            "dot or brackets may only separate groups of digits)"
        )
    digits = "".join(ch for ch in text if ch.isdigit())
    if not DID_MIN_DIGITS <= len(digits) <= DID_MAX_DIGITS:
        raise InvalidDataError(
            f"not a DID number: {number!r} has {len(digits)} digits "
            f"({DID_MIN_DIGITS}..{DID_MAX_DIGITS})"
        )
    return digits


@dataclass(frozen=True, slots=True)
class Did:
    id: int
    number: str
    destination: str
    kind: DestinationKind
    account_id: int | None
    account: str  # the customer's account number ("" when unassigned)
    provider_trunk: str  # "" when none
    provider_cost: Decimal  # per minute
    retail_rate: Decimal  # per minute
    retail_monthly: Decimal
    status: EnabledStatus
    description: str = ""


def _query() -> Any:
    return (
        select(dids, accounts.c.number.label("account_number"), trunks.c.name.label("trunk_name"))
        .select_from(
            dids.outerjoin(accounts, accounts.c.id == dids.c.account_id).outerjoin(
                trunks, trunks.c.id == dids.c.provider_trunk_id
            )
        )
        .order_by(dids.c.number)
    )


def did_from_row(row: Any) -> Did:
    m = row._mapping
    return Did(
        id=m["id"],
        number=m["number"],
        destination=m["destination"],
        kind=parse_destination(m["destination"])[0],
        account_id=m["account_id"],
        account=m["account_number"] or "",
        provider_trunk=m["trunk_name"] or "",
        provider_cost=m["provider_cost"],
        retail_rate=m["retail_rate"],
        retail_monthly=m["retail_monthly"],
        status=EnabledStatus(m["status"]),
        description=m["description"],
    )


def _money(name: str, value: Decimal) -> Decimal:
    if value < 0:
        raise InvalidDataError(f"{name} cannot be negative")
    return value


async def add_did(
    conn: AsyncConnection,
    number: str,
    destination: str,
    *,
    account_id: int | None,
    provider_trunk: str | None = None,
    provider_cost: Decimal = Decimal(0),
    retail_rate: Decimal = Decimal(0),
    retail_monthly: Decimal = Decimal(0),
    description: str = "",
) -> Did:
    digits = normalise_did(number)
    _, dest = parse_destination(destination)
    async with mapped_errors(f"DID {digits}"):
        await refuse_taken(conn, f"DID {digits}", dids, dids.c.number == digits)
        trunk_id: int | None = None
        if provider_trunk:
            trunk_id = await conn.scalar(select(trunks.c.id).where(trunks.c.name == provider_trunk))
            if trunk_id is None:
                raise NotFoundError(f"no trunk {provider_trunk!r}")
        new_id = await conn.scalar(
            insert(dids)
            .values(
                number=digits,
                destination=dest,
                account_id=account_id,
                provider_trunk_id=trunk_id,
                provider_cost=_money("the provider cost", provider_cost),
                retail_rate=_money("the retail rate", retail_rate),
                retail_monthly=_money("the monthly retail price", retail_monthly),
                description=description,
            )
            .returning(dids.c.id)
        )
        await never_reuse_a_charged_id(conn, dids, ChargeKind.DID, int(new_id))
    found = await fetch_did(conn, digits)
    assert found is not None
    return found


async def fetch_did(conn: AsyncConnection, number: str) -> Did | None:
    async with mapped_errors("DID lookup"):
        row = (await conn.execute(_query().where(dids.c.number == number))).first()
    return None if row is None else did_from_row(row)


async def list_dids(conn: AsyncConnection, account_id: int | None = None) -> list[Did]:
    query = _query()
    if account_id is not None:
        query = query.where(dids.c.account_id == account_id)
    async with mapped_errors("DID list"):
        return [did_from_row(r) for r in await conn.execute(query)]


async def remove_did(conn: AsyncConnection, number: str) -> Did:
    """Remove a DID; returns it as it was (the row is locked, then read, then deleted)."""
    digits = normalise_did(number)
    async with mapped_errors(f"DID {digits}"):
        await conn.execute(select(dids.c.id).where(dids.c.number == digits).with_for_update())
        found = await fetch_did(conn, digits)
        if found is None:
            raise NotFoundError(f"no DID {digits}")
        await conn.execute(delete(dids).where(dids.c.number == digits))
    return found


async def charge_monthly(
    engine: AsyncEngine, *, now: datetime, zone: ZoneInfo
) -> list[PeriodCharge]:
    """Charge every assigned, active DID's monthly retail price for the month of ``now``.

    Idempotent: one charge per account, DID and month (a unique key), whatever runs it twice.
    """
    period = now.astimezone(zone).strftime("%Y-%m")
    async with mapped_errors("DID charges"), engine.connect() as conn:
        rows = (
            await conn.execute(
                select(dids.c.id, dids.c.number, dids.c.account_id, dids.c.retail_monthly).where(
                    dids.c.account_id.is_not(None),
                    dids.c.status == EnabledStatus.ACTIVE.value,
                )
            )
        ).all()
    out: list[PeriodCharge] = []
    for row in rows:
        out.append(
            await charge_once(
                engine,
                account_id=row.account_id,
                kind=ChargeKind.DID,
                ref_id=row.id,
                period=period,
                amount=row.retail_monthly,
                description=f"DID {row.number} {period}",
                now=now,
            )
        )
    return out
