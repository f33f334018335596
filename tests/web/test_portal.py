"""The customer portal (``/portal``) over the real ASGI app, on both databases.

Two customers, each with a contact, calls and payments; every test logs in as one and tries
the other's ids (404), the console's cookie, no CSRF token, too many wrong passwords...
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest
from known_calls import DAY1, seed
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.config import Settings, WebSettings
from callgate.schema.tables import CallStatus, calls, payments
from callgate.store import accounts as account_store
from callgate.store import contacts, ledger
from callgate.store.currencies import add_currency
from callgate.store.db import write_transaction
from callgate.store.payments import add_payment, set_payment_status
from callgate.store.portal import plain_amount
from callgate.web.app import OPERATOR_COOKIE, create_app
from callgate.web.portal import portal_cookies

SECRET = "p" * 32
ALICE = ("alice@example.com", "alice-password")
BOB = ("Bob@Example.com", "bob-password-1")


@dataclass
class Portal:
    client: httpx.AsyncClient
    engine: AsyncEngine
    alice_id: int
    bob_id: int
    bob_call: int
    bob_payment: int

    async def login(self, email: str, password: str) -> httpx.Response:
        page = await self.client.get("/portal/login")
        return await self.client.post(
            "/portal/login",
            data={"email": email, "password": password, "csrf": csrf_of(page.text)},
        )

    async def csrf(self) -> str:
        return csrf_of((await self.client.get("/portal/topup")).text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


@pytest.fixture
async def portal(engine: AsyncEngine) -> AsyncIterator[Portal]:
    alice_id, _ = await seed(engine)  # account 8000000001 with six calls
    async with write_transaction(engine) as conn:
        alice = await account_store.update_account(
            conn,
            alice_id,
            alias="alice",
            minimum_payment=Decimal("10"),
            public_notes="Your line is 5551001.",
            private_notes="late payer",
        )
        await contacts.add_contact(
            conn,
            alice_id,
            name="Alice",
            email=ALICE[0],
            password=ALICE[1],
            public_notes="Ask for Sam.",
            private_notes="operators only",
        )
        bob = await account_store.open_account(
            conn, call_plan_id=alice.call_plan_id, alias="bob", balance=Decimal("7")
        )
        await contacts.add_contact(conn, bob.id, name="Bob", email=BOB[0], password=BOB[1])
        bob_payment = int(
            await conn.scalar(select(payments.c.id).where(payments.c.account_id == bob.id)) or 0
        )
    await ledger.record_attempt(
        engine,
        ledger.CallRecord(
            uniqueid="bob-1",
            status=CallStatus.OK,
            started_at=DAY1,
            account_id=bob.id,
            number="15559998888",
            billsec=10,
            dial_status="ANSWER",
            cost=Decimal("0.1"),
        ),
    )
    async with engine.connect() as conn:
        bob_call = int(
            await conn.scalar(select(calls.c.id).where(calls.c.uniqueid == "bob-1")) or 0
        )
    settings = Settings(web=WebSettings(login_max_failures=3))
    app = create_app(settings, engine, secret=SECRET)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Portal(client, engine, alice_id, bob.id, bob_call, bob_payment)


async def test_pages_need_a_login_and_a_wrong_password_is_refused(portal: Portal) -> None:
    for path in ("/portal/", "/portal/calls", "/portal/payments", "/portal/notes", "/portal/topup"):
        response = await portal.client.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/portal/login"
    wrong = await portal.login(ALICE[0], "not-it")
    assert wrong.status_code == 401 and "Wrong e-mail or password" in wrong.text
    unknown = await portal.login("nobody@example.com", ALICE[1])
    assert unknown.status_code == 401
    assert (await portal.client.get("/portal/")).status_code == 303


async def test_login_by_contact_e_mail_in_any_case_shows_the_balance(portal: Portal) -> None:
    response = await portal.login(ALICE[0].upper(), ALICE[1])
    assert response.status_code == 303 and response.headers["location"] == "/portal/"
    cookie = response.headers["set-cookie"]
    assert "callgate_portal=" in cookie and "Path=/portal" in cookie and "HttpOnly" in cookie
    home = await portal.client.get("/portal/")
    assert home.status_code == 200
    assert 'id="balance">10.00 USD<' in home.text
    assert "late payer" not in home.text


async def test_the_balance_is_in_the_account_s_currency(portal: Portal) -> None:
    async with write_transaction(portal.engine) as conn:
        await add_currency(conn, "EUR", name="Euro", rate=Decimal("1.25"), decimals=2)
        plan_id = (await account_store.fetch_account(conn, portal.alice_id)).call_plan_id
        eve = await account_store.open_account(
            conn, call_plan_id=plan_id, alias="eve", currency="EUR", balance=Decimal("10")
        )
        await contacts.add_contact(conn, eve.id, name="Eve", email="eve@x.org", password="e" * 9)
    await portal.login("eve@x.org", "e" * 9)
    home = await portal.client.get("/portal/")
    assert 'id="balance">8.00 EUR<' in home.text  # 10 USD / 1.25


async def test_a_customer_sees_only_its_own_calls_payments_and_notes(portal: Portal) -> None:
    await portal.login(*ALICE)
    calls_page = (await portal.client.get("/portal/calls")).text
    assert calls_page.count('href="/portal/calls/') == 6
    assert "15559998888" not in calls_page
    mine = re.search(r'href="/portal/calls/(\d+)"', calls_page)
    assert mine
    own = await portal.client.get(f"/portal/calls/{mine.group(1)}")
    assert own.status_code == 200 and "442079460000" in own.text
    other_call = await portal.client.get(f"/portal/calls/{portal.bob_call}")
    assert other_call.status_code == 404 and 'id="not-found">No such call.<' in other_call.text
    assert "15559998888" not in other_call.text
    other_payment = await portal.client.get(f"/portal/payments/{portal.bob_payment}")
    assert other_payment.status_code == 404 and "No such payment." in other_payment.text
    async with write_transaction(portal.engine) as conn:
        paid = await add_payment(conn, portal.alice_id, Decimal("15"), description="by card")
    own_payments = (await portal.client.get("/portal/payments")).text
    assert own_payments.count('href="/portal/payments/') == 1 and "by card" in own_payments
    own_payment = await portal.client.get(f"/portal/payments/{paid.id}")
    assert own_payment.status_code == 200 and 'id="payment-amount">15.00 USD<' in own_payment.text
    assert (await portal.client.get("/portal/calls/999999")).status_code == 404
    payments_page = (await portal.client.get("/portal/payments")).text
    assert f'href="/portal/payments/{portal.bob_payment}"' not in payments_page
    notes = (await portal.client.get("/portal/notes")).text
    assert "Your line is 5551001." in notes and "Ask for Sam." in notes
    assert "late payer" not in notes and "operators only" not in notes


async def test_top_up_request_respects_the_minimum_and_stays_pending(portal: Portal) -> None:
    await portal.login(*ALICE)
    form = await portal.client.get("/portal/topup")
    assert 'id="minimum">10.00<' in form.text
    token = csrf_of(form.text)
    for amount, message in [
        ("9.99", "the minimum top-up is 10.00; 9.99 is below it"),
        ("-5", "a top-up must be positive, not -5.00"),
        ("ten", "amount"),
        ("", "amount"),
    ]:
        refused = await portal.client.post("/portal/topup", data={"amount": amount, "csrf": token})
        assert refused.status_code == 422, amount
        assert message in refused.text, (amount, refused.text)
    ok = await portal.client.post("/portal/topup", data={"amount": "25", "csrf": token})
    assert ok.status_code == 303
    location = ok.headers["location"]
    page = await portal.client.get(location)
    assert 'id="payment-status">pending<' in page.text
    assert 'id="payment-amount">25.00 USD<' in page.text
    async with portal.engine.connect() as conn:
        rows = (
            await conn.execute(select(payments).where(payments.c.account_id == portal.alice_id))
        ).all()
        balance = (await account_store.fetch_account(conn, portal.alice_id)).balance
    requested = [r for r in rows if r.status == "pending"]
    assert [(r.kind, r.amount) for r in requested] == [("refill", Decimal("25"))]
    assert requested[0].description == f"top-up requested on the portal by {ALICE[0]}"
    assert balance == Decimal("10")  # nothing moves until an operator completes it
    async with write_transaction(portal.engine) as conn:
        await set_payment_status(conn, requested[0].id, "completed")
    home = await portal.client.get("/portal/")
    assert 'id="balance">35.00 USD<' in home.text


async def test_a_post_without_the_csrf_token_is_refused(portal: Portal) -> None:
    await portal.login(*ALICE)
    response = await portal.client.post("/portal/topup", data={"amount": "50"})
    assert response.status_code == 403
    stale = await portal.client.post("/portal/topup", data={"amount": "50", "csrf": "forged"})
    assert stale.status_code == 403
    no_csrf_login = await portal.client.post(
        "/portal/login", data={"email": ALICE[0], "password": ALICE[1]}
    )
    assert no_csrf_login.status_code == 403
    async with portal.engine.connect() as conn:
        pending = await conn.scalar(select(payments.c.id).where(payments.c.status == "pending"))
    assert pending is None


async def test_no_portal_access_no_login_and_turning_it_off_ends_the_session(
    portal: Portal,
) -> None:
    async with write_transaction(portal.engine) as conn:
        await account_store.update_account(conn, portal.bob_id, portal_access=False)
    refused = await portal.login(*BOB)
    assert refused.status_code == 401
    await portal.login(*ALICE)
    assert (await portal.client.get("/portal/")).status_code == 200
    async with write_transaction(portal.engine) as conn:
        await account_store.update_account(conn, portal.alice_id, portal_access=False)
    assert (await portal.client.get("/portal/")).status_code == 303


async def test_logins_are_rate_limited(portal: Portal) -> None:
    for _ in range(3):
        assert (await portal.login(ALICE[0], "wrong")).status_code == 401
    blocked = await portal.login(*ALICE)  # even the right password, for the window
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert (await portal.login(*BOB)).status_code == 303  # another login is not blocked


async def test_the_operator_cookie_does_not_open_the_portal_nor_the_reverse(
    portal: Portal,
) -> None:
    response = await portal.login(*ALICE)
    value = portal.client.cookies.get("callgate_portal")
    assert value and response.status_code == 303
    portal.client.cookies.clear()
    portal.client.cookies.set(OPERATOR_COOKIE, value)
    assert (await portal.client.get("/portal/")).status_code == 303
    console = await portal.client.get("/")
    assert console.status_code == 303 and console.headers["location"].startswith("/login")


async def test_a_session_ends_session_hours_after_its_login(portal: Portal) -> None:
    await portal.login(*ALICE)
    assert (await portal.client.get("/portal/")).status_code == 200
    raw = portal.client.cookies.get("callgate_portal")
    cookies = portal_cookies(Settings(), SECRET)
    session = cookies.load(raw)
    assert isinstance(session.get("at"), int)
    session.data["at"] -= cookies.max_age_seconds  # logged in 12 hours ago, re-signed now
    portal.client.cookies.set("callgate_portal", cookies.dump(session), path="/portal")
    assert (await portal.client.get("/portal/")).status_code == 303


async def test_logout_ends_the_session(portal: Portal) -> None:
    await portal.login(*ALICE)
    token = await portal.csrf()
    out = await portal.client.post("/portal/logout", data={"csrf": token})
    assert out.status_code == 303 and out.headers["location"] == "/portal/login"
    assert (await portal.client.get("/portal/")).status_code == 303


def test_amounts_shown_exactly_without_stored_zeros() -> None:
    assert plain_amount(Decimal("10.00000")) == "10.00"
    assert plain_amount(Decimal("10.12500")) == "10.125"
    assert plain_amount(Decimal("0.00001")) == "0.00001"
    assert plain_amount(Decimal("7")) == "7.00"
    assert plain_amount(Decimal("-5")) == "-5.00"
