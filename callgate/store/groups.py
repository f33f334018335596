"""Customer groups: a way to divide customers (calling-card customers, wholesale customers...)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import accounts, customer_groups
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import ConflictError, InvalidDataError, NotFoundError

NAME_LENGTH = 64


@dataclass(frozen=True, slots=True)
class CustomerGroup:
    id: int
    name: str
    description: str
    accounts: int = 0
    created_at: datetime | None = None


async def create_group(conn: AsyncConnection, name: str, description: str = "") -> CustomerGroup:
    """Create a group; its name is unique."""
    name = name.strip()
    if not name or len(name) > NAME_LENGTH:
        raise InvalidDataError(f"a group name needs 1..{NAME_LENGTH} characters")
    async with mapped_errors(f"group {name}"):
        if await conn.scalar(select(customer_groups.c.id).where(customer_groups.c.name == name)):
            raise ConflictError(f"group {name!r} exists")
        row = (
            await conn.execute(
                insert(customer_groups)
                .values(name=name, description=description)
                .returning(customer_groups)
            )
        ).one()
    return CustomerGroup(row.id, row.name, row.description, 0, row.created_at)


async def fetch_group(conn: AsyncConnection, name: str) -> CustomerGroup:
    row = (
        await conn.execute(select(customer_groups).where(customer_groups.c.name == name))
    ).first()
    if row is None:
        raise NotFoundError(f"no customer group named {name!r}")
    count = await conn.scalar(
        select(func.count()).select_from(accounts).where(accounts.c.group_id == row.id)
    )
    return CustomerGroup(row.id, row.name, row.description, int(count or 0), row.created_at)


async def list_groups(conn: AsyncConnection) -> list[CustomerGroup]:
    """Every group with how many accounts it holds, by name."""
    members = (
        select(accounts.c.group_id, func.count().label("n"))
        .where(accounts.c.group_id.is_not(None))
        .group_by(accounts.c.group_id)
        .subquery()
    )
    query = (
        select(customer_groups, func.coalesce(members.c.n, 0).label("n"))
        .outerjoin(members, members.c.group_id == customer_groups.c.id)
        .order_by(customer_groups.c.name)
    )
    return [
        CustomerGroup(r.id, r.name, r.description, int(r.n), r.created_at)
        for r in await conn.execute(query)
    ]


async def remove_group(conn: AsyncConnection, name: str, *, force: bool = False) -> CustomerGroup:
    """Delete a group. Refused while accounts are in it, unless ``force`` (they become ungrouped).

    Returns the group as it was: its ``accounts`` are how many were ungrouped.
    """
    await conn.execute(
        select(customer_groups.c.id).where(customer_groups.c.name == name).with_for_update()
    )
    group = await fetch_group(conn, name)
    if group.accounts and not force:
        raise ConflictError(
            f"group {name!r} holds {group.accounts} account(s); move them first or use --force"
        )
    async with mapped_errors(f"group {name}"):
        await conn.execute(
            update(accounts).where(accounts.c.group_id == group.id).values(group_id=None)
        )
        await conn.execute(delete(customer_groups).where(customer_groups.c.id == group.id))
    return group
