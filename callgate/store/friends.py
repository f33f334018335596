"""SIP and IAX friends of accounts (A2Billing's SIP and IAX buttons), and the "files stale" flag.

A friend is the peer an account's phone or PBX registers as. Its name is the account's alias
(the secret account number never names anything); its ``accountcode`` is the account number, so
that Asterisk gives it to the AGI as ``agi_accountcode`` and callgate knows who calls. The SIP
friend serves chan_sip (Asterisk <= 20) and PJSIP alike; the IAX friend serves chan_iax2.

Values Asterisk would misread are refused here, at input, with an error that names the field and
the character: a newline, CR or other control character, ``;`` (a comment), ``[``/``]`` or
``=`` or non-ASCII in a name, a codec list that is not a list of codec names... Each field has
its own grammar (:func:`validate_friend_fields`), strict enough that nothing written from it can
change the meaning of a generated file or of a Realtime row. Lengths fit Asterisk's own Realtime
columns (``sippeers.name`` is 40 characters).

Every change of a friend marks the generated configuration stale, in the same transaction, as
rows of the ``settings`` table (``confgen.stale.<target>``); ``callgate confgen write`` and
``callgate confgen realtime sync`` clear them (:func:`clear_stale` only clears a mark it saw, so
a change made while files were being written keeps its mark).
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import IpDirection, account_ips, accounts, iax_friends, sip_friends
from callgate.schema.tables import settings as settings_table
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import ConflictError, InvalidDataError, NotFoundError
from callgate.store.owners import refuse_taken

NAME_MAX = 40  # sippeers.name / iaxfriends.name are VARCHAR(40) in Asterisk's schema
SECRET_BYTES = 24  # token_urlsafe(24): 32 characters, 192 bits
RESERVED_NAMES = frozenset({"general", "globals", "global", "authentication", "system"})
STALE_PREFIX = "confgen.stale."
REALTIME_OWNED_KEY = "confgen.realtime.owned"


class FriendKind(StrEnum):
    """Which channel driver the friend is for."""

    SIP = "sip"  # chan_sip and PJSIP
    IAX = "iax"  # chan_iax2


class ConfTarget(StrEnum):
    """What confgen generates: three files and the Realtime tables."""

    SIP = "sip"
    PJSIP = "pjsip"
    IAX = "iax"
    REALTIME = "realtime"


TARGETS_OF: dict[FriendKind, tuple[ConfTarget, ...]] = {
    FriendKind.SIP: (ConfTarget.SIP, ConfTarget.PJSIP, ConfTarget.REALTIME),
    FriendKind.IAX: (ConfTarget.IAX, ConfTarget.REALTIME),
}

_TABLES = {FriendKind.SIP: sip_friends, FriendKind.IAX: iax_friends}
_LABEL = {FriendKind.SIP: "SIP", FriendKind.IAX: "IAX"}


@dataclass(frozen=True, slots=True)
class Friend:
    """One SIP or IAX friend, with the number of its account as ``accountcode``."""

    kind: FriendKind
    account_id: int
    accountcode: str  # the account number (secret to callers, Asterisk's accountcode)
    name: str
    secret: str = field(repr=False)
    host: str = "dynamic"
    context: str = "callgate"
    disallow: str = "all"
    allow: str = "ulaw,alaw"
    nat: str = ""
    dtmfmode: str = ""
    callerid: str = ""
    call_limit: int | None = None
    permit: str = ""
    deny: str = ""
    language: str = ""
    id: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def dynamic(self) -> bool:
        """True when the device registers (``host=dynamic``); else it sits at ``host``."""
        return self.host == "dynamic"


# -- validation --------------------------------------------------------------------------------

OPTION_FIELDS = (
    "host",
    "context",
    "disallow",
    "allow",
    "nat",
    "dtmfmode",
    "callerid",
    "call_limit",
    "permit",
    "deny",
    "language",
)
SIP_ONLY_FIELDS = frozenset({"nat", "dtmfmode", "call_limit", "permit", "deny"})
SIP_DEFAULTS: dict[str, Any] = {"nat": "force_rport,comedia", "dtmfmode": "rfc2833"}
NAT_TOKENS = frozenset(
    {"yes", "no", "never", "route", "force_rport", "comedia", "auto_force_rport", "auto_comedia"}
)
DTMF_MODES = frozenset({"rfc2833", "info", "shortinfo", "inband", "auto"})
CALL_LIMIT_MAX = 100_000

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
_CONTEXT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")
_CODEC_RE = re.compile(r"[a-z0-9_]+\Z")
_HOSTNAME_RE = re.compile(
    r"(?=.{1,40}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\Z"
)
_LANGUAGE_RE = re.compile(r"[a-z]{2,3}(?:[_-][A-Za-z0-9]{2,8})?\Z")


def describe_char(char: str) -> str:
    """A readable name for a refused character."""
    named = {
        "\n": "a newline",
        "\r": "a carriage return",
        "\t": "a tab",
        ";": "';' (starts a comment in Asterisk's files)",
        "[": "'[' (section brackets)",
        "]": "']' (section brackets)",
        "=": "'=' (separates option and value)",
        "\\": "a backslash (an escape in Asterisk's files)",
        " ": "a space",
        ",": "',' (separates list items)",
    }
    if char in named:
        return named[char]
    if unicodedata.category(char).startswith("C"):
        return f"control character U+{ord(char):04X}"
    if ord(char) > 127:
        return f"non-ASCII character {char!r}"
    return f"character {char!r}"


def _refuse(field_name: str, value: str, why: str) -> InvalidDataError:
    return InvalidDataError(f"{field_name} {value!r} refused: {why}")


def _first_bad(value: str) -> str | None:
    """The first character that is never safe in a value (control, ``;``, ``\\``)."""
    for char in value:
        if unicodedata.category(char).startswith("C") or char in ";\\":
            return char
    return None


def check_value(field_name: str, value: str) -> str:
    """Refuse characters no Asterisk value may hold: control characters (newline, CR...),
    ``;`` and ``\\``. Returns the value. Used for every field, and again by the renderers."""
    bad = _first_bad(value)
    if bad is not None:
        raise _refuse(field_name, value, f"it contains {describe_char(bad)}")
    if value != value.strip():
        raise _refuse(field_name, value, "leading or trailing spaces")
    return value


def validate_name(name: str, *, what: str = "friend name") -> str:
    """A peer, endpoint or section name: ASCII letters, digits and ``. _ + -``, 1..40."""
    if not name:
        raise InvalidDataError(f"{what} cannot be empty")
    if len(name) > NAME_MAX:
        raise _refuse(
            what,
            name,
            f"longer than {NAME_MAX} characters (Asterisk's sippeers.name); give another --name",
        )
    if not _NAME_RE.match(name):
        bad = next(
            (c for c in name if not (c.isascii() and (c.isalnum() or c in "._+-"))),
            name[0],
        )
        raise _refuse(
            what,
            name,
            f"it contains {describe_char(bad)}; a name may hold ASCII letters, digits and . _ + - "
            "and must start with a letter or digit",
        )
    if name.lower() in RESERVED_NAMES:
        raise _refuse(what, name, "reserved section name in Asterisk's files")
    return name


def _validate_host(value: str) -> str:
    value = check_value("host", value.strip())
    if value.lower() == "dynamic":
        return "dynamic"
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if _HOSTNAME_RE.match(value):
        return value.lower()
    raise _refuse("host", value, "not 'dynamic', an IP address or a host name (at most 40)")


def _validate_list(field_name: str, value: str, pattern: re.Pattern[str], limit: int) -> str:
    check_value(field_name, value.strip())
    items = [item.strip().lower() for item in value.split(",")]
    if not value.strip() or any(not item for item in items):
        raise _refuse(field_name, value, "an empty item in the comma-separated list")
    for item in items:
        if not pattern.match(item):
            bad = next((c for c in item if not (c.isascii() and (c.isalnum() or c == "_"))), item)
            raise _refuse(field_name, value, f"{item!r} is not a name ({describe_char(bad[0])})")
    joined = ",".join(dict.fromkeys(items))
    if len(joined) > limit:
        raise _refuse(field_name, value, f"longer than {limit} characters")
    return joined


def _validate_acl(field_name: str, value: str) -> str:
    check_value(field_name, value.strip())
    if not value.strip():
        return ""
    out: list[str] = []
    for item in value.split(","):
        text = item.strip()
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise _refuse(field_name, value, f"{text!r} is not an address or network") from exc
        out.append(network.with_prefixlen)
    joined = ",".join(dict.fromkeys(out))
    if len(joined) > 95:  # sippeers.permit / ps_endpoints.permit are VARCHAR(95)
        raise _refuse(field_name, value, "longer than 95 characters")
    return joined


def _validate_callerid(value: str) -> str:
    value = check_value("callerid", value.strip())
    if len(value) > 40:  # sippeers.callerid / ps_endpoints.callerid are VARCHAR(40)
        raise _refuse("callerid", value, "longer than 40 characters")
    if value.count('"') not in (0, 2) or value.count("<") != value.count(">"):
        raise _refuse("callerid", value, 'not of the form "Name" <number> or a number')
    return value


def _validate_one(kind: FriendKind, key: str, raw: Any) -> Any:
    if key == "call_limit":
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise InvalidDataError(f"call_limit must be an integer, not {raw!r}")
        if not 0 <= raw <= CALL_LIMIT_MAX:
            raise InvalidDataError(f"call_limit must be 0..{CALL_LIMIT_MAX}, not {raw}")
        return raw
    if not isinstance(raw, str):
        raise InvalidDataError(f"{key} must be text, not {raw!r}")
    bad = _first_bad(raw)  # before any trimming: a newline is refused, not silently dropped
    if bad is not None:
        raise _refuse(key, raw, f"it contains {describe_char(bad)}")
    if key == "host":
        return _validate_host(raw)
    if key == "context":
        value = check_value("context", raw.strip())
        if not _CONTEXT_RE.match(value) or len(value) > 40:
            bad = next((c for c in value if not (c.isascii() and (c.isalnum() or c in "_.+-"))), "")
            why = f"it contains {describe_char(bad)}" if bad else "not a dialplan context name"
            raise _refuse("context", value, why + " (ASCII letters, digits, _ . + -; at most 40)")
        return value
    if key in ("allow", "disallow"):
        return _validate_list(key, raw, _CODEC_RE, 200)
    if key == "nat":
        if not raw.strip():
            return ""
        value = _validate_list("nat", raw, re.compile(r"[a-z_]+\Z"), 29)
        unknown = [t for t in value.split(",") if t not in NAT_TOKENS]
        if unknown:
            raise _refuse(
                "nat", raw, f"unknown {unknown[0]!r}; use {', '.join(sorted(NAT_TOKENS))}"
            )
        return value
    if key == "dtmfmode":
        value = check_value("dtmfmode", raw.strip()).lower()
        if value and value not in DTMF_MODES:
            raise _refuse("dtmfmode", raw, f"use one of {', '.join(sorted(DTMF_MODES))}")
        return value
    if key == "callerid":
        return _validate_callerid(raw)
    if key in ("permit", "deny"):
        return _validate_acl(key, raw)
    if key == "language":
        value = check_value("language", raw.strip())
        if value and (not _LANGUAGE_RE.match(value) or len(value) > 8):
            raise _refuse("language", value, "not a language code such as en, fr or pt_BR")
        return value
    raise InvalidDataError(f"unknown friend field {key!r}")  # pragma: no cover - checked before


def validate_friend_fields(kind: FriendKind, values: Mapping[str, Any]) -> dict[str, Any]:
    """Normalised option values, or InvalidDataError naming the field and why.

    IAX friends take no ``nat``, ``dtmfmode``, ``call_limit``, ``permit`` or ``deny``: chan_iax2
    has no such per-peer options in Asterisk's ``iaxfriends`` table.
    """
    unknown = set(values) - set(OPTION_FIELDS)
    if unknown:
        raise InvalidDataError(f"unknown friend field(s): {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    for key, raw in values.items():
        if kind is FriendKind.IAX and key in SIP_ONLY_FIELDS and raw not in (None, ""):
            raise InvalidDataError(
                f"{key} is a SIP option: IAX friends have none (Asterisk's iaxfriends table has "
                "no such column)"
            )
        out[key] = _validate_one(kind, key, raw)
    if "disallow" in out and "allow" in out and out["disallow"] == "all" and not out["allow"]:
        raise InvalidDataError("allow must name at least one codec when disallow=all")
    return out


def generate_secret() -> str:
    """A strong random secret (CSPRNG, 192 bits; URL-safe characters only)."""
    return secrets.token_urlsafe(SECRET_BYTES)


# -- rows --------------------------------------------------------------------------------------


def _select(kind: FriendKind) -> Any:
    table = _TABLES[kind]
    return select(table, accounts.c.number.label("accountcode")).join(
        accounts, accounts.c.id == table.c.account_id
    )


def friend_from_row(kind: FriendKind, row: Row[Any] | Mapping[str, Any]) -> Friend:
    data = dict(row._mapping) if isinstance(row, Row) else dict(row)
    return Friend(
        kind=kind,
        account_id=int(data["account_id"]),
        accountcode=str(data["accountcode"]),
        name=data["name"],
        secret=data["secret"],
        host=data["host"],
        context=data["context"],
        disallow=data["disallow"],
        allow=data["allow"],
        nat=data["nat"],
        dtmfmode=data["dtmfmode"],
        callerid=data["callerid"],
        call_limit=data["call_limit"],
        permit=data["permit"],
        deny=data["deny"],
        language=data["language"],
        id=data["id"],
        created_at=data["created_at"],
        updated_at=data["updated_at"],
    )


async def find_friend(conn: AsyncConnection, kind: FriendKind, account_id: int) -> Friend | None:
    table = _TABLES[kind]
    row = (await conn.execute(_select(kind).where(table.c.account_id == account_id))).first()
    return None if row is None else friend_from_row(kind, row)


async def fetch_friend(conn: AsyncConnection, kind: FriendKind, account_id: int) -> Friend:
    friend = await find_friend(conn, kind, account_id)
    if friend is None:
        raise NotFoundError(f"account #{account_id} has no {_LABEL[kind]} friend")
    return friend


async def list_friends(conn: AsyncConnection, kind: FriendKind) -> list[Friend]:
    """Every friend of that kind, by name."""
    table = _TABLES[kind]
    rows = (await conn.execute(_select(kind).order_by(table.c.name))).all()
    return [friend_from_row(kind, row) for row in rows]


async def list_identify_addresses(conn: AsyncConnection) -> dict[int, tuple[str, ...]]:
    """Ingress IP authentication addresses (``account_ips``) by account id, sorted."""
    query = (
        select(account_ips.c.account_id, account_ips.c.address)
        .where(account_ips.c.direction == IpDirection.INGRESS.value)
        .order_by(account_ips.c.account_id, account_ips.c.address)
    )
    out: dict[int, list[str]] = {}
    for account_id, address in (await conn.execute(query)).all():
        if address not in out.setdefault(int(account_id), []):
            out[int(account_id)].append(str(address))
    return {k: tuple(v) for k, v in out.items()}


async def _account(conn: AsyncConnection, account_id: int) -> tuple[str, str]:
    row = (
        await conn.execute(
            select(accounts.c.number, accounts.c.alias).where(accounts.c.id == account_id)
        )
    ).first()
    if row is None:
        raise NotFoundError(f"no account with id {account_id}")
    return str(row.number), str(row.alias)


async def _refuse_name_taken(
    conn: AsyncConnection, kind: FriendKind, name: str, but: int | None
) -> None:
    """ConflictError naming the owner when another account's friend has ``name``."""
    table = _TABLES[kind]
    where = [table.c.name == name]
    if but is not None:
        where.append(table.c.account_id != but)
    await refuse_taken(conn, f"{_LABEL[kind]} friend name {name!r}", table, *where)


