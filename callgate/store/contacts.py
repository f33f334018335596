"""Contacts of an account (ConnexCS): a name, a login e-mail, a password kept only as a hash, and
public notes (shown on the customer portal) and private notes (the operators' own).

Passwords are hashed with scrypt (:func:`hashlib.scrypt`, a random 16-byte salt) and stored as
``scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>``; :func:`verify_password` checks one in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import contacts
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import InvalidDataError, NotFoundError
from callgate.store.owners import refuse_taken

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_KEY_LENGTH = 32
PASSWORD_LENGTH = 16
_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


@dataclass(frozen=True, slots=True)
class Contact:
    id: int
    account_id: int
    name: str
    email: str
    public_notes: str
    private_notes: str
    has_password: bool
    created_at: datetime | None = None


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """A random password (CSPRNG) without look-alike characters."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def hash_password(password: str) -> str:
    """The scrypt hash of ``password`` with a fresh random salt, as one string."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=_KEY_LENGTH
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${key.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches a hash made by :func:`hash_password`."""
    try:
        scheme, n, r, p, salt_hex, key_hex = stored.split("$")
        if scheme != "scrypt":
            return False
        key = hashlib.scrypt(
            password.encode("utf-8"),
            salt=bytes.fromhex(salt_hex),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(key_hex) // 2,
        )
    except ValueError:
        return False
    return hmac.compare_digest(key.hex(), key_hex)


def _contact(row: object) -> Contact:
    m = row._mapping  # type: ignore[attr-defined]
    return Contact(
        id=m["id"],
        account_id=m["account_id"],
        name=m["name"],
        email=m["email"],
        public_notes=m["public_notes"],
        private_notes=m["private_notes"],
        has_password=m["password_hash"] is not None,
        created_at=m["created_at"],
    )


async def add_contact(
    conn: AsyncConnection,
    account_id: int,
    *,
    name: str,
    email: str,
    password: str | None = None,
    public_notes: str = "",
    private_notes: str = "",
) -> tuple[Contact, str | None]:
    """Add a contact; without ``password`` one is generated and returned (shown once).

    Returns the contact and the generated password (None when the caller gave one).
    """
    name, email = name.strip(), email.strip().lower()
    if not name:
        raise InvalidDataError("a contact needs a name")
    if "@" not in email or len(email) > 128:
        raise InvalidDataError(f"not an e-mail address: {email!r}")
    generated = None
    if password is None:
        generated = password = generate_password()
    elif len(password) < 8:
        raise InvalidDataError("a contact password needs at least 8 characters")
    async with mapped_errors(f"contact {email}"):
        await refuse_taken(conn, f"contact e-mail {email}", contacts, _email_is(email))
        row = (
            await conn.execute(
                insert(contacts)
                .values(
                    account_id=account_id,
                    name=name,
                    email=email,
                    password_hash=hash_password(password),
                    public_notes=public_notes,
                    private_notes=private_notes,
                )
                .returning(contacts)
            )
        ).one()
    return _contact(row), generated


def _email_is(email: str) -> Any:
    """The contact whose e-mail (the portal login) is ``email``, whatever the case, as the
    unique index on ``lower(email)`` compares."""
    return func.lower(contacts.c.email) == func.lower(email.strip())


async def list_contacts(conn: AsyncConnection, account_id: int) -> list[Contact]:
    query = select(contacts).where(contacts.c.account_id == account_id).order_by(contacts.c.id)
    return [_contact(r) for r in await conn.execute(query)]


async def fetch_contact_hash(conn: AsyncConnection, email: str) -> str | None:
    """The stored password hash of a contact (for the portal's login check)."""
    row = (await conn.execute(select(contacts.c.password_hash).where(_email_is(email)))).first()
    if row is None:
        raise NotFoundError(f"no contact with e-mail {email!r}")
    return None if row[0] is None else str(row[0])


async def remove_contact(conn: AsyncConnection, account_id: int, key: str) -> None:
    """Remove a contact of the account, by e-mail or id."""
    where = _email_is(key)
    if key.isdigit():
        where = contacts.c.id == int(key)
    result = await conn.execute(delete(contacts).where(where, contacts.c.account_id == account_id))
    if result.rowcount == 0:
        raise NotFoundError(f"the account has no contact {key!r}")
