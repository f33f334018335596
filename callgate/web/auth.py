"""Operator login and logout, and the dependencies every console page uses.

A console session holds the operator's id, the login time and a fingerprint of their password
hash: removing, disabling or re-passwording an operator ends their sessions at the next request,
and a session ends ``[web] session_hours`` after its login whatever was done since. Logins are
rate limited per (address, login); an unknown login costs as much as a wrong password.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from callgate.store import operators as store
from callgate.store.operators import Operator
from callgate.web.context import WebContext, web
from callgate.web.security import Session, check_csrf, client_address, dummy_hash

log = logging.getLogger(__name__)

router = APIRouter()


class LoginRequired(Exception):
    """No valid console session: answered with a redirect to the login page."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


def fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def session_of(request: Request, context: Annotated[WebContext, Depends(web)]) -> Session:
    return context.operator_cookies.of(request)


async def csrf_protect(request: Request, session: Annotated[Session, Depends(session_of)]) -> None:
    """Refuse a POST without the session's CSRF token (a router-wide dependency)."""
    await check_csrf(request, session)


async def current_operator(
    request: Request,
    context: Annotated[WebContext, Depends(web)],
    session: Annotated[Session, Depends(session_of)],
) -> Operator:
    """The logged-in operator; else a redirect to the login page (back here afterwards)."""
    operator_id = session.get("uid")
    logged_at = session.get("at")
    max_age = context.operator_cookies.max_age_seconds
    fresh = isinstance(logged_at, int) and 0 <= time.time() - logged_at < max_age
    if isinstance(operator_id, int) and fresh:
        async with context.engine.connect() as conn:
            found = await store.get_operator(conn, operator_id)
        if (
            found is not None
            and not found.disabled
            and session.get("pw") == fingerprint(found.password_hash)
        ):
            return found
        session.renew()
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    raise LoginRequired(f"/login?next={quote(target, safe='')}")


def _safe_next(target: str) -> str:
    """Only a local path: never an absolute URL or a scheme-relative one (open redirect)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


@router.get("/login", response_class=HTMLResponse)
async def login_page(
    request: Request,
    context: Annotated[WebContext, Depends(web)],
    session: Annotated[Session, Depends(session_of)],
    next: str = "/",
) -> Response:
    return context.templates.TemplateResponse(
        request,
        "login.html",
        {"csrf": session.csrf, "next": _safe_next(next), "error": "", "login": ""},
    )


@router.post("/login", dependencies=[Depends(csrf_protect)])
async def login(
    request: Request,
    context: Annotated[WebContext, Depends(web)],
    session: Annotated[Session, Depends(session_of)],
    login: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    limiter = context.login_limiter
    key = limiter.key(client_address(request), login)
    wait = limiter.retry_after(key)

    def refused(error: str, status: int) -> Response:
        response = context.templates.TemplateResponse(
            request,
            "login.html",
            {"csrf": session.csrf, "next": _safe_next(next), "error": error, "login": login},
            status_code=status,
        )
        if status == 429:
            response.headers["retry-after"] = str(wait)
        return response

    if wait:
        log.warning(
            "console login for %r from %s refused: too many failures",
            login,
            client_address(request),
        )
        return refused(f"Too many failed logins: try again in {wait} seconds.", 429)
    async with context.engine.connect() as conn:
        found = await store.find_operator(conn, login) if login.strip() else None
    hasher = context.hasher
    ok = await hasher.verify(found.password_hash if found else dummy_hash(hasher), password)
    if not ok or found is None or found.disabled:
        limiter.failure(key)
        log.warning("console login for %r from %s failed", login, client_address(request))
        return refused("Wrong login or password.", 401)
    limiter.success(key)
    session.renew(
        uid=found.id, pw=fingerprint(found.password_hash), login=found.login, at=int(time.time())
    )
    log.info("operator %s logged in from %s", found.login, client_address(request))
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout", dependencies=[Depends(csrf_protect)])
async def logout(session: Annotated[Session, Depends(session_of)]) -> Response:
    session.renew()
    return RedirectResponse("/login", status_code=303)