async def create_friend(
    conn: AsyncConnection,
    kind: FriendKind,
    account_id: int,
    *,
    name: str | None = None,
    **options: Any,
) -> Friend:
    """Give an account its SIP or IAX friend; runs in the caller's transaction.

    The name defaults to the account's alias; the secret is generated. An account has at most
    one friend of each kind. Marks the generated configuration stale.
    """
    async with mapped_errors(f"create {_LABEL[kind]} friend"):
        number, alias = await _account(conn, account_id)
        if await find_friend(conn, kind, account_id) is not None:
            raise ConflictError(f"account #{account_id} already has a {_LABEL[kind]} friend")
        chosen = validate_name(alias if name is None else name)
        if chosen == number:
            raise InvalidDataError("the account number is secret: it cannot name a friend")
        await _refuse_name_taken(conn, kind, chosen, None)
        values = dict(SIP_DEFAULTS) if kind is FriendKind.SIP else {}
        values.update({k: v for k, v in options.items() if v is not None})
        values = validate_friend_fields(kind, values)
        table = _TABLES[kind]
        await conn.execute(
            insert(table).values(
                account_id=account_id, name=chosen, secret=generate_secret(), **values
            )
        )
        await mark_stale(conn, TARGETS_OF[kind], f"{_LABEL[kind]} friend {chosen} added")
        return await fetch_friend(conn, kind, account_id)


