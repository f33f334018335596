"""The customer portal (``/portal``): a customer's own balance, calls, payments, public notes and
top-up requests, server-rendered.

- Login by a contact's e-mail and password (``callgate accounts contact add``), only for accounts
  with ``portal_access``; rate limited per (address, e-mail) like the console's; an unknown
  e-mail costs as much as a wrong password.
- Its own session cookie (``callgate_portal``, path ``/portal``, its own signing salt): an
  operator's console session never opens the portal, nor the other way round. The session
  holds the contact id, its account id, the login time and a fingerprint of the password hash,
  so removing the contact, changing its password or turning portal access off ends the session
  at the next request, and a session ends ``[web] session_hours`` after its login. Every
  POST needs the session's CSRF token.
- A customer sees only its own account: every query filters by the session's account id, so
  another account's call or payment id is a 404.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from callgate.config import Settings
from callgate.rating import in_currency
from callgate.store import accounts as account_store
from callgate.store import portal as store
from callgate.store.db import write_transaction
from callgate.store.errors import InvalidDataError, NotFoundError
from callgate.store.portal import Money, PortalContact
from callgate.web.context import WebContext, web
from callgate.web.security import (
    LoginRateLimiter,
    Session,
    SessionCookies,
    check_csrf,
    client_address,
    secure_cookies,
)

log = logging.getLogger(__name__)

PORTAL_COOKIE = "callgate_portal"
PREFIX = "/portal"


class PortalLoginRequired(Exception):
    """No valid portal session: answered with a redirect to the portal's login page."""


@dataclass(frozen=True, slots=True)
class PortalContext:
    cookies: SessionCookies
    limiter: LoginRateLimiter


def portal_cookies(settings: Settings, secret: str) -> SessionCookies:
    """The portal's session cookie: its own name, path and salt (never the console's)."""
    web_settings = settings.web
    return SessionCookies(
        secret=secret,
        cookie_name=PORTAL_COOKIE,
        salt="callgate.portal.session",
        max_age_seconds=web_settings.session_hours * 3600,
        secure=secure_cookies(web_settings.cookie_secure, web_settings.host),
        path=PREFIX,
    )


def portal_context(settings: Settings, secret: str) -> PortalContext:
    return PortalContext(
        cookies=portal_cookies(settings, secret),
        limiter=LoginRateLimiter(
            settings.web.login_max_failures, settings.web.login_window_seconds
        ),
    )


def _portal(request: Request) -> PortalContext:
    context: PortalContext = request.app.state.portal
    return context


def _session(request: Request, portal: Annotated[PortalContext, Depends(_portal)]) -> Session:
    return portal.cookies.of(request)


async def _csrf(request: Request, session: Annotated[Session, Depends(_session)]) -> None:
    await check_csrf(request, session)


def _fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


async def _customer(
    context: Annotated[WebContext, Depends(web)],
    portal: Annotated[PortalContext, Depends(_portal)],
    session: Annotated[Session, Depends(_session)],
) -> PortalContact:
    """The logged-in contact (still existing, same password, portal access still on), within
    ``[web] session_hours`` of its login however often the cookie was re-signed since."""
    contact_id = session.get("cid")
    logged_at = session.get("at")
    fresh = (
        isinstance(logged_at, int) and 0 <= time.time() - logged_at < portal.cookies.max_age_seconds
    )
    if isinstance(contact_id, int) and fresh:
        async with context.engine.connect() as conn:
            found = await store.fetch_contact(conn, contact_id)
        if (
            found is not None
            and found.portal_access
            and found.account_id == session.get("aid")
            and session.get("pw") == _fingerprint(found.password_hash)
        ):
            return found
        session.renew()
    raise PortalLoginRequired()


Ctx = Annotated[WebContext, Depends(web)]
Sess = Annotated[Session, Depends(_session)]
Me = Annotated[PortalContact, Depends(_customer)]
Portal = Annotated[PortalContext, Depends(_portal)]

router = APIRouter(prefix=PREFIX, dependencies=[Depends(_csrf)], include_in_schema=False)


def _shown(money: Money, amount: Decimal | None) -> str:
    """An amount kept in the base currency, in the account's currency (display only)."""
    if amount is None:
        return ""
    return f"{in_currency(amount, money.value, money.decimals)} {money.code}"


def _page(
    context: WebContext,
    request: Request,
    template: str,
    session: Session,
    values: dict[str, Any],
    status: int = 200,
) -> Response:
    return context.templates.TemplateResponse(
        request,
        f"portal/{template}",
        {"csrf": session.csrf, **values},
        status_code=status,
    )


def _not_found(
    context: WebContext, request: Request, session: Session, me: PortalContact, message: str
) -> Response:
    """Another account's row, or none: the same 404 (the portal never says which)."""
    values = {"me": me, "message": message}
    return _page(context, request, "notfound.html", session, values, status=404)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, context: Ctx, session: Sess) -> Response:
    return _page(context, request, "login.html", session, {"error": "", "email": ""})


