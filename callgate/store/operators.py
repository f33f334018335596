"""Operators of the web console: logins with an argon2 password hash, and the console's secret.

The store keeps the hash it is given; hashing and verifying live in ``callgate.web.security``
(the store never sees a password). A login is unique whatever its case
(``ux_operators_login_lower``) and looked up case-insensitively.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Row, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import operators
from callgate.schema.tables import settings as settings_table
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import ConflictError, InvalidDataError, NotFoundError

LOGIN_MAX = 64
WEB_SECRET_KEY = "web.secret"


@dataclass(frozen=True, slots=True)
class Operator:
    id: int
    login: str
    password_hash: str
    created_at: datetime
    disabled: bool


def check_login(login: str) -> str:
    """A login: 1..64 printable characters without spaces."""
    text = login.strip()
    if (
        not text
        or len(text) > LOGIN_MAX
        or not text.isprintable()
        or any(c.isspace() for c in text)
    ):
        raise InvalidDataError(
            f"an operator login is 1 to {LOGIN_MAX} characters without spaces: {login!r}"
        )
    return text


def _operator(row: Row[tuple[object, ...]]) -> Operator:
    m = row._mapping
    return Operator(
        id=int(m["id"]),
        login=str(m["login"]),
        password_hash=str(m["password_hash"]),
        created_at=m["created_at"],
        disabled=bool(m["disabled"]),
    )


async def add_operator(conn: AsyncConnection, login: str, password_hash: str) -> Operator:
    """Add an operator with an already computed hash; runs in the caller's transaction."""
    name = check_login(login)
    if await find_operator(conn, name) is not None:
        raise ConflictError(f"operator {name!r} already exists (logins ignore case)")
    async with mapped_errors():
        new_id = await conn.scalar(
            insert(operators)
            .values(login=name, password_hash=password_hash, created_at=datetime.now(UTC))
            .returning(operators.c.id)
        )
    found = await get_operator(conn, int(new_id or 0))
    assert found is not None
    return found


async def find_operator(conn: AsyncConnection, login: str) -> Operator | None:
    """The operator with this login in any case, or None."""
    row = (
        await conn.execute(
            select(operators).where(func.lower(operators.c.login) == login.strip().lower())
        )
    ).first()
    return None if row is None else _operator(row)


async def get_operator(conn: AsyncConnection, operator_id: int) -> Operator | None:
    row = (await conn.execute(select(operators).where(operators.c.id == operator_id))).first()
    return None if row is None else _operator(row)


async def list_operators(conn: AsyncConnection) -> list[Operator]:
    rows = (await conn.execute(select(operators).order_by(func.lower(operators.c.login)))).all()
    return [_operator(r) for r in rows]


async def remove_operator(conn: AsyncConnection, login: str) -> Operator:
    """Remove an operator (and, by cascade, their API tokens)."""
    found = await find_operator(conn, login)
    if found is None:
        raise NotFoundError(f"no operator {login!r}")
    await conn.execute(delete(operators).where(operators.c.id == found.id))
    return found


async def set_password_hash(conn: AsyncConnection, login: str, password_hash: str) -> Operator:
    found = await find_operator(conn, login)
    if found is None:
        raise NotFoundError(f"no operator {login!r}")
    await conn.execute(
        update(operators).where(operators.c.id == found.id).values(password_hash=password_hash)
    )
    return Operator(found.id, found.login, password_hash, found.created_at, found.disabled)


async def set_disabled(conn: AsyncConnection, login: str, disabled: bool) -> Operator:
    found = await find_operator(conn, login)
    if found is None:
        raise NotFoundError(f"no operator {login!r}")
    await conn.execute(
        update(operators).where(operators.c.id == found.id).values(disabled=disabled)
    )
    return Operator(found.id, found.login, found.password_hash, found.created_at, disabled)


async def web_secret(conn: AsyncConnection) -> str:
    """The secret that signs the console's cookies when ``[web] secret`` is empty: generated on
    first use and kept in the settings table, so restarts and other processes share it."""
    key = settings_table.c.key
    value = await conn.scalar(select(settings_table.c.value).where(key == WEB_SECRET_KEY))
    if value:
        return str(value)
    secret = secrets.token_urlsafe(48)
    async with mapped_errors():
        await conn.execute(
            insert(settings_table).values(
                key=WEB_SECRET_KEY,
                value=secret,
                description="signs the web console's session cookies ([web] secret empty)",
                updated_at=datetime.now(UTC),
            )
        )
    return secret
