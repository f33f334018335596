"""The wholesale commands on both databases: accounts ip|cli-rule, dids, packages, alerts,
recordings."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from click.testing import CliRunner, Result
from sqlalchemy import select

from callgate.cli.main import cli
from callgate.schema.tables import CallStatus, accounts
from callgate.store import accounts as account_store
from callgate.store import plans
from callgate.store.callstore import WholesaleData
from callgate.store.db import create_engine
from callgate.store.ledger import CallRecord, record_attempt


def _seed(db_url: str) -> None:
    async def go() -> None:
        engine = create_engine(db_url)
        try:
            async with engine.begin() as conn:
                plan = await plans.create_call_plan(conn, name="wholesale")
                await plans.create_trunk(conn, name="prov", technology="SIP", peer="prov")
                for number in ("3000000001", "3000000002"):
                    await account_store.create_account(
                        conn, call_plan_id=plan.id, number=number, balance=Decimal("10")
                    )
            await record_attempt(
                engine,
                CallRecord(
                    uniqueid="1700000000.7",
                    status=CallStatus.OK,
                    started_at=datetime(2026, 11, 22, tzinfo=UTC),
                    number="442079460000",
                ),
            )
            await WholesaleData(engine).set_recording("1700000000.7", "/rec/1700000000.7.wav")
        finally:
            await engine.dispose()

    asyncio.run(go())


def _balance(db_url: str, number: str) -> Decimal:
    async def go() -> Decimal:
        engine = create_engine(db_url)
        try:
            async with engine.connect() as conn:
                value = await conn.scalar(
                    select(accounts.c.balance).where(accounts.c.number == number)
                )
        finally:
            await engine.dispose()
        assert isinstance(value, Decimal)
        return value

    return asyncio.run(go())


class Cli:
    def __init__(self, db_url: str) -> None:
        self.runner = CliRunner()
        self.env = {"CALLGATE_DATABASE_URL": db_url, "CALLGATE_LOG_LEVEL": "WARNING"}

    def __call__(self, *args: str, ok: bool = True) -> Result:
        result = self.runner.invoke(cli, list(args), env=self.env)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


def test_ip_entries_and_caller_id_rules(db_url: str) -> None:
    _seed(db_url)
    run = Cli(db_url)
    run("accounts", "ip", "add", "3000000001", "203.0.113.7/24", "--channels", "4", "--cps", "2")
    run("accounts", "ip", "add", "3000000002", "203.0.113.0/24", "--tech-prefix", "77")
    taken = run("accounts", "ip", "add", "3000000002", "203.0.113.0/24", ok=False)
    assert taken.exit_code == 1 and "is already assigned to account" in taken.output
    entries = run.json("accounts", "ip", "list")
    assert [(e["account"], e["address"], e["tech_prefix"]) for e in entries] == [
        ("3000000001", "203.0.113.0/24", ""),
        ("3000000002", "203.0.113.0/24", "77"),
    ]
    assert entries[0]["channel_limit"] == 4 and entries[0]["direction"] == "ingress"
    assert "203.0.113.0/24" in run("accounts", "ip", "list", "3000000001").stdout
    run("accounts", "ip", "remove", "3000000002", "203.0.113.0/24", "--tech-prefix", "77")
    assert len(run.json("accounts", "ip", "list")) == 1

    run("accounts", "cli-rule", "add", "3000000001", "deny", "666")
    run(
        "accounts",
        "cli-rule",
        "add",
        "3000000001",
        "rewrite",
        "_0X.",
        "--strip",
        "1",
        "--prepend",
        "44",
    )
    bad = run("accounts", "cli-rule", "add", "3000000001", "rewrite", "_X.", ok=False)
    assert bad.exit_code == 1
    rules = run.json("accounts", "cli-rule", "list", "3000000001")
    assert [(r["action"], r["pattern"]) for r in rules] == [("deny", "666"), ("rewrite", "_0X.")]
    assert run.json("accounts", "cli-rule", "test", "3000000001", "6661")["allowed"] is False
    assert run.json("accounts", "cli-rule", "test", "3000000001", "0201")["presented"] == "44201"
    run("accounts", "cli-rule", "remove", "3000000001", str(rules[0]["id"]))
    assert run.json("accounts", "cli-rule", "test", "3000000001", "6661")["allowed"] is True


def test_dids(db_url: str) -> None:
    _seed(db_url)
    run = Cli(db_url)
    run(
        "dids", "add", "+15551230000", "PJSIP/alice", "--account", "3000000001",
        "--provider", "prov", "--cost", "0.01", "--retail", "0.06", "--monthly", "2.50",
    )  # fmt: skip
    bad = run("dids", "add", "15551230001", "nowhere", "--account", "3000000001", ok=False)
    assert bad.exit_code == 1 and "destination" in bad.output
    garbled = run("dids", "add", "44-hello-9", "PJSIP/alice", "--account", "3000000001", ok=False)
    assert garbled.exit_code == 1 and "not a DID number: '44-hello-9'" in garbled.output
    (did,) = run.json("dids", "list", "--account", "3000000001")
    assert did["number"] == "15551230000" and did["provider_trunk"] == "prov"
    assert did["retail_rate"] == "0.06000" and did["kind"] == "friend"
    first = run.json("dids", "charge")
    second = run.json("dids", "charge")
    assert [c["charged"] for c in first + second] == [True, False]
    assert _balance(db_url, "3000000001") == Decimal("7.50000")
    run("dids", "remove", "15551230000")
    assert run.json("dids", "list") == []


def test_packages(db_url: str) -> None:
    _seed(db_url)
    run = Cli(db_url)
    run(
        "packages", "add", "uk100", "--kind", "free_minutes", "--quantity", "100",
        "--price", "1.50", "--prefixes", "44,353",
    )  # fmt: skip
    run("packages", "add", "all", "--kind", "unlimited", "--period", "daily")
    bad = run("packages", "add", "x", "--kind", "free_calls", ok=False)
    assert bad.exit_code == 1 and "quantity" in bad.output
    run("packages", "assign", "3000000001", "uk100", "--quantity", "2", "--auto-decrement")
    run("packages", "assign", "3000000002", "all")
    names = [p["name"] for p in run.json("packages", "list")]
    assert names == ["all", "uk100"]
    (held,) = run.json("packages", "list", "--account", "3000000001")
    assert held["package"]["prefixes"] == ["44", "353"] and held["auto_decrement"] is True
    first = run.json("packages", "charge")
    again = run.json("packages", "charge", "--period", "monthly")
    assert [c["charged"] for c in first] == [True] and [c["charged"] for c in again] == [False]
    assert _balance(db_url, "3000000001") == Decimal("7.00000")
    assert _balance(db_url, "3000000002") == Decimal("10.00000")
    run("packages", "unassign", "3000000001", "uk100")
    assert run.json("packages", "list", "--account", "3000000001") == []


def test_alerts_and_recordings(db_url: str) -> None:
    _seed(db_url)
    run = Cli(db_url)
    run(
        "alerts", "add", "3000000001", "low", "--recipient", "+15550001111",
        "--area", "balance", "--operator", "<", "--threshold", "20",
    )  # fmt: skip
    bad = run(
        "alerts", "add", "3000000001", "bad", "--recipient", "nobody",
        "--area", "balance", "--operator", "<", "--threshold", "1", ok=False,
    )  # fmt: skip
    assert bad.exit_code == 1
    (alert,) = run.json("alerts", "list")
    assert alert["state"] == "armed" and alert["account"] == "3000000001"
    assert "1 alert(s) fired" in run("alerts", "check").stderr
    assert "0 alert(s) fired" in run("alerts", "check", "--account", "3000000001").stderr
    (note,) = run.json("alerts", "notifications", "--account", "3000000001")
    assert note["channel"] == "phone" and note["status"] == "pending"  # no SMS gateway
    assert run.json("alerts", "list")[0]["state"] == "fired"
    run("alerts", "remove", "3000000001", "low")
    assert run.json("alerts", "list") == []

    (recording,) = run.json("recordings", "list")
    assert recording["uniqueid"] == "1700000000.7" and recording["path"].endswith(".wav")
    assert run.json("recordings", "list", "--account", "3000000001") == []
    assert run("recordings", "path", "1700000000.7").stdout.strip() == "/rec/1700000000.7.wav"
    missing = run("recordings", "path", "nope", ok=False)
    assert missing.exit_code == 1 and "no recording" in missing.output


def test_duplicates_name_what_exists_and_its_owner(db_url: str) -> None:
    # Once: "IP 203.0.113.0/24: already exists (UNIQUE constraint failed: account_ips...)".
    _seed(db_url)
    run = Cli(db_url)
    run("accounts", "update", "3000000001", "--alias", "alice", "--first-name", "Alice")
    run("accounts", "update", "alice", "--last-name", "Smith")
    run("accounts", "ip", "add", "alice", "203.0.113.0/24", "--tech-prefix", "77")
    run("accounts", "callerid", "add", "alice", "15551230001")
    run("dids", "add", "442070000001", "PJSIP/alice", "--account", "alice")
    run("accounts", "contact", "add", "alice", "--name", "A", "--email", "a@example.com")
    run("accounts", "friend", "add", "alice", "--sip", "--name", "trunk1")
    owner = "account alice (Alice Smith)"
    cases = {
        ("accounts", "ip", "add", "3000000002", "203.0.113.0/24", "--tech-prefix", "77"): (
            "IP 203.0.113.0/24 with tech prefix 77"
        ),
        ("accounts", "callerid", "add", "3000000002", "15551230001"): "caller ID 15551230001",
        ("dids", "add", "442070000001", "PJSIP/x", "--account", "3000000002"): "DID 442070000001",
        (
            "accounts",
            "contact",
            "add",
            "3000000002",
            "--name",
            "B",
            "--email",
            "A@Example.com",
        ): "contact e-mail a@example.com",
        ("accounts", "friend", "add", "3000000002", "--sip", "--name", "trunk1"): (
            "SIP friend name 'trunk1'"
        ),
    }
    for argv, what in cases.items():
        refused = run(*argv, ok=False)
        assert refused.exit_code == 1, (argv, refused.output)
        assert f"{what} is already assigned to {owner}" in refused.output, refused.output
        for raw in ("UNIQUE constraint", "duplicate key", "INSERT", "account_ips."):
            assert raw not in refused.output


def test_did_and_package_charges_are_listed_balance_movements(db_url: str) -> None:
    """Issue 12.8: a DID charge and a package charge each show in `payments list` (by kind) and
    in `accounts info`, and the movements there add up to the balance change."""
    _seed(db_url)  # both accounts start at 10.00000 (set in SQL: no opening payment)
    run = Cli(db_url)
    before = _balance(db_url, "3000000001")
    run(
        "dids", "add", "+15551230000", "PJSIP/alice", "--account", "3000000001",
        "--monthly", "2.50",
    )  # fmt: skip
    run("packages", "add", "uk100", "--kind", "free_minutes", "--quantity", "100", "--price", "1.5")
    run("packages", "assign", "3000000001", "uk100", "--quantity", "2", "--auto-decrement")
    run("dids", "charge")
    run("packages", "charge")
    run("dids", "charge")  # a second run charges nothing, and lists nothing more
    run("payments", "add", "3000000001", "--kind", "adjustment", "--", "-0.25")
    assert _balance(db_url, "3000000001") == Decimal("4.25000")

    listed = run.json("payments", "list", "--account", "3000000001")
    assert sorted((p["kind"], p["status"], p["amount"], p["credit"]) for p in listed) == [
        ("adjustment", "completed", "-0.25000", "-0.25000"),
        ("did_charge", "completed", "2.50000", "-2.50000"),
        ("package_charge", "completed", "3.00000", "-3.00000"),
    ]
    (did,) = run.json("payments", "list", "--kind", "did_charge")
    assert did["account"] == "3000000001" and did["description"].startswith("DID 15551230000 ")
    (package,) = run.json("payments", "list", "--kind", "package_charge")
    assert package["description"].startswith("package uk100 x2 ")
    table = run("payments", "list", "--kind", "package_charge").stdout
    assert "package_charge" in table and "-3.00000" in table and "refill" not in table

    info = run.json("accounts", "info", "3000000001")
    assert {p["kind"] for p in info["last_payments"]} == {
        "did_charge",
        "package_charge",
        "adjustment",
    }
    totals = {m["kind"]: (m["count"], m["total"]) for m in info["movements"]}
    assert totals == {
        "adjustment": (1, "-0.25000"),
        "did_charge": (1, "-2.50000"),
        "package_charge": (1, "-3.00000"),
    }
    moved = sum(Decimal(m["total"]) for m in info["movements"])
    assert moved == Decimal(info["account"]["balance"]) - before == Decimal("-5.75000")
    text = run("accounts", "info", "3000000001").stdout
    assert "balance movements:" in text and "did_charge" in text and "package_charge" in text
    assert any(line.split()[:3] == ["sum", "3", "-5.75000"] for line in text.splitlines())
    # the other account was charged nothing
    assert run.json("accounts", "info", "3000000002")["movements"] == []
    assert "balance movements: none" in run("accounts", "info", "3000000002").stdout

    # charges are written only by their commands and keep their status
    refused = run("payments", "set-status", str(did["id"]), "cancelled", ok=False)
    assert refused.exit_code == 1 and "charges keep their status" in refused.output
    by_hand = run("payments", "add", "3000000001", "1", "--kind", "did_charge", ok=False)
    assert by_hand.exit_code == 2 and "did_charge" in by_hand.output
    assert _balance(db_url, "3000000001") == Decimal("4.25000")
