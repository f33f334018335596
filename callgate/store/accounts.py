"""Accounts (the seeds' customers or cards): create, fetch, change, list, export, import, delete.

An account number is secret: it comes from a CSPRNG (:mod:`secrets`), is unique, and its length
comes from the settings or the caller. The alias (login) is random and unique too, or an e-mail
address the operator gives.

Operator fields arrive as text (CLI options, ``--set field=value``, CSV cells) and are parsed in one
place, :func:`parse_account_fields`, which names the field in every error. The criteria that
choose accounts for ``list``, batch update, delete-all and export are
:class:`callgate.store.search.AccountCriteria`. The currency is fixed at creation; the balance moves
only through payments (:mod:`callgate.store.payments`).
"""

from __future__ import annotations

import csv
import dataclasses
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Float,
    Numeric,
    Row,
    String,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.rating import in_currency, parse_money, quantize_money
from callgate.rating.errors import InvalidRateError
from callgate.schema.tables import (
    AccountStatus,
    ExpiryMode,
    PaymentKind,
    PaymentStatus,
    ReservationStatus,
    account_callerids,
    account_ips,
    accounts,
    call_plans,
    calls,
    currencies,
    customer_groups,
    iax_friends,
    payments,
    reservations,
    sip_friends,
)
from callgate.schema.types import Money
from callgate.store._errors_map import mapped_errors
from callgate.store.contacts import Contact, list_contacts
from callgate.store.errors import ConflictError, InvalidDataError, NotFoundError
from callgate.store.friends import mark_friends_stale
from callgate.store.owners import refuse_taken
from callgate.store.payments import MovementTotal, Payment, list_payments, movement_totals
from callgate.store.search import AccountCriteria, account_filter

DEFAULT_NUMBER_LENGTH = 10
ALIAS_LENGTH = 10
MIN_NUMBER_LENGTH = 6
MAX_NUMBER_LENGTH = 20
_GENERATE_TRIES = 20


@dataclass(frozen=True, slots=True)
class Account:
    """One paying account, as stored."""

    id: int
    number: str
    alias: str
    call_plan_id: int
    status: AccountStatus
    currency: str
    balance: Decimal
    debit_limit: Decimal
    language: str
    first_name: str = ""
    last_name: str = ""
    company: str = ""
    email: str = ""
    phone: str = ""
    address: str = ""
    city: str = ""
    state: str = ""
    country: str = ""
    zipcode: str = ""
    website: str = ""
    paypal_email: str = ""
    group_id: int | None = None
    minimum_payment: Decimal = Decimal(0)
    tax_percent: Decimal = Decimal(0)
    portal_access: bool = True
    channel_limit: int | None = None
    cps_limit: int | None = None
    expiry_mode: ExpiryMode = ExpiryMode.NEVER
    expires_at: datetime | None = None
    expiry_days: int | None = None
    first_use_at: datetime | None = None
    last_use_at: datetime | None = None
    call_count: int = 0
    public_notes: str = ""
    private_notes: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def credit_limit_total(self) -> Decimal:
        """Balance plus debit limit: what the account may spend before reservations."""
        return self.balance + self.debit_limit


# columns an operator may set at creation (the rest are kept by callgate)
CREATE_FIELDS = frozenset(
    {
        "number",
        "alias",
        "first_name",
        "last_name",
        "company",
        "email",
        "phone",
        "address",
        "city",
        "state",
        "country",
        "zipcode",
        "website",
        "paypal_email",
        "group_id",
        "status",
        "language",
        "currency",
        "balance",
        "debit_limit",
        "minimum_payment",
        "tax_percent",
        "portal_access",
        "channel_limit",
        "cps_limit",
        "expiry_mode",
        "expires_at",
        "expiry_days",
        "public_notes",
        "private_notes",
        "password_hash",
    }
)


def account_from_row(row: Row[Any] | Mapping[str, Any]) -> Account:
    """An :class:`Account` from a row of ``accounts``."""
    data = row._mapping if isinstance(row, Row) else row
    return account_from_values([data[name] for name in ACCOUNT_FIELD_NAMES])


# an Account's fields in the order of its constructor, for account_from_values
ACCOUNT_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Account))
_STATUS_AT = ACCOUNT_FIELD_NAMES.index("status")
_EXPIRY_MODE_AT = ACCOUNT_FIELD_NAMES.index("expiry_mode")
_PORTAL_ACCESS_AT = ACCOUNT_FIELD_NAMES.index("portal_access")


def account_from_values(values: list[Any]) -> Account:
    """An :class:`Account` from the values of its fields in :data:`ACCOUNT_FIELD_NAMES` order,
    as the database gives them (the status and expiry mode as text, portal access as 0/1;
    amounts and timestamps already decoded). The call path's lean ledgers build an account
    from every lookup and reserve: positional arguments, and no dict, cost a third as much.
    ``values`` is changed in place."""
    values[_STATUS_AT] = AccountStatus(values[_STATUS_AT])
    values[_EXPIRY_MODE_AT] = ExpiryMode(values[_EXPIRY_MODE_AT])
    values[_PORTAL_ACCESS_AT] = bool(values[_PORTAL_ACCESS_AT])
    return Account(*values)


def generate_number(length: int = DEFAULT_NUMBER_LENGTH) -> str:
    """A random account number of ``length`` digits, not starting with 0 (CSPRNG)."""
    if not MIN_NUMBER_LENGTH <= length <= MAX_NUMBER_LENGTH:
        raise InvalidDataError(
            f"account number length must be {MIN_NUMBER_LENGTH}..{MAX_NUMBER_LENGTH}, not {length}"
        )
    low = 10 ** (length - 1)  # uniform over the numbers of exactly ``length`` digits
    return str(low + secrets.randbelow(9 * low))


def check_account_number(number: str) -> str:
    """An account number an operator gives: ASCII digits only, no leading zero, and
    :data:`MIN_NUMBER_LENGTH`..:data:`MAX_NUMBER_LENGTH` long (the range of
    ``billing.account_number_length``), as generated numbers are. Returns it, or raises.

    Nothing else may be a number: ``#12`` names the account with id 12, and a number that looks
    like it (or like an alias) could send a payment or a delete to the wrong customer.
    """
    if not (number.isascii() and number.isdigit()):
        raise InvalidDataError(f"number: an account number is digits only, not {number!r}")
    if number.startswith("0"):
        raise InvalidDataError(f"number: an account number cannot start with 0: {number!r}")
    if not MIN_NUMBER_LENGTH <= len(number) <= MAX_NUMBER_LENGTH:
        raise InvalidDataError(
            f"number: an account number has {MIN_NUMBER_LENGTH}..{MAX_NUMBER_LENGTH} digits, "
            f"not {len(number)} ({number!r})"
        )
    return number


def check_alias(alias: str) -> str:
    """An alias (login): non-empty, no spaces, not starting with ``#`` (that means an id)."""
    if not alias or any(c.isspace() for c in alias):
        raise InvalidDataError(f"alias: must be non-empty, without spaces: {alias!r}")
    if alias.startswith("#"):
        raise InvalidDataError(f"alias: cannot start with '#' (#N names account id N): {alias!r}")
    return alias


def generate_alias(length: int = ALIAS_LENGTH) -> str:
    """A random login of digits (A2Billing's alias), distinct in form from nothing else."""
    return generate_number(length)


def _same_login(column: Any, value: Any) -> Any:
    """``column = value``; for the alias (a login) whatever the case, as its unique index on
    ``lower(alias)`` compares (the database's own ``lower``: SQLite folds ASCII letters only)."""
    if column is accounts.c.alias:
        return func.lower(column) == func.lower(value)
    return column == value


async def _exists(
    conn: AsyncConnection, column: Any, value: str, *, exclude_id: int | None = None
) -> bool:
    query = select(accounts.c.id).where(_same_login(column, value))
    if exclude_id is not None:
        query = query.where(accounts.c.id != exclude_id)
    found = await conn.scalar(query.limit(1))
    return found is not None


