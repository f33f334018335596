"""API tokens: how an operator's program calls the JSON API (``Authorization: Bearer ...``).

A token is 32 random bytes (:mod:`secrets`), URL-safe base64 with the prefix ``cg_``; it is shown
once, when issued, and only its SHA-256 hex is kept (``api_tokens.token_hash``, unique). A token
is refused once revoked, and with its operator disabled or removed (the cascade deletes it).
Each accepted use stamps ``last_used_at``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, Select, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import api_tokens, operators
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import InvalidDataError, NotFoundError
from callgate.store.operators import find_operator

TOKEN_PREFIX = "cg_"
NAME_MAX = 64


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: int
    operator_id: int
    operator: str  # the operator's login
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """What :func:`authenticate` found: the token, or why it is refused."""

    token: ApiToken | None
    refused: str  # "" when accepted; else "unknown", "revoked" or "disabled"


def token_hash(token: str) -> str:
    """The SHA-256 hex of a token, as stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _token(m: Row[Any]) -> ApiToken:
    row = m._mapping
    return ApiToken(
        id=int(row["id"]),
        operator_id=int(row["operator_id"]),
        operator=str(row["login"]),
        name=str(row["name"]),
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked=bool(row["revoked"]),
    )


def _select() -> Select[Any]:
    return select(api_tokens, operators.c.login, operators.c.disabled).join(
        operators, operators.c.id == api_tokens.c.operator_id
    )


async def issue_token(conn: AsyncConnection, login: str, name: str = "") -> tuple[ApiToken, str]:
    """A new token for operator ``login``; returns it with the token text (shown once)."""
    label = name.strip()
    if len(label) > NAME_MAX or not label.isprintable():
        raise InvalidDataError(f"a token name is at most {NAME_MAX} printable characters")
    operator = await find_operator(conn, login)
    if operator is None:
        raise NotFoundError(f"no operator {login!r}")
    text = new_token()
    async with mapped_errors("API token"):
        new_id = await conn.scalar(
            insert(api_tokens)
            .values(
                operator_id=operator.id,
                name=label,
                token_hash=token_hash(text),
                created_at=datetime.now(UTC),
            )
            .returning(api_tokens.c.id)
        )
    found = await get_token(conn, int(new_id or 0))
    return found, text


async def get_token(conn: AsyncConnection, token_id: int) -> ApiToken:
    query = _select().where(api_tokens.c.id == token_id)
    row = (await conn.execute(query)).first()
    if row is None:
        raise NotFoundError(f"no API token with id {token_id}")
    return _token(row)


async def list_tokens(conn: AsyncConnection, login: str | None = None) -> list[ApiToken]:
    """Every token (of one operator when ``login`` is given), oldest first."""
    query = _select().order_by(api_tokens.c.id)
    if login is not None:
        operator = await find_operator(conn, login)
        if operator is None:
            raise NotFoundError(f"no operator {login!r}")
        query = query.where(api_tokens.c.operator_id == operator.id)
    return [_token(r) for r in await conn.execute(query)]


async def revoke_token(conn: AsyncConnection, token_id: int) -> ApiToken:
    """Revoke a token for good (a revoked token is never accepted again)."""
    found = await get_token(conn, token_id)
    if found.revoked:
        raise InvalidDataError(f"API token {token_id} is already revoked")
    await conn.execute(update(api_tokens).where(api_tokens.c.id == token_id).values(revoked=True))
    return await get_token(conn, token_id)


async def authenticate(conn: AsyncConnection, token: str, *, now: datetime) -> TokenCheck:
    """Check a presented token; when accepted, stamp its ``last_used_at`` (caller commits)."""
    query = _select().where(api_tokens.c.token_hash == token_hash(token))
    row = (await conn.execute(query)).first()
    if row is None:
        return TokenCheck(None, "unknown")
    found = _token(row)
    if found.revoked:
        return TokenCheck(found, "revoked")
    if bool(row._mapping["disabled"]):
        return TokenCheck(found, "disabled")
    await conn.execute(
        update(api_tokens).where(api_tokens.c.id == found.id).values(last_used_at=now)
    )
    return TokenCheck(found, "")
