"""The operator console's pages (server-rendered; every route needs a logged-in operator and
every POST the session's CSRF token).

Each page runs the same store and service functions as the matching CLI command: the card list
is ``accounts list`` (the same criteria, sort keys, pages of 10), batch update and Delete All are
``accounts batch-update`` and ``accounts delete --all``, export is ``accounts export``, the
payment form is ``payments add``, the friend buttons are ``accounts friend add|set
--new-secret`` followed by ``confgen write --reload``, stats is ``callgate stats``, the CDR list
and download are ``cdr list|export``, simulate is ``callgate simulate``.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.datastructures import FormData, ImmutableMultiDict

from callgate.ami.errors import AmiError
from callgate.confgen import service as confgen_service
from callgate.confgen.errors import ConfgenError
from callgate.confgen.reload import ReloadResult, reload_over_ami
from callgate.formats import XML_END, write_csv, write_xml
from callgate.formats import text as fmt
from callgate.schema.tables import AccountStatus, CallStatus, PaymentKind, PaymentStatus
from callgate.simulation import simulate_call
from callgate.store import accounts as store
from callgate.store import calls as call_store
from callgate.store import friends as friends_store
from callgate.store import groups as groups_store
from callgate.store import payments as payments_store
from callgate.store import plans as plans_store
from callgate.store.accounts import SortKey
from callgate.store.channels import list_channels
from callgate.store.db import write_transaction
from callgate.store.errors import InvalidDataError, NotFoundError, StoreError
from callgate.store.friends import ConfTarget, FriendKind
from callgate.store.operators import Operator
from callgate.store.search import AccountCriteria
from callgate.web import charts
from callgate.web.auth import csrf_protect, current_operator, session_of
from callgate.web.context import WebContext, web
from callgate.web.security import Session

log = logging.getLogger(__name__)

router = APIRouter(dependencies=[Depends(csrf_protect)])

Ctx = Annotated[WebContext, Depends(web)]
Me = Annotated[Operator, Depends(current_operator)]
Sess = Annotated[Session, Depends(session_of)]

PER_PAGE = 10  # A2Billing's card list

# (sort key, heading) of the card list's columns, in A2Billing's order
LIST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "ID"),
    ("number", "Account"),
    ("alias", "Login"),
    ("last_name", "Last name"),
    ("group", "Group"),
    ("balance", "Balance"),
    ("balance_currency", "Bal (cur)"),
    ("plan", "Plan"),
    ("status", "Status"),
    ("language", "Lg"),
    ("in_use", "Use"),
    ("currency", "Cur"),
    ("sip", "SIP"),
    ("iax", "IAX"),
    ("calls", "Calls"),
)

# (criterion, label) of the search form: the options of `callgate accounts list`
CRITERIA_LABELS: tuple[tuple[str, str], ...] = (
    ("number", "Account number"),
    ("alias", "Login"),
    ("name", "Name"),
    ("group", "Group"),
    ("plan", "Call plan"),
    ("balance_min", "Balance ≥"),
    ("balance_max", "Balance ≤"),
    ("created_from", "Created from"),
    ("created_to", "Created to"),
    ("language", "Language"),
    ("currency", "Currency"),
    ("callerid", "Caller ID"),
    ("ip", "IP"),
    ("text", "Free text"),
)

# (field, label) of the edit form: what `callgate accounts update` sets
EDIT_FIELDS: tuple[tuple[str, str], ...] = (
    ("alias", "Login"),
    ("first_name", "First name"),
    ("last_name", "Last name"),
    ("company", "Company"),
    ("email", "E-mail"),
    ("phone", "Phone"),
    ("address", "Address"),
    ("city", "City"),
    ("state", "State"),
    ("country", "Country"),
    ("zipcode", "Zip code"),
    ("language", "Language"),
    ("debit_limit", "Debit limit"),
    ("minimum_payment", "Minimum payment"),
    ("tax_percent", "Tax %"),
    ("channel_limit", "Channel limit"),
    ("cps_limit", "CPS limit"),
    ("public_notes", "Public notes"),
    ("private_notes", "Private notes"),
)

# (field, label) of the batch update form
BATCH_FIELDS: tuple[tuple[str, str], ...] = (
    ("status", "Status"),
    ("plan", "Call plan"),
    ("group", "Group"),
    ("language", "Language"),
    ("debit_limit", "Debit limit"),
    ("channel_limit", "Channel limit"),
)


def render(
    request: Request,
    context: WebContext,
    session: Session,
    me: Operator | None,
    template: str,
    status_code: int = 200,
    **data: Any,
) -> Response:
    """A page with what every page shows: the operator, the CSRF token, a flash message."""
    message, kind = data.pop("flash", ""), data.pop("flash_kind", "ok")
    if not message and session.get("flash"):  # set by the POST that redirected here
        message, kind = session.pop("flash")
    values: dict[str, Any] = {
        "me": me,
        "csrf": session.csrf,
        "flash": message,
        "flash_kind": kind,
        "fmt": fmt,
    }
    values.update(data)
    return context.templates.TemplateResponse(request, template, values, status_code=status_code)


def flash(session: Session, message: str, kind: str = "ok") -> None:
    session["flash"] = [message, kind]


def redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def _criteria_values(params: Mapping[str, str] | ImmutableMultiDict[str, Any]) -> dict[str, str]:
    return {name: str(params.get(name) or "") for name, _ in CRITERIA_LABELS}


def _statuses(params: ImmutableMultiDict[str, Any]) -> list[str]:
    return [str(v) for v in params.getlist("status") if v]


def criteria_of(params: ImmutableMultiDict[str, Any]) -> AccountCriteria:
    """The search criteria of a query string or form (raises InvalidDataError)."""
    return store.parse_criteria(_criteria_values(params), _statuses(params))


def criteria_query(params: ImmutableMultiDict[str, Any]) -> list[tuple[str, str]]:
    """The criteria as query-string pairs (to keep them in sort, page and export links)."""
    pairs = [(k, v) for k, v in _criteria_values(params).items() if v]
    pairs += [("status", s) for s in _statuses(params)]
    return pairs


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, context: Ctx, me: Me, session: Sess) -> Response:
    return render(request, context, session, me, "home.html")


# --------------------------------------------------------------------------- the card list
@router.get("/accounts", response_class=HTMLResponse)
async def accounts_list(request: Request, context: Ctx, me: Me, session: Sess) -> Response:
    params = request.query_params
    sort = params.get("sort", SortKey.ID.value)
    if sort not in {k.value for k in SortKey}:
        sort = SortKey.ID.value
    descending = params.get("desc") == "1"
    try:
        page = max(1, int(params.get("page", "1")))
    except ValueError:
        page = 1
    error = ""
    try:
        criteria = criteria_of(params)
    except InvalidDataError as exc:
        criteria, error = AccountCriteria(), f"search: {exc}"
    async with context.engine.connect() as conn:
        result = await store.list_accounts(
            conn, criteria, sort=sort, descending=descending, page=page, per_page=PER_PAGE
        )
        plans = [p.name for p in await plans_store.list_call_plans(conn)]
        groups = [g.name for g in await groups_store.list_groups(conn)]
    kept = criteria_query(params)

    def link(**changes: Any) -> str:
        pairs = dict(sort=sort, desc="1" if descending else "", page=str(result.page))
        pairs.update({k: str(v) for k, v in changes.items()})
        return "/accounts?" + urlencode(kept + [(k, v) for k, v in pairs.items() if v])

    sort_links = {
        key: link(sort=key, desc="1" if key == sort and not descending else "", page=1)
        for key, _ in LIST_COLUMNS
    }
    return render(
        request,
        context,
        session,
        me,
        "accounts.html",
        flash=error,
        flash_kind="error",
        result=result,
        columns=LIST_COLUMNS,
        sort=sort,
        descending=descending,
        sort_links=sort_links,
        prev_link=link(page=result.page - 1) if result.page > 1 else "",
        next_link=link(page=result.page + 1) if result.page < result.pages else "",
        criteria_labels=CRITERIA_LABELS,
        values=_criteria_values(params),
        chosen_statuses=_statuses(params),
        statuses=[s.value for s in AccountStatus],
        criteria_pairs=kept,
        described=criteria.describe(),
        export_query=urlencode(kept),
        batch_fields=BATCH_FIELDS,
        plans=plans,
        groups=groups,
    )


@router.get("/accounts/export.{fmt_name}")
async def accounts_export(request: Request, context: Ctx, me: Me, fmt_name: str) -> Response:
    if fmt_name not in {"csv", "xml"}:
        return Response("export as csv or xml", status_code=404, media_type="text/plain")
    try:
        criteria = criteria_of(request.query_params)
    except InvalidDataError as exc:
        return Response(f"search: {exc}", status_code=400, media_type="text/plain")
    columns = store.EXPORT_COLUMNS

    async def body() -> AsyncIterator[str]:
        out = io.StringIO()
        write = (write_csv if fmt_name == "csv" else write_xml)(out, columns)
        async with context.engine.connect() as conn:
            async for row in store.iter_export_rows(conn, criteria, columns):
                write(row)
                if out.tell() > 65536:
                    yield out.getvalue()
                    out.seek(0)
                    out.truncate()
        if fmt_name == "xml":
            out.write(XML_END)
        yield out.getvalue()

    media = "text/csv" if fmt_name == "csv" else "application/xml"
    return StreamingResponse(
        body(),
        media_type=f"{media}; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="accounts.{fmt_name}"'},
    )


def _back_to_list(form: FormData) -> str:
    return "/accounts?" + urlencode(criteria_query(form))


@router.post("/accounts/batch")
async def accounts_batch(request: Request, context: Ctx, me: Me, session: Sess) -> Response:
    form = await request.form()
    back = _back_to_list(form)
    try:
        criteria = criteria_of(form)
        assignments = [
            f"{name}={value}"
            for name, _ in BATCH_FIELDS
            if (value := str(form.get(f"set_{name}") or "").strip())
        ]
        op = str(form.get("balance_op") or "")
        amount = str(form.get("balance_amount") or "").strip()
        if amount:
            if op not in {"=", "+=", "-="}:
                raise InvalidDataError("balance: choose set, add or take away")
            assignments.append(f"balance{op}{amount}")
        if not assignments:
            raise InvalidDataError("nothing to change: fill in at least one field")
        raw, balance = store.parse_assignments(assignments)
        async with write_transaction(context.engine) as conn:
            changes = await store.parse_account_fields(conn, raw)
            changed = await store.batch_update(
                conn, criteria, changes, balance=balance, description=f"batch update by {me.login}"
            )
    except StoreError as exc:
        flash(session, f"Batch update refused: {exc}", "error")
        return redirect(back)
    log.info("operator %s batch-updated %d account(s) (%s)", me.login, changed,
             criteria.describe())  # fmt: skip
    flash(session, f"{changed} account(s) updated ({criteria.describe()}).")
    return redirect(back)


@router.post("/accounts/delete-all", response_class=HTMLResponse)
async def accounts_delete_all(request: Request, context: Ctx, me: Me, session: Sess) -> Response:
    """Delete All in two steps: the first POST shows how many and asks; the second, with the
    count it showed, deletes (a count that changed in between asks again)."""
    form = await request.form()
    back = _back_to_list(form)
    try:
        criteria = criteria_of(form)
    except InvalidDataError as exc:
        flash(session, f"Delete All refused: {exc}", "error")
        return redirect(back)
    async with context.engine.connect() as conn:
        count = await store.count_accounts(conn, criteria)
    if count == 0:
        flash(session, f"No account matches ({criteria.describe()}): nothing deleted.", "warn")
        return redirect(back)
    confirmed = str(form.get("confirm_count") or "")
    if confirmed != str(count) or (criteria.is_empty() and form.get("everything") != "yes"):
        return render(
            request,
            context,
            session,
            me,
            "delete_confirm.html",
            count=count,
            described=criteria.describe(),
            everything=criteria.is_empty(),
            criteria_pairs=criteria_query(form),
            back=back,
        )
    try:
        async with write_transaction(context.engine) as conn:
            deleted = await store.delete_accounts(conn, criteria)
    except StoreError as exc:
        flash(session, f"Delete All refused: {exc}", "error")
        return redirect(back)
    log.info("operator %s deleted %d account(s) (%s)", me.login, deleted, criteria.describe())
    flash(session, f"{deleted} account(s) deleted.")
    return redirect("/accounts")


# --------------------------------------------------------------------------- one account
async def _info(context: WebContext, account_id: int) -> store.AccountInfo | None:
    async with context.engine.connect() as conn:
        try:
            return await store.account_info(conn, account_id, last=10)
        except NotFoundError:
            return None


def _not_found(request: Request, context: WebContext, session: Session, me: Operator) -> Response:
    return render(
        request, context, session, me, "message.html", status_code=404, title="Not found",
        message="No such account.",
    )  # fmt: skip


@router.get("/accounts/{account_id}", response_class=HTMLResponse)
async def account_page(
    request: Request, context: Ctx, me: Me, session: Sess, account_id: int
) -> Response:
    info = await _info(context, account_id)
    if info is None:
        return _not_found(request, context, session, me)
    async with context.engine.connect() as conn:
        marks = await friends_store.stale_marks(conn)
    # as `callgate confgen status`: the formats this server generates (confgen.formats)
    targets = _config_targets(context)
    snapshot_stale = {t: m for t, m in marks.items() if t in targets}
    return render(
        request,
        context,
        session,
        me,
        "account.html",
        info=info,
        a=info.account,
        has_sip=any(f.technology == "SIP" for f in info.friends),
        has_iax=any(f.technology == "IAX" for f in info.friends),
        stale=snapshot_stale,
    )


@router.get("/accounts/{account_id}/edit", response_class=HTMLResponse)
async def account_edit_page(
    request: Request, context: Ctx, me: Me, session: Sess, account_id: int
) -> Response:
    info = await _info(context, account_id)
    if info is None:
        return _not_found(request, context, session, me)
    return await _edit_form(request, context, session, me, info, {}, "")


async def _edit_form(
    request: Request,
    context: WebContext,
    session: Session,
    me: Operator,
    info: store.AccountInfo,
    typed: Mapping[str, str],
    error: str,
) -> Response:
    a = info.account
    current = {name: fmt(getattr(a, name)) for name, _ in EDIT_FIELDS}
    current["channel_limit"] = "" if a.channel_limit is None else str(a.channel_limit)
    current["cps_limit"] = "" if a.cps_limit is None else str(a.cps_limit)
    current.update(typed)
    async with context.engine.connect() as conn:
        plans = [p.name for p in await plans_store.list_call_plans(conn)]
        groups = [g.name for g in await groups_store.list_groups(conn)]
    return render(
        request,
        context,
        session,
        me,
        "account_edit.html",
        status_code=400 if error else 200,
        flash=error,
        flash_kind="error",
        info=info,
        a=a,
        fields=EDIT_FIELDS,
        values=current,
        plan=typed.get("plan", info.plan),
        group=typed.get("group", info.group or ""),
        status=typed.get("status", a.status.value),
        plans=plans,
        groups=groups,
        statuses=[s.value for s in AccountStatus],
    )


@router.post("/accounts/{account_id}/edit", response_class=HTMLResponse)
async def account_edit(
    request: Request, context: Ctx, me: Me, session: Sess, account_id: int
) -> Response:
    info = await _info(context, account_id)
    if info is None:
        return _not_found(request, context, session, me)
    form = await request.form()
    typed = {name: str(form.get(name) or "") for name, _ in EDIT_FIELDS}
    typed.update(
        plan=str(form.get("plan") or info.plan),
        group=str(form.get("group") or "none"),
        status=str(form.get("status") or info.account.status.value),
    )
    a = info.account
    before = {name: fmt(getattr(a, name)) for name, _ in EDIT_FIELDS}
    before.update(
        channel_limit="" if a.channel_limit is None else str(a.channel_limit),
        cps_limit="" if a.cps_limit is None else str(a.cps_limit),
        plan=info.plan,
        group=info.group or "none",
        status=a.status.value,
    )
    raw = {k: v for k, v in typed.items() if v.strip() != before.get(k, "").strip()}
    for name in ("channel_limit", "cps_limit"):
        if name in raw and not raw[name].strip():
            raw[name] = "none"
    if not raw:
        flash(session, "Nothing changed.", "warn")
        return redirect(f"/accounts/{account_id}")
    try:
        async with write_transaction(context.engine) as conn:
            fields = await store.parse_account_fields(conn, raw)
            await store.update_account(conn, account_id, **fields)
    except StoreError as exc:
        return await _edit_form(request, context, session, me, info, typed, str(exc))
    log.info("operator %s updated account %s (%s)", me.login, a.number, ", ".join(sorted(raw)))
    flash(session, f"Account {a.number} updated ({', '.join(sorted(raw))}).")
    return redirect(f"/accounts/{account_id}")


@router.get("/accounts/{account_id}/payment", response_class=HTMLResponse)
async def payment_page(
    request: Request, context: Ctx, me: Me, session: Sess, account_id: int
) -> Response:
    info = await _info(context, account_id)
    if info is None:
        return _not_found(request, context, session, me)
    return _payment_form(request, context, session, me, info, {}, "")


def _payment_form(
    request: Request,
    context: WebContext,
    session: Session,
    me: Operator,
    info: store.AccountInfo,
    typed: Mapping[str, str],
    error: str,
) -> Response:
    return render(
        request,
        context,
        session,
        me,
        "payment.html",
        status_code=400 if error else 200,
        flash=error,
        flash_kind="error",
        info=info,
        a=info.account,
        kinds=[k.value for k in PaymentKind],
        payment_statuses=[s.value for s in PaymentStatus],
        values={"kind": "refill", "status": "completed", "amount": "", "description": ""}
        | dict(typed),
    )


@router.post("/accounts/{account_id}/payment", response_class=HTMLResponse)
async def payment_add(
    request: Request, context: Ctx, me: Me, session: Sess, account_id: int
) -> Response:
    info = await _info(context, account_id)
    if info is None:
        return _not_found(request, context, session, me)
    form = await request.form()
    typed = {k: str(form.get(k) or "") for k in ("amount", "kind", "status", "description")}
    try:
        amount = store.parse_amount(typed["amount"], "amount")
        async with write_transaction(context.engine) as conn:
            payment = await payments_store.add_payment(
                conn,
                account_id,
                amount,
                kind=typed["kind"] or PaymentKind.REFILL,
                status=typed["status"] or PaymentStatus.COMPLETED,
                description=typed["description"],
            )
    except StoreError as exc:
        return _payment_form(request, context, session, me, info, typed, str(exc))
    log.info("operator %s added payment %d to account %s", me.login, payment.id,
             info.account.number)  # fmt: skip
    if payment.status is PaymentStatus.COMPLETED:
        flash(session, f"Payment {payment.id} completed: balance moved by {payment.credit}.")
    else:
        flash(session, f"Payment {payment.id} {payment.status.value}: balance unchanged.", "warn")
    return redirect(f"/accounts/{account_id}")


@router.post("/accounts/{account_id}/friend/{kind}", response_class=HTMLResponse)
async def friend_button(
    request: Request, context: Ctx, me: Me, session: Sess, account_id: int, kind: str
) -> Response:
    """A2Billing's SIP/IAX buttons: give the account a friend, or draw its friend a new secret;
    then ask to regenerate the configuration and reload Asterisk."""
    try:
        flavor = FriendKind(kind)
    except ValueError:
        return _not_found(request, context, session, me)
    try:
        async with write_transaction(context.engine) as conn:
            try:
                await friends_store.fetch_friend(conn, flavor, account_id)
            except NotFoundError:
                friend = await friends_store.create_friend(conn, flavor, account_id)
                verb = "created"
            else:
                friend = await friends_store.update_friend(
                    conn, flavor, account_id, new_secret=True
                )
                verb = "given a new secret"
    except StoreError as exc:
        flash(session, f"{flavor.value.upper()} friend refused: {exc}", "error")
        return redirect(f"/accounts/{account_id}")
    log.info("operator %s: %s friend %s %s", me.login, flavor.value, friend.name, verb)
    flash(
        session,
        f"{flavor.value.upper()} friend {friend.name} {verb}. The Asterisk configuration is "
        "now stale: regenerate it and reload Asterisk below.",
        "warn",
    )
    return redirect(f"/accounts/{account_id}#confgen")


def _config_targets(context: WebContext) -> list[ConfTarget]:
    known = {t.value for t in confgen_service.FILE_TARGETS}
    return [ConfTarget(name) for name in context.settings.confgen.formats if name in known]


@router.post("/confgen/apply", response_class=HTMLResponse)
async def confgen_apply(request: Request, context: Ctx, me: Me, session: Sess) -> Response:
    """``callgate confgen write --reload``: write the include files, clear the stale flag,
    reload the modules over AMI, and show what Asterisk answered."""
    form = await request.form()
    settings = context.settings
    targets = _config_targets(context)
    folder = settings.confgen.dir
    lines: list[str] = []
    ok = True
    snapshot = await confgen_service.load_snapshot(context.engine)
    try:
        texts = confgen_service.render_files(snapshot, targets)
        results = confgen_service.write_files(folder, texts)
    except (ConfgenError, OSError) as exc:
        lines.append(f"nothing written in {folder}: {exc}")
        ok = False
        results = []
    for r in results:
        lines.append(f"{'written' if r.changed else 'unchanged'}: {r.path}")
    if ok:
        await confgen_service.clear_written(context.engine, snapshot, targets)
        if form.get("reload") == "yes":
            reloads: list[ReloadResult] = []
            try:
                reloads = await reload_over_ami(settings.ami, targets)
            except (AmiError, OSError, TimeoutError) as exc:
                lines.append(f"files written, but AMI at {settings.ami.host}:"
                             f"{settings.ami.port} failed: {exc}")  # fmt: skip
                ok = False
            for result in reloads:
                status = "ok" if result.ok else "FAILED"
                lines.append(f"reload {result.target.value}: {status}: {result.command} -> "
                             f"{result.answer}")  # fmt: skip
                ok = ok and result.ok
    log.info("operator %s regenerated the configuration: %s", me.login, "; ".join(lines))
    back = str(form.get("back") or "/")
    return render(
        request,
        context,
        session,
        me,
        "confgen.html",
        status_code=200 if ok else 502,
        lines=lines,
        ok=ok,
        back=back if back.startswith("/") and not back.startswith("//") else "/",
    )


# --------------------------------------------------------------------------- calls and stats
@router.get("/calls/live", response_class=HTMLResponse)
async def live_calls(request: Request, context: Ctx, me: Me, session: Sess) -> Response:
    async with context.engine.connect() as conn:
        channels = await list_channels(conn)
    now = datetime.now(UTC)
    return render(
        request,
        context,
        session,
        me,
        "live.html",
        channels=[(c, c.duration_seconds(now)) for c in channels],
    )


def _zone(context: WebContext) -> ZoneInfo:
    return ZoneInfo(context.settings.billing.timezone)


async def _call_filter(
    context: WebContext, params: ImmutableMultiDict[str, Any]
) -> call_store.CallFilter:
    zone = _zone(context)
    account_id = None
    key = str(params.get("account") or "").strip()
    status = str(params.get("status") or "").strip()
    answered = str(params.get("answered") or "")
    if key:
        async with context.engine.connect() as conn:
            account_id = (await store.require_account(conn, key)).id
    try:
        call_status = CallStatus(status.upper()) if status else None
    except ValueError as exc:
        raise InvalidDataError(f"status: no call status {status!r}") from exc
    return call_store.CallFilter(
        account_id=account_id,
        since=call_store.parse_when(str(params.get("since") or ""), zone, "since"),
        until=call_store.parse_when(str(params.get("until") or ""), zone, "until"),
        status=call_status,
        destination=str(params.get("destination") or "").strip(),
        trunk=str(params.get("trunk") or "").strip(),
        dial_status=str(params.get("dial_status") or "").strip(),
        answered={"yes": True, "no": False}.get(answered),
    )


CDR_FILTERS = ("account", "since", "until", "status", "destination", "trunk", "dial_status")


@router.get("/stats", response_class=HTMLResponse)
async def stats_page(request: Request, context: Ctx, me: Me, session: Sess) -> Response:
    params = request.query_params
    by = params.get("by", call_store.StatsPeriod.DAY.value)
    if by not in {p.value for p in call_store.StatsPeriod}:
        by = call_store.StatsPeriod.DAY.value
    error = ""
    periods: list[call_store.CallStats] = []
    try:
        flt = await _call_filter(context, params)
        async with context.engine.connect() as conn:
            periods = await call_store.call_stats(
                conn, flt, by=call_store.StatsPeriod(by), zone=_zone(context)
            )
    except StoreError as exc:
        error = str(exc)
    labels = [p.period for p in periods]
    series: dict[str, tuple[str, list[Decimal | int]]] = {
        "asr": ("ASR %", [p.asr for p in periods]),
        "acd": ("ACD (s)", [p.acd for p in periods]),
        "pdd": ("PDD (ms)", [p.pdd_ms or 0 for p in periods]),
        "cps": ("Peak CPS", [p.peak_cps for p in periods]),
        "channels": ("Peak channels", [p.peak_channels for p in periods]),
        "attempts": ("Calls", [p.attempts for p in periods]),
    }
    svgs = [
        (key, title, charts.bar_chart(labels, values, title=title))
        for key, (title, values) in series.items()
    ]
    return render(
        request,
        context,
        session,
        me,
        "stats.html",
        flash=error,
        flash_kind="error",
        periods=periods,
        charts=svgs,
        by=by,
        values={k: params.get(k, "") for k in ("account", "since", "until")},
    )


@router.get("/cdrs", response_class=HTMLResponse)
async def cdr_list(request: Request, context: Ctx, me: Me, session: Sess) -> Response:
    params = request.query_params
    error = ""
    rows: list[dict[str, Any]] = []
    try:
        flt = await _call_filter(context, params)
        async with context.engine.connect() as conn:
            rows = await call_store.list_calls(conn, flt, limit=100)
    except StoreError as exc:
        error = str(exc)
    pairs = [(k, str(params.get(k))) for k in (*CDR_FILTERS, "answered") if params.get(k)]
    return render(
        request,
        context,
        session,
        me,
        "cdrs.html",
        flash=error,
        flash_kind="error",
        rows=rows,
        values={k: params.get(k, "") for k in (*CDR_FILTERS, "answered")},
        statuses=[s.value for s in CallStatus],
        export_query=urlencode(pairs),
    )


@router.get("/cdrs/export.csv")
async def cdr_export(request: Request, context: Ctx, me: Me) -> Response:
    try:
        flt = await _call_filter(context, request.query_params)
    except StoreError as exc:
        return Response(str(exc), status_code=400, media_type="text/plain")
    columns = list(call_store.EXPORT_COLUMNS)

    async def body() -> AsyncIterator[str]:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        async with context.engine.connect() as conn:
            async for batch in call_store.iter_calls(conn, flt):
                for row in batch:
                    writer.writerow([_cdr_text(row[c]) for c in columns])
                yield out.getvalue()
                out.seek(0)
                out.truncate()
        yield out.getvalue()

    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": 'attachment; filename="cdrs.csv"'},
    )


def _cdr_text(value: Any) -> str:
    """As ``callgate cdr export`` writes a value."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


