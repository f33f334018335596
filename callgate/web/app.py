"""``create_app``: the web application, the console's routers and the security middleware.

The secret that signs session cookies is ``[web] secret``, or (empty) the one generated once and
kept in the database: :func:`load_secret` reads or makes it before the app is built.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.config import Settings
from callgate.store import operators as operators_store
from callgate.store.db import write_transaction
from callgate.store.errors import ConflictError
from callgate.web import api, auth, console, portal
from callgate.web.context import STATIC_DIR, TEMPLATES_DIR, WebContext
from callgate.web.security import (
    CsrfError,
    LoginRateLimiter,
    PasswordHasher,
    SecurityHeadersMiddleware,
    SessionCookies,
    SessionMiddleware,
    secure_cookies,
)

OPERATOR_COOKIE = "callgate_console"


async def load_secret(settings: Settings, engine: AsyncEngine) -> str:
    """``[web] secret``, else the database's generated one (made on first use)."""
    if settings.web.secret:
        return settings.web.secret.value
    try:
        async with write_transaction(engine) as conn:
            return await operators_store.web_secret(conn)
    except ConflictError:  # another process made it at the same moment
        async with engine.connect() as conn:
            return await operators_store.web_secret(conn)


def create_app(settings: Settings, engine: AsyncEngine, *, secret: str | None = None) -> FastAPI:
    """The web app over ``engine``; ``secret`` defaults to ``[web] secret`` (see
    :func:`load_secret`)."""
    key = secret if secret is not None else settings.web.secret.value
    if len(key) < 16:
        raise ValueError("the web console needs a secret of 16 characters or more ([web] secret)")
    web = settings.web
    cookies = SessionCookies(
        secret=key,
        cookie_name=OPERATOR_COOKIE,
        salt="callgate.console.session",
        max_age_seconds=web.session_hours * 3600,
        secure=secure_cookies(web.cookie_secure, web.host),
    )
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    templates.env.globals["csrf_field"] = "csrf"
    app = FastAPI(title="callgate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.web = WebContext(
        settings=settings,
        engine=engine,
        templates=templates,
        hasher=PasswordHasher(),
        operator_cookies=cookies,
        login_limiter=LoginRateLimiter(web.login_max_failures, web.login_window_seconds),
    )
    app.state.portal = portal.portal_context(settings, key)
    app.add_middleware(SessionMiddleware, cookies=cookies)
    app.add_middleware(SessionMiddleware, cookies=app.state.portal.cookies)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_exception_handler(auth.LoginRequired, _login_required)
    app.add_exception_handler(CsrfError, _csrf_refused)
    app.add_exception_handler(portal.PortalLoginRequired, _portal_login_required)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.include_router(auth.router)
    app.include_router(console.router)
    app.include_router(portal.router)  # /portal: the customers' own pages
    app.mount("/api", api.create_api_app(settings, engine))  # /api/v1/..., /api/openapi.json
    return app


async def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, auth.LoginRequired)
    return RedirectResponse(exc.location, status_code=303)


async def _portal_login_required(request: Request, exc: Exception) -> Response:
    return RedirectResponse(f"{portal.PREFIX}/login", status_code=303)


async def _csrf_refused(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(str(exc), status_code=403)
