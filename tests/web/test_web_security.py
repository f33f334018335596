"""The console's security over HTTP, on both databases: login, sessions, CSRF, rate limit,
headers, argon2 hashes, and the `callgate operators` commands."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select
from webkit import OPERATOR, PASSWORD, SECRET, csrf_of, login, web_settings

from callgate.cli.main import cli
from callgate.config import Secret
from callgate.schema.tables import operators
from callgate.store import accounts as account_store
from callgate.store.db import create_engine
from callgate.web.app import create_app, load_secret
from callgate.web.security import LoginRateLimiter, SessionCookies, secure_cookies


async def balance_of(db_url: str, key: str) -> str:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            return str((await account_store.require_account(conn, key)).balance)
    finally:
        await engine.dispose()


async def test_no_session_redirects_to_login_and_back(client: httpx.AsyncClient) -> None:
    for path in ("/", "/accounts?sort=alias", "/accounts/1", "/stats", "/cdrs", "/simulate",
                 "/accounts/export.csv", "/cdrs/export.csv", "/calls/live"):  # fmt: skip
        response = await client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=%2F"), path
    response = await login(client)
    assert response.status_code == 303 and response.headers["location"] == "/accounts"
    assert (await client.get("/accounts")).status_code == 200


async def test_bad_logins_are_refused_alike(client: httpx.AsyncClient) -> None:
    wrong = await login(client, password="not the password")
    unknown = await login(client, user="nobody")
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert "Wrong login or password." in response.text
        assert "callgate_console" not in response.headers.get("set-cookie", "") or (
            "uid" not in response.headers.get("set-cookie", "")
        )
    assert (await client.get("/accounts")).status_code == 303  # still logged out
    # the login ignores case, as every login of callgate does
    assert (await login(client, user=OPERATOR.upper())).status_code == 303


async def test_csrf_is_required_on_every_post(client: httpx.AsyncClient, seeded_url: str) -> None:
    # no token: the login form itself is refused
    refused = await client.post("/login", data={"login": OPERATOR, "password": PASSWORD})
    assert refused.status_code == 403 and "CSRF" in refused.text
    assert (await login(client)).status_code == 303
    before = await balance_of(seeded_url, "7100000001")
    for token in ("", "forged-token"):
        data = {"number": "7100000001", "balance_op": "+=", "balance_amount": "5"}
        if token:
            data["csrf"] = token
        response = await client.post("/accounts/batch", data=data)
        assert response.status_code == 403
    assert await balance_of(seeded_url, "7100000001") == before  # nothing changed
    # with the session's token the same batch update goes through
    data["csrf"] = csrf_of(await client.get("/accounts"))
    response = await client.post("/accounts/batch", data=data)
    assert response.status_code == 303
    assert await balance_of(seeded_url, "7100000001") == str(
        (__import__("decimal").Decimal(before) + 5).quantize(
            __import__("decimal").Decimal("0.00001")
        )
    )
    # a token from another session does not work either
    other = httpx.AsyncClient(transport=client._transport, base_url="http://127.0.0.1")
    async with other:
        foreign = csrf_of(await other.get("/login"))
    response = await client.post("/accounts/batch", data={**data, "csrf": foreign})
    assert response.status_code == 403


async def test_logins_are_rate_limited_per_address_and_login(client: httpx.AsyncClient) -> None:
    for _ in range(5):
        assert (await login(client, password="guess")).status_code == 401
    blocked = await login(client)  # even the right password, for the window
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    assert "Too many failed logins" in blocked.text
    # another login from the same address is not blocked by these failures
    assert (await login(client, user="someone-else", password="x")).status_code == 401


def test_rate_limiter_window_passes() -> None:
    now = [1000.0]
    limiter = LoginRateLimiter(3, 60, clock=lambda: now[0])
    key = limiter.key("10.0.0.1", "Admin")
    assert key == limiter.key("10.0.0.1", "admin")
    for _ in range(3):
        assert limiter.retry_after(key) == 0
        limiter.failure(key)
    assert 0 < limiter.retry_after(key) <= 61
    now[0] += 61
    assert limiter.retry_after(key) == 0
    limiter.failure(key)
    limiter.success(key)
    assert limiter.retry_after(key) == 0


async def test_session_cookie_flags_and_security_headers(client: httpx.AsyncClient) -> None:
    page = await client.get("/login")
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("callgate_console=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # served on loopback: "auto" leaves Secure off
    headers = page.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    response = await login(client)
    assert "HttpOnly" in response.headers["set-cookie"]


def test_secure_cookie_setting() -> None:
    assert secure_cookies("auto", "127.0.0.1") is False
    assert secure_cookies("auto", "::1") is False
    assert secure_cookies("auto", "0.0.0.0") is True
    assert secure_cookies("auto", "192.0.2.10") is True
    assert secure_cookies("always", "127.0.0.1") is True
    assert secure_cookies("never", "0.0.0.0") is False
    with pytest.raises(ValueError, match="cookie_secure"):
        secure_cookies("sometimes", "127.0.0.1")
    cookies = SessionCookies(SECRET, "c", "salt", 60, secure=True)
    session = cookies.load(None)
    session["uid"] = 1
    assert "Secure" in cookies.header(session)
    assert cookies.load(cookies.dump(session)).get("uid") == 1
    # a cookie signed with another secret, or tampered with, is an empty session
    other = SessionCookies("another-secret-" + "y" * 20, "c", "salt", 60, secure=True)
    assert other.load(cookies.dump(session)).get("uid") is None
    assert cookies.load(cookies.dump(session)[:-2] + "xx").get("uid") is None


async def test_no_open_redirect_after_login(client: httpx.AsyncClient) -> None:
    token = csrf_of(await client.get("/login?next=//evil.example/"))
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        response = await client.post(
            "/login", data={"csrf": token, "login": OPERATOR, "password": PASSWORD, "next": target}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/"
        token = csrf_of(await client.get("/login"))


async def test_logout_ends_the_session(client: httpx.AsyncClient) -> None:
    await login(client)
    token = csrf_of(await client.get("/accounts"))
    stolen = dict(client.cookies)
    response = await client.post("/logout", data={"csrf": token})
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert (await client.get("/accounts")).status_code == 303
    assert stolen  # a copy of the old cookie is still signed: removal of the operator ends it


def test_operators_cli_stores_argon2_and_removal_ends_sessions(seeded_url: str) -> None:
    runner = CliRunner()
    env = {"CALLGATE_DATABASE_URL": seeded_url, "CALLGATE_LOG_LEVEL": "WARNING"}
    added = runner.invoke(cli, ["operators", "add", "Eve", "--password-stdin"],
                          input="s3cret-passphrase\n", env=env)  # fmt: skip
    assert added.exit_code == 0, added.output
    again = runner.invoke(cli, ["operators", "add", "EVE", "--password-stdin"],
                          input="s3cret-passphrase\n", env=env)  # fmt: skip
    assert again.exit_code == 1 and "already exists" in again.output
    short = runner.invoke(cli, ["operators", "add", "bob", "--password-stdin"], input="short\n",
                          env=env)  # fmt: skip
    assert short.exit_code == 2 and "8 characters" in short.output
    listed = runner.invoke(cli, ["operators", "list", "--json"], env=env)
    assert [o["login"] for o in json.loads(listed.stdout)] == [OPERATOR, "Eve"]

    async def check() -> None:
        engine = create_engine(seeded_url)
        try:
            async with engine.connect() as conn:
                stored = await conn.scalar(
                    select(operators.c.password_hash).where(operators.c.login == "Eve")
                )
            assert isinstance(stored, str) and stored.startswith("$argon2id$")
            assert "s3cret" not in stored
            app = create_app(web_settings(seeded_url), engine, secret=SECRET)
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50001))
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as c:
                assert (await login(c, "eve", "s3cret-passphrase")).status_code == 303
                assert (await c.get("/accounts")).status_code == 200
                removed = await asyncio.to_thread(
                    runner.invoke, cli, ["operators", "remove", "eve"], env=env
                )
                assert removed.exit_code == 0, removed.output
                assert (await c.get("/accounts")).status_code == 303  # the session ended
                assert (await login(c, "eve", "s3cret-passphrase")).status_code == 401
        finally:
            await engine.dispose()

    asyncio.run(check())
    gone = runner.invoke(cli, ["operators", "remove", "eve"], env=env)
    assert gone.exit_code == 1 and "no operator 'eve'" in gone.output


def test_the_console_needs_a_secret(seeded_url: str) -> None:
    engine = create_engine(seeded_url)
    with pytest.raises(ValueError, match="secret"):
        create_app(web_settings(seeded_url), engine, secret="short")


async def test_the_secret_is_generated_once_and_kept_in_the_database(seeded_url: str) -> None:
    settings = web_settings(seeded_url)
    engine = create_engine(seeded_url)
    try:
        first = await load_secret(settings, engine)
        assert len(first) >= 32
        assert await load_secret(settings, engine) == first  # a restart signs alike
        configured = web_settings(seeded_url, secret=Secret("from-the-config-" + "z" * 20))
        assert await load_secret(configured, engine) == "from-the-config-" + "z" * 20
        # cookies signed by one process open sessions in another on the same database
        cookies = SessionCookies(first, "c", "salt", 60, secure=False)
        session = cookies.load(None)
        session["uid"] = 7
        again = SessionCookies(await load_secret(settings, engine), "c", "salt", 60, secure=False)
        assert again.load(cookies.dump(session)).get("uid") == 7
    finally:
        await engine.dispose()


async def test_a_session_ends_session_hours_after_login(seeded_url: str) -> None:
    engine = create_engine(seeded_url)
    app = create_app(web_settings(seeded_url), engine, secret=SECRET)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50002))
    cookies = SessionCookies(SECRET, "callgate_console", "callgate.console.session", 3600, False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            assert (await login(client)).status_code == 303
            data = cookies.load(client.cookies["callgate_console"]).data
            assert (await client.get("/accounts")).status_code == 200
            # the same session, re-signed now but logged in 13 hours ago (session_hours = 12)
            old = cookies.load(None)
            for key, value in {**data, "at": data["at"] - 13 * 3600}.items():
                old[key] = value
            client.cookies.set("callgate_console", cookies.dump(old))
            assert (await client.get("/accounts")).status_code == 303
    finally:
        await engine.dispose()
