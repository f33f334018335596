"""`callgate plans|tables|trunks update|remove` and `--json` on every command that changes
routing data, end to end through the CLI on both databases. Every refusal exits non-zero with a
message naming what is in the way and leaves the database as it was."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from db_rows import rows, run_sql, snapshot
from sqlalchemy import Table, insert, update

from callgate.cli.main import cli
from callgate.schema.tables import (
    accounts,
    call_plan_rate_tables,
    call_plans,
    calls,
    dids,
    rate_tables,
    rates,
    reservations,
    trunks,
)

TABLES: tuple[Table, ...] = (
    trunks,
    call_plans,
    call_plan_rate_tables,
    rate_tables,
    rates,
    accounts,
    dids,
    reservations,
    calls,
)

DECK = """\
prefix,destination,rate,initial_block,increment,buy_rate
44,UK,0.10,60,6,0.05
447,UK mobile,0.25,30,6,0.12
"""

TRUNK_DECK = """\
prefix,destination,rate,buy_rate,trunk
33,France,0.05,0.02,carrier-a
"""


class Cli:
    def __init__(self, db_url: str, tmp_path: Path) -> None:
        self.db_url = db_url
        self.env = {"CALLGATE_DATABASE_URL": db_url, "CALLGATE_BILLING_TIMEZONE": "Europe/London"}
        self.tmp = tmp_path
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True) -> Result:
        result = self.runner.invoke(cli, list(args), env=self.env)
        if ok:
            assert result.exit_code == 0, (args, result.output, result.exception)
        return result

    def json(self, *args: str) -> Any:
        """Run with --json: stdout is exactly one JSON document."""
        return json.loads(self(*args, "--json").stdout)

    def fails(self, *args: str, match: str, code: int = 1) -> Result:
        """The command is refused with ``match`` in its message and changes nothing."""
        before = snapshot(self.db_url, TABLES)
        result = self(*args, ok=False)
        assert result.exit_code == code, (args, result.output)
        assert match in result.output, (args, result.output)
        assert result.stdout == "" or code == 2, (args, result.stdout)
        assert snapshot(self.db_url, TABLES) == before, args
        return result

    def file(self, name: str, content: str) -> str:
        path = self.tmp / name
        path.write_text(content, encoding="utf-8")
        return str(path)


def _setup(run: Cli) -> None:
    run("trunks", "add", "carrier-a", "--technology", "PJSIP", "--peer", "carrier-a")
    run("trunks", "add", "carrier-b", "--technology", "SIP", "--peer", "10.0.0.2")
    run("tables", "add", "std", "--trunk", "carrier-a")
    run("tables", "add", "cheap")
    run("plans", "add", "retail", "--mode", "lcr", "--max-call-seconds", "3600")
    run("plans", "add", "wholesale")
    run("plans", "attach", "retail", "std", "--priority", "1")
    run("plans", "attach", "retail", "cheap", "--priority", "2")
    run("rates", "import", run.file("deck.csv", DECK), "--table", "std")


def _id(db_url: str, table: Table, name: str) -> int:
    (found,) = [r["id"] for r in rows(db_url, table) if r["name"] == name]
    return int(found)


# --- tables update -------------------------------------------------------------------------------


def test_tables_update_changes_only_what_is_given(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    std_id = _id(db_url, rate_tables, "std")
    version = run.json("tables", "show", "std")["version"]

    changed = run.json(
        "tables", "update", "std", "--trunk", "carrier-b", "--record-calls", "--description", "UK"
    )
    assert changed == run.json("tables", "show", "std")
    assert (changed["trunk"], changed["record_calls"], changed["description"]) == (
        "carrier-b",
        True,
        "UK",
    )
    assert changed["version"] == version + 1  # a new trunk: servers rebuild the routes
    assert changed["rates"] == 2 and changed["plans"] == [{"plan": "retail", "priority": 1}]
    (row,) = [r for r in rows(db_url, rate_tables) if r["id"] == std_id]
    assert row["trunk_id"] == _id(db_url, trunks, "carrier-b") and row["record_calls"] is True

    # no route changes: no new version
    quiet = run.json("tables", "update", "std", "--no-record-calls", "--description", "")
    assert (quiet["record_calls"], quiet["description"], quiet["version"]) == (
        False,
        "",
        version + 1,
    )
    # the human output is a note on stderr, nothing on stdout
    human = run("tables", "update", "std", "--no-trunk")
    assert human.stdout == "" and "rate table std updated" in human.stderr
    assert run.json("tables", "show", "std")["trunk"] is None

    renamed = run.json("tables", "update", "std", "--name", "standard")
    assert renamed["name"] == "standard" and renamed["version"] == version + 3
    assert [t["name"] for t in rows(db_url, rate_tables)] == ["standard", "cheap"]
    assert _id(db_url, rate_tables, "standard") == std_id  # the same table, rates and plans
    assert [t["table"] for t in run.json("plans", "show", "retail")["tables"]] == [
        "standard",
        "cheap",
    ]
    assert len([r for r in rows(db_url, rates) if r["rate_table_id"] == std_id]) == 2


def test_tables_update_refusals_change_nothing(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    run.fails("tables", "update", "nope", "--description", "x", match="no rate table 'nope'")
    run.fails("tables", "update", "std", "--trunk", "nowhere", match="no trunk named 'nowhere'")
    run.fails("tables", "update", "std", "--name", "cheap", match="rate table 'cheap' exists")
    run.fails("tables", "update", "std", "--name", " ", match="name cannot be empty")
    run.fails(
        "tables",
        "update",
        "std",
        "--trunk",
        "carrier-b",
        "--no-trunk",
        match="either --trunk or --no-trunk",
        code=2,
    )
    run.fails("tables", "update", "std", "--trunk", "", match="use --no-trunk", code=2)
    # a bad option with good ones: none of them is applied
    run.fails(
        "tables",
        "update",
        "std",
        "--description",
        "changed",
        "--trunk",
        "nowhere",
        match="no trunk named 'nowhere'",
    )
    assert run.json("tables", "show", "std")["description"] == ""


# --- tables remove -------------------------------------------------------------------------------


def test_tables_remove_refused_while_in_a_plan_or_holding_rates(
    db_url: str, tmp_path: Path
) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    run("plans", "attach", "wholesale", "std")
    refused = run.fails("tables", "remove", "std", "--yes", match="call plan(s) retail, wholesale")
    assert "callgate plans detach retail std" in refused.output
    run("plans", "detach", "retail", "std")
    run("plans", "detach", "wholesale", "std")
    run.fails("tables", "remove", "std", match="holds 2 rate(s), which would be deleted")
    run.fails("tables", "remove", "nope", "--yes", match="no rate table 'nope'")

    std_id = _id(db_url, rate_tables, "std")
    before = run.json("tables", "show", "std")
    removed = run.json("tables", "remove", "std", "--yes")
    assert removed == {"removed": before}
    assert [t["name"] for t in rows(db_url, rate_tables)] == ["cheap"]
    assert [r for r in rows(db_url, rates) if r["rate_table_id"] == std_id] == []
    # the trunk it pointed at stays
    assert [t["name"] for t in rows(db_url, trunks)] == ["carrier-a", "carrier-b"]

    # an empty table needs no --yes; the human output is a note on stderr only
    run("plans", "detach", "retail", "cheap")
    human = run("tables", "remove", "cheap")
    assert human.stdout == "" and "rate table cheap removed with its 0 rate(s)" in human.stderr
    assert rows(db_url, rate_tables) == []


def test_tables_remove_keeps_call_history_and_waits_for_open_calls(
    db_url: str, tmp_path: Path
) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    run("plans", "detach", "retail", "std")
    (number,) = [a["number"] for a in run.json("accounts", "generate", "1", "--plan", "retail")]
    (account,) = rows(db_url, accounts)
    rate_id = next(r["id"] for r in rows(db_url, rates) if r["prefix"] == "447")
    started = datetime(2026, 11, 18, 14, 30, tzinfo=UTC)
    run_sql(
        db_url,
        insert(calls).values(
            uniqueid="1700000000.1",
            account_id=account["id"],
            number="447911123456",
            prefix="447",
            destination="UK mobile",
            rate_table="std",
            rate_id=rate_id,
            sell_rate=Decimal("0.25"),
            buy_rate=Decimal("0.12"),
            trunk="carrier-a",
            started_at=started,
            billsec=60,
            cost=Decimal("0.25"),
            buy_cost=Decimal("0.12"),
            status="OK",
        ),
        insert(reservations).values(
            uniqueid="1700000000.2",
            account_id=account["id"],
            amount=Decimal("1"),
            granted_seconds=240,
            status="open",
            rate_id=rate_id,
            trunk="carrier-a",
            expires_at=started + timedelta(minutes=5),
        ),
    )
    refused = run.fails("tables", "remove", "std", "--yes", match="prices 1 call(s) not settled")
    assert "callgate calls reconcile" in refused.output
    run_sql(db_url, update(reservations).values(status="unresolved"))
    run.fails("tables", "remove", "std", "--yes", match="prices 1 call(s) not settled")
    run_sql(db_url, update(reservations).values(status="released"))

    history = rows(db_url, calls)
    assert run.json("tables", "remove", "std", "--yes")["removed"]["rates"] == 2
    assert rows(db_url, calls) == history  # the CDR keeps what it was charged, and its rate id
    assert history[0]["rate_table"] == "std" and history[0]["cost"] == Decimal("0.25")
    assert [a["number"] for a in rows(db_url, accounts)] == [number]


# --- plans update / remove -----------------------------------------------------------------------


def test_plans_update(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    run("accounts", "generate", "1", "--plan", "retail")
    plan_id = _id(db_url, call_plans, "retail")
    changed = run.json(
        "plans",
        "update",
        "retail",
        "--name",
        "retail-2027",
        "--mode",
        "priority",
        "--max-call-seconds",
        "600",
        "--keep-international-prefix",
        "--description",
        "from January",
    )
    assert changed == run.json("plans", "show", "retail-2027")
    assert changed == {
        "name": "retail-2027",
        "routing_mode": "priority",
        "max_call_seconds": 600,
        "remove_international_prefix": False,
        "description": "from January",
        "tables": [{"table": "std", "priority": 1}, {"table": "cheap", "priority": 2}],
    }
    (row,) = [p for p in rows(db_url, call_plans) if p["id"] == plan_id]
    assert (row["name"], row["routing_mode"], row["max_call_seconds"]) == (
        "retail-2027",
        "priority",
        600,
    )
    assert [a["call_plan_id"] for a in rows(db_url, accounts)] == [plan_id]  # accounts follow
    back = run.json("plans", "update", "retail-2027", "--remove-international-prefix")
    assert back["remove_international_prefix"] is True and back["routing_mode"] == "priority"
    human = run("plans", "update", "retail-2027", "--name", "retail")
    assert human.stdout == "" and "call plan retail-2027 updated (now retail)" in human.stderr

    run.fails("plans", "update", "nope", "--mode", "lcd", match="no call plan 'nope'")
    run.fails("plans", "update", "retail", "--name", "wholesale", match="'wholesale' exists")
    run.fails("plans", "update", "retail", "--name", "", match="name cannot be empty")
    run.fails("plans", "update", "retail", "--max-call-seconds", "0", match="0", code=2)
    run.fails("plans", "update", "retail", "--mode", "cheapest", match="cheapest", code=2)


def test_plans_remove_refused_while_accounts_use_it(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    generated = run.json("accounts", "generate", "7", "--plan", "retail")
    numbers = sorted(a["number"] for a in generated)
    refused = run.fails("plans", "remove", "retail", match="is used by 7 account(s)")
    assert ", ".join(numbers[:5]) + ", ..." in refused.output
    assert numbers[5] not in refused.output
    assert "callgate accounts batch-update --plan retail --set plan=OTHER" in refused.output
    run.fails("plans", "remove", "nope", match="no call plan 'nope'")

    run("accounts", "batch-update", "--plan", "retail", "--set", "plan=wholesale")
    wholesale_id = _id(db_url, call_plans, "wholesale")
    before = run.json("plans", "show", "retail")
    assert run.json("plans", "remove", "retail") == {"removed": before}
    assert [p["name"] for p in rows(db_url, call_plans)] == ["wholesale"]
    assert rows(db_url, call_plan_rate_tables) == []
    # its tables stay, with their rates
    assert [(t["name"], t["rates"]) for t in run.json("tables", "list")] == [
        ("cheap", 0),
        ("std", 2),
    ]
    assert run.json("tables", "show", "std")["plans"] == []
    assert len(rows(db_url, rates)) == 2
    assert {a["call_plan_id"] for a in rows(db_url, accounts)} == {wholesale_id}
    human = run("plans", "remove", "wholesale", ok=False)
    assert human.exit_code == 1 and "is used by 7 account(s)" in human.output


# --- trunks update / remove ----------------------------------------------------------------------


def test_trunks_remove_refused_while_anything_names_it(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    run("trunks", "update", "carrier-b", "--failover", "carrier-a")
    run("rates", "import", run.file("fr.csv", TRUNK_DECK), "--table", "cheap")
    (number,) = [a["number"] for a in run.json("accounts", "generate", "1", "--plan", "retail")]
    run("dids", "add", "+15551230000", "PJSIP/alice", "--account", number,
        "--provider", "carrier-a")  # fmt: skip

    refused = run.fails("trunks", "remove", "carrier-a", match="trunk 'carrier-a' is still used")
    for phrase in (
        "failover of trunk(s) carrier-b",
        "default trunk of rate table(s) std",
        "named by rate(s): 1 in cheap",
        "provider trunk of 1 DID(s): 15551230000",
    ):
        assert phrase in refused.output, phrase
    run.fails("trunks", "remove", "nope", match="no trunk named 'nope'")

    run("trunks", "update", "carrier-b", "--failover", "")
    run("tables", "update", "std", "--trunk", "carrier-b")
    run("rates", "import", run.file("none.csv", "prefix,rate\n33,0.05\n"), "--table", "cheap",
        "--replace")  # fmt: skip
    still = run.fails("trunks", "remove", "carrier-a", match="provider trunk of 1 DID(s)")
    assert "failover of" not in still.output and "rate table" not in still.output
    run("dids", "remove", "+15551230000")

    before = next(t for t in run.json("trunks", "list") if t["name"] == "carrier-a")
    assert run.json("trunks", "remove", "carrier-a") == {"removed": before}
    assert [t["name"] for t in rows(db_url, trunks)] == ["carrier-b"]
    human = run("trunks", "remove", "carrier-b", ok=False)
    assert human.exit_code == 1 and "default trunk of rate table(s) std" in human.output


def test_trunks_update_refuses_unknown_trunks(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    run.fails("trunks", "update", "nope", "--peer", "x", match="no trunk named 'nope'")
    run.fails(
        "trunks",
        "update",
        "carrier-b",
        "--peer",
        "10.0.0.3",
        "--failover",
        "nope",
        match="no trunk named 'nope' (--failover)",
    )
    run.fails("trunks", "update", "carrier-b", "--failover", "carrier-b", match="itself", code=2)
    changed = run.json("trunks", "update", "carrier-b", "--peer", "10.0.0.3", "--status",
                       "inactive", "--failover", "carrier-a")  # fmt: skip
    assert changed == next(t for t in run.json("trunks", "list") if t["name"] == "carrier-b")
    assert (changed["peer"], changed["status"], changed["failover"]) == (
        "10.0.0.3",
        "inactive",
        "carrier-a",
    )
    (row,) = [t for t in rows(db_url, trunks) if t["name"] == "carrier-b"]
    assert row["failover_trunk_id"] == _id(db_url, trunks, "carrier-a")


# --- --json of the commands that already existed -------------------------------------------------


def test_json_of_the_add_attach_detach_import_commands(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    trunk = run.json(
        "trunks", "add", "carrier-a", "--technology", "PJSIP", "--peer", "carrier-a",
        "--channel-limit", "30",
    )  # fmt: skip
    assert [trunk] == run.json("trunks", "list")
    assert trunk["channel_limit"] == 30 and trunk["technology"] == "PJSIP"
    table = run.json("tables", "add", "std", "--trunk", "carrier-a", "--record-calls")
    assert table == run.json("tables", "show", "std")
    assert (table["trunk"], table["record_calls"], table["rates"], table["plans"]) == (
        "carrier-a",
        True,
        0,
        [],
    )
    plan = run.json("plans", "add", "retail", "--mode", "lcd", "--keep-international-prefix")
    assert plan == run.json("plans", "show", "retail")
    assert (plan["routing_mode"], plan["remove_international_prefix"], plan["tables"]) == (
        "lcd",
        False,
        [],
    )
    attached = run.json("plans", "attach", "retail", "std", "--priority", "3")
    assert attached == run.json("plans", "show", "retail")
    assert attached["tables"] == [{"table": "std", "priority": 3}]

    deck = run.file("deck.csv", DECK)
    imported = run("rates", "import", deck, "--table", "std", "--json")
    assert json.loads(imported.stdout) == {
        "table": "std",
        "imported": 2,
        "replaced": 0,
        "version": 2,
    }
    assert "imported 2 rate(s) into std" in imported.stderr  # the note stays on stderr
    replaced = run.json("rates", "import", deck, "--table", "std", "--replace")
    assert replaced == {"table": "std", "imported": 2, "replaced": 2, "version": 3}
    assert run.json("tables", "show", "std")["version"] == 3

    detached = run.json("plans", "detach", "retail", "std")
    assert detached == run.json("plans", "show", "retail") and detached["tables"] == []
    # without --json the commands print nothing on stdout, as before
    for args in (
        ("trunks", "add", "carrier-b", "--technology", "SIP", "--peer", "b"),
        ("tables", "add", "cheap"),
        ("plans", "add", "wholesale"),
        ("plans", "attach", "wholesale", "cheap"),
        ("plans", "detach", "wholesale", "cheap"),
        ("rates", "import", deck, "--table", "cheap"),
    ):
        assert run(*args).stdout == "", args
    # a refused command prints no JSON
    run.fails("plans", "attach", "retail", "nope", "--json", match="no rate table 'nope'")
    run.fails("rates", "import", deck, "--table", "cheap", "--json", match="nothing imported")
