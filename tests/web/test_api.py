"""The JSON API (``/api/v1``) over the real ASGI app, on both databases.

Every request goes through ``create_app`` (the mount at ``/api``, the security middleware) with
httpx's ASGI transport in the test's own event loop, against a real migrated database.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from known_calls import DAY1, seed
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.cli.main import cli
from callgate.config import Settings
from callgate.schema.tables import CallStatus, api_tokens
from callgate.store import accounts as account_store
from callgate.store import api_tokens as token_store
from callgate.store import ledger, plans
from callgate.store import operators as operator_store
from callgate.store.channels import LiveChannel, write_channels
from callgate.store.db import write_transaction
from callgate.web.app import create_app

SECRET = "s" * 32


@dataclass
class Api:
    client: httpx.AsyncClient
    token: str
    account_id: int  # the seeded account, with six calls
    other_id: int  # a second account, with one call and one payment
    engine: AsyncEngine

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.auth(), **kw)

    async def post(self, path: str, body: Any) -> httpx.Response:
        return await self.client.post(path, headers=self.auth(), json=body)

    async def patch(self, path: str, body: Any) -> httpx.Response:
        return await self.client.patch(path, headers=self.auth(), json=body)


@pytest.fixture
async def api(engine: AsyncEngine) -> AsyncIterator[Api]:
    account_id, _ = await seed(engine)
    async with write_transaction(engine) as conn:
        await plans.attach_rate_table(conn, "p", "std")
        await operator_store.add_operator(conn, "ops", "not-a-real-hash")
        _, token = await token_store.issue_token(conn, "ops", "tests")
        account = await account_store.fetch_account(conn, account_id)
        other = await account_store.open_account(
            conn,
            call_plan_id=account.call_plan_id,
            number="8000000002",
            alias="bob",
            balance=Decimal("5"),
        )
    await ledger.record_attempt(
        engine,
        ledger.CallRecord(
            uniqueid="bob-1",
            status=CallStatus.OK,
            started_at=DAY1,
            account_id=other.id,
            number="15550001111",
            billsec=10,
            dial_status="ANSWER",
            cost=Decimal("0.1"),
        ),
    )
    app = create_app(Settings(), engine, secret=SECRET)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Api(client, token, account_id, other.id, engine)


async def test_no_token_unknown_token_and_revoked_token_are_refused(api: Api) -> None:
    bare = await api.client.get("/api/v1/accounts")
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"] == "Bearer"
    assert "missing bearer token" in bare.json()["detail"]
    basic = await api.client.get("/api/v1/accounts", headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401
    unknown = await api.client.get("/api/v1/accounts", headers=api.auth("cg_nope"))
    assert unknown.status_code == 401
    assert unknown.json() == {"detail": "unknown API token"}

    assert (await api.get("/api/v1/accounts")).status_code == 200
    async with write_transaction(api.engine) as conn:
        token_id = int(await conn.scalar(select(api_tokens.c.id)) or 0)
        await token_store.revoke_token(conn, token_id)
    revoked = await api.get("/api/v1/accounts")
    assert revoked.status_code == 403
    assert revoked.json() == {"detail": f"API token {token_id} was revoked"}


async def test_a_disabled_operator_s_token_is_refused(api: Api) -> None:
    async with write_transaction(api.engine) as conn:
        await operator_store.set_disabled(conn, "ops", True)
    response = await api.get("/api/v1/accounts")
    assert response.status_code == 403
    assert response.json() == {"detail": "operator ops is disabled"}


async def test_each_accepted_call_stamps_last_used_and_only_the_hash_is_kept(api: Api) -> None:
    async with api.engine.connect() as conn:
        row = (await conn.execute(select(api_tokens))).one()
    assert row.last_used_at is None
    assert row.token_hash == token_store.token_hash(api.token) and api.token not in row.token_hash
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert (await api.get(f"/api/v1/accounts/{api.account_id}")).status_code == 200
    async with api.engine.connect() as conn:
        used = (await conn.execute(select(api_tokens.c.last_used_at))).scalar_one()
    assert used is not None and used >= before


async def test_list_accounts_pages_sorts_and_filters_with_money_as_strings(api: Api) -> None:
    page = (await api.get("/api/v1/accounts", params={"per_page": 1, "sort": "number"})).json()
    assert page["total"] == 2 and page["pages"] == 2 and page["per_page"] == 1
    assert [a["number"] for a in page["items"]] == ["8000000001"]
    second = (await api.get("/api/v1/accounts", params={"per_page": 1, "page": 2})).json()
    assert [a["alias"] for a in second["items"]] == ["bob"]
    assert second["items"][0]["balance"] == "5.00000"  # a string, never a float
    desc = (await api.get("/api/v1/accounts", params={"sort": "balance", "desc": "true"})).json()
    assert [a["number"] for a in desc["items"]] == ["8000000001", "8000000002"]
    rich = (await api.get("/api/v1/accounts", params={"balance_min": "6"})).json()
    assert [a["number"] for a in rich["items"]] == ["8000000001"]
    wild = (await api.get("/api/v1/accounts", params={"number": "*02"})).json()
    assert [a["alias"] for a in wild["items"]] == ["bob"]
    bad_sort = await api.get("/api/v1/accounts", params={"sort": "colour"})
    assert bad_sort.status_code == 422
    assert bad_sort.json()["detail"][0]["loc"] == ["query", "sort"]
    bad_money = await api.get("/api/v1/accounts", params={"balance_min": "1e3"})
    assert bad_money.status_code == 422
    assert bad_money.json()["detail"][0]["loc"] == ["query", "balance_min"]


async def test_get_an_account_and_404_for_an_unknown_one(api: Api) -> None:
    got = (await api.get(f"/api/v1/accounts/{api.other_id}")).json()
    assert got["alias"] == "bob" and got["plan"] == "p"
    assert got["balance"] == "5.00000" and got["available"] == "5.00000"
    assert got["balance_currency"] == "5.00"
    missing = await api.get("/api/v1/accounts/99999")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no account with id 99999"}
    for path in ("payments", "calls"):
        assert (await api.get(f"/api/v1/accounts/99999/{path}")).status_code == 404


async def test_create_and_update_an_account(api: Api) -> None:
    created = await api.post(
        "/api/v1/accounts",
        {"plan": "p", "alias": "carol", "balance": "12.5", "minimum_payment": "10"},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["alias"] == "carol" and body["balance"] == "12.50000"
    assert body["minimum_payment"] == "10.00000" and len(body["number"]) == 10
    payments = (await api.get(f"/api/v1/accounts/{body['id']}/payments")).json()
    assert [(p["description"], p["credit"]) for p in payments] == [("opening balance", "12.50000")]

    changed = await api.patch(
        f"/api/v1/accounts/{body['id']}",
        {"last_name": "Jones", "status": "suspended", "channel_limit": 2, "portal_access": False},
    )
    assert changed.status_code == 200, changed.text
    after = changed.json()
    assert (after["last_name"], after["status"]) == ("Jones", "suspended")
    assert after["channel_limit"] == 2
    assert after["portal_access"] is False and after["alias"] == "carol"
    unlimited = (await api.patch(f"/api/v1/accounts/{body['id']}", {"channel_limit": None})).json()
    assert unlimited["channel_limit"] is None and unlimited["last_name"] == "Jones"


async def test_bad_account_input_names_the_field(api: Api) -> None:
    async def refused(method: str, path: str, body: Any, status: int = 422) -> Any:
        call = api.post if method == "post" else api.patch
        response = await call(path, body)
        assert response.status_code == status, response.text
        return response.json()["detail"]

    no_plan = await refused("post", "/api/v1/accounts", {"alias": "x"})
    assert no_plan[0]["loc"] == ["body", "plan"]
    float_money = await refused("post", "/api/v1/accounts", {"plan": "p", "balance": 10.5})
    assert float_money[0]["loc"] == ["body", "balance"]
    unknown_plan = await refused("post", "/api/v1/accounts", {"plan": "gold"})
    assert unknown_plan[0]["loc"] == ["body", "plan"] and "gold" in unknown_plan[0]["msg"]
    negative = await refused("post", "/api/v1/accounts", {"plan": "p", "debit_limit": "-1"})
    assert negative[0]["loc"] == ["body", "debit_limit"]
    extra = await refused("post", "/api/v1/accounts", {"plan": "p", "colour": "red"})
    assert extra[0]["loc"] == ["body", "colour"]
    path = f"/api/v1/accounts/{api.other_id}"
    currency = await refused("patch", path, {"currency": "EUR"})
    assert currency[0]["loc"] == ["body", "currency"]
    taken = await refused("patch", path, {"number": "8000000001"}, status=409)
    assert "8000000001" in taken
    assert (await api.patch("/api/v1/accounts/99999", {"last_name": "x"})).status_code == 404


async def test_add_and_list_payments_with_the_minimum_and_tax(api: Api) -> None:
    path = f"/api/v1/accounts/{api.other_id}"
    await api.patch(path, {"minimum_payment": "10", "tax_percent": "20"})
    small = await api.post(f"{path}/payments", {"amount": "9.99"})
    assert small.status_code == 422
    detail = small.json()["detail"][0]
    assert detail["loc"] == ["body", "amount"] and "minimum payment" in detail["msg"]
    as_number = await api.post(f"{path}/payments", {"amount": 12})
    assert as_number.status_code == 422
    paid = await api.post(f"{path}/payments", {"amount": "12", "description": "card"})
    assert paid.status_code == 201, paid.text
    assert (paid.json()["credit"], paid.json()["tax_amount"]) == ("10.00000", "2.00000")
    pending = await api.post(f"{path}/payments", {"amount": "20", "status": "pending"})
    assert pending.json()["status"] == "pending"
    account = (await api.get(path)).json()
    assert account["balance"] == "15.00000"  # 5 opening + 10 credited; pending moves nothing
    listed = (await api.get(f"{path}/payments")).json()
    assert [p["status"] for p in listed] == ["pending", "completed", "completed"]
    only = (await api.get(f"{path}/payments", params={"status": "pending"})).json()
    assert [p["amount"] for p in only] == ["20.00000"]
    everyone = (await api.get("/api/v1/payments", params={"status": "pending"})).json()
    assert [p["id"] for p in everyone] == [pending.json()["id"]]

    done = await api.post(f"/api/v1/payments/{only[0]['id']}/status", {"status": "completed"})
    assert done.status_code == 200 and done.json()["status"] == "completed"
    assert (await api.get(path)).json()["balance"] == "31.66667"  # + 20 / 1.2
    twice = await api.post(f"/api/v1/payments/{only[0]['id']}/status", {"status": "completed"})
    assert twice.status_code == 422
    assert twice.json()["detail"][0]["loc"] == ["body", "status"]
    assert "already completed" in twice.json()["detail"][0]["msg"]
    bad = await api.post(f"/api/v1/payments/{only[0]['id']}/status", {"status": "pending"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "status"]
    missing = await api.post("/api/v1/payments/99999/status", {"status": "cancelled"})
    assert missing.status_code == 404 and missing.json() == {"detail": "no payment with id 99999"}


async def test_cdrs_of_an_account_and_of_all(api: Api) -> None:
    mine = (await api.get(f"/api/v1/accounts/{api.account_id}/calls")).json()
    assert len(mine) == 6 and {c["account"] for c in mine} == {"8000000001"}
    assert mine[0]["uniqueid"] == "c6"  # newest first
    answered = (await api.get("/api/v1/calls", params={"answered": "true"})).json()
    assert sorted(c["uniqueid"] for c in answered) == ["bob-1", "c1", "c2", "c5"]
    first_day = await api.get(
        "/api/v1/calls", params={"since": "2026-11-20", "until": "2026-11-21", "limit": 100}
    )
    assert sorted(c["uniqueid"] for c in first_day.json()) == ["bob-1", "c1", "c2", "c3", "c4"]
    assert {type(c["cost"]) for c in first_day.json()} == {str}
    bad = await api.get("/api/v1/calls", params={"since": "yesterday"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "since"]


async def test_stats_live_calls_and_simulate(api: Api) -> None:
    stats = (await api.get("/api/v1/stats", params={"account_id": api.account_id})).json()
    assert (stats[0]["attempts"], stats[0]["answered"], stats[0]["asr_percent"]) == (6, 3, "50.00")
    by_day = (await api.get("/api/v1/stats", params={"by": "day"})).json()
    assert [p["period"] for p in by_day] == ["2026-11-20", "2026-11-21"]
    assert {type(p["peak_channels"]) for p in by_day} == {int}

    now = datetime.now(UTC)
    async with write_transaction(api.engine) as conn:
        await write_channels(
            conn,
            [
                LiveChannel("u1", "PJSIP/bob-1", now, now, accountcode="8000000002"),
                LiveChannel("u2", "PJSIP/x-1", now, now, accountcode="8000000001"),
            ],
        )
    live = (await api.get("/api/v1/channels", params={"account_id": api.other_id})).json()
    assert [c["uniqueid"] for c in live] == ["u1"]
    assert len((await api.get("/api/v1/channels")).json()) == 2

    sim = await api.post("/api/v1/simulate", {"account": "bob", "number": "442079460000"})
    assert sim.status_code == 200, sim.text
    data = sim.json()
    assert data["account"]["alias"] == "bob" and data["routes"][0]["prefix"] == "44"
    assert data["routes"][0]["rate"] == "0.60000" and isinstance(data["reserve"], str)
    unknown = (await api.post("/api/v1/simulate", {"account": "zed", "number": "44"})).json()
    assert unknown["status"] == "NO_ACCOUNT" and unknown["account"] is None


async def test_openapi_documents_the_routes_with_models(api: Api) -> None:
    response = await api.client.get("/api/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    paths = doc["paths"]
    for path, method in [
        ("/v1/accounts", "get"),
        ("/v1/accounts", "post"),
        ("/v1/accounts/{account_id}", "patch"),
        ("/v1/accounts/{account_id}/payments", "post"),
        ("/v1/calls", "get"),
        ("/v1/channels", "get"),
        ("/v1/stats", "get"),
        ("/v1/simulate", "post"),
    ]:
        operation = paths[path][method]
        assert operation["summary"] and operation["description"], (path, method)
        assert "401" in operation["responses"], (path, method)
    schemas = doc["components"]["schemas"]
    assert schemas["AccountOut"]["properties"]["balance"]["type"] == "string"
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_operators_token_issue_list_revoke_cli(db_url: str) -> None:
    runner = CliRunner()
    base = ["--database-url", db_url]

    def call(*args: str, ok: bool = True, stdin: str | None = None) -> Any:
        result = runner.invoke(cli, [*base, *args], input=stdin)
        assert (result.exit_code == 0) is ok, result.output
        return result

    call("operators", "add", "ops", "--password-stdin", stdin="long-enough-pw\n")
    issued = call("operators", "token", "ops", "--name", "billing sync")
    token = issued.stdout.strip()
    assert token.startswith("cg_") and len(token) > 40
    assert "shown only now" in issued.stderr
    listed = call("operators", "tokens", "--json")
    assert token not in listed.stdout
    rows = json.loads(listed.stdout)
    assert [(r["operator"], r["name"], r["revoked"]) for r in rows] == [
        ("ops", "billing sync", False)
    ]
    call("operators", "revoke-token", str(rows[0]["id"]))
    again = call("operators", "revoke-token", str(rows[0]["id"]), ok=False)
    assert "already revoked" in again.output
    assert json.loads(call("operators", "tokens", "--json").stdout)[0]["revoked"] is True
    missing = call("operators", "token", "nobody", ok=False)
    assert "no operator 'nobody'" in missing.output