# --------------------------------------------------------------------------- simulate
SIMULATE_FIELDS = ("number", "account", "callerid", "accountcode", "source_ip", "at")


@router.get("/simulate", response_class=HTMLResponse)
async def simulate_page(request: Request, context: Ctx, me: Me, session: Sess) -> Response:
    return render(
        request, context, session, me, "simulate.html",
        values=dict.fromkeys(SIMULATE_FIELDS, ""), result=None,
    )  # fmt: skip


@router.post("/simulate", response_class=HTMLResponse)
async def simulate_run(request: Request, context: Ctx, me: Me, session: Sess) -> Response:
    form = await request.form()
    values = {k: str(form.get(k) or "").strip() for k in SIMULATE_FIELDS}
    error = ""
    result: dict[str, Any] | None = None
    try:
        if not values["number"]:
            raise InvalidDataError("number: the dialled number is required")
        try:
            at = datetime.fromisoformat(values["at"]) if values["at"] else datetime.now(UTC)
        except ValueError as exc:
            raise InvalidDataError(f"at: not an ISO-8601 time: {values['at']!r}") from exc
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        result = await simulate_call(
            context.settings,
            context.engine,
            number=values["number"],
            account_key=values["account"],
            callerid=values["callerid"],
            accountcode=values["accountcode"],
            source_ip=values["source_ip"],
            at=at,
        )
    except StoreError as exc:
        error = str(exc)
    return render(
        request,
        context,
        session,
        me,
        "simulate.html",
        status_code=400 if error else 200,
        flash=error,
        flash_kind="error",
        values=values,
        result=result,
    )
