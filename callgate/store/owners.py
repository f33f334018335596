"""Who holds a unique value: the text of a duplicate-entry error an operator can act on.

A value operators give (an IP entry, a caller ID, a DID, a friend name, a contact e-mail) is
unique across accounts. When it is taken, the error names what exists and the account that owns
it, by alias and name, never by the secret account number: "IP 10.0.0.1/32 is already assigned
to account alice (Alice Smith)".
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import accounts
from callgate.store.errors import ConflictError


async def account_label(conn: AsyncConnection, account_id: int | None) -> str:
    """``account alice (Alice Smith)``; ``no account`` for an unassigned row."""
    if account_id is None:
        return "no account"
    row = (
        await conn.execute(
            select(
                accounts.c.alias, accounts.c.first_name, accounts.c.last_name, accounts.c.company
            ).where(accounts.c.id == account_id)
        )
    ).first()
    if row is None:
        return f"account #{account_id}"
    name = " ".join(part for part in (row.first_name, row.last_name) if part) or row.company
    return f"account {row.alias} ({name})" if name else f"account {row.alias}"


async def taken_by(conn: AsyncConnection, table: Table, *where: Any) -> ConflictError | None:
    """A ConflictError naming the owner when a row of ``table`` matches ``where``, else None.

    ``table`` must have an ``account_id`` column. The caller words ``what`` exists.
    """
    row = (await conn.execute(select(table.c.account_id).where(*where).limit(1))).first()
    if row is None:
        return None
    return ConflictError(await account_label(conn, row.account_id))


async def refuse_taken(conn: AsyncConnection, what: str, table: Table, *where: Any) -> None:
    """Raise ``ConflictError("<what> is already assigned to <owner>")`` when taken."""
    found = await taken_by(conn, table, *where)
    if found is not None:
        raise ConflictError(f"{what} is already assigned to {found}")