async def _used_identifiers(conn: AsyncConnection, values: Iterable[str]) -> set[str]:
    """Which of ``values`` are already an account number or an alias.

    Numbers and aliases share one space: an alias (semi-public, shown to the customer) must never
    equal another account's number (the secret that authenticates it), nor the reverse.
    """
    wanted = list(set(values))
    if not wanted:
        return set()
    used: set[str] = set()
    for column in (accounts.c.number, accounts.c.alias):
        used.update(str(v) for v in await conn.scalars(select(column).where(column.in_(wanted))))
    return used


async def _identifier_conflict(
    conn: AsyncConnection, key: str, value: str, *, exclude_id: int | None = None
) -> str | None:
    """Why ``value`` cannot be an account's ``key`` (number or alias), or None. Aliases compare
    whatever their case (``ALICE`` is ``alice``); ``exclude_id`` is the account itself."""
    own, other = (
        (accounts.c.number, accounts.c.alias)
        if key == "number"
        else (accounts.c.alias, accounts.c.number)
    )
    label = "account number" if key == "number" else "alias"
    if await _exists(conn, own, value, exclude_id=exclude_id):
        return f"{label} {value!r} is taken" + (" (in another case)" if key == "alias" else "")
    if await _exists(conn, other, value, exclude_id=exclude_id):
        other_label = "an alias" if key == "number" else "an account number"
        return f"{label} {value!r} is taken: it is {other_label}"
    return None


async def _unique_random(
    conn: AsyncConnection, column: Any, length: int, taken: set[str] | None = None
) -> str:
    for _ in range(_GENERATE_TRIES):
        candidate = generate_number(length)
        if taken is not None and candidate in taken:
            continue
        if not await _used_identifiers(conn, [candidate]):
            return candidate
    raise ConflictError(
        f"could not find a free {column.name} of {length} digits after {_GENERATE_TRIES} tries; "
        "use a longer length"
    )


async def create_account(
    conn: AsyncConnection,
    *,
    call_plan_id: int | None,
    number_length: int = DEFAULT_NUMBER_LENGTH,
    taken: set[str] | None = None,
    **fields: Any,
) -> Account:
    """Create an account; random number and alias unless given. Runs in the caller's transaction.

    Refuses an account without a call plan ("configure the call plan first"), unknown fields, a
    currency the system does not know, and a number or alias already taken.
    """
    if call_plan_id is None:
        raise InvalidDataError("an account needs a call plan: configure the call plan first")
    unknown = set(fields) - CREATE_FIELDS
    if unknown:
        raise InvalidDataError(f"unknown account field(s): {', '.join(sorted(unknown))}")
    async with mapped_errors("create account"):
        plan = await conn.scalar(select(call_plans.c.id).where(call_plans.c.id == call_plan_id))
        if plan is None:
            raise NotFoundError(f"no call plan with id {call_plan_id}")
        values = dict(fields)
        if "currency" not in values:
            values["currency"] = await base_currency(conn)
        else:
            code = str(values["currency"]).upper()
            known = await conn.scalar(select(currencies.c.code).where(currencies.c.code == code))
            if known is None:
                raise InvalidDataError(f"unknown currency {code!r}")
            values["currency"] = code
        if values.get("number") and values["number"] == values.get("alias"):
            raise ConflictError("an account's number and alias must differ")
        if values.get("number"):
            check_account_number(str(values["number"]))
            conflict = await _identifier_conflict(conn, "number", values["number"])
            if conflict:
                raise ConflictError(conflict)
        else:
            values["number"] = await _unique_random(conn, accounts.c.number, number_length, taken)
        if values.get("alias"):
            check_alias(str(values["alias"]))
            conflict = await _identifier_conflict(conn, "alias", values["alias"])
            if conflict:
                raise ConflictError(conflict)
        else:
            values["alias"] = await _unique_random(conn, accounts.c.alias, ALIAS_LENGTH, taken)
        if taken is not None:
            taken.update((values["number"], values["alias"]))
        for key in ("status", "expiry_mode"):
            if key in values:
                values[key] = str(values[key])
        values["call_plan_id"] = call_plan_id
        row = (await conn.execute(insert(accounts).values(**values).returning(accounts))).one()
        return account_from_row(row)


async def base_currency(conn: AsyncConnection) -> str:
    """The code of the base currency (the one whose ``is_base`` is set)."""
    code = await conn.scalar(select(currencies.c.code).where(currencies.c.is_base.is_(True)))
    if code is None:
        raise NotFoundError("no base currency is configured")
    return str(code)


async def fetch_account(conn: AsyncConnection, account_id: int) -> Account:
    row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
    if row is None:
        raise NotFoundError(f"no account with id {account_id}")
    return account_from_row(row)


async def lock_account(conn: AsyncConnection, account_id: int) -> None:
    """Lock one account's row until the transaction ends (PostgreSQL ``FOR UPDATE``; SQLite's
    write transaction already holds the database), so what is read next is what is changed."""
    await conn.execute(select(accounts.c.id).where(accounts.c.id == account_id).with_for_update())


# Built once: every call looks an account up (see callgate/store/ledger.py on why).
_BY_NUMBER = select(accounts).where(accounts.c.number == bindparam("key"))
_BY_ALIAS = select(accounts).where(func.lower(accounts.c.alias) == func.lower(bindparam("key")))
_BY_CALLERID = (
    select(accounts)
    .join(account_callerids, account_callerids.c.account_id == accounts.c.id)
    .where(account_callerids.c.callerid == bindparam("key"), account_callerids.c.active.is_(True))
)


async def _fetch_one(conn: AsyncConnection, query: Any, key: str) -> Account | None:
    row = (await conn.execute(query, {"key": key})).first()
    return None if row is None else account_from_row(row)


async def fetch_account_by_number(conn: AsyncConnection, number: str) -> Account | None:
    return await _fetch_one(conn, _BY_NUMBER, number)


async def fetch_account_by_alias(conn: AsyncConnection, alias: str) -> Account | None:
    """The account whose alias (login) is ``alias`` whatever the case (one at most: the unique
    index on ``lower(alias)``)."""
    return await _fetch_one(conn, _BY_ALIAS, alias)


async def fetch_account_by_callerid(conn: AsyncConnection, callerid: str) -> Account | None:
    """The account owning an active caller ID (exact match on the digits Asterisk sends)."""
    return await _fetch_one(conn, _BY_CALLERID, callerid)


async def find_account(conn: AsyncConnection, key: str) -> Account | None:
    """An account by id (``#12``), else by number, else by alias.

    ``#N`` always means the id: no number or alias can start with ``#`` (see
    :func:`check_account_number`), and one stored before that rule cannot shadow an id.
    """
    if key.startswith("#"):
        if not (key[1:].isascii() and key[1:].isdigit()):
            return None
        row = (await conn.execute(select(accounts).where(accounts.c.id == int(key[1:])))).first()
        return None if row is None else account_from_row(row)
    account = await fetch_account_by_number(conn, key)
    if account is None:
        account = await fetch_account_by_alias(conn, key)
    return account


async def add_callerid(conn: AsyncConnection, account_id: int, callerid: str) -> int:
    """Attach a caller ID to an account; it identifies the account when nothing else does."""
    cid = callerid.strip()
    if not cid:
        raise InvalidDataError("a caller ID cannot be empty")
    async with mapped_errors(f"caller ID {cid}"):
        await refuse_taken(
            conn, f"caller ID {cid}", account_callerids, account_callerids.c.callerid == cid
        )
        new_id = await conn.scalar(
            insert(account_callerids)
            .values(account_id=account_id, callerid=cid)
            .returning(account_callerids.c.id)
        )
        return int(new_id)