async def update_friend(
    conn: AsyncConnection,
    kind: FriendKind,
    account_id: int,
    *,
    new_secret: bool = False,
    name: str | None = None,
    **changes: Any,
) -> Friend:
    """Change a friend's options (``None`` = keep), its name, or draw a new secret."""
    async with mapped_errors(f"update {_LABEL[kind]} friend"):
        current = await fetch_friend(conn, kind, account_id)
        values = validate_friend_fields(kind, {k: v for k, v in changes.items() if v is not None})
        if name is not None and name != current.name:
            values["name"] = validate_name(name)
            if values["name"] == current.accountcode:
                raise InvalidDataError("the account number is secret: it cannot name a friend")
            await _refuse_name_taken(conn, kind, values["name"], account_id)
        if new_secret:
            values["secret"] = generate_secret()
        changed = {k: v for k, v in values.items() if getattr(current, k) != v}
        if not changed:
            return current
        if changed.get("disallow", current.disallow) == "all" and not changed.get(
            "allow", current.allow
        ):
            raise InvalidDataError("allow must name at least one codec when disallow=all")
        table = _TABLES[kind]
        await conn.execute(
            update(table)
            .where(table.c.account_id == account_id)
            .values(**changed, updated_at=datetime.now(UTC))
        )
        what = ", ".join(sorted(changed))
        await mark_stale(conn, TARGETS_OF[kind], f"{_LABEL[kind]} friend {current.name} changed "
                         f"({what})")  # fmt: skip
        return await fetch_friend(conn, kind, account_id)


