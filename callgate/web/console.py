"""The operator console's pages (server-rendered; every route needs a logged-in operator and
every POST the session's CSRF token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from callgate.store.operators import Operator
from callgate.web.auth import csrf_protect, current_operator, session_of
from callgate.web.context import WebContext, web
from callgate.web.security import Session

router = APIRouter(dependencies=[Depends(csrf_protect)])

Ctx = Annotated[WebContext, Depends(web)]
Me = Annotated[Operator, Depends(current_operator)]
Sess = Annotated[Session, Depends(session_of)]


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, context: Ctx, me: Me, session: Sess) -> Response:
    return context.templates.TemplateResponse(
        request, "home.html", {"me": me, "csrf": session.csrf}
    )