async def require_account(conn: AsyncConnection, key: str) -> Account:
    """The account a CLI argument names (number, alias or ``#id``), or a clear NotFoundError."""
    account = await find_account(conn, key.strip())
    if account is None:
        raise NotFoundError(f"no account {key!r} (give its number, alias or #id)")
    return account


async def account_numbers(conn: AsyncConnection, ids: Iterable[int]) -> dict[int, str]:
    """``id -> account number`` for the given ids (for listings of other tables)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = await conn.execute(
        select(accounts.c.id, accounts.c.number).where(accounts.c.id.in_(wanted))
    )
    return {int(r.id): str(r.number) for r in rows}


# --- operator fields as text ---------------------------------------------------------------------

TEXT_FIELDS: tuple[str, ...] = (
    "number",
    "alias",
    "first_name",
    "last_name",
    "company",
    "email",
    "phone",
    "address",
    "city",
    "state",
    "country",
    "zipcode",
    "website",
    "paypal_email",
    "group",
    "plan",
    "status",
    "language",
    "currency",
    "balance",
    "debit_limit",
    "minimum_payment",
    "tax_percent",
    "portal_access",
    "channel_limit",
    "cps_limit",
    "expiry_mode",
    "expires_at",
    "expiry_days",
    "public_notes",
    "private_notes",
)
FIELD_ALIASES = {"tax": "tax_percent", "call_plan": "plan", "login": "alias"}
_PLAIN_TEXT = frozenset(
    {
        "number",
        "alias",
        "first_name",
        "last_name",
        "company",
        "email",
        "phone",
        "address",
        "city",
        "state",
        "country",
        "zipcode",
        "website",
        "paypal_email",
        "language",
        "public_notes",
        "private_notes",
    }
)
_NOTES = frozenset({"public_notes", "private_notes"})
_MONEY_FIELDS = frozenset({"balance", "debit_limit", "minimum_payment", "tax_percent"})
_NONE_WORDS = frozenset({"", "none", "unlimited", "null"})
_TRUE = frozenset({"1", "true", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "no", "n", "off"})


def parse_datetime(text: str, field: str) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO-8601 time (UTC when it has no zone)."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        stamp = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidDataError(f"{field}: not a date (YYYY-MM-DD) or ISO time: {text!r}") from exc
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


CRITERIA_FIELDS = (
    "number", "alias", "name", "group", "plan", "balance_min", "balance_max", "created_from",
    "created_to", "language", "currency", "callerid", "ip", "text",
)  # fmt: skip


def parse_criteria(
    values: Mapping[str, str | None], statuses: Iterable[str] = ()
) -> AccountCriteria:
    """Search criteria from text (CLI options, a web form): empty texts do not filter;
    ``created_to`` as a day (YYYY-MM-DD) means up to that day's end. Raises InvalidDataError
    naming the criterion that is malformed."""

    def text(name: str) -> str | None:
        value = values.get(name)
        return value.strip() if value is not None and value.strip() else None

    def money(name: str) -> Decimal | None:
        value = text(name)
        return None if value is None else parse_amount(value, name.replace("_", "-"))

    def when(name: str) -> datetime | None:
        value = text(name)
        return None if value is None else parse_datetime(value, name.replace("_", "-"))

    created_to = when("created_to")
    if created_to is not None and len(text("created_to") or "") == 10:  # a day: up to its end
        created_to += timedelta(days=1)
    chosen: list[AccountStatus] = []
    for status in statuses:
        if status:
            chosen.append(_parse_choice(AccountStatus, status, "status"))
    return AccountCriteria(
        number=text("number"),
        alias=text("alias"),
        name=text("name"),
        group=text("group"),
        plan=text("plan"),
        statuses=tuple(chosen),
        balance_min=money("balance_min"),
        balance_max=money("balance_max"),
        created_from=when("created_from"),
        created_before=created_to,
        language=text("language"),
        currency=text("currency"),
        callerid=text("callerid"),
        ip=text("ip"),
        text=text("text"),
    )


def parse_amount(text: str, field: str) -> Decimal:
    """Money from text, exact; a malformed amount is an InvalidDataError naming ``field``."""
    try:
        return parse_money(text, field)
    except InvalidRateError as exc:
        raise InvalidDataError(str(exc)) from exc


def _parse_bool(text: str, field: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise InvalidDataError(f"{field}: not yes/no: {text!r}")


def _parse_count(text: str, field: str, *, minimum: int) -> int | None:
    word = text.strip().lower()
    if word in _NONE_WORDS:
        return None
    try:
        value = int(word)
    except ValueError as exc:
        raise InvalidDataError(f"{field}: not a whole number: {text!r}") from exc
    if value < minimum:
        raise InvalidDataError(f"{field}: must be at least {minimum}, not {value}")
    return value


def _parse_choice(enum: type[StrEnum], text: str, field: str) -> Any:
    try:
        return enum(text.strip().lower())
    except ValueError as exc:
        allowed = ", ".join(m.value for m in enum)
        raise InvalidDataError(f"{field}: {text!r} is not one of {allowed}") from exc


def check_opening_balance(amount: Decimal) -> None:
    """An account opens with zero or more: a debt is an adjustment payment, not a start."""
    if amount < 0:
        raise InvalidDataError(
            f"balance: an opening balance cannot be negative ({amount}); open the account, then "
            "record the debt with `callgate payments add ACCOUNT --kind adjustment -- -AMOUNT`"
        )


def _plain(name: str, text: str) -> str:
    value = text if name in _NOTES else text.strip()
    if name not in _NOTES and ("\n" in value or "\r" in value):
        raise InvalidDataError(
            f"{name}: a line break inside the cell (a quote left open?): {text[:40]!r}"
        )
    column_type = accounts.c[name].type
    limit = column_type.length if isinstance(column_type, String) else None
    if limit is not None and len(value) > limit:
        raise InvalidDataError(f"{name}: longer than {limit} characters")
    if name in {"number", "alias", "language"} and (not value or any(c.isspace() for c in value)):
        raise InvalidDataError(f"{name}: must be non-empty, without spaces: {text!r}")
    if name == "number":
        check_account_number(value)
    if name == "alias":
        check_alias(value)
    if name in {"email", "paypal_email"} and value and "@" not in value:
        raise InvalidDataError(f"{name}: not an e-mail address: {text!r}")
    return value


async def parse_account_fields(conn: AsyncConnection, raw: Mapping[str, str]) -> dict[str, Any]:
    """Operator text (``field -> text``) as typed ``accounts`` column values.

    ``group`` and ``plan`` are names (``group`` may be ``none``); money is exact decimal text;
    limits take ``none``/``unlimited``; dates are ``YYYY-MM-DD`` or ISO times. Every error names
    the field. Names in :data:`FIELD_ALIASES` are accepted too (``tax`` for ``tax_percent``).
    """
    out: dict[str, Any] = {}
    for key, text in raw.items():
        name = FIELD_ALIASES.get(key, key)
        if name not in TEXT_FIELDS:
            raise InvalidDataError(
                f"unknown account field {key!r} (known: {', '.join(TEXT_FIELDS)})"
            )
        value = text.strip()
        if name in _PLAIN_TEXT:
            out[name] = _plain(name, text)
        elif name == "group":
            if value.lower() in _NONE_WORDS:
                out["group_id"] = None
            else:
                group_id = await conn.scalar(
                    select(customer_groups.c.id).where(customer_groups.c.name == value)
                )
                if group_id is None:
                    raise NotFoundError(f"group: no customer group named {value!r}")
                out["group_id"] = int(group_id)
        elif name == "plan":
            plan_id = await conn.scalar(select(call_plans.c.id).where(call_plans.c.name == value))
            if plan_id is None:
                raise NotFoundError(f"plan: no call plan {value!r}: configure the call plan first")
            out["call_plan_id"] = int(plan_id)
        elif name == "status":
            out["status"] = _parse_choice(AccountStatus, value, name)
        elif name == "currency":
            out["currency"] = await _known_currency(conn, value)
        elif name in _MONEY_FIELDS:
            amount = parse_amount(value, name)
            if name == "balance":
                check_opening_balance(amount)
            elif amount < 0:
                raise InvalidDataError(f"{name}: cannot be negative ({value})")
            if name == "tax_percent" and amount > 100:
                raise InvalidDataError(f"{name}: a tax rate above 100% ({value}) is a mistake")
            out[name] = amount
        elif name == "portal_access":
            out[name] = _parse_bool(value, name)
        elif name in {"channel_limit", "cps_limit"}:
            out[name] = _parse_count(value, name, minimum=0)
        elif name == "expiry_mode":
            out[name] = _parse_choice(ExpiryMode, value, name)
        elif name == "expires_at":
            out[name] = None if value.lower() in _NONE_WORDS else parse_datetime(value, name)
        elif name == "expiry_days":
            out[name] = _parse_count(value, name, minimum=1)
    return out


async def _known_currency(conn: AsyncConnection, text: str) -> str:
    code = text.strip().upper()
    known = await conn.scalar(select(currencies.c.code).where(currencies.c.code == code))
    if known is None:
        raise InvalidDataError(f"currency: unknown currency {code!r}")
    return code


def check_expiry(mode: ExpiryMode, expires_at: datetime | None, expiry_days: int | None) -> None:
    """An expiry rule must carry what it needs: a date, or a number of days."""
    if mode is ExpiryMode.AT_DATE and expires_at is None:
        raise InvalidDataError("expiry_mode at_date needs expires_at (a date)")
    if mode in {ExpiryMode.DAYS_AFTER_FIRST_USE, ExpiryMode.DAYS_AFTER_CREATION} and (
        expiry_days is None
    ):
        raise InvalidDataError(f"expiry_mode {mode} needs expiry_days")


def _check_expiry_fields(fields: Mapping[str, Any]) -> None:
    if "expiry_mode" in fields:
        check_expiry(
            ExpiryMode(fields["expiry_mode"]), fields.get("expires_at"), fields.get("expiry_days")
        )


# --- create one, create many ---------------------------------------------------------------------


async def _opening_payments(conn: AsyncConnection, opened: Sequence[tuple[int, Decimal]]) -> None:
    """A completed payment row for each non-zero opening balance (A2Billing's creation refill)."""
    rows = [(account_id, amount) for account_id, amount in opened if amount != 0]
    if not rows:
        return
    now = datetime.now(UTC)
    currency = await base_currency(conn)
    await conn.execute(
        insert(payments),
        [
            {
                "account_id": account_id,
                "kind": (PaymentKind.REFILL if amount > 0 else PaymentKind.ADJUSTMENT).value,
                "status": PaymentStatus.COMPLETED.value,
                "amount": amount,
                "tax_percent": Decimal(0),
                "tax_amount": Decimal(0),
                "credit": amount,
                "currency": currency,
                "description": "opening balance",
                "created_at": now,
                "completed_at": now,
            }
            for account_id, amount in rows
        ],
    )


async def _payments_from_select(
    conn: AsyncConnection, where: Any, credit: Any, *, kind: PaymentKind, description: str
) -> None:
    """One completed, untaxed payment of ``credit`` (an SQL expression) per account chosen by
    ``where``, in a single INSERT ... SELECT."""
    now = literal(datetime.now(UTC), accounts.c.created_at.type)
    zero = literal(Decimal(0), Money())
    source = select(
        accounts.c.id,
        literal(kind.value),
        literal(PaymentStatus.COMPLETED.value),
        credit,
        zero,
        zero,
        credit,
        literal(await base_currency(conn)),
        literal(description),
        now,
        now,
    ).where(where)
    columns = [
        "account_id",
        "kind",
        "status",
        "amount",
        "tax_percent",
        "tax_amount",
        "credit",
        "currency",
        "description",
        "created_at",
        "completed_at",
    ]
    await conn.execute(insert(payments).from_select(columns, source))


async def open_account(
    conn: AsyncConnection,
    *,
    call_plan_id: int | None,
    number_length: int = DEFAULT_NUMBER_LENGTH,
    taken: set[str] | None = None,
    **fields: Any,
) -> Account:
    """Create an account as an operator does: :func:`create_account`, plus an opening payment
    when it starts with a balance (so payments always add up to the balance), plus the expiry
    rule's consistency check. The balance is zero unless given.
    """
    _check_expiry_fields(fields)
    check_opening_balance(Decimal(fields.get("balance", 0)))
    account = await create_account(
        conn, call_plan_id=call_plan_id, number_length=number_length, taken=taken, **fields
    )
    await _opening_payments(conn, [(account.id, account.balance)])
    return account


async def _fresh_values(
    conn: AsyncConnection, column: Any, length: int, count: int, taken: set[str]
) -> list[str]:
    """``count`` random digit strings free in ``column`` and not in ``taken`` (a query a round)."""
    found: list[str] = []
    for _ in range(_GENERATE_TRIES):
        need = count - len(found)
        candidates: set[str] = set()
        for _attempt in range(need * _GENERATE_TRIES):
            if len(candidates) == need:
                break
            candidate = generate_number(length)
            if candidate not in taken:
                candidates.add(candidate)
        used = await _used_identifiers(conn, candidates)
        fresh = [c for c in candidates if c not in used]
        taken.update(fresh)
        found.extend(fresh)
        if len(found) == count:
            return found
    raise ConflictError(
        f"could not find {count} free {column.name}s of {length} digits; use a longer length"
    )


async def generate_accounts(
    conn: AsyncConnection,
    count: int,
    *,
    call_plan_id: int | None,
    number_length: int = DEFAULT_NUMBER_LENGTH,
    on_progress: Callable[[int], None] | None = None,
    chunk: int = 500,
    **fields: Any,
) -> list[tuple[int, str, str]]:
    """Create ``count`` accounts with random numbers and aliases, in the caller's transaction.

    The same ``fields`` for all (group, status, balance...). Inserts in chunks (one existence
    query per chunk for numbers and one for aliases, one multi-row INSERT); ``on_progress`` gets
    the number created after each chunk. Returns ``(id, number, alias)`` of each.
    """
    if count < 1:
        raise InvalidDataError(f"the number of accounts to generate must be positive, not {count}")
    if call_plan_id is None:
        raise InvalidDataError("an account needs a call plan: configure the call plan first")
    given = set(fields) & {"number", "alias"}
    if given:
        raise InvalidDataError("generated accounts get random numbers and aliases")
    unknown = set(fields) - CREATE_FIELDS
    if unknown:
        raise InvalidDataError(f"unknown account field(s): {', '.join(sorted(unknown))}")
    generate_number(number_length)  # validates the length before any write
    _check_expiry_fields(fields)
    check_opening_balance(Decimal(fields.get("balance", 0)))
    values = dict(fields)
    for key in ("status", "expiry_mode"):
        if key in values:
            values[key] = str(values[key])
    async with mapped_errors("generate accounts"):
        plan = await conn.scalar(select(call_plans.c.id).where(call_plans.c.id == call_plan_id))
        if plan is None:
            raise NotFoundError(f"no call plan with id {call_plan_id}")
        if "currency" in values:
            values["currency"] = await _known_currency(conn, str(values["currency"]))
        else:
            values["currency"] = await base_currency(conn)
        values["call_plan_id"] = call_plan_id
        if conn.dialect.name == "postgresql":
            # the table grows inside this transaction, unseen by the statistics: a generic plan
            # of the existence probes, made while it was small, would scan it whole each time
            await conn.execute(sql_text("SET LOCAL plan_cache_mode = force_custom_plan"))
        taken: set[str] = set()
        created: list[tuple[int, str, str]] = []
        while len(created) < count:
            size = min(chunk, count - len(created))
            numbers = await _fresh_values(conn, accounts.c.number, number_length, size, taken)
            aliases = await _fresh_values(conn, accounts.c.alias, ALIAS_LENGTH, size, taken)
            rows = [
                {**values, "number": n, "alias": a} for n, a in zip(numbers, aliases, strict=True)
            ]
            await conn.execute(insert(accounts), rows)  # executemany, compiled once
            result = await conn.execute(
                select(accounts.c.id, accounts.c.number, accounts.c.alias)
                .where(accounts.c.number.in_(numbers))
                .order_by(accounts.c.id)
            )
            batch = [(int(r.id), str(r.number), str(r.alias)) for r in result]
            balance = Decimal(values.get("balance", 0))
            if balance != 0:
                await _payments_from_select(
                    conn,
                    accounts.c.number.in_(numbers),
                    literal(balance, Money()),
                    kind=PaymentKind.REFILL if balance > 0 else PaymentKind.ADJUSTMENT,
                    description="opening balance",
                )
            created.extend(batch)
            if on_progress is not None:
                on_progress(len(batch))
    return created


# --- change one ----------------------------------------------------------------------------------

UPDATE_FIELDS = (CREATE_FIELDS - {"balance"}) | {"call_plan_id"}


async def update_account(conn: AsyncConnection, account_id: int, **changes: Any) -> Account:
    """Change an account's fields (typed column values, as :func:`parse_account_fields` gives).

    The currency cannot change after creation, and the balance moves only through payments.
    """
    current = await fetch_account(conn, account_id)
    if "currency" in changes:
        wanted = str(changes.pop("currency")).upper()
        if wanted != current.currency:
            raise InvalidDataError(
                f"the currency of account {current.number} is {current.currency}; it cannot "
                f"change after creation (asked for {wanted})"
            )
    if "balance" in changes:
        raise InvalidDataError(
            "the balance moves only through payments: use `callgate payments add`"
        )
    unknown = set(changes) - UPDATE_FIELDS
    if unknown:
        raise InvalidDataError(f"unknown account field(s): {', '.join(sorted(unknown))}")
    if not changes:
        return current
    mode = ExpiryMode(changes.get("expiry_mode", current.expiry_mode))
    check_expiry(
        mode,
        changes.get("expires_at", current.expires_at),
        changes.get("expiry_days", current.expiry_days),
    )
    number = str(changes.get("number") or current.number)
    alias = str(changes.get("alias") or current.alias)
    if number.lower() == alias.lower():
        raise ConflictError("an account's number and alias must differ")
    async with mapped_errors(f"account {current.number}"):
        for key in ("number", "alias"):
            value = changes.get(key)
            if value is not None and value != getattr(current, key):
                (check_account_number if key == "number" else check_alias)(str(value))
                conflict = await _identifier_conflict(conn, key, value, exclude_id=account_id)
                if conflict:
                    raise ConflictError(conflict)
        if "call_plan_id" in changes:
            plan_id = changes["call_plan_id"]
            if (
                plan_id is None
                or await conn.scalar(select(call_plans.c.id).where(call_plans.c.id == plan_id))
                is None
            ):
                raise NotFoundError(
                    f"no call plan with id {plan_id}: configure the call plan first"
                )
        values = {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in changes.items()}
        values["updated_at"] = datetime.now(UTC)
        if changes.get("number") not in (None, current.number):  # every friend's accountcode
            await mark_friends_stale(
                conn, account_id, f"account {current.number} renumbered {changes['number']}"
            )
        await conn.execute(update(accounts).where(accounts.c.id == account_id).values(**values))
    return await fetch_account(conn, account_id)


async def set_status(
    conn: AsyncConnection, account_id: int, status: AccountStatus | str
) -> Account:
    """Activate, deactivate, suspend... an account."""
    return await update_account(
        conn, account_id, status=_parse_choice(AccountStatus, status, "status")
    )


# --- caller IDs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallerId:
    id: int
    callerid: str
    active: bool


async def list_callerids(conn: AsyncConnection, account_id: int) -> list[CallerId]:
    query = (
        select(account_callerids)
        .where(account_callerids.c.account_id == account_id)
        .order_by(account_callerids.c.callerid)
    )
    return [CallerId(r.id, r.callerid, bool(r.active)) for r in await conn.execute(query)]


async def remove_callerid(conn: AsyncConnection, account_id: int, callerid: str) -> CallerId:
    """Detach a caller ID from an account; returns the caller ID as it was."""
    result = await conn.execute(
        delete(account_callerids)
        .where(
            account_callerids.c.account_id == account_id,
            account_callerids.c.callerid == callerid.strip(),
        )
        .returning(account_callerids.c.id, account_callerids.c.callerid, account_callerids.c.active)
    )
    row = result.first()
    if row is None:
        raise NotFoundError(f"the account has no caller ID {callerid!r}")
    return CallerId(int(row.id), str(row.callerid), bool(row.active))


# --- the card list -------------------------------------------------------------------------------


class SortKey(StrEnum):
    """The columns ``accounts list`` can be sorted by (every column of the card list)."""

    ID = "id"
    NUMBER = "number"
    ALIAS = "alias"
    LAST_NAME = "last_name"
    GROUP = "group"
    BALANCE = "balance"
    BALANCE_CURRENCY = "balance_currency"
    PLAN = "plan"
    STATUS = "status"
    LANGUAGE = "language"
    IN_USE = "in_use"
    CURRENCY = "currency"
    SIP = "sip"
    IAX = "iax"
    CALLS = "calls"
    CREATED = "created_at"


@dataclass(frozen=True, slots=True)
class AccountListRow:
    """One line of the card list."""

    id: int
    number: str
    alias: str
    last_name: str
    group: str | None
    balance: Decimal  # base currency
    balance_currency: Decimal  # the same in the account's currency
    plan: str
    status: AccountStatus
    language: str
    in_use: int  # open reservations: calls in progress
    currency: str
    sip: bool
    iax: bool
    calls: int


@dataclass(frozen=True, slots=True)
class AccountPage:
    rows: tuple[AccountListRow, ...]
    total: int  # accounts matching the criteria
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


MAX_PER_PAGE = 1000


def _open_reservations() -> Any:
    return (
        select(reservations.c.account_id, func.count().label("n"))
        .where(reservations.c.status == ReservationStatus.OPEN.value)
        .group_by(reservations.c.account_id)
        .subquery("open_reservations")
    )


def _listing_columns(open_res: Any) -> dict[str, Any]:
    """Every exportable/listable value, labelled; the joins are in :func:`_listing_from`."""
    c = accounts.c
    columns: dict[str, Any] = {name: c[name] for name in _ACCOUNT_COLUMNS_EXPORTED}
    columns["group"] = customer_groups.c.name.label("group")
    columns["plan"] = call_plans.c.name.label("plan")
    columns["currency_value"] = currencies.c.value.label("currency_value")
    columns["currency_decimals"] = currencies.c.decimals.label("currency_decimals")
    columns["in_use"] = func.coalesce(open_res.c.n, 0).label("in_use")
    columns["sip"] = sip_friends.c.id.is_not(None).label("sip")
    columns["iax"] = iax_friends.c.id.is_not(None).label("iax")
    return columns


def _listing_from(open_res: Any) -> Any:
    return (
        accounts.join(call_plans, call_plans.c.id == accounts.c.call_plan_id)
        .join(currencies, currencies.c.code == accounts.c.currency)
        .outerjoin(customer_groups, customer_groups.c.id == accounts.c.group_id)
        .outerjoin(sip_friends, sip_friends.c.account_id == accounts.c.id)
        .outerjoin(iax_friends, iax_friends.c.account_id == accounts.c.id)
        .outerjoin(open_res, open_res.c.account_id == accounts.c.id)
    )


def _in_currency(balance: Decimal, value: Decimal, decimals: int) -> Decimal:
    return in_currency(balance, value, decimals)


async def count_accounts(conn: AsyncConnection, criteria: AccountCriteria) -> int:
    where = await account_filter(conn, criteria)
    return int(await conn.scalar(select(func.count()).select_from(accounts).where(where)) or 0)


async def list_accounts(
    conn: AsyncConnection,
    criteria: AccountCriteria | None = None,
    *,
    sort: SortKey | str = SortKey.ID,
    descending: bool = False,
    page: int = 1,
    per_page: int = 10,
) -> AccountPage:
    """One page of the card list; filtering, sorting (then by id) and paging happen in SQL.

    A page past the last one is refused (:class:`InvalidDataError` naming the last page), so a
    script that walks pages stops with a clear message instead of reading empty pages.
    """
    criteria = criteria or AccountCriteria()
    key = _parse_choice(SortKey, str(sort), "sort")
    if page < 1:
        raise InvalidDataError(f"page must be 1 or more, not {page}")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise InvalidDataError(f"per page must be 1..{MAX_PER_PAGE}, not {per_page}")
    where = await account_filter(conn, criteria)
    total = int(await conn.scalar(select(func.count()).select_from(accounts).where(where)) or 0)
    last_page = max(1, -(-total // per_page))  # page 1 of an empty list is an empty page
    if page > last_page:
        raise InvalidDataError(
            f"page {page} is past the last page ({last_page}): "
            f"{total} account(s) at {per_page} per page"
        )
    open_res = _open_reservations()
    cols = _listing_columns(open_res)
    exact = Numeric() if conn.dialect.name != "sqlite" else Float()  # only to order by
    order: dict[SortKey, Any] = {
        SortKey.ID: accounts.c.id,
        SortKey.NUMBER: accounts.c.number,
        SortKey.ALIAS: accounts.c.alias,
        SortKey.LAST_NAME: func.lower(accounts.c.last_name),  # Martin beside martin, not after Z
        SortKey.GROUP: customer_groups.c.name,
        SortKey.BALANCE: accounts.c.balance,
        SortKey.BALANCE_CURRENCY: cast(accounts.c.balance, exact) / cast(currencies.c.value, exact),
        SortKey.PLAN: call_plans.c.name,
        SortKey.STATUS: accounts.c.status,
        SortKey.LANGUAGE: accounts.c.language,
        SortKey.IN_USE: func.coalesce(open_res.c.n, 0),
        SortKey.CURRENCY: accounts.c.currency,
        SortKey.SIP: sip_friends.c.id.is_not(None),
        SortKey.IAX: iax_friends.c.id.is_not(None),
        SortKey.CALLS: accounts.c.call_count,
        SortKey.CREATED: accounts.c.created_at,
    }
    expression = order[key]
    ordering = [expression.desc() if descending else expression.asc()]
    if key is not SortKey.ID:
        ordering.append(accounts.c.id.desc() if descending else accounts.c.id.asc())
    query = (
        select(*cols.values())
        .select_from(_listing_from(open_res))
        .where(where)
        .order_by(*ordering)
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    rows = tuple(
        AccountListRow(
            id=r.id,
            number=r.number,
            alias=r.alias,
            last_name=r.last_name,
            group=r.group,
            balance=r.balance,
            balance_currency=_in_currency(r.balance, r.currency_value, r.currency_decimals),
            plan=r.plan,
            status=AccountStatus(r.status),
            language=r.language,
            in_use=int(r.in_use),
            currency=r.currency,
            sip=bool(r.sip),
            iax=bool(r.iax),
            calls=r.call_count,
        )
        for r in await conn.execute(query)
    )
    return AccountPage(rows=rows, total=total, page=page, per_page=per_page)


# --- batch update, delete ------------------------------------------------------------------------

BATCH_FIELDS = frozenset(
    {
        "group_id",
        "call_plan_id",
        "status",
        "language",
        "country",
        "debit_limit",
        "minimum_payment",
        "tax_percent",
        "portal_access",
        "channel_limit",
        "cps_limit",
        "expiry_mode",
        "expires_at",
        "expiry_days",
        "public_notes",
        "private_notes",
    }
)

_BATCH_PLAIN = BATCH_FIELDS - {"group_id", "call_plan_id"}


class BalanceOp(StrEnum):
    ADD = "+"
    SUBTRACT = "-"
    SET = "="


@dataclass(frozen=True, slots=True)
class BalanceChange:
    """``balance+=5``, ``balance-=5`` or ``balance=5``: recorded as adjustment payments."""

    op: BalanceOp
    amount: Decimal


def parse_assignments(items: Iterable[str]) -> tuple[dict[str, str], BalanceChange | None]:
    """``field=value`` texts (from ``--set``) as a mapping, with the balance change apart."""
    raw: dict[str, str] = {}
    balance: BalanceChange | None = None
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidDataError(f"--set needs field=value, not {item!r}")
        op = BalanceOp.SET
        if key[-1] in "+-":
            op, key = BalanceOp(key[-1]), key[:-1].strip()
            if key != "balance":
                raise InvalidDataError(f"only the balance can be added to or taken from: {item!r}")
        if key == "balance":
            amount = parse_amount(value, "balance")
            if op is not BalanceOp.SET and amount <= 0:
                raise InvalidDataError(f"balance{op}= needs a positive amount, not {value}")
            balance = BalanceChange(op, amount)
        elif key == "currency":
            raise InvalidDataError("the currency of an account cannot change after creation")
        elif key in raw:
            raise InvalidDataError(f"{key} is set twice")
        else:
            raw[key] = value
    return raw, balance


async def batch_update(
    conn: AsyncConnection,
    criteria: AccountCriteria,
    changes: Mapping[str, Any],
    *,
    balance: BalanceChange | None = None,
    description: str = "batch update",
) -> int:
    """:func:`batch_update_numbers`, counted: how many accounts changed."""
    numbers = await batch_update_numbers(
        conn, criteria, changes, balance=balance, description=description
    )
    return len(numbers)


async def batch_update_numbers(
    conn: AsyncConnection,
    criteria: AccountCriteria,
    changes: Mapping[str, Any],
    *,
    balance: BalanceChange | None = None,
    description: str = "batch update",
) -> list[str]:
    """Change every account the criteria choose, in the caller's transaction; returns the numbers
    of the accounts changed (the rows the update wrote), in id order.

    ``changes`` are typed column values (from :func:`parse_account_fields`) among
    :data:`BATCH_FIELDS`. A balance change writes one completed ``adjustment`` payment per account
    whose balance it moves (``=`` only where the balance differs), then moves the balances.
    Run it in :func:`~callgate.store.db.write_transaction`: the chosen rows are locked first.
    """
    if "currency" in changes:
        raise InvalidDataError("the currency of an account cannot change after creation")
    unknown = set(changes) - BATCH_FIELDS
    if unknown:
        raise InvalidDataError(
            f"cannot batch-update {', '.join(sorted(unknown))} "
            f"(allowed: balance, group, plan, {', '.join(sorted(_BATCH_PLAIN))})"
        )
    if not changes and balance is None:
        raise InvalidDataError("nothing to change: give --set field=value")
    _check_expiry_fields(changes)
    where = await account_filter(conn, criteria)
    now = datetime.now(UTC)
    async with mapped_errors("batch update"):
        await conn.execute(select(accounts.c.id).where(where).with_for_update())
        if balance is not None:
            amount = literal(balance.amount, Money())
            delta: Any
            moved = where
            if balance.op is BalanceOp.SET:
                delta = amount - accounts.c.balance
                moved = where & (accounts.c.balance != balance.amount)
                new_balance: Any = amount
            else:
                signed = balance.amount if balance.op is BalanceOp.ADD else -balance.amount
                delta = literal(signed, Money())
                new_balance = accounts.c.balance + signed
            await _payments_from_select(
                conn, moved, delta, kind=PaymentKind.ADJUSTMENT, description=description
            )
            await conn.execute(update(accounts).where(moved).values(balance=new_balance))
        values = {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in changes.items()}
        result = await conn.execute(
            update(accounts)
            .where(where)
            .values(updated_at=now, **values)
            .returning(accounts.c.id, accounts.c.number)
        )
        changed = sorted((int(r.id), str(r.number)) for r in result)
    return [number for _, number in changed]


async def delete_accounts(
    conn: AsyncConnection,
    criteria: AccountCriteria | None = None,
    *,
    account_id: int | None = None,
) -> int:
    """:func:`delete_account_numbers`, counted: how many accounts were deleted."""
    return len(await delete_account_numbers(conn, criteria, account_id=account_id))


async def delete_account_numbers(
    conn: AsyncConnection,
    criteria: AccountCriteria | None = None,
    *,
    account_id: int | None = None,
) -> list[str]:
    """Delete one account (``account_id``) or every account the criteria choose, with their
    dependants (caller IDs, IPs, SIP/IAX friends, contacts, payments, calls, closed
    reservations). Refused while one of them has a call in progress. Returns the numbers of the
    accounts deleted (the rows the delete removed), in id order.
    """
    if account_id is not None:
        where: Any = accounts.c.id == account_id
    elif criteria is not None:
        where = await account_filter(conn, criteria)
    else:
        raise InvalidDataError("say which accounts to delete")
    chosen = select(accounts.c.id).where(where)
    async with mapped_errors("delete accounts"):
        busy = await conn.scalar(
            select(func.count())
            .select_from(reservations)
            .where(
                reservations.c.account_id.in_(chosen),
                reservations.c.status == ReservationStatus.OPEN.value,
            )
        )
        if busy:
            raise ConflictError(
                f"{busy} call(s) in progress on the chosen account(s): nothing deleted; "
                "wait for them to end"
            )
        # their friends go with them: the generated files and Realtime rows still hold them
        await mark_friends_stale(conn, chosen, "account deleted")
        await conn.execute(delete(reservations).where(reservations.c.account_id.in_(chosen)))
        result = await conn.execute(
            delete(accounts).where(where).returning(accounts.c.id, accounts.c.number)
        )
        deleted = sorted((int(r.id), str(r.number)) for r in result)
    return [number for _, number in deleted]


# --- export and import ---------------------------------------------------------------------------

_ACCOUNT_COLUMNS_EXPORTED = (
    "id",
    "number",
    "alias",
    "first_name",
    "last_name",
    "company",
    "email",
    "phone",
    "address",
    "city",
    "state",
    "country",
    "zipcode",
    "website",
    "paypal_email",
    "status",
    "language",
    "currency",
    "balance",
    "debit_limit",
    "minimum_payment",
    "tax_percent",
    "portal_access",
    "channel_limit",
    "cps_limit",
    "expiry_mode",
    "expires_at",
    "expiry_days",
    "first_use_at",
    "last_use_at",
    "call_count",
    "public_notes",
    "private_notes",
    "created_at",
)
EXPORT_COLUMNS: tuple[str, ...] = (
    *_ACCOUNT_COLUMNS_EXPORTED[:15],
    "group",
    "plan",
    *_ACCOUNT_COLUMNS_EXPORTED[15:19],
    "balance_currency",
    *_ACCOUNT_COLUMNS_EXPORTED[19:31],
    "in_use",
    "sip",
    "iax",
    *_ACCOUNT_COLUMNS_EXPORTED[31:],
)
# exported but kept by callgate: an import ignores them, so an export imports back
READ_ONLY_COLUMNS = frozenset(
    {
        "id",
        "balance_currency",
        "first_use_at",
        "last_use_at",
        "call_count",
        "in_use",
        "sip",
        "iax",
        "created_at",
    }
)


def check_columns(columns: Iterable[str]) -> tuple[str, ...]:
    """The export columns asked for, in order; unknown names are an error."""
    chosen = tuple(c.strip() for c in columns if c.strip())
    unknown = [c for c in chosen if c not in EXPORT_COLUMNS]
    if unknown:
        raise InvalidDataError(
            f"unknown column(s) {', '.join(unknown)} (known: {', '.join(EXPORT_COLUMNS)})"
        )
    if not chosen:
        raise InvalidDataError("no columns chosen")
    return chosen


async def iter_export_rows(
    conn: AsyncConnection,
    criteria: AccountCriteria | None = None,
    columns: Sequence[str] = EXPORT_COLUMNS,
    *,
    chunk: int = 1000,
) -> AsyncIterator[dict[str, Any]]:
    """The chosen accounts by id, ``column -> value``, read in chunks (keyset on the id)."""
    columns = check_columns(columns)
    where = await account_filter(conn, criteria or AccountCriteria())
    open_res = _open_reservations()
    cols = _listing_columns(open_res)
    last = 0
    while True:
        query = (
            select(*cols.values())
            .select_from(_listing_from(open_res))
            .where(where, accounts.c.id > last)
            .order_by(accounts.c.id)
            .limit(chunk)
        )
        rows = (await conn.execute(query)).all()
        for r in rows:
            m = r._mapping
            full: dict[str, Any] = {name: m[name] for name in _ACCOUNT_COLUMNS_EXPORTED}
            full.update(
                group=m["group"],
                plan=m["plan"],
                balance_currency=_in_currency(
                    m["balance"], m["currency_value"], m["currency_decimals"]
                ),
                in_use=int(m["in_use"]),
                sip=bool(m["sip"]),
                iax=bool(m["iax"]),
                portal_access=bool(m["portal_access"]),
            )
            yield {name: full[name] for name in columns}
        if len(rows) < chunk:
            return
        last = rows[-1].id


class AccountImportError(InvalidDataError):
    """An import found errors; nothing was imported. ``errors`` are ``line N: ...`` texts."""

    MAX_SHOWN = 50

    def __init__(self, errors: Sequence[str]) -> None:
        shown = list(errors[: self.MAX_SHOWN])
        more = len(errors) - len(shown)
        tail = [f"... and {more} more"] if more > 0 else []
        super().__init__(
            f"{len(errors)} error(s), nothing imported:\n" + "\n".join([*shown, *tail])
        )
        self.errors = list(errors)


class _LineCounter:
    """Lines handed to :mod:`csv` one at a time, counted: the physical line numbers."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.count += 1
        return line


@dataclass(frozen=True, slots=True)
class ImportFile:
    """An import file read as CSV: its header, its rows and the lines that are not rows."""

    header: list[str]
    rows: list[tuple[int, dict[str, str]]]  # (physical line the record starts on, cells)
    problems: list[tuple[int, str]]  # (line, what is wrong): nothing may be imported


def read_import_csv(lines: Iterable[str]) -> ImportFile:
    """The header and ``(line, column -> cell)`` rows of an import file, checked as CSV.

    ``line`` is the physical line a record starts on (the header is line 1; a quoted cell may
    span lines). A quote left open (which would swallow the rows after it; reading stops
    there), a row with fewer or more cells than the header, or any other CSV error is a
    problem naming the line; blank lines are skipped.
    """
    counter = _LineCounter(lines)
    reader = csv.reader(counter, strict=True)
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    errors: list[tuple[int, str]] = []
    while True:
        start = counter.count + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if counter.count > start and "end of data" in str(exc):
                problem = (
                    f"a quote opened on this line is never closed (it runs to line "
                    f"{counter.count}, the end of the file)"
                )
            else:
                problem = f"not valid CSV ({exc})"
            errors.append((start, problem))
            break  # the reader cannot tell where the next record starts
        if not cells:
            continue
        if header is None:
            header = [c.strip() for c in cells]
            continue
        if len(cells) != len(header):
            fewer = "fewer" if len(cells) < len(header) else "more"
            errors.append(
                (start, f"{fewer} cells than columns ({len(cells)}, the header has {len(header)})")
            )
            continue
        rows.append((start, dict(zip(header, cells, strict=True))))
    return ImportFile(header or [], rows, errors)


def check_import_header(header: Sequence[str]) -> None:
    """The columns of an import file: known fields, exported read-only ones (ignored)."""
    known = set(TEXT_FIELDS) | set(FIELD_ALIASES) | READ_ONLY_COLUMNS
    unknown = [h for h in header if h not in known]
    if unknown:
        raise AccountImportError(
            [f"line 1: unknown column(s) {', '.join(repr(u) for u in unknown)}"]
        )
    if len(set(header)) != len(header):
        raise AccountImportError(["line 1: a column is named twice"])


async def import_accounts(
    conn: AsyncConnection,
    rows: Iterable[tuple[int, Mapping[Any, Any]]],
    *,
    default_plan_id: int | None = None,
    number_length: int = DEFAULT_NUMBER_LENGTH,
    problems: Iterable[tuple[int, str]] = (),
) -> int:
    """:func:`import_account_numbers`, counted: how many accounts were created."""
    created = await import_account_numbers(
        conn, rows, default_plan_id=default_plan_id, number_length=number_length, problems=problems
    )
    return len(created)


async def import_account_numbers(
    conn: AsyncConnection,
    rows: Iterable[tuple[int, Mapping[Any, Any]]],
    *,
    default_plan_id: int | None = None,
    number_length: int = DEFAULT_NUMBER_LENGTH,
    problems: Iterable[tuple[int, str]] = (),
) -> list[str]:
    """Create the accounts of ``(line number, column -> text)`` rows, all or nothing.

    ``problems`` are lines already found bad (:attr:`ImportFile.problems`): they are reported
    with the rest, in line order, and nothing is imported.

    Every row is checked first (fields, plan, duplicate numbers and aliases in the file or the
    database) and every bad line is reported as ``line N: ...`` in one :class:`AccountImportError`;
    only a clean file is written. Empty cells take the defaults (a random number or alias, zero
    balance...). Run it in one transaction; raising rolls it all back. Returns the numbers of
    the accounts created, in file order.
    """
    errors: list[tuple[int, str]] = list(problems)
    parsed: list[tuple[int, int, dict[str, Any]]] = []
    first_line: dict[str, int] = {}  # numbers and aliases share one space
    for line, raw in rows:
        if None in raw or any(v is None for v in raw.values()):
            more = None in raw
            errors.append((line, f"{'more' if more else 'fewer'} cells than columns"))
            continue
        cells = {
            k: v
            for k, v in raw.items()
            if k is not None and k not in READ_ONLY_COLUMNS and v.strip()
        }
        try:
            fields = await parse_account_fields(conn, cells)
            plan_id = fields.pop("call_plan_id", default_plan_id)
            if plan_id is None:
                raise InvalidDataError(
                    "no plan (a plan column or --plan): configure the call plan first"
                )
            _check_expiry_fields(fields)
            for key in ("number", "alias"):
                value = fields.get(key)
                if value is None:
                    continue
                earlier = first_line.setdefault(value.lower(), line)
                if earlier != line:
                    raise ConflictError(f"{key} {value!r} repeats line {earlier}")
                conflict = await _identifier_conflict(conn, key, value)
                if conflict:
                    raise ConflictError(conflict)
        except (InvalidDataError, NotFoundError, ConflictError) as exc:
            errors.append((line, str(exc)))
            continue
        parsed.append((line, plan_id, fields))
    if errors:
        errors.sort(key=lambda e: e[0])
        raise AccountImportError([f"line {line}: {text}" for line, text in errors])
    if not parsed:
        raise InvalidDataError("the file holds no accounts")
    taken = set(first_line)
    created: list[str] = []
    for line, plan_id, fields in parsed:
        try:
            account = await open_account(
                conn, call_plan_id=plan_id, number_length=number_length, taken=taken, **fields
            )
        except (InvalidDataError, NotFoundError, ConflictError) as exc:
            raise AccountImportError([f"line {line}: {exc}"]) from exc
        created.append(account.number)
    return created


# --- everything about one customer ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FriendInfo:
    technology: str  # SIP or IAX
    name: str
    host: str
    context: str


@dataclass(frozen=True, slots=True)
class IpAuth:
    address: str
    channel_limit: int | None
    cps_limit: int | None
    tech_prefix: str
    direction: str


@dataclass(frozen=True, slots=True)
class CallSummary:
    uniqueid: str
    started_at: datetime
    number: str
    destination: str
    billsec: int
    cost: Decimal
    status: str
    dial_status: str
    trunk: str


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """A2Billing's "Customer Information": one customer on one screen."""

    account: Account
    group: str | None
    plan: str
    balance_in_currency: Decimal
    in_use: int  # calls in progress (open reservations)
    reserved: Decimal  # held by those calls
    available: Decimal  # balance + debit limit - reserved
    friends: tuple[FriendInfo, ...]
    callerids: tuple[CallerId, ...]
    ips: tuple[IpAuth, ...]
    contacts: tuple[Contact, ...]
    last_calls: tuple[CallSummary, ...]
    last_payments: tuple[Payment, ...]  # every kind: refills ... DID and package charges
    movements: tuple[MovementTotal, ...] = ()  # per kind, then calls; they sum to the balance


async def account_info(conn: AsyncConnection, account_id: int, *, last: int = 10) -> AccountInfo:
    """Everything about one account: names, money, friends, caller IDs, IPs, last calls/payments."""
    account = await fetch_account(conn, account_id)
    names = (
        await conn.execute(
            select(
                call_plans.c.name, customer_groups.c.name, currencies.c.value, currencies.c.decimals
            )
            .select_from(
                accounts.join(call_plans, call_plans.c.id == accounts.c.call_plan_id)
                .join(currencies, currencies.c.code == accounts.c.currency)
                .outerjoin(customer_groups, customer_groups.c.id == accounts.c.group_id)
            )
            .where(accounts.c.id == account_id)
        )
    ).one()
    held = (
        await conn.execute(
            select(func.count()).where(
                reservations.c.account_id == account_id,
                reservations.c.status == ReservationStatus.OPEN.value,
            )
        )
    ).one()
    reserved = await conn.scalar(
        select(func.sum(reservations.c.amount)).where(
            reservations.c.account_id == account_id,
            reservations.c.status == ReservationStatus.OPEN.value,
        )
    )
    reserved = reserved if reserved is not None else quantize_money(Decimal(0))
    friends: list[FriendInfo] = []
    for tech, table in (("SIP", sip_friends), ("IAX", iax_friends)):
        row = (await conn.execute(select(table).where(table.c.account_id == account_id))).first()
        if row is not None:
            friends.append(FriendInfo(tech, row.name, row.host, row.context))
    ips = tuple(
        IpAuth(r.address, r.channel_limit, r.cps_limit, r.tech_prefix, r.direction)
        for r in await conn.execute(
            select(account_ips)
            .where(account_ips.c.account_id == account_id)
            .order_by(account_ips.c.address)
        )
    )
    last_calls = tuple(
        CallSummary(
            r.uniqueid,
            r.started_at,
            r.number or r.dialed_number,
            r.destination,
            r.billsec,
            r.cost,
            r.status,
            r.dial_status,
            r.trunk,
        )
        for r in await conn.execute(
            select(calls)
            .where(calls.c.account_id == account_id)
            .order_by(calls.c.started_at.desc(), calls.c.id.desc())
            .limit(last)
        )
    )
    return AccountInfo(
        account=account,
        group=names[1],
        plan=names[0],
        balance_in_currency=_in_currency(account.balance, names[2], names[3]),
        in_use=int(held[0]),
        reserved=reserved,
        available=account.balance + account.debit_limit - reserved,
        friends=tuple(friends),
        callerids=tuple(await list_callerids(conn, account_id)),
        ips=ips,
        contacts=tuple(await list_contacts(conn, account_id)),
        last_calls=last_calls,
        last_payments=tuple(await list_payments(conn, account_id=account_id, limit=last)),
        movements=await movement_totals(conn, account_id),
    )
