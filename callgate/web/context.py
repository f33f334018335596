"""What every route of the web app shares: settings, engine, templates, security parts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.config import Settings
from callgate.web.security import LoginRateLimiter, PasswordHasher, SessionCookies

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


@dataclass(frozen=True, slots=True)
class WebContext:
    settings: Settings
    engine: AsyncEngine
    templates: Jinja2Templates
    hasher: PasswordHasher
    operator_cookies: SessionCookies
    login_limiter: LoginRateLimiter


def web(request: Request) -> WebContext:
    """The app's :class:`WebContext` (a FastAPI dependency)."""
    context: WebContext = request.app.state.web
    return context
