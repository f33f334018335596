"""`callgate plans|tables|trunks|rates` end to end through the CLI, on both databases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from callgate.cli.main import cli

A2BILLING_DECK = """\
dialprefix,destination,rateinitial,initblock,billingblock,connectcharge,buyrate,startdate,stopdate
44,UK,0.10,60,6,0,0.05,2020-01-01 00:00:00,0000-00-00 00:00:00
447,UK mobile,0.25,30,6,0.05,0.12,,
"""

RATING_DECK = """\
prefix,destination,rate,initial_block,increment,buy_rate,trunk,week_start,week_end
447,UK mobile (cheap),0.20,1,1,0.08,carrier-b,,
4420,London weekend,0.02,1,1,0.01,,7200,1439
"""


class Cli:
    def __init__(self, db_url: str, tmp_path: Path) -> None:
        self.env = {"CALLGATE_DATABASE_URL": db_url, "CALLGATE_BILLING_TIMEZONE": "Europe/London"}
        self.tmp = tmp_path
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True) -> Result:
        result = self.runner.invoke(cli, list(args), env=self.env)
        if ok:
            assert result.exit_code == 0, (args, result.output, result.exception)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)

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
    run("plans", "attach", "retail", "std", "--priority", "1")
    run("plans", "attach", "retail", "cheap", "--priority", "2")


def test_plans_tables_trunks(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    run("trunks", "update", "carrier-b", "--failover", "carrier-a", "--channel-limit", "30")
    trunks = run.json("trunks", "list")
    assert [(t["name"], t["technology"], t["failover"], t["channel_limit"]) for t in trunks] == [
        ("carrier-a", "PJSIP", None, None),
        ("carrier-b", "SIP", "carrier-a", 30),
    ]
    assert "carrier-b" in run("trunks", "list").stdout
    plan = run.json("plans", "show", "retail")
    assert plan["routing_mode"] == "lcr" and plan["max_call_seconds"] == 3600
    assert plan["tables"] == [{"priority": 1, "table": "std"}, {"priority": 2, "table": "cheap"}]
    assert [p["name"] for p in run.json("plans", "list")] == ["retail"]
    assert "std:1, cheap:2" in run("plans", "list").stdout
    run("plans", "detach", "retail", "cheap")
    assert [t["table"] for t in run.json("plans", "show", "retail")["tables"]] == ["std"]
    table = run.json("tables", "show", "std")
    assert (table["trunk"], table["rates"], table["plans"]) == (
        "carrier-a",
        0,
        [{"plan": "retail", "priority": 1}],
    )
    assert "plans: retail:1" in run("tables", "show", "std").stdout
    assert [t["name"] for t in run.json("tables", "list")] == ["cheap", "std"]
    missing = run("plans", "show", "nope", ok=False)
    assert missing.exit_code == 1 and "no call plan 'nope'" in missing.output
    duplicate = run("tables", "add", "std", ok=False)
    assert duplicate.exit_code == 1 and "exists" in duplicate.output
    bad_mode = run("plans", "add", "x", "--mode", "cheapest", ok=False)
    assert bad_mode.exit_code == 2


def test_import_lookup_export_round_trip(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    imported = run("rates", "import", run.file("a2b.csv", A2BILLING_DECK), "--table", "std")
    assert "imported 2 rate(s) into std" in imported.stderr
    run("rates", "import", run.file("deck.csv", RATING_DECK), "--table", "cheap")
    assert [(t["name"], t["rates"]) for t in run.json("tables", "list")] == [
        ("cheap", 2),
        ("std", 2),
    ]

    found = run.json(
        "rates", "lookup", "447911123456", "--plan", "retail", "--at", "2026-11-18T14:30"
    )
    assert found["at"] == "2026-11-18T14:30:00+00:00"  # naive: London time (GMT in November)
    routes = [
        (r["table"], r["prefix"], r["rate"], r["buy_rate"], r["trunk"]) for r in found["routes"]
    ]
    assert routes == [
        ("cheap", "447", "0.20000", "0.08000", "carrier-b"),  # lcr: cheapest buy rate first
        ("std", "447", "0.25000", "0.12000", "carrier-a"),
    ]
    assert "granted_seconds" not in found

    granted = run.json("rates", "lookup", "447911123456", "--plan", "retail", "--available", "0.11")
    # 0.20/min, 1/1 blocks: 0.11 pays 33 s (0.11 exactly)
    assert (granted["granted_seconds"], granted["reserve"]) == (33, "0.11000")

    text_out = run(
        "rates",
        "lookup",
        "442071234567",
        "--plan",
        "retail",
        "--available",
        "1",
        "--at",
        "2026-11-18",
    )
    assert "std" in text_out.stdout and "UK" in text_out.stdout  # weekday: 44, not 4420
    assert "granted 600 s, reserve 1.00000" in text_out.stdout  # 0.10/min 60/6
    weekend = run.json("rates", "lookup", "442071234567", "--plan", "retail", "--at", "2026-11-21")
    assert [r["prefix"] for r in weekend["routes"]] == ["4420"]

    poor = run.json("rates", "lookup", "447911123456", "--plan", "retail", "--available", "0")
    assert (poor["granted_seconds"], poor["reserve"]) == (0, "0")
    none = run("rates", "lookup", "999", "--plan", "retail", ok=False)
    assert none.exit_code == 1 and "no rate for 999" in none.output

    exported = tmp_path / "std.csv"
    run("rates", "export", "--table", "std", str(exported))
    text = exported.read_text(encoding="utf-8")
    assert text.splitlines()[0].startswith("prefix,destination,rate,connect_fee")
    assert "44,UK,0.1,0,0,0,60,6,0,0.05,0,0,2020-01-01T00:00:00+00:00,,,," in text
    run("tables", "add", "again")
    run("rates", "import", str(exported), "--table", "again")
    assert run("rates", "export", "--table", "again").stdout == text
    # replacing a table with its own export changes nothing but the version
    before = run.json("tables", "show", "std")["version"]
    replaced = run("rates", "import", str(exported), "--table", "std", "--replace")
    assert "2 replaced" in replaced.stderr
    assert run("rates", "export", "--table", "std").stdout == text
    assert run.json("tables", "show", "std")["version"] == before + 1


def test_bad_deck_reports_the_line_and_imports_nothing(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    run("rates", "import", run.file("a2b.csv", A2BILLING_DECK), "--table", "std")
    good = run("rates", "export", "--table", "std").stdout
    bad = run.file("bad.csv", "dialprefix,rateinitial\n33,0.1\n34,-0.2\n35,abc\n")
    for extra in ([], ["--replace"]):
        result = run("rates", "import", bad, "--table", "std", *extra, ok=False)
        assert result.exit_code == 1
        assert "line 3, column rateinitial: must not be negative" in result.output
        assert "line 4, column rateinitial: not a decimal amount" in result.output
        assert "nothing imported" in result.output
        assert run("rates", "export", "--table", "std").stdout == good
    unknown = run(
        "rates", "import", run.file("u.csv", "prefix,rate,zone\n"), "--table", "std", ok=False
    )
    assert unknown.exit_code == 1 and "line 1, column zone: unknown column" in unknown.output


def test_a_deck_loaded_twice_or_with_a_prefix_twice_is_refused(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    deck = run.file("a2b.csv", A2BILLING_DECK)
    run("rates", "import", deck, "--table", "std")
    good = run("rates", "export", "--table", "std").stdout
    again = run("rates", "import", deck, "--table", "std", ok=False)
    assert again.exit_code == 1 and "nothing imported" in again.output
    assert "line 2, column dialprefix: prefix '44' (from 2020-01-01T00:00:00+00:00)" in (
        again.output
    )
    assert "line 3, column dialprefix: prefix '447' (always valid) is already" in again.output
    twice = run.file("twice.csv", "prefix,rate\n33,0.1\n34,0.1\n33,0.2\n")
    result = run("rates", "import", twice, "--table", "cheap", ok=False)
    assert "line 4, column prefix: prefix '33' (always valid) repeats line 2" in result.output
    assert run("rates", "export", "--table", "std").stdout == good
    assert run.json("tables", "show", "cheap")["rates"] == 0
    run("rates", "import", deck, "--table", "std", "--replace")
    assert run("rates", "export", "--table", "std").stdout == good


def test_large_import_shows_a_progress_bar(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    rows = "".join(f"{100000 + n},Somewhere far away,0.12345,60,6,0.01\n" for n in range(30_000))
    path = run.file("big.csv", "prefix,destination,rate,initial_block,increment,buy_rate\n" + rows)
    result = run("rates", "import", path, "--table", "std")
    assert "importing" in result.stderr and "imported 30000 rate(s)" in result.stderr
    assert run.json("tables", "show", "std")["rates"] == 30_000