async def delete_friend(conn: AsyncConnection, kind: FriendKind, account_id: int) -> Friend:
    """Remove an account's friend; returns what was removed. Marks the configuration stale."""
    async with mapped_errors(f"remove {_LABEL[kind]} friend"):
        current = await fetch_friend(conn, kind, account_id)
        table = _TABLES[kind]
        await conn.execute(delete(table).where(table.c.account_id == account_id))
        await mark_stale(conn, TARGETS_OF[kind], f"{_LABEL[kind]} friend {current.name} removed")
        return current


# -- the stale flag and other confgen state (the settings table) -------------------------------


@dataclass(frozen=True, slots=True)
class StaleMark:
    """Why and since when a target's generated configuration is out of date."""

    target: ConfTarget
    at: datetime
    reason: str
    raw: str  # the stored value, compared by clear_stale


async def _put_setting(conn: AsyncConnection, key: str, value: str, description: str) -> None:
    now = datetime.now(UTC)
    values = {"key": key, "value": value, "description": description, "updated_at": now}
    stmt: Any
    if conn.dialect.name == "postgresql":
        stmt = pg_insert(settings_table).values(**values)
    else:
        stmt = sqlite_insert(settings_table).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[settings_table.c.key],
        set_={"value": value, "description": description, "updated_at": now},
    )
    await conn.execute(stmt)


