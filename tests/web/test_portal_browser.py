"""The customer portal in a real browser: headless Chromium (selenium) against a real uvicorn
server on a loopback port, on both databases. A customer logs in by e-mail, sees its balance,
is refused a top-up below its minimum payment, then requests one that stays pending.

Without Chromium and chromedriver the test skips, except with ``CALLGATE_REQUIRE_BROWSER=1``.
(A small server fixture of its own; the web tests' shared fixtures can replace it.)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import select

from callgate.config import Settings
from callgate.schema.tables import payments
from callgate.store import accounts as account_store
from callgate.store import contacts, plans
from callgate.store.db import create_engine, write_transaction
from callgate.web.app import create_app

SECRET = "b" * 32
CHROMIUM = os.environ.get("CALLGATE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CALLGATE_CHROMEDRIVER", "/usr/bin/chromedriver")
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


def _serve(db_url: str, sock: socket.socket) -> tuple[threading.Thread, dict[str, Any]]:
    holder: dict[str, Any] = {}

    async def main() -> None:
        engine = create_engine(db_url)
        try:
            app = create_app(Settings(), engine, secret=SECRET)
            config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
            server = holder["server"] = uvicorn.Server(config)
            await server.serve(sockets=[sock])
        finally:
            await engine.dispose()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    return thread, holder


@pytest.fixture
def portal_url(db_url: str) -> Iterator[tuple[str, int]]:
    account_id = asyncio.run(_seed(db_url))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    thread, holder = _serve(db_url, sock)
    for _ in range(200):
        server = holder.get("server")
        if server is not None and server.started:
            break
        threading.Event().wait(0.05)
    assert holder.get("server") is not None and holder["server"].started
    try:
        yield f"http://127.0.0.1:{port}", account_id
    finally:
        holder["server"].should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(path)):
            reason = f"{path} not found (apt-get install chromium chromium-driver)"
            if os.environ.get("CALLGATE_REQUIRE_BROWSER") == "1":
                pytest.fail(f"CALLGATE_REQUIRE_BROWSER=1 but {reason}")
            pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_portal_login_balance_and_top_up_in_a_browser(
    portal_url: tuple[str, int], chromium: Any, db_url: str
) -> None:
    from selenium.webdriver.common.by import By

    url, account_id = portal_url
    driver = chromium
    driver.get(f"{url}/portal/")
    assert driver.current_url == f"{url}/portal/login"  # not logged in: the login page
    driver.find_element(By.ID, "email").send_keys(EMAIL.upper())
    driver.find_element(By.ID, "password").send_keys("wrong-password")
    driver.find_element(By.ID, "submit").click()
    assert "Wrong e-mail or password" in driver.find_element(By.ID, "error").text

    driver.find_element(By.ID, "email").clear()
    driver.find_element(By.ID, "email").send_keys(EMAIL)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "submit").click()
    assert driver.find_element(By.ID, "balance").text == "12.50 USD"

    driver.find_element(By.ID, "nav-topup").click()
    assert driver.find_element(By.ID, "minimum").text == "20.00000"
    driver.find_element(By.ID, "amount").send_keys("19.99")
    driver.find_element(By.ID, "request").click()
    assert "below it" in driver.find_element(By.ID, "error").text
    assert asyncio.run(_pending(db_url, account_id)) == []

    amount = driver.find_element(By.ID, "amount")
    amount.clear()
    amount.send_keys("20")
    driver.find_element(By.ID, "request").click()
    assert driver.find_element(By.ID, "payment-status").text == "pending"
    assert driver.find_element(By.ID, "payment-amount").text == "20.00 USD"
    assert asyncio.run(_pending(db_url, account_id)) == [("pending", Decimal("20"))]

    driver.find_element(By.ID, "nav-balance").click()
    assert driver.find_element(By.ID, "balance").text == "12.50 USD"  # pending: not credited
    driver.find_element(By.ID, "logout").click()
    assert driver.current_url == f"{url}/portal/login"
