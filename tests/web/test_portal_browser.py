"""The customer portal in a real browser: headless Chromium (selenium) against a real uvicorn
server on a loopback port, on both databases. A customer logs in by e-mail, sees its balance,
is refused a top-up below its minimum payment, then requests one that stays pending.

The server and the browser are the web tests' fixtures (``tests/web/webkit.py``): without
Chromium and chromedriver the test skips, except with ``CALLGATE_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select
from webkit import LiveServer, serve_in_thread, web_settings

from callgate.schema.tables import payments
from callgate.store import accounts as account_store
from callgate.store import contacts, plans
from callgate.store.db import create_engine, write_transaction

EMAIL, PASSWORD = "carol@example.com", "carol-secret-9"


async def _seed(db_url: str) -> int:
    engine = create_engine(db_url)
    try:
        async with write_transaction(engine) as conn:
            plan = await plans.create_call_plan(conn, name="retail")
            account = await account_store.open_account(
                conn,
                call_plan_id=plan.id,
                alias="carol",
                balance=Decimal("12.5"),
                minimum_payment=Decimal("20"),
            )
            await contacts.add_contact(
                conn, account.id, name="Carol", email=EMAIL, password=PASSWORD
            )
            return account.id
    finally:
        await engine.dispose()


async def _pending(db_url: str, account_id: int) -> list[tuple[str, Decimal]]:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(payments.c.status, payments.c.amount).where(
                    payments.c.account_id == account_id, payments.c.status == "pending"
                )
            )
            return [(str(r.status), Decimal(r.amount)) for r in rows]
    finally:
        await engine.dispose()


@pytest.fixture
def portal_server(db_url: str) -> Iterator[tuple[LiveServer, int]]:
    account_id = asyncio.run(_seed(db_url))
    with serve_in_thread(db_url, web_settings(db_url)) as server:
        yield server, account_id


def go(driver: Any, element_id: str) -> None:
    """Click ``element_id`` and wait for the next page to replace this one."""
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, 15).until(staleness_of(page))


def test_portal_login_balance_and_top_up_in_a_browser(
    portal_server: tuple[LiveServer, int], browser: Any, db_url: str
) -> None:
    server, account_id = portal_server
    url = server.url
    driver = browser
    driver.get(f"{url}/portal/")
    assert driver.current_url == f"{url}/portal/login"  # not logged in: the login page
    driver.find_element(By.ID, "email").send_keys(EMAIL.upper())
    driver.find_element(By.ID, "password").send_keys("wrong-password")
    go(driver, "submit")
    assert "Wrong e-mail or password" in driver.find_element(By.ID, "error").text

    driver.find_element(By.ID, "email").clear()
    driver.find_element(By.ID, "email").send_keys(EMAIL)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    go(driver, "submit")
    assert driver.find_element(By.ID, "balance").text == "12.50 USD"

    go(driver, "nav-topup")
    assert driver.find_element(By.ID, "minimum").text == "20.00"
    driver.find_element(By.ID, "amount").send_keys("19.99")
    go(driver, "request")
    assert "below it" in driver.find_element(By.ID, "error").text
    assert asyncio.run(_pending(db_url, account_id)) == []

    amount = driver.find_element(By.ID, "amount")
    amount.clear()
    amount.send_keys("20")
    go(driver, "request")
    assert driver.find_element(By.ID, "payment-status").text == "pending"
    assert driver.find_element(By.ID, "payment-amount").text == "20.00 USD"
    assert asyncio.run(_pending(db_url, account_id)) == [("pending", Decimal("20"))]

    go(driver, "nav-balance")
    assert driver.find_element(By.ID, "balance").text == "12.50 USD"  # pending: not credited
    go(driver, "logout")
    assert driver.current_url == f"{url}/portal/login"