async def _get_setting(conn: AsyncConnection, key: str) -> str | None:
    value = await conn.scalar(select(settings_table.c.value).where(settings_table.c.key == key))
    return None if value is None else str(value)


async def mark_stale(conn: AsyncConnection, targets: Iterable[ConfTarget], reason: str) -> None:
    """Record that the generated configuration of ``targets`` no longer matches the database.

    Public for the other writers of what confgen renders (``account_ips`` feeds PJSIP identify).
    """
    raw = json.dumps(
        {"at": datetime.now(UTC).isoformat(), "reason": reason, "token": secrets.token_hex(4)}
    )
    for target in targets:
        await _put_setting(
            conn, STALE_PREFIX + target.value, raw, "generated Asterisk configuration is stale"
        )


async def mark_friends_stale(conn: AsyncConnection, account_ids: Any, reason: str) -> None:
    """Mark the targets of the friends of ``account_ids`` (a SELECT of account ids, or one
    id) stale: call it, in the same transaction, before a change of those accounts that the
    generated configuration shows (their number is every friend's accountcode; deleting them
    deletes their friends). Accounts without friends mark nothing."""
    chosen = (
        account_ids
        if not isinstance(account_ids, int)
        else select(accounts.c.id).where(accounts.c.id == account_ids)
    )
    for kind, table in _TABLES.items():
        names = (
            await conn.scalars(
                select(table.c.name).where(table.c.account_id.in_(chosen)).order_by(table.c.name)
            )
        ).all()
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            await mark_stale(conn, TARGETS_OF[kind], f"{reason}: {_LABEL[kind]} friend {shown}")