@router.post("/login")
async def login(
    request: Request,
    context: Ctx,
    portal: Portal,
    session: Sess,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
) -> Response:
    limiter = portal.limiter
    address = client_address(request)
    key = limiter.key(address, email)
    wait = limiter.retry_after(key)
    if wait:
        log.warning("portal login for %r from %s refused: too many failures", email, address)
        response = _page(
            context,
            request,
            "login.html",
            session,
            {"error": f"Too many failed logins: try again in {wait} seconds.", "email": email},
            status=429,
        )
        response.headers["retry-after"] = str(wait)
        return response
    async with context.engine.connect() as conn:
        found = await store.check_login(conn, email, password) if email.strip() else None
    if found is None:
        limiter.failure(key)
        log.warning("portal login for %r from %s failed", email, address)
        return _page(
            context,
            request,
            "login.html",
            session,
            {"error": "Wrong e-mail or password, or no portal access.", "email": email},
            status=401,
        )
    limiter.success(key)
    session.renew(
        cid=found.contact_id,
        aid=found.account_id,
        pw=_fingerprint(found.password_hash),
        at=int(time.time()),
    )
    log.info("portal: contact %s of account id %s logged in", found.email, found.account_id)
    return RedirectResponse(f"{PREFIX}/", status_code=303)


@router.post("/logout")
async def logout(session: Sess) -> Response:
    session.renew()
    return RedirectResponse(f"{PREFIX}/login", status_code=303)


@router.get("/", response_class=HTMLResponse)
async def balance(request: Request, context: Ctx, session: Sess, me: Me) -> Response:
    async with context.engine.connect() as conn:
        info = await account_store.account_info(conn, me.account_id, last=0)
        money = await store.money_of(conn, me.account_id)
    account = info.account
    return _page(
        context,
        request,
        "home.html",
        session,
        {
            "me": me,
            "account": account,
            "plan": info.plan,
            "balance": _shown(money, account.balance),
            "available": _shown(money, info.available),
            "debit_limit": _shown(money, account.debit_limit),
            "in_use": info.in_use,
        },
    )


@router.get("/calls", response_class=HTMLResponse)
async def calls_page(request: Request, context: Ctx, session: Sess, me: Me) -> Response:
    async with context.engine.connect() as conn:
        rows = await store.account_calls(conn, me.account_id)
        money = await store.money_of(conn, me.account_id)
    for row in rows:
        row["shown_cost"] = _shown(money, row["cost"])
    return _page(context, request, "calls.html", session, {"me": me, "calls": rows})


@router.get("/calls/{call_id}", response_class=HTMLResponse)
async def call_page(
    request: Request, context: Ctx, session: Sess, me: Me, call_id: int
) -> Response:
    async with context.engine.connect() as conn:
        try:
            row = await store.account_call(conn, me.account_id, call_id)
        except NotFoundError:
            return _not_found(context, request, session, me, "No such call.")
        money = await store.money_of(conn, me.account_id)
    row["shown_cost"] = _shown(money, row["cost"])
    return _page(context, request, "call.html", session, {"me": me, "call": row})


@router.get("/payments", response_class=HTMLResponse)
async def payments_page(request: Request, context: Ctx, session: Sess, me: Me) -> Response:
    async with context.engine.connect() as conn:
        found = await store.account_payments(conn, me.account_id)
        money = await store.money_of(conn, me.account_id)
    rows = [{"p": p, "amount": _shown(money, p.amount), "credit": _shown(money, p.credit)}
            for p in found]  # fmt: skip
    return _page(context, request, "payments.html", session, {"me": me, "payments": rows})


@router.get("/payments/{payment_id}", response_class=HTMLResponse)
async def payment_page(
    request: Request, context: Ctx, session: Sess, me: Me, payment_id: int
) -> Response:
    async with context.engine.connect() as conn:
        try:
            payment = await store.account_payment(conn, me.account_id, payment_id)
        except NotFoundError:
            return _not_found(context, request, session, me, "No such payment.")
        money = await store.money_of(conn, me.account_id)
    values = {
        "me": me,
        "p": payment,
        "amount": _shown(money, payment.amount),
        "credit": _shown(money, payment.credit),
        "tax": _shown(money, payment.tax_amount),
    }
    return _page(context, request, "payment.html", session, values)


@router.get("/notes", response_class=HTMLResponse)
async def notes_page(request: Request, context: Ctx, session: Sess, me: Me) -> Response:
    async with context.engine.connect() as conn:
        account = await account_store.fetch_account(conn, me.account_id)
    values = {"me": me, "account_notes": account.public_notes, "contact_notes": me.public_notes}
    return _page(context, request, "notes.html", session, values)


async def _topup_values(context: WebContext, me: PortalContact) -> dict[str, Any]:
    async with context.engine.connect() as conn:
        minimum = await store.minimum_topup(conn, me.account_id)
        base = await account_store.base_currency(conn)
    return {
        "me": me,
        "minimum": minimum,
        "shown_minimum": store.plain_amount(minimum),
        "base": base,
    }


@router.get("/topup", response_class=HTMLResponse)
async def topup_page(request: Request, context: Ctx, session: Sess, me: Me) -> Response:
    values = await _topup_values(context, me) | {"error": "", "amount": ""}
    return _page(context, request, "topup.html", session, values)


@router.post("/topup")
async def topup(
    request: Request,
    context: Ctx,
    session: Sess,
    me: Me,
    amount: Annotated[str, Form()] = "",
) -> Response:
    try:
        value = account_store.parse_amount(amount, "amount")
        async with write_transaction(context.engine) as conn:
            payment = await store.request_topup(conn, me.account_id, value, requested_by=me.email)
    except InvalidDataError as exc:
        values = await _topup_values(context, me) | {"error": str(exc), "amount": amount}
        return _page(context, request, "topup.html", session, values, status=422)
    log.info("portal: top-up request %s of %s by %s", payment.id, payment.amount, me.email)
    return RedirectResponse(f"{PREFIX}/payments/{payment.id}", status_code=303)
