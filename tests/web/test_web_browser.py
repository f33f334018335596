"""The console driven in a real headless Chromium (selenium) against a real uvicorn server on a
loopback port, on both databases: log in, the card list (sort, search, pages of 10), edit, add
payment, batch update, Delete All with its confirmation, export, simulate, and the other pages."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import Select, WebDriverWait
from webkit import EXTRA, OPERATOR, PASSWORD, LiveServer

from callgate.store import accounts as account_store
from callgate.store.db import create_engine
from callgate.store.search import AccountCriteria


def log_in(browser: Any, server: LiveServer, target: str = "/accounts") -> None:
    browser.get(server.url + target)
    assert "/login" in browser.current_url  # no session yet: the login page, then back here
    browser.find_element(By.ID, "login").send_keys(OPERATOR)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    go(browser, "submit")
    assert browser.current_url == server.url + target


def go(browser: Any, element_id: str) -> None:
    """Click ``element_id`` and wait for the next page to replace this one."""
    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.ID, element_id).click()
    WebDriverWait(browser, 15).until(staleness_of(page))


def column(browser: Any, index: int) -> list[str]:
    """The texts of column ``index`` (0-based) of the card list."""
    rows = browser.find_elements(By.CSS_SELECTOR, "#cards tbody tr")
    return [r.find_elements(By.TAG_NAME, "td")[index].text for r in rows]


def flash(browser: Any) -> str:
    return str(browser.find_element(By.ID, "flash").text)


async def _account(db_url: str, key: str) -> account_store.Account:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            return await account_store.require_account(conn, key)
    finally:
        await engine.dispose()


async def _count(db_url: str) -> int:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            return await account_store.count_accounts(conn, AccountCriteria())
    finally:
        await engine.dispose()


def account(server: LiveServer, key: str) -> account_store.Account:
    return asyncio.run(_account(server.db_url, key))


def wait_for_file(folder: Path, name: str) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        path = folder / name
        if path.exists() and path.stat().st_size > 0:
            return path.read_text(encoding="utf-8")
        time.sleep(0.1)
    raise AssertionError(f"{name} was not downloaded into {folder}: {list(folder.iterdir())}")


def test_login_card_list_sort_search_and_pages(browser: Any, live_server: LiveServer) -> None:
    browser.get(live_server.url + "/login")
    browser.find_element(By.ID, "login").send_keys(OPERATOR)
    browser.find_element(By.ID, "password").send_keys("wrong password")
    go(browser, "submit")
    assert "Wrong login or password." in browser.find_element(By.ID, "error").text
    log_in(browser, live_server)
    total = 5 + len(EXTRA)
    assert f"{total} account(s)" in browser.find_element(By.ID, "summary").text
    assert len(column(browser, 0)) == 10  # pages of 10
    first_page = column(browser, 1)
    go(browser, "next")
    second_page = column(browser, 1)
    assert len(second_page) == total - 10 and not set(first_page) & set(second_page)
    go(browser, "prev")
    assert column(browser, 1) == first_page

    # sort by balance, then again for descending: every column is a sort link
    go(browser, "sort_balance")
    ascending = [Decimal(v) for v in column(browser, 5)]
    assert ascending == sorted(ascending)
    go(browser, "sort_balance")
    descending = [Decimal(v) for v in column(browser, 5)]
    assert descending == sorted(descending, reverse=True) and descending[0] == Decimal(12)
    go(browser, "sort_last_name")
    names = column(browser, 3)
    assert names == sorted(names)
    for key in ("id", "number", "alias", "group", "balance_currency", "plan", "status",
                "language", "in_use", "currency", "sip", "iax", "calls"):  # fmt: skip
        go(browser, f"sort_{key}")
        assert len(column(browser, 0)) == 10, key

    # multi-criteria search: a balance range and a name pattern together
    browser.get(live_server.url + "/accounts")
    browser.find_element(By.ID, "c_balance_min").send_keys("3")
    browser.find_element(By.ID, "c_balance_max").send_keys("9")
    browser.find_element(By.ID, "c_name").send_keys("Lastname0*")
    go(browser, "do_search")
    found = sorted(column(browser, 1))
    assert found == [f"71000000{n:02d}" for n in range(3, 10)]
    assert "7 account(s)" in browser.find_element(By.ID, "summary").text
    # the criteria stay with the sort links
    go(browser, "sort_balance")
    assert sorted(column(browser, 1)) == found
    # a malformed criterion is a clear error, not a crash
    browser.get(live_server.url + "/accounts?balance_min=lots")
    assert "balance-min" in flash(browser)


def test_edit_payment_and_friend_buttons(
    browser: Any, live_server: LiveServer, tmp_path: Path
) -> None:
    target = account(live_server, "7100000005")
    log_in(browser, live_server, f"/accounts/{target.id}")
    go(browser, "edit")
    field = browser.find_element(By.ID, "f_first_name")
    field.clear()
    field.send_keys("Ada")
    Select(browser.find_element(By.ID, "f_status")).select_by_value("suspended")
    go(browser, "save")
    assert "updated" in flash(browser)
    assert browser.find_element(By.ID, "status").text == "suspended"
    changed = account(live_server, "7100000005")
    assert (changed.first_name, changed.status.value) == ("Ada", "suspended")
    # a bad value is refused with the field named, and the form keeps what was typed
    go(browser, "edit")
    limit = browser.find_element(By.ID, "f_debit_limit")
    limit.clear()
    limit.send_keys("-3")
    go(browser, "save")
    assert "debit_limit" in flash(browser)
    assert browser.find_element(By.ID, "f_debit_limit").get_attribute("value") == "-3"

    browser.get(f"{live_server.url}/accounts/{target.id}")
    go(browser, "add_payment")
    browser.find_element(By.ID, "amount").send_keys("12.50")
    browser.find_element(By.ID, "description").send_keys("counter refill")
    go(browser, "pay")
    assert "balance moved by 12.50" in flash(browser)
    assert Decimal(browser.find_element(By.ID, "balance").text) == target.balance + Decimal("12.5")
    assert "counter refill" in browser.find_element(By.ID, "payments").text
    go(browser, "add_payment")
    browser.find_element(By.ID, "amount").send_keys("ten")
    go(browser, "pay")
    assert "amount" in flash(browser)
    assert account(live_server, "7100000005").balance == target.balance + Decimal("12.5")

    # SIP button: a friend is created, and the page asks to regenerate and reload
    browser.get(f"{live_server.url}/accounts/{target.id}")
    go(browser, "friend_sip")
    assert "SIP friend user05 created" in flash(browser)
    assert "user05" in browser.find_element(By.ID, "friends").text
    assert browser.find_element(By.ID, "friend_sip").text == "SIP: new secret"
    prompt = browser.find_element(By.ID, "confgen")
    assert "stale" in prompt.text
    browser.find_element(By.ID, "do_reload").click()  # no Asterisk here: write only
    go(browser, "regenerate")
    lines = browser.find_element(By.ID, "confgen_lines").text
    assert "/pjsip_callgate.conf" in lines, lines
    conf = Path(live_server.settings.confgen.dir) / "pjsip_callgate.conf"
    assert "user05" in conf.read_text(encoding="utf-8")
    go(browser, "back")
    assert not browser.find_elements(By.ID, "confgen")  # up to date now
    go(browser, "friend_iax")
    assert "IAX friend user05 created" in flash(browser)
    go(browser, "friend_sip")
    assert "given a new secret" in flash(browser)


def test_batch_update_delete_all_and_export(
    browser: Any, live_server: LiveServer, tmp_path: Path
) -> None:
    log_in(browser, live_server)
    browser.find_element(By.ID, "c_alias").send_keys("user1*")  # user10, user11, user12
    go(browser, "do_search")
    assert sorted(column(browser, 2)) == ["user10", "user11", "user12"]
    Select(browser.find_element(By.ID, "set_status")).select_by_value("inactive")
    Select(browser.find_element(By.ID, "balance_op")).select_by_value("+=")
    browser.find_element(By.ID, "balance_amount").send_keys("1.25")
    go(browser, "do_batch")
    assert "3 account(s) updated" in flash(browser)
    assert column(browser, 8) == ["inactive"] * 3  # the search is kept
    for n in (10, 11, 12):
        found = account(live_server, f"71000000{n}")
        assert (found.status.value, found.balance) == ("inactive", Decimal(n) + Decimal("1.25"))
    assert account(live_server, "7100000009").status.value == "active"

    # export what the search found, as CSV and XML, through the browser's downloads
    downloads = tmp_path / "downloads"
    browser.find_element(By.ID, "export_csv").click()
    text = wait_for_file(downloads, "accounts.csv")
    lines = text.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("id,number,")
    assert sorted(line.split(",")[1] for line in lines[1:]) == [
        "7100000010", "7100000011", "7100000012",
    ]  # fmt: skip
    browser.find_element(By.ID, "export_xml").click()
    xml = wait_for_file(downloads, "accounts.xml")
    assert xml.count("<account>") == 3 and xml.rstrip().endswith("</accounts>")

    # Delete All asks first, with the count; cancelling deletes nothing
    before = asyncio.run(_count(live_server.db_url))
    go(browser, "do_delete_all")
    assert "Delete 3 account(s)" in browser.find_element(By.ID, "confirm_text").text
    go(browser, "cancel")
    assert asyncio.run(_count(live_server.db_url)) == before
    go(browser, "do_delete_all")
    go(browser, "confirm_delete")
    assert "3 account(s) deleted" in flash(browser)
    assert asyncio.run(_count(live_server.db_url)) == before - 3

    # with no criteria, Delete All needs the "every account" box as well
    browser.get(live_server.url + "/accounts")
    go(browser, "do_delete_all")
    assert browser.find_element(By.ID, "everything").get_attribute("required") is not None
    go(browser, "cancel")
    assert asyncio.run(_count(live_server.db_url)) == before - 3


def test_simulate_stats_cdrs_and_live_calls(browser: Any, live_server: LiveServer) -> None:
    log_in(browser, live_server, "/simulate")
    browser.find_element(By.ID, "number").send_keys("0044207946")
    browser.find_element(By.ID, "account").send_keys("7000000003")
    go(browser, "run")
    assert browser.find_element(By.ID, "sim_status").text == "OK"
    assert int(browser.find_element(By.ID, "sim_granted").text) > 0
    assert browser.find_element(By.ID, "sim_dial").text
    assert "wholesale-a" in browser.find_element(By.ID, "sim_routes").text
    number = browser.find_element(By.ID, "number")
    number.clear()
    number.send_keys("0044207946")
    account_field = browser.find_element(By.ID, "account")
    account_field.clear()
    account_field.send_keys("7000000005")  # the demo's inactive account
    go(browser, "run")
    assert browser.find_element(By.ID, "sim_status").text == "INACTIVE"

    browser.get(live_server.url + "/stats?by=month")
    for key in ("asr", "acd", "pdd", "cps", "channels"):
        assert browser.find_element(By.CSS_SELECTOR, f"#chart_{key} svg")
    browser.get(live_server.url + "/cdrs")
    assert "No calls match." in browser.find_element(By.ID, "cdrs").text
    browser.get(live_server.url + "/calls/live")
    assert "No live channels." in browser.find_element(By.ID, "live").text
    go(browser, "logout")
    browser.get(live_server.url + "/accounts")
    assert "/login" in browser.current_url