IDENTIFY_TARGETS = (ConfTarget.PJSIP, ConfTarget.REALTIME)


async def mark_identify_stale(conn: AsyncConnection, account_id: int, reason: str) -> None:
    """An ingress IP of the account changed: its SIP friend's PJSIP ``identify`` (the file and
    the ``ps_endpoint_id_ips`` rows) is stale, if it has a SIP friend."""
    name = await conn.scalar(
        select(sip_friends.c.name).where(sip_friends.c.account_id == account_id)
    )
    if name is not None:
        await mark_stale(conn, IDENTIFY_TARGETS, f"{reason} (PJSIP identify of {name})")


async def stale_marks(conn: AsyncConnection) -> dict[ConfTarget, StaleMark]:
    """The targets whose generated configuration is stale."""
    rows = (
        await conn.execute(
            select(settings_table.c.key, settings_table.c.value).where(
                settings_table.c.key.startswith(STALE_PREFIX)
            )
        )
    ).all()
    out: dict[ConfTarget, StaleMark] = {}
    for key, raw in rows:
        try:
            target = ConfTarget(str(key)[len(STALE_PREFIX) :])
        except ValueError:
            continue
        try:
            data = json.loads(raw)
            at = datetime.fromisoformat(data["at"])
            reason = str(data["reason"])
        except (ValueError, KeyError, TypeError):
            at, reason = datetime.now(UTC), str(raw)
        out[target] = StaleMark(target, at, reason, str(raw))
    return out


async def clear_stale(conn: AsyncConnection, marks: Iterable[StaleMark]) -> int:
    """Clear the given marks, each only if it is still the stored one; how many were cleared."""
    cleared = 0
    for mark in marks:
        result = await conn.execute(
            delete(settings_table).where(
                settings_table.c.key == STALE_PREFIX + mark.target.value,
                settings_table.c.value == mark.raw,
            )
        )
        cleared += result.rowcount or 0
    return cleared


async def fetch_realtime_owned(conn: AsyncConnection) -> dict[str, list[str]] | None:
    """The Realtime rows callgate wrote (table -> keys), or None if it never synced."""
    raw = await _get_setting(conn, REALTIME_OWNED_KEY)
    if raw is None:
        return None
    data = json.loads(raw)
    return {str(k): [str(x) for x in v] for k, v in data.items()}


async def save_realtime_owned(conn: AsyncConnection, owned: Mapping[str, Iterable[str]]) -> None:
    value = json.dumps({k: sorted(set(v)) for k, v in sorted(owned.items())}, sort_keys=True)
    await _put_setting(
        conn, REALTIME_OWNED_KEY, value, "Asterisk Realtime rows written by callgate confgen"
    )
