"""Packages: free minutes, free calls or unlimited calls for a set of prefixes, per period.

- A package has a kind (``free_minutes``, ``free_calls``, ``unlimited``), a period (``daily``,
  ``weekly``, ``monthly``, in the operator's time zone: keys ``2026-11-22``, ``2026-W47``,
  ``2026-11``), a quantity (minutes or calls per period and unit), a price (per period and unit)
  and the prefixes it covers (none: every number).
- An account holds packages (``account_packages``) with a quantity of units and an optional
  auto-decrement: ``callgate packages charge`` takes price x units from the balance once per
  account, package and period (``period_charges`` has a unique key, so running it twice charges
  once).
- A call whose normalised number a package covers is granted its free seconds first: the
  flow HOLDS them before it reserves (:func:`hold_free_seconds`, one transaction under the
  account-package row lock, so two concurrent calls never share the same free seconds), grants
  free seconds + what the credit pays beyond them, and charges only the seconds beyond them
  (``cost(rate, billsec - free)``). After the call :func:`settle_usage` turns the hold into the
  seconds used (idempotent by uniqueid); a call that never went out releases it. A hold whose
  session died counts until its ``expires_at`` (the call's grant plus grace), then no more.
- ``free_calls``: an answered call is free whole (up to the grant); an unanswered one uses
  nothing. ``unlimited``: every covered call is free.
- Several covering packages: the first assigned with something left is used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Table, and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callgate.schema.tables import (
    ChargeKind,
    PackageKind,
    PackagePeriod,
    PackageUseStatus,
    PaymentKind,
    account_packages,
    accounts,
    package_usage,
    packages,
    period_charges,
)
from callgate.store._errors_map import mapped_errors
from callgate.store.db import write_transaction
from callgate.store.errors import ConflictError, InvalidDataError, NotFoundError
from callgate.store.payments import record_charge

log = logging.getLogger(__name__)
ZERO = Decimal(0)
_PAYMENT_KIND = {
    ChargeKind.DID: PaymentKind.DID_CHARGE,
    ChargeKind.PACKAGE: PaymentKind.PACKAGE_CHARGE,
}


@dataclass(frozen=True, slots=True)
class Package:
    id: int
    name: str
    kind: PackageKind
    period: PackagePeriod
    quantity: int  # minutes (free_minutes) or calls (free_calls) per period and unit
    price: Decimal  # per period and unit
    prefixes: tuple[str, ...]  # empty: every number
    description: str = ""

    def covers(self, number: str) -> bool:
        return not self.prefixes or any(number.startswith(p) for p in self.prefixes)


@dataclass(frozen=True, slots=True)
class Assignment:
    """A package held by an account."""

    id: int
    account_id: int
    account: str  # the account's number
    package: Package
    quantity: int
    auto_decrement: bool


@dataclass(frozen=True, slots=True)
class FreeAllowance:
    """Free seconds held for one call."""

    uniqueid: str
    account_package_id: int
    package: str
    kind: PackageKind
    period: str
    seconds: int  # free seconds of this call (the whole cap for free calls / unlimited)


@dataclass(frozen=True, slots=True)
class PeriodCharge:
    account_id: int
    kind: ChargeKind
    ref_id: int
    period: str
    amount: Decimal
    charged: bool  # False: already charged for that period (nothing moved)


def period_key(period: PackagePeriod, now: datetime, zone: ZoneInfo) -> str:
    local = now.astimezone(zone)
    if period is PackagePeriod.DAILY:
        return local.strftime("%Y-%m-%d")
    if period is PackagePeriod.WEEKLY:
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    return local.strftime("%Y-%m")


def parse_prefixes(text: str) -> tuple[str, ...]:
    items = tuple(p.strip() for p in text.split(",") if p.strip())
    for item in items:
        if not item.isdigit():
            raise InvalidDataError(f"a package prefix must be digits: {item!r}")
    return items


def package_from_row(row: Any) -> Package:
    m = row._mapping
    return Package(
        id=m["id"],
        name=m["name"],
        kind=PackageKind(m["kind"]),
        period=PackagePeriod(m["period"]),
        quantity=m["quantity"],
        price=m["price"],
        prefixes=parse_prefixes(m["prefixes"]),
        description=m["description"],
    )


# ------------------------------------------------------------------ packages and assignments


async def add_package(
    conn: AsyncConnection,
    name: str,
    kind: PackageKind,
    *,
    period: PackagePeriod = PackagePeriod.MONTHLY,
    quantity: int = 0,
    price: Decimal = ZERO,
    prefixes: str = "",
    description: str = "",
) -> Package:
    if not name.strip():
        raise InvalidDataError("a package needs a name")
    if quantity < 0 or price < 0:
        raise InvalidDataError("the quantity and the price cannot be negative")
    if kind is not PackageKind.UNLIMITED and quantity == 0:
        raise InvalidDataError(f"a {kind.value} package needs a quantity")
    values = {
        "name": name.strip(),
        "kind": kind.value,
        "period": period.value,
        "quantity": quantity,
        "price": price,
        "prefixes": ",".join(parse_prefixes(prefixes)),
        "description": description,
    }
    async with mapped_errors(f"package {name}"):
        new_id = int(await conn.scalar(insert(packages).values(**values).returning(packages.c.id)))
        await never_reuse_a_charged_id(conn, packages, ChargeKind.PACKAGE, new_id)
    return await fetch_package(conn, name.strip())


async def never_reuse_a_charged_id(
    conn: AsyncConnection, table: Table, kind: ChargeKind, new_id: int
) -> None:
    """Move a new row of ``table`` (packages, DIDs) past every id a kept charge names.

    ``period_charges.ref_id`` is no foreign key: the charges of a removed package or DID stay
    (with their payment rows). SQLite gives a new row the highest id + 1, so after the newest
    one is removed the next one would get its id and inherit its charged periods (`packages
    charge` or `dids charge` would skip it). PostgreSQL's sequence never hands an id out twice,
    so there this moves nothing.
    """
    charged = await conn.scalar(
        select(func.max(period_charges.c.ref_id)).where(period_charges.c.kind == kind.value)
    )
    if charged is not None and new_id <= int(charged):
        highest = int(await conn.scalar(select(func.max(table.c.id))) or 0)
        await conn.execute(
            update(table).where(table.c.id == new_id).values(id=max(highest, int(charged)) + 1)
        )


async def fetch_package(conn: AsyncConnection, name: str, *, lock: bool = False) -> Package:
    query = select(packages).where(packages.c.name == name)
    if lock:
        query = query.with_for_update()
    async with mapped_errors("package"):
        row = (await conn.execute(query)).first()
    if row is None:
        raise NotFoundError(f"no package {name!r}")
    return package_from_row(row)


async def list_packages(conn: AsyncConnection) -> list[Package]:
    async with mapped_errors("packages"):
        rows = await conn.execute(select(packages).order_by(packages.c.name))
        return [package_from_row(r) for r in rows]


PACKAGE_FIELDS = frozenset(
    {"name", "kind", "period", "quantity", "price", "prefixes", "description"}
)
_HELD_FIELDS = ("kind", "period")  # what accounts' charged periods and usage depend on


async def holders(conn: AsyncConnection, package_id: int) -> int:
    """How many accounts hold the package."""
    return int(
        await conn.scalar(
            select(func.count())
            .select_from(account_packages)
            .where(account_packages.c.package_id == package_id)
        )
        or 0
    )


async def update_package(conn: AsyncConnection, name: str, changes: dict[str, Any]) -> Package:
    """Change package ``name``: ``changes`` holds the :data:`PACKAGE_FIELDS` to set (``kind``
    and ``period`` as their enums, ``prefixes`` as text), the others stay. Run it in a write
    transaction.

    The kind and the period are refused (ConflictError) while accounts hold the package: the
    periods already charged and the free seconds already used are counted by them. The
    quantity, price, prefixes, description and name may change at any time; a new price is
    charged from the next period not yet charged, new prefixes reach running servers with the
    package coverage (30 s).
    """
    unknown = set(changes) - PACKAGE_FIELDS
    if unknown:
        raise InvalidDataError(f"unknown package field(s): {', '.join(sorted(unknown))}")
    current = await fetch_package(conn, name, lock=True)
    values: dict[str, Any] = {}
    for field, value in changes.items():
        if field == "prefixes":
            value = parse_prefixes(str(value))
        if field == "name":
            value = str(value).strip()
            if not value:
                raise InvalidDataError("a package needs a name")
        if value != getattr(current, field):
            values[field] = value
    if not values:
        return current
    kind = values.get("kind", current.kind)
    quantity = values.get("quantity", current.quantity)
    price = values.get("price", current.price)
    if quantity < 0 or price < 0:
        raise InvalidDataError("the quantity and the price cannot be negative")
    if kind is not PackageKind.UNLIMITED and quantity == 0:
        raise InvalidDataError(f"a {kind.value} package needs a quantity")
    changing = [f for f in _HELD_FIELDS if f in values]
    if changing:
        held = await holders(conn, current.id)
        if held:
            raise ConflictError(
                f"package {name!r} is held by {held} account(s): its {' and '.join(changing)} "
                "cannot change while accounts hold it (their charged periods and used free "
                "seconds count by them); unassign it first, or add a new package; "
                "nothing changed"
            )
    if "name" in values and await conn.scalar(
        select(packages.c.id).where(packages.c.name == values["name"])
    ):
        raise ConflictError(f"package {values['name']!r} exists; nothing changed")
    for field in ("kind", "period"):
        if field in values:
            values[field] = values[field].value
    if "prefixes" in values:
        values["prefixes"] = ",".join(values["prefixes"])
    async with mapped_errors(f"package {name}"):
        await conn.execute(update(packages).where(packages.c.id == current.id).values(**values))
    return await fetch_package(conn, str(values.get("name", current.name)))


async def remove_package(conn: AsyncConnection, name: str) -> Package:
    """Remove package ``name``; returns it as it was. Run it in a write transaction.

    Refused (ConflictError) while accounts hold it (`packages unassign` first). Its charges are
    kept: the ``period_charges`` rows and their ``package_charge`` payments stay, and no later
    package takes its id (:func:`add_package`).
    """
    current = await fetch_package(conn, name, lock=True)
    held = await holders(conn, current.id)
    if held:
        raise ConflictError(
            f"package {name!r} is held by {held} account(s): unassign it first "
            f"(`callgate packages list` shows them per account); nothing removed"
        )
    async with mapped_errors(f"package {name}"):
        await conn.execute(delete(packages).where(packages.c.id == current.id))
    return current


def _assignment_query() -> Any:
    return (
        select(
            account_packages.c.id.label("ap_id"),
            account_packages.c.account_id,
            account_packages.c.quantity.label("ap_quantity"),
            account_packages.c.auto_decrement,
            accounts.c.number.label("account_number"),
            packages,
        )
        .select_from(
            account_packages.join(packages, packages.c.id == account_packages.c.package_id).join(
                accounts, accounts.c.id == account_packages.c.account_id
            )
        )
        .order_by(account_packages.c.account_id, account_packages.c.id)
    )


def _assignment(row: Any) -> Assignment:
    m = row._mapping
    return Assignment(
        id=m["ap_id"],
        account_id=m["account_id"],
        account=m["account_number"],
        package=package_from_row(row),
        quantity=m["ap_quantity"],
        auto_decrement=bool(m["auto_decrement"]),
    )


async def assign(
    conn: AsyncConnection,
    account_id: int,
    package_name: str,
    *,
    quantity: int = 1,
    auto_decrement: bool = False,
) -> Assignment:
    if quantity < 1:
        raise InvalidDataError("the quantity of a package is at least 1")
    package = await fetch_package(conn, package_name)
    async with mapped_errors(f"package {package_name}"):
        await conn.execute(
            insert(account_packages).values(
                account_id=account_id,
                package_id=package.id,
                quantity=quantity,
                auto_decrement=auto_decrement,
            )
        )
        row = (
            await conn.execute(
                _assignment_query().where(
                    account_packages.c.account_id == account_id,
                    account_packages.c.package_id == package.id,
                )
            )
        ).one()
    return _assignment(row)


async def unassign(conn: AsyncConnection, account_id: int, package_name: str) -> Assignment:
    """Take the package from the account; returns the assignment as it was. The free seconds
    it used go with it; its charges stay."""
    package = await fetch_package(conn, package_name)
    where = (
        account_packages.c.account_id == account_id,
        account_packages.c.package_id == package.id,
    )
    async with mapped_errors(f"package {package_name}"):
        row = (
            await conn.execute(
                _assignment_query().where(*where).with_for_update(of=account_packages)
            )
        ).first()
        if row is None:
            raise NotFoundError(f"the account does not hold package {package_name!r}")
        await conn.execute(delete(account_packages).where(*where))
    return _assignment(row)


async def list_assignments(
    conn: AsyncConnection, account_id: int | None = None
) -> list[Assignment]:
    query = _assignment_query()
    if account_id is not None:
        query = query.where(account_packages.c.account_id == account_id)
    async with mapped_errors("package assignments"):
        return [_assignment(r) for r in await conn.execute(query)]


# ------------------------------------------------------------------ free seconds on the call path


def _counted(now: datetime) -> Any:
    """Usage rows that count: settled ones, and holds not yet expired."""
    return or_(
        package_usage.c.status == PackageUseStatus.SETTLED.value,
        and_(
            package_usage.c.status == PackageUseStatus.OPEN.value,
            package_usage.c.expires_at > now,
        ),
    )


async def used_in_period(
    conn: AsyncConnection, assignment: Assignment, period: str, now: datetime
) -> int:
    """Seconds (free minutes) or calls (free calls) used of an assignment in a period."""
    where = and_(
        package_usage.c.account_package_id == assignment.id,
        package_usage.c.period == period,
        _counted(now),
    )
    if assignment.package.kind is PackageKind.FREE_CALLS:
        answered_or_open = or_(
            package_usage.c.status == PackageUseStatus.OPEN.value, package_usage.c.seconds > 0
        )
        used = await conn.scalar(
            select(func.count()).select_from(package_usage).where(where, answered_or_open)
        )
    else:
        used = await conn.scalar(
            select(func.coalesce(func.sum(package_usage.c.seconds), 0)).where(where)
        )
    return int(used or 0)


async def _free_seconds(
    conn: AsyncConnection,
    *,
    account_id: int,
    number: str,
    cap: int,
    now: datetime,
    zone: ZoneInfo,
    lock: bool,
) -> tuple[Assignment, str, int] | None:
    """The first assignment of the account that covers ``number`` with seconds left: the
    assignment, the period and the free seconds of the call (None: nothing covers it)."""
    query = _assignment_query().where(account_packages.c.account_id == account_id)
    if lock:
        query = query.with_for_update(of=account_packages)
    for row in (await conn.execute(query)).all():
        held = _assignment(row)
        package = held.package
        if not package.covers(number):
            continue
        period = period_key(package.period, now, zone)
        if package.kind is PackageKind.UNLIMITED:
            seconds = cap
        else:
            used = await used_in_period(conn, held, period, now)
            total = package.quantity * held.quantity
            if package.kind is PackageKind.FREE_CALLS:
                seconds = cap if used < total else 0
            else:
                seconds = min(cap, total * 60 - used)
        if seconds > 0:
            return held, period, seconds
    return None


async def hold_free_seconds(
    engine: AsyncEngine,
    *,
    account_id: int,
    uniqueid: str,
    number: str,
    cap: int,
    now: datetime,
    zone: ZoneInfo,
    hold_seconds: int,
    asterisk: str = "",
) -> FreeAllowance | None:
    """Hold the free seconds of a call to ``number`` (None: no package covers it or none left).

    One transaction; the account's package rows are locked, so concurrent calls of the account
    (on any callgate server) never count the same free seconds twice. The hold counts until
    ``now + hold_seconds``.
    """
    async with mapped_errors("package hold"), write_transaction(engine) as conn:
        found = await _free_seconds(
            conn, account_id=account_id, number=number, cap=cap, now=now, zone=zone, lock=True
        )
        if found is None:
            return None
        held, period, seconds = found
        await conn.execute(
            insert(package_usage).values(
                account_package_id=held.id,
                uniqueid=uniqueid,
                asterisk=asterisk,
                period=period,
                seconds=seconds,
                status=PackageUseStatus.OPEN.value,
                expires_at=now + timedelta(seconds=hold_seconds),
                created_at=now,
            )
        )
        package = held.package
        return FreeAllowance(uniqueid, held.id, package.name, package.kind, period, seconds)


async def peek_free_seconds(
    engine: AsyncEngine,
    *,
    account_id: int,
    uniqueid: str,
    number: str,
    cap: int,
    now: datetime,
    zone: ZoneInfo,
) -> FreeAllowance | None:
    """What :func:`hold_free_seconds` would hold now, holding nothing (``callgate simulate``)."""
    async with mapped_errors("package quote"), engine.connect() as conn:
        found = await _free_seconds(
            conn, account_id=account_id, number=number, cap=cap, now=now, zone=zone, lock=False
        )
    if found is None:
        return None
    held, period, seconds = found
    package = held.package
    return FreeAllowance(uniqueid, held.id, package.name, package.kind, period, seconds)


async def settle_usage(
    engine: AsyncEngine, uniqueid: str, used_seconds: int, *, asterisk: str = ""
) -> bool:
    """The hold becomes the free seconds the call used; False if it was no longer open."""
    async with mapped_errors("package settle"), write_transaction(engine) as conn:
        result = await conn.execute(
            update(package_usage)
            .where(
                package_usage.c.uniqueid == uniqueid,
                package_usage.c.asterisk == asterisk,
                package_usage.c.status == PackageUseStatus.OPEN.value,
            )
            .values(status=PackageUseStatus.SETTLED.value, seconds=max(0, used_seconds))
        )
    return bool(result.rowcount)


async def release_usage(engine: AsyncEngine, uniqueid: str, *, asterisk: str = "") -> bool:
    """Give the held free seconds back (the call never went out)."""
    async with mapped_errors("package release"), write_transaction(engine) as conn:
        result = await conn.execute(
            update(package_usage)
            .where(
                package_usage.c.uniqueid == uniqueid,
                package_usage.c.asterisk == asterisk,
                package_usage.c.status == PackageUseStatus.OPEN.value,
            )
            .values(status=PackageUseStatus.RELEASED.value, seconds=0)
        )
    return bool(result.rowcount)


async def coverage(conn: AsyncConnection) -> dict[int, tuple[tuple[str, ...], ...]]:
    """Per account, the prefix sets of its packages (``()`` = every number): the call flow
    holds this in memory so that accounts without a covering package run no package SQL."""
    out: dict[int, list[tuple[str, ...]]] = {}
    async with mapped_errors("package coverage"):
        for row in await conn.execute(_assignment_query()):
            assignment = _assignment(row)
            out.setdefault(assignment.account_id, []).append(assignment.package.prefixes)
    return {k: tuple(v) for k, v in out.items()}


# ------------------------------------------------------------------ period charges


async def charge_once(
    engine: AsyncEngine,
    *,
    account_id: int,
    kind: ChargeKind,
    ref_id: int,
    period: str,
    amount: Decimal,
    description: str,
    now: datetime,
) -> PeriodCharge:
    """Take ``amount`` from the balance once for (account, kind, ref, period).

    Under the account row lock: a second run finds the charge and moves nothing; the unique key
    on ``period_charges`` backs that up. The same transaction writes the ``did_charge`` /
    ``package_charge`` payment row, so the charge shows in ``payments list``.
    """
    async with mapped_errors("period charge"), write_transaction(engine) as conn:
        await conn.execute(
            select(accounts.c.id).where(accounts.c.id == account_id).with_for_update()
        )
        done = await conn.scalar(
            select(period_charges.c.id).where(
                period_charges.c.account_id == account_id,
                period_charges.c.kind == kind.value,
                period_charges.c.ref_id == ref_id,
                period_charges.c.period == period,
            )
        )
        if done is not None:
            return PeriodCharge(account_id, kind, ref_id, period, amount, charged=False)
        await conn.execute(
            insert(period_charges).values(
                account_id=account_id,
                kind=kind.value,
                ref_id=ref_id,
                period=period,
                amount=amount,
                description=description,
                created_at=now,
            )
        )
        await record_charge(
            conn, account_id, amount, kind=_PAYMENT_KIND[kind], description=description, now=now
        )
        await conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(balance=accounts.c.balance - amount, updated_at=now)
        )
    log.info("charged account %s %s for %s %s", account_id, amount, description, period)
    return PeriodCharge(account_id, kind, ref_id, period, amount, charged=True)


async def charge_packages(
    engine: AsyncEngine,
    *,
    now: datetime,
    zone: ZoneInfo,
    period: PackagePeriod | None = None,
) -> list[PeriodCharge]:
    """Run a period: every auto-decrement assignment (of packages of ``period``, or all) is
    charged price x units for the period that holds ``now``, once."""
    async with engine.connect() as conn:
        assignments = [a for a in await list_assignments(conn) if a.auto_decrement]
    out: list[PeriodCharge] = []
    for held in assignments:
        package = held.package
        if period is not None and package.period is not period:
            continue
        key = period_key(package.period, now, zone)
        out.append(
            await charge_once(
                engine,
                account_id=held.account_id,
                kind=ChargeKind.PACKAGE,
                ref_id=package.id,
                period=key,
                amount=package.price * held.quantity,
                description=f"package {package.name} x{held.quantity} {key}",
                now=now,
            )
        )
    return out
