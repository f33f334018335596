"""Fixtures of the web tests: a seeded database with an operator, an HTTP client on the app,
a real uvicorn server on a loopback port in a thread, and a headless Chromium driven by
selenium (Debian's chromium and chromium-driver).

Without a browser the browser tests skip, except with ``CALLGATE_REQUIRE_BROWSER=1`` (CI),
where that skip is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from callgate.cli.demo import seed_demo
from callgate.config import Settings, WebSettings, load_settings
from callgate.store import accounts as account_store
from callgate.store import operators as operator_store
from callgate.store.db import create_engine, write_transaction
from callgate.web.app import create_app
from callgate.web.security import PasswordHasher

OPERATOR = "admin"
PASSWORD = "correct horse battery"
SECRET = "test-secret-" + "x" * 32
CHROMIUM = os.environ.get("CALLGATE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CALLGATE_CHROMEDRIVER", "/usr/bin/chromedriver")

# 12 accounts beside the demo's five, so the card list has two pages of 10
EXTRA = tuple((f"71000000{n:02d}", f"Lastname{n:02d}") for n in range(1, 13))


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found is not None, page.text
    return found.group(1)


async def login(
    client: httpx.AsyncClient, user: str = OPERATOR, password: str = PASSWORD
) -> httpx.Response:
    token = csrf_of(await client.get("/login"))
    return await client.post(
        "/login", data={"csrf": token, "login": user, "password": password, "next": "/accounts"}
    )


def web_settings(db_url: str, confgen_dir: Path | None = None, **web: Any) -> Settings:
    environ = {"CALLGATE_DATABASE_URL": db_url}
    if confgen_dir is not None:
        environ["CALLGATE_CONFGEN_DIR"] = str(confgen_dir)
    settings = load_settings(environ=environ)
    return dataclasses.replace(settings, web=dataclasses.replace(WebSettings(), **web))


async def seed(db_url: str, settings: Settings) -> None:
    """The demo's plan, rates and five accounts, twelve more accounts, and one operator."""
    engine = create_engine(db_url)
    try:
        await seed_demo(engine, settings)
        async with write_transaction(engine) as conn:
            plan_id = (await account_store.require_account(conn, "7000000001")).call_plan_id
            for number, last_name in EXTRA:
                await account_store.create_account(
                    conn,
                    call_plan_id=plan_id,
                    number=number,
                    alias=f"user{number[-2:]}",
                    last_name=last_name,
                    balance=Decimal(int(number[-2:])),
                )
            await operator_store.add_operator(conn, OPERATOR, PasswordHasher().hash(PASSWORD))
    finally:
        await engine.dispose()


@pytest.fixture
def seeded_url(db_url: str) -> str:
    asyncio.run(seed(db_url, web_settings(db_url)))
    return db_url


@pytest.fixture
async def client(seeded_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app (in process, over ASGI), not logged in."""
    engine = create_engine(seeded_url)
    app = create_app(web_settings(seeded_url), engine, secret=SECRET)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c
    finally:
        await engine.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class LiveServer:
    url: str
    db_url: str
    settings: Settings


@contextlib.contextmanager
def serve_in_thread(db_url: str, settings: Settings) -> Iterator[LiveServer]:
    """The console on a real uvicorn server on a loopback port, its own event loop in a thread."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    holder: dict[str, uvicorn.Server] = {}
    ready = threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        engine = create_engine(db_url)
        try:
            app = create_app(settings, engine, secret=SECRET)
            config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
            server = holder["server"] = uvicorn.Server(config)
            ready.set()
            await server.serve(sockets=[sock])
        finally:
            await engine.dispose()

    def run() -> None:
        try:
            asyncio.run(main())
        except Exception as exc:  # reported to the test below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="web-console", daemon=True)
    thread.start()
    ready.wait(10)
    server = holder.get("server")
    assert server is not None, failure
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.05)
    assert server.started, failure
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", db_url, settings)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
    assert not failure, failure


@pytest.fixture
def live_server(seeded_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    confgen_dir = tmp_path / "asterisk"
    confgen_dir.mkdir()
    with serve_in_thread(seeded_url, web_settings(seeded_url, confgen_dir)) as server:
        yield server


def browser_problem() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(path)):
            return f"{path} not found (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium (selenium); downloads go to ``tmp_path / 'downloads'``."""
    problem = browser_problem()
    if problem is not None:
        if os.environ.get("CALLGATE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CALLGATE_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    try:
        yield driver
    finally:
        driver.quit()
