"""The JSON API (``/api/v1``): the console's operations for programs, with bearer tokens.

- Auth: ``Authorization: Bearer <token>`` (``callgate operators token LOGIN`` issues one). The
  token's SHA-256 is looked up in ``api_tokens``; a missing or unknown token is 401, a revoked
  token or a disabled operator 403; each accepted call stamps ``last_used_at``.
- Money is a JSON string (``"10.50000"``), in and out: a JSON number for an amount is refused
  (422), since a float cannot hold a price exactly.
- Errors are JSON: ``{"detail": "..."}`` for 401/403/404/409/503, and FastAPI's list form
  ``{"detail": [{"loc": ["body", "minimum_payment"], "msg": "...", "type": "value_error"}]}``
  for 422, naming the field.
- The OpenAPI document is ``/api/openapi.json`` (:func:`create_api_app` is mounted at ``/api``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callgate.config import Settings
from callgate.schema.tables import AccountStatus, CallStatus, PaymentKind, PaymentStatus
from callgate.simulation import simulate_call
from callgate.store import accounts as account_store
from callgate.store import api_tokens as token_store
from callgate.store import calls as call_store
from callgate.store import payments as payment_store
from callgate.store.accounts import AccountInfo, SortKey
from callgate.store.api_tokens import ApiToken
from callgate.store.channels import LiveChannel, list_channels
from callgate.store.db import write_transaction
from callgate.store.errors import (
    ConflictError,
    InvalidDataError,
    NotFoundError,
    StoreError,
    StoreUnavailableError,
)
from callgate.store.search import AccountCriteria

log = logging.getLogger(__name__)

API_PREFIX = "/v1"
MONEY_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
MoneyText = Annotated[
    str,
    Field(
        pattern=MONEY_PATTERN,
        description="An exact decimal amount as a string (never a JSON number).",
        examples=["10.50"],
    ),
]


# module level: the route annotations are strings (PEP 563), resolved in the module's namespace
BEARER = HTTPBearer(
    auto_error=False, description="An API token from `callgate operators token LOGIN`."
)


class FieldError(Exception):
    """A bad value of one named field (answered 422 with ``loc`` naming it)."""

    def __init__(self, field: str, message: str, where: str = "body") -> None:
        super().__init__(message)
        self.field = field
        self.where = where


# --------------------------------------------------------------------------- models
class ErrorOut(BaseModel):
    detail: str = Field(description="What is wrong.")


class AccountOut(BaseModel):
    """One customer account, as ``callgate accounts info`` shows it."""

    id: int
    number: str = Field(description="The secret account number.")
    alias: str = Field(description="The login.")
    first_name: str
    last_name: str
    company: str
    email: str
    phone: str
    address: str
    city: str
    state: str
    country: str
    zipcode: str
    website: str
    paypal_email: str
    group: str | None
    plan: str
    status: AccountStatus
    language: str
    currency: str
    balance: Decimal = Field(description="Base currency.")
    balance_currency: Decimal = Field(description="The balance in the account's currency.")
    debit_limit: Decimal
    reserved: Decimal = Field(description="Held by the calls in progress.")
    available: Decimal = Field(description="balance + debit_limit - reserved.")
    in_use: int = Field(description="Calls in progress (open reservations).")
    minimum_payment: Decimal
    tax_percent: Decimal
    portal_access: bool
    channel_limit: int | None
    cps_limit: int | None
    expiry_mode: str
    expires_at: datetime | None
    expiry_days: int | None
    call_count: int
    first_use_at: datetime | None
    last_use_at: datetime | None
    public_notes: str
    private_notes: str
    created_at: datetime | None


class AccountRowOut(BaseModel):
    """One line of the card list."""

    id: int
    number: str
    alias: str
    last_name: str
    group: str | None
    balance: Decimal
    balance_currency: Decimal
    plan: str
    status: AccountStatus
    language: str
    in_use: int
    currency: str
    sip: bool
    iax: bool
    calls: int


class AccountPageOut(BaseModel):
    items: list[AccountRowOut]
    total: int = Field(description="Accounts matching the criteria.")
    page: int
    per_page: int
    pages: int


class _AccountFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    email: str | None = None
    phone: str | None = None
    address: str | None = None
    city: str | None = None
    state: str | None = None
    country: str | None = None
    zipcode: str | None = None
    website: str | None = None
    paypal_email: str | None = None
    group: str | None = Field(None, description="Customer group name ('none': no group).")
    status: AccountStatus | None = None
    language: str | None = None
    currency: str | None = Field(None, description="Fixed at creation.")
    debit_limit: MoneyText | None = None
    minimum_payment: MoneyText | None = Field(
        None, description="Smallest refill or payment accepted (also on the portal)."
    )
    tax_percent: MoneyText | None = None
    portal_access: bool | None = None
    channel_limit: int | None = Field(None, ge=0, description="null: unlimited.")
    cps_limit: int | None = Field(None, ge=0, description="null: unlimited.")
    expiry_mode: (
        Literal["never", "at_date", "days_after_first_use", "days_after_creation"] | None
    ) = None
    expires_at: str | None = Field(None, description="YYYY-MM-DD or ISO time (UTC if no zone).")
    expiry_days: int | None = Field(None, ge=1)
    public_notes: str | None = None
    private_notes: str | None = None


class AccountCreate(_AccountFields):
    """A new account (``callgate accounts add``); a ``balance`` is an opening refill."""

    plan: str = Field(description="Call plan name (configure it first).")
    number: str | None = Field(None, description="6..20 digits; default random (CSPRNG).")
    balance: MoneyText | None = Field(None, description="Opening balance, base currency.")


class AccountUpdate(_AccountFields):
    """Only the fields given change (``callgate accounts update``); the balance moves only
    through payments."""

    plan: str | None = None
    number: str | None = None


class PaymentOut(BaseModel):
    id: int
    account_id: int
    kind: PaymentKind
    status: PaymentStatus
    amount: Decimal = Field(description="Gross, base currency.")
    tax_percent: Decimal
    tax_amount: Decimal
    credit: Decimal = Field(description="What the balance moves by when completed.")
    currency: str
    description: str
    created_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None


class PaymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: MoneyText = Field(description="Gross amount, base currency (a string).")
    kind: PaymentKind = PaymentKind.REFILL
    status: PaymentStatus = PaymentStatus.COMPLETED
    description: str = Field("", max_length=1000)


class PaymentStatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["completed", "cancelled"] = Field(
        description="pending -> completed credits; pending -> cancelled moves nothing; "
        "completed -> cancelled takes the credit back."
    )


class CallOut(BaseModel):
    """One billing record (CDR)."""

    uniqueid: str
    account: str = Field(description="Account number ('' for an unknown caller).")
    status: str
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    callerid: str
    dialed_number: str
    number: str
    prefix: str
    destination: str
    rate_table: str
    sell_rate: Decimal | None
    buy_rate: Decimal | None
    trunk: str
    billsec: int
    granted_seconds: int
    pdd_ms: int | None
    dial_status: str
    hangup_cause: int | None
    cost: Decimal
    buy_cost: Decimal
    script: str
    server: str
    note: str


class ChannelOut(BaseModel):
    """A channel up on Asterisk now (the AMI listener's view)."""

    uniqueid: str
    channel: str
    account: str
    caller: str
    destination: str
    state: str
    application: str
    bridged_to: str
    server: str
    started_at: datetime
    answered_at: datetime | None
    duration_seconds: int


class StatsOut(BaseModel):
    period: str
    attempts: int
    answered: int
    asr_percent: Decimal
    acd_seconds: Decimal
    billsec: int
    cost: Decimal
    pdd_ms: int | None
    peak_cps: int
    peak_channels: int = Field(description="The most calls up at once.")
    hangup_causes: dict[str, int]
    statuses: dict[str, int]


class SimulateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: str = Field(min_length=1, description="The dialled number.")
    account: str = Field("", description="Account number or alias.")
    callerid: str = ""
    accountcode: str = ""
    source_ip: str = Field("", description="The call's SIP source address (IP auth).")
    at: datetime | None = Field(None, description="Start time (default now; UTC if no zone).")


class SimRouteOut(BaseModel):
    table: str
    priority: int
    prefix: str
    destination: str
    rate: Decimal
    buy_rate: Decimal
    trunk: str
    granted_seconds: int
    reserve: Decimal


class SimAccountOut(BaseModel):
    id: int
    number: str
    alias: str
    status: str
    balance: Decimal
    debit_limit: Decimal
    in_use: int
    available: Decimal


class SimulateOut(BaseModel):
    """What the live ``call`` flow would decide (nothing is reserved or charged)."""

    status: str
    reason: str
    checks: list[str]
    number: str
    account: SimAccountOut | None = None
    routes: list[SimRouteOut]
    granted_seconds: int
    free_seconds: int
    reserve: Decimal
    callerid: str
    dial: str


# --------------------------------------------------------------------------- helpers
def _account_out(info: AccountInfo) -> AccountOut:
    a = info.account
    return AccountOut(
        id=a.id,
        number=a.number,
        alias=a.alias,
        first_name=a.first_name,
        last_name=a.last_name,
        company=a.company,
        email=a.email,
        phone=a.phone,
        address=a.address,
        city=a.city,
        state=a.state,
        country=a.country,
        zipcode=a.zipcode,
        website=a.website,
        paypal_email=a.paypal_email,
        group=info.group,
        plan=info.plan,
        status=a.status,
        language=a.language,
        currency=a.currency,
        balance=a.balance,
        balance_currency=info.balance_in_currency,
        debit_limit=a.debit_limit,
        reserved=info.reserved,
        available=info.available,
        in_use=info.in_use,
        minimum_payment=a.minimum_payment,
        tax_percent=a.tax_percent,
        portal_access=a.portal_access,
        channel_limit=a.channel_limit,
        cps_limit=a.cps_limit,
        expiry_mode=a.expiry_mode.value,
        expires_at=a.expires_at,
        expiry_days=a.expiry_days,
        call_count=a.call_count,
        first_use_at=a.first_use_at,
        last_use_at=a.last_use_at,
        public_notes=a.public_notes,
        private_notes=a.private_notes,
        created_at=a.created_at,
    )


def _payment_out(p: payment_store.Payment) -> PaymentOut:
    return PaymentOut(
        id=p.id,
        account_id=p.account_id,
        kind=p.kind,
        status=p.status,
        amount=p.amount,
        tax_percent=p.tax_percent,
        tax_amount=p.tax_amount,
        credit=p.credit,
        currency=p.currency,
        description=p.description,
        created_at=p.created_at,
        completed_at=p.completed_at,
        cancelled_at=p.cancelled_at,
    )


def _channel_out(c: LiveChannel, now: datetime) -> ChannelOut:
    return ChannelOut(
        uniqueid=c.uniqueid,
        channel=c.channel,
        account=c.accountcode,
        caller=c.callerid,
        destination=c.destination,
        state=c.state,
        application=c.application,
        bridged_to=c.bridged_to,
        server=c.server,
        started_at=c.started_at,
        answered_at=c.answered_at,
        duration_seconds=c.duration_seconds(now),
    )


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    return str(value.value if hasattr(value, "value") else value)


async def _parse_fields(conn: AsyncConnection, model: BaseModel) -> dict[str, Any]:
    """The fields given in the body as typed column values; an error names its field.

    Each field goes through :func:`callgate.store.accounts.parse_account_fields` alone, so the
    store's own rules (and messages) apply and the 422 says which field broke one.
    """
    out: dict[str, Any] = {}
    for name in sorted(model.model_fields_set):
        text = _as_text(getattr(model, name))
        try:
            out.update(await account_store.parse_account_fields(conn, {name: text}))
        except (InvalidDataError, NotFoundError) as exc:
            raise FieldError(name, str(exc)) from exc
    return out


async def _require(conn: AsyncConnection, account_id: int) -> account_store.Account:
    try:
        return await account_store.fetch_account(conn, account_id)
    except NotFoundError as exc:
        raise HTTPException(404, f"no account with id {account_id}") from exc


def parse_when(text: str | None, zone: tzinfo, name: str) -> datetime | None:
    """``YYYY-MM-DD`` (local midnight in ``billing.timezone``) or ISO-8601 (local if no zone)."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(0), tzinfo=zone).astimezone(UTC)
        stamp = datetime.fromisoformat(value)
    except ValueError as exc:
        raise FieldError(name, f"{name}: not a date or ISO time: {text!r}", "query") from exc
    return (stamp.replace(tzinfo=zone) if stamp.tzinfo is None else stamp).astimezone(UTC)


def _money_query(text: str | None, name: str) -> Decimal | None:
    if text is None:
        return None
    try:
        return account_store.parse_amount(text, name)
    except InvalidDataError as exc:
        raise FieldError(name, str(exc), "query") from exc


# --------------------------------------------------------------------------- the router
def api_router(settings: Settings, engine: AsyncEngine) -> APIRouter:
    """The ``/v1`` routes over ``engine``; every route needs a valid bearer token."""
    zone = ZoneInfo(settings.billing.timezone)

    async def operator_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> ApiToken:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None or not credentials.credentials:
            raise HTTPException(
                401,
                "missing bearer token: send 'Authorization: Bearer <token>' "
                "(`callgate operators token LOGIN` issues one)",
                headers=challenge,
            )
        async with write_transaction(engine) as conn:
            check = await token_store.authenticate(
                conn, credentials.credentials, now=datetime.now(UTC)
            )
        if check.refused == "unknown" or check.token is None:
            raise HTTPException(401, "unknown API token", headers=challenge)
        if check.refused == "revoked":
            raise HTTPException(403, f"API token {check.token.id} was revoked")
        if check.refused == "disabled":
            raise HTTPException(403, f"operator {check.token.operator} is disabled")
        return check.token

    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorOut, "description": "No bearer token, or an unknown one."},
        403: {"model": ErrorOut, "description": "A revoked token, or a disabled operator."},
    }
    not_found: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorOut, "description": "No such account."}
    }
    router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(operator_token)], responses=errors)

    @router.get(
        "/accounts",
        summary="List accounts",
        description=(
            "The card list of `callgate accounts list`: search criteria (all given must hold; "
            "`*` is a wildcard in number, alias, name and caller ID), sorting (then by id) and "
            "paging, all in SQL."
        ),
        response_model=AccountPageOut,
        tags=["accounts"],
    )
    async def list_accounts(
        page: Annotated[int, Query(ge=1)] = 1,
        per_page: Annotated[int, Query(ge=1, le=account_store.MAX_PER_PAGE)] = 10,
        sort: SortKey = SortKey.ID,
        desc: bool = False,
        number: str | None = None,
        alias: str | None = None,
        name: str | None = None,
        group: str | None = None,
        plan: str | None = None,
        status: Annotated[list[AccountStatus] | None, Query()] = None,
        balance_min: Annotated[str | None, Query(pattern=MONEY_PATTERN)] = None,
        balance_max: Annotated[str | None, Query(pattern=MONEY_PATTERN)] = None,
        created_from: Annotated[str | None, Query(description="YYYY-MM-DD, UTC")] = None,
        created_to: Annotated[str | None, Query(description="YYYY-MM-DD, UTC, inclusive")] = None,
        language: str | None = None,
        currency: str | None = None,
        callerid: str | None = None,
        ip: str | None = None,
        search: Annotated[str | None, Query(description="Free text")] = None,
    ) -> AccountPageOut:
        created_before = parse_when(created_to, UTC, "created_to")
        if created_before is not None and created_to is not None and len(created_to) == 10:
            created_before += timedelta(days=1)  # a whole day: up to its end
        criteria = AccountCriteria(
            number=number,
            alias=alias,
            name=name,
            group=group,
            plan=plan,
            statuses=tuple(status or ()),
            balance_min=_money_query(balance_min, "balance_min"),
            balance_max=_money_query(balance_max, "balance_max"),
            created_from=parse_when(created_from, UTC, "created_from"),
            created_before=created_before,
            language=language,
            currency=currency,
            callerid=callerid,
            ip=ip,
            text=search,
        )
        async with engine.connect() as conn:
            found = await account_store.list_accounts(
                conn, criteria, sort=sort, descending=desc, page=page, per_page=per_page
            )
        return AccountPageOut(
            items=[AccountRowOut.model_validate(r, from_attributes=True) for r in found.rows],
            total=found.total,
            page=found.page,
            per_page=found.per_page,
            pages=found.pages,
        )

    @router.get(
        "/accounts/{account_id}",
        summary="Get an account",
        description="Everything about one account, with its money in its own currency.",
        response_model=AccountOut,
        responses=not_found,
        tags=["accounts"],
    )
    async def get_account(account_id: int) -> AccountOut:
        async with engine.connect() as conn:
            await _require(conn, account_id)
            return _account_out(await account_store.account_info(conn, account_id))

    @router.post(
        "/accounts",
        status_code=201,
        summary="Create an account",
        description=(
            "As `callgate accounts add`: a call plan is required; number and alias are random "
            "unless given; an opening `balance` is recorded as a completed refill."
        ),
        response_model=AccountOut,
        responses={409: {"model": ErrorOut, "description": "Number or alias taken."}},
        tags=["accounts"],
    )
    async def create_account(body: AccountCreate) -> AccountOut:
        async with write_transaction(engine) as conn:
            fields = await _parse_fields(conn, body)
            plan_id = fields.pop("call_plan_id", None)
            account = await account_store.open_account(
                conn,
                call_plan_id=plan_id,
                number_length=settings.billing.account_number_length,
                **fields,
            )
            info = await account_store.account_info(conn, account.id)
        log.info("API: account %s created", account.number)
        return _account_out(info)

    @router.patch(
        "/accounts/{account_id}",
        summary="Change an account",
        description=(
            "As `callgate accounts update`: only the fields given change. The currency is fixed "
            "at creation and the balance moves only through payments."
        ),
        response_model=AccountOut,
        responses=not_found | {409: {"model": ErrorOut, "description": "Number/alias taken."}},
        tags=["accounts"],
    )
    async def update_account(account_id: int, body: AccountUpdate) -> AccountOut:
        async with write_transaction(engine) as conn:
            await _require(conn, account_id)
            fields = await _parse_fields(conn, body)
            await account_store.update_account(conn, account_id, **fields)
            info = await account_store.account_info(conn, account_id)
        return _account_out(info)

    @router.get(
        "/accounts/{account_id}/payments",
        summary="List an account's payments",
        description="Newest first.",
        response_model=list[PaymentOut],
        responses=not_found,
        tags=["payments"],
    )
    async def list_payments(
        account_id: int,
        status: PaymentStatus | None = None,
        kind: PaymentKind | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    ) -> list[PaymentOut]:
        async with engine.connect() as conn:
            await _require(conn, account_id)
            found = await payment_store.list_payments(
                conn, account_id=account_id, status=status, kind=kind, limit=limit
            )
        return [_payment_out(p) for p in found]

    @router.post(
        "/accounts/{account_id}/payments",
        status_code=201,
        summary="Add a payment",
        description=(
            "As `callgate payments add`: a refill or payment (gross, tax taken out, at least the "
            "account's minimum payment) or an adjustment (may be negative). The balance moves "
            "only when the payment is completed, in the same transaction."
        ),
        response_model=PaymentOut,
        responses=not_found,
        tags=["payments"],
    )
    async def add_payment(account_id: int, body: PaymentCreate) -> PaymentOut:
        amount = _money_body(body.amount, "amount")
        async with write_transaction(engine) as conn:
            await _require(conn, account_id)
            try:
                payment = await payment_store.add_payment(
                    conn,
                    account_id,
                    amount,
                    kind=body.kind,
                    status=body.status,
                    description=body.description,
                )
            except InvalidDataError as exc:
                raise FieldError("amount", str(exc)) from exc
        return _payment_out(payment)

    @router.get(
        "/payments",
        summary="List payments",
        description=(
            "Payments of every account (or one), newest first, as `callgate payments list`: "
            "`status=pending` lists the customers' top-up requests from the portal."
        ),
        response_model=list[PaymentOut],
        tags=["payments"],
    )
    async def all_payments(
        account_id: int | None = None,
        status: PaymentStatus | None = None,
        kind: PaymentKind | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    ) -> list[PaymentOut]:
        async with engine.connect() as conn:
            found = await payment_store.list_payments(
                conn, account_id=account_id, status=status, kind=kind, limit=limit
            )
        return [_payment_out(p) for p in found]

    @router.post(
        "/payments/{payment_id}/status",
        summary="Complete or cancel a payment",
        description=(
            "As `callgate payments set-status`: completing a pending payment (a portal top-up "
            "request) credits the account; the balance moves in the same transaction."
        ),
        response_model=PaymentOut,
        responses={404: {"model": ErrorOut, "description": "No such payment."}},
        tags=["payments"],
    )
    async def payment_status(payment_id: int, body: PaymentStatusIn) -> PaymentOut:
        async with write_transaction(engine) as conn:
            await payment_store.fetch_payment(conn, payment_id)  # 404 before anything
            try:
                payment = await payment_store.set_payment_status(conn, payment_id, body.status)
            except InvalidDataError as exc:
                raise FieldError("status", str(exc)) from exc
        return _payment_out(payment)

    @router.get(
        "/accounts/{account_id}/calls",
        summary="List an account's CDRs",
        description="The account's billing records, newest first.",
        response_model=list[CallOut],
        responses=not_found,
        tags=["calls"],
    )
    async def account_calls(
        account_id: int,
        since: Annotated[str | None, Query(description="Local day or ISO time")] = None,
        until: Annotated[str | None, Query(description="Local day or ISO time")] = None,
        status: CallStatus | None = None,
        destination: str = "",
        limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    ) -> list[CallOut]:
        flt = call_store.CallFilter(
            account_id=account_id,
            since=parse_when(since, zone, "since"),
            until=parse_when(until, zone, "until"),
            status=status,
            destination=destination,
        )
        async with engine.connect() as conn:
            await _require(conn, account_id)
            rows = await call_store.list_calls(conn, flt, limit=limit)
        return [CallOut.model_validate(r) for r in rows]

    @router.get(
        "/calls",
        summary="List CDRs",
        description=(
            "Billing records of every account, newest first, with the filters of "
            "`callgate cdr list`; days are the operator's (`billing.timezone`)."
        ),
        response_model=list[CallOut],
        tags=["calls"],
    )
    async def list_calls(
        account_id: int | None = None,
        since: Annotated[str | None, Query(description="Local day or ISO time")] = None,
        until: Annotated[str | None, Query(description="Local day or ISO time")] = None,
        status: CallStatus | None = None,
        destination: str = "",
        trunk: str = "",
        dial_status: str = "",
        answered: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    ) -> list[CallOut]:
        flt = call_store.CallFilter(
            account_id=account_id,
            since=parse_when(since, zone, "since"),
            until=parse_when(until, zone, "until"),
            status=status,
            destination=destination,
            trunk=trunk,
            dial_status=dial_status,
            answered=answered,
        )
        async with engine.connect() as conn:
            rows = await call_store.list_calls(conn, flt, limit=limit)
        return [CallOut.model_validate(r) for r in rows]

    @router.get(
        "/channels",
        summary="Live calls",
        description=(
            "The channels up on Asterisk now, as the AMI listener of `callgate serve` sees "
            "them; `account_id` keeps one account's."
        ),
        response_model=list[ChannelOut],
        responses=not_found,
        tags=["calls"],
    )
    async def live_calls(account_id: int | None = None) -> list[ChannelOut]:
        async with engine.connect() as conn:
            codes: Sequence[str] = ()
            if account_id is not None:
                codes = [(await _require(conn, account_id)).number]
            found = await list_channels(conn, accountcodes=codes)
        now = datetime.now(UTC)
        return [_channel_out(c, now) for c in found]

    @router.get(
        "/stats",
        summary="Call statistics",
        description=(
            "Attempts, answered, ASR, ACD, PDD, peak CPS, cost and hangup causes from the "
            "billing records, overall or per local day/month (`callgate stats`)."
        ),
        response_model=list[StatsOut],
        responses=not_found,
        tags=["calls"],
    )
    async def stats(
        since: Annotated[str | None, Query(description="Local day or ISO time")] = None,
        until: Annotated[str | None, Query(description="Local day or ISO time")] = None,
        account_id: int | None = None,
        by: call_store.StatsPeriod = call_store.StatsPeriod.ALL,
    ) -> list[StatsOut]:
        flt = call_store.CallFilter(
            account_id=account_id,
            since=parse_when(since, zone, "since"),
            until=parse_when(until, zone, "until"),
        )
        async with engine.connect() as conn:
            if account_id is not None:
                await _require(conn, account_id)
            periods = await call_store.call_stats(conn, flt, by=by, zone=zone)
        return [StatsOut.model_validate(p.as_dict()) for p in periods]

    @router.post(
        "/simulate",
        summary="Simulate a call",
        description=(
            "The live `call` flow's decision for a number (`callgate simulate`): the account, "
            "checks, routes with their grants, the grant and the Dial string. Nothing is "
            "reserved, held or charged."
        ),
        response_model=SimulateOut,
        tags=["calls"],
    )
    async def simulate(body: SimulateIn) -> SimulateOut:
        at = body.at or datetime.now(UTC)
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        result = await simulate_call(
            settings,
            engine,
            number=body.number,
            at=at,
            account_key=body.account,
            callerid=body.callerid,
            accountcode=body.accountcode,
            source_ip=body.source_ip,
        )
        return SimulateOut.model_validate(result)

    return router


def _money_body(text: str, name: str) -> Decimal:
    try:
        return account_store.parse_amount(text, name)
    except InvalidDataError as exc:
        raise FieldError(name, str(exc)) from exc


# --------------------------------------------------------------------------- the app
def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _field_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FieldError)
    return _error(422, [{"loc": [exc.where, exc.field], "msg": str(exc), "type": "value_error"}])


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, NotFoundError):
        return _error(404, str(exc))
    if isinstance(exc, ConflictError):
        return _error(409, str(exc))
    if isinstance(exc, InvalidDataError):
        return _error(422, [{"loc": ["body"], "msg": str(exc), "type": "value_error"}])
    if isinstance(exc, StoreUnavailableError):
        log.warning("API: database unavailable: %s", exc)
        return _error(503, "database unavailable")
    log.error("API: store error: %s", exc)
    return _error(500, str(exc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return _error(422, details)


def create_api_app(settings: Settings, engine: AsyncEngine) -> FastAPI:
    """The JSON API as an app of its own, mounted at ``/api`` by ``create_app``: its errors are
    always JSON and its OpenAPI document (``/api/openapi.json``) holds only the API."""
    api = FastAPI(
        title="callgate API",
        version="1",
        description=(
            "callgate's operator API: accounts, payments, CDRs, live calls, stats and call "
            "simulation. Authenticate with `Authorization: Bearer <token>` (`callgate "
            "operators token LOGIN`). Money is a decimal string, never a JSON number."
        ),
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    api.include_router(api_router(settings, engine))
    api.add_exception_handler(FieldError, _field_error)
    api.add_exception_handler(StoreError, _store_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    return api
