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

from sqlalchemy import delete, func, insert, select, update
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
    name, email = name.strip(), _check_email(email)
    if not name:
        raise InvalidDataError("a contact needs a name")
    generated = None
    if password is None:
        generated = password = generate_password()
    _check_password(password)
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


def _key_is(key: str) -> Any:
    """A contact by id (digits) or by e-mail (any case)."""
    return contacts.c.id == int(key) if key.isdigit() else _email_is(key)


def _check_email(email: str) -> str:
    email = email.strip().lower()
    if "@" not in email or len(email) > 128:
        raise InvalidDataError(f"not an e-mail address: {email!r}")
    return email


def _check_password(password: str) -> str:
    if len(password) < 8:
        raise InvalidDataError("a contact password needs at least 8 characters")
    return password


async def fetch_account_contact(
    conn: AsyncConnection, account_id: int, key: str, *, lock: bool = False
) -> Contact:
    """The account's contact by e-mail (any case) or id; NotFoundError if none."""
    query = select(contacts).where(_key_is(key), contacts.c.account_id == account_id)
    if lock:
        query = query.with_for_update()
    async with mapped_errors("contact"):
        row = (await conn.execute(query)).first()
    if row is None:
        raise NotFoundError(f"the account has no contact {key!r}")
    return _contact(row)


CONTACT_FIELDS = frozenset({"name", "email", "public_notes", "private_notes"})


async def update_contact(
    conn: AsyncConnection, account_id: int, key: str, changes: dict[str, str]
) -> Contact:
    """Change a contact's name, e-mail, public or private notes (the keys of ``changes``; the
    others stay). The e-mail is a portal login: unique whatever its case (ConflictError naming
    the account that has it); a contact may change the case of its own."""
    unknown = set(changes) - CONTACT_FIELDS
    if unknown:
        raise InvalidDataError(f"unknown contact field(s): {', '.join(sorted(unknown))}")
    current = await fetch_account_contact(conn, account_id, key, lock=True)
    values = dict(changes)
    if "name" in values:
        values["name"] = values["name"].strip()
        if not values["name"]:
            raise InvalidDataError("a contact needs a name")
    if "email" in values:
        values["email"] = _check_email(values["email"])
    values = {k: v for k, v in values.items() if v != getattr(current, k)}
    if not values:
        return current
    async with mapped_errors(f"contact {values.get('email', current.email)}"):
        if "email" in values:
            await refuse_taken(
                conn,
                f"contact e-mail {values['email']}",
                contacts,
                _email_is(values["email"]),
                contacts.c.id != current.id,
            )
        row = (
            await conn.execute(
                update(contacts)
                .where(contacts.c.id == current.id)
                .values(**values)
                .returning(contacts)
            )
        ).one()
    return _contact(row)


async def set_password(
    conn: AsyncConnection, account_id: int, key: str, password: str | None = None
) -> tuple[Contact, str | None]:
    """Give a contact a new password (generated when ``password`` is None: returned, shown
    once). Only the new hash is kept; the portal checks each session against a fingerprint of
    the hash, so every session of the contact ends at its next request."""
    generated = None
    if password is None:
        generated = password = generate_password()
    _check_password(password)
    current = await fetch_account_contact(conn, account_id, key, lock=True)
    async with mapped_errors(f"contact {current.email}"):
        row = (
            await conn.execute(
                update(contacts)
                .where(contacts.c.id == current.id)
                .values(password_hash=hash_password(password))
                .returning(contacts)
            )
        ).one()
    return _contact(row), generated


async def remove_contact(conn: AsyncConnection, account_id: int, key: str) -> Contact:
    """Remove a contact of the account, by e-mail or id; returns the contact removed."""
    async with mapped_errors("contact"):
        row = (
            await conn.execute(
                delete(contacts)
                .where(_key_is(key), contacts.c.account_id == account_id)
                .returning(contacts)
            )
        ).first()
    if row is None:
        raise NotFoundError(f"the account has no contact {key!r}")
    return _contact(row)
