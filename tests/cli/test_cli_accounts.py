"""`callgate accounts ...` end to end on both databases: add/generate/show/update/status,
list with paging, sorting and criteria, batch-update, delete (one and Delete All), export CSV/XML
parsed back, import all-or-nothing, groups, caller IDs, contacts and info. Every refusal exits
non-zero with a clear message and leaves the database as it was."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from sqlalchemy import Executable, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.cli.main import cli
from callgate.schema.tables import (
    account_callerids,
    accounts,
    calls,
    contacts,
    currencies,
    customer_groups,
    payments,
    sip_friends,
)
from callgate.store.contacts import verify_password
from callgate.store.db import create_engine

TABLES = (accounts, payments, contacts, account_callerids, customer_groups)


def invoke(db_url: str, *args: str, input: str | None = None, **env: str) -> Result:
    return CliRunner().invoke(
        cli, list(args), env={"CALLGATE_DATABASE_URL": db_url, **env}, input=input
    )


def ok(db_url: str, *args: str, input: str | None = None, **env: str) -> Result:
    result = invoke(db_url, *args, input=input, **env)
    assert result.exit_code == 0, (args, result.output)
    return result


def fails(db_url: str, *args: str, match: str, code: int = 1, input: str | None = None) -> None:
    """The command is refused with ``match`` in its message and changes nothing."""
    before = snapshot(db_url)
    result = invoke(db_url, *args, input=input)
    assert result.exit_code == code, (args, result.output)
    assert match.lower() in result.output.lower(), (args, result.output)
    assert snapshot(db_url) == before, args


def run_sql(db_url: str, *statements: Executable) -> None:
    async def _go() -> None:
        engine = create_engine(db_url)
        try:
            async with engine.begin() as conn:
                for statement in statements:
                    await conn.execute(statement)
        finally:
            await engine.dispose()

    asyncio.run(_go())


def snapshot(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    async def _read(conn: AsyncConnection) -> dict[str, list[tuple[Any, ...]]]:
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table in TABLES:
            rows = await conn.execute(select(table).order_by(*table.primary_key.columns))
            out[table.name] = [tuple(r) for r in rows]
        return out

    async def _go() -> dict[str, list[tuple[Any, ...]]]:
        engine = create_engine(db_url)
        try:
            async with engine.connect() as conn:
                return await _read(conn)
        finally:
            await engine.dispose()

    return asyncio.run(_go())


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def setup_plans(db_url: str) -> None:
    ok(db_url, "plans", "add", "retail")
    ok(db_url, "plans", "add", "wholesale")
    run_sql(
        db_url,
        insert(currencies).values(code="EUR", name="Euro", value=Decimal("2"), is_base=False),
    )


def test_add_show_update_status_and_refusals(db_url: str) -> None:
    fails(db_url, "accounts", "add", "--last-name", "Doe", match="configure the call plan first")
    setup_plans(db_url)
    fails(db_url, "accounts", "add", "--plan", "nope", match="configure the call plan first")
    created = as_json(
        ok(
            db_url,
            *("accounts", "add", "--plan", "retail", "--alias", "alice@example.com"),
            *("--length", "12", "--tax", "20", "--last-name", "Martin", "--json"),
        )
    )
    account = created["account"]
    assert account["balance"] == "0.00000" and account["tax_percent"] == "20.00000"
    assert len(account["number"]) == 12 and account["number"].isdigit()
    assert account["alias"] == "alice@example.com" and created["plan"] == "retail"
    short = as_json(
        ok(
            db_url,
            *("accounts", "add", "--plan", "retail", "--json", "--currency", "eur"),
            CALLGATE_BILLING_ACCOUNT_NUMBER_LENGTH="8",
        )
    )["account"]
    assert len(short["number"]) == 8 and short["currency"] == "EUR"
    assert short["alias"].isdigit() and len(short["alias"]) == 10
    email = as_json(
        ok(
            db_url,
            "accounts",
            "add",
            "--plan",
            "retail",
            "--email",
            "b@x.org",
            "--email-login",
            "--json",
        )
    )["account"]
    assert email["alias"] == "b@x.org"
    number = account["number"]
    # refusals: each changes nothing
    fails(db_url, "accounts", "add", "--plan", "retail", "--alias", "b@x.org", match="taken")
    fails(
        db_url,
        *("accounts", "add", "--plan", "retail", "--email", "b@x.org", "--email-login"),
        match="taken",
    )
    fails(db_url, "accounts", "add", "--plan", "retail", "--number", number, match="taken")
    fails(db_url, "accounts", "add", "--plan", "retail", "--currency", "ZZZ", match="currency")
    fails(db_url, "accounts", "add", "--plan", "retail", "--balance", "1e3", match="balance")
    fails(db_url, "accounts", "add", "--plan", "retail", "--length", "3", match="length")
    fails(db_url, "accounts", "update", number, "--currency", "EUR", match="cannot change")
    fails(db_url, "accounts", "update", number, "--debit-limit", "abc", match="debit_limit")
    fails(db_url, "accounts", "update", number, "--alias", "b@x.org", match="taken")
    fails(db_url, "accounts", "update", number, "--expiry-mode", "at_date", match="expires_at")
    fails(db_url, "accounts", "update", number, "--group", "nobody", match="no customer group")
    fails(db_url, "accounts", "update", "nobody", "--last-name", "X", match="no account")
    fails(db_url, "accounts", "update", number, match="nothing to change", code=2)
    fails(db_url, "accounts", "show", "nobody", match="no account")
    fails(db_url, "accounts", "status", number, "asleep", match="asleep", code=2)
    # changes
    updated = as_json(
        ok(
            db_url,
            *("accounts", "update", number, "--currency", "usd", "--first-name", "Alice"),
            *("--expiry-mode", "at_date", "--expires-at", "2030-01-31", "--channel-limit", "4"),
            *("--no-portal-access", "--plan", "wholesale", "--json"),
        )
    )
    assert updated["plan"] == "wholesale"
    assert updated["account"]["expires_at"] == "2030-01-31T00:00:00+00:00"
    assert updated["account"]["channel_limit"] == 4
    assert updated["account"]["portal_access"] is False
    ok(db_url, "accounts", "status", f"#{account['id']}", "suspended")
    shown = as_json(ok(db_url, "accounts", "show", "alice@example.com", "--json"))
    assert shown["status"] == "suspended" and shown["first_name"] == "Alice"
    text = ok(db_url, "accounts", "show", number).stdout
    assert number in text and "suspended" in text and "at 2030-01-31" in text
    ok(db_url, "accounts", "update", number, "--channel-limit", "none")
    assert as_json(ok(db_url, "accounts", "show", number, "--json"))["channel_limit"] is None


def test_generate_then_list_paged_sorted_and_searched(db_url: str) -> None:
    setup_plans(db_url)
    ok(db_url, "accounts", "group", "add", "cards", "--description", "calling cards")
    fails(db_url, "accounts", "generate", "3", match="configure the call plan first")
    fails(
        db_url,
        "accounts",
        "generate",
        "3",
        "--plan",
        "retail",
        "--alias",
        "x",
        match="alias",
        code=2,
    )
    result = invoke(
        db_url,
        *("accounts", "generate", "25", "--plan", "retail", "--group", "cards"),
        *("--balance", "2.5", "--length", "9", "--json"),
    )
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert "generating accounts" in result.stderr and "25 account(s) generated" in result.stderr
    assert len(made) == 25 and len({m["number"] for m in made}) == 25
    assert all(len(m["number"]) == 9 for m in made)
    ok(db_url, "accounts", "generate", "5", "--plan", "wholesale", "--status", "inactive")
    page = as_json(ok(db_url, "accounts", "list", "--json"))
    assert (page["total"], page["pages"], page["per_page"], len(page["accounts"])) == (
        30,
        3,
        10,
        10,
    )
    last = as_json(ok(db_url, "accounts", "list", "--page", "3", "--per-page", "12", "--json"))
    assert len(last["accounts"]) == 6 and last["pages"] == 3
    fails(db_url, "accounts", "list", "--page", "4", match="page 4 is past the last page (3)")
    fails(
        db_url,
        *("accounts", "list", "--page", "2", "--search", "nobody-has-this-name"),
        match="page 2 is past the last page (1)",
    )
    nothing = ok(db_url, "accounts", "list", "--search", "nobody-has-this-name", "--json")
    assert as_json(nothing)["accounts"] == [] and as_json(nothing)["pages"] == 1
    by_number = as_json(
        ok(db_url, "accounts", "list", "--sort", "number", "--desc", "--per-page", "30", "--json")
    )["accounts"]
    numbers = [a["number"] for a in by_number]
    assert numbers == sorted(numbers, reverse=True)
    cards = as_json(
        ok(
            db_url,
            *("accounts", "list", "--group", "cards", "--balance-min", "2.5"),
            *("--balance-max", "2.5", "--status", "active", "--plan", "retail", "--json"),
        )
    )
    assert cards["total"] == 25
    row = cards["accounts"][0]
    assert (row["group"], row["balance"], row["plan"], row["in_use"], row["sip"]) == (
        "cards",
        "2.50000",
        "retail",
        0,
        False,
    )
    target = made[7]
    found = as_json(ok(db_url, "accounts", "list", "--search", target["alias"], "--json"))
    assert [a["id"] for a in found["accounts"]] == [target["id"]]
    assert as_json(ok(db_url, "accounts", "list", "--status", "inactive", "--json"))["total"] == 5
    today = datetime.now(UTC).date().isoformat()
    assert as_json(ok(db_url, "accounts", "list", "--created-to", today, "--json"))["total"] == 30
    assert (
        as_json(ok(db_url, "accounts", "list", "--created-from", "2999-01-01", "--json"))["total"]
        == 0
    )
    table = ok(db_url, "accounts", "list", "--sort", "balance")
    assert table.stdout.splitlines()[0].split()[:3] == ["ID", "NUMBER", "LOGIN"]
    assert "page 1 of 3 (30 account(s)" in table.stderr
    fails(db_url, "accounts", "list", "--balance-min", "lots", match="balance-min", code=2)
    fails(db_url, "accounts", "list", "--created-from", "yesterday", match="created-from", code=2)
    fails(db_url, "accounts", "list", "--sort", "colour", match="colour", code=2)
    groups = as_json(ok(db_url, "accounts", "group", "list", "--json"))
    assert [(g["name"], g["accounts"]) for g in groups] == [("cards", 25)]


def test_batch_update_and_delete_all(db_url: str) -> None:
    setup_plans(db_url)
    ok(db_url, "accounts", "generate", "4", "--plan", "retail")
    ok(db_url, "accounts", "generate", "3", "--plan", "wholesale", "--balance", "1")
    fails(db_url, "accounts", "batch-update", "--set", "status=inactive", match="--all", code=2)
    fails(db_url, "accounts", "batch-update", "--plan", "retail", match="--set", code=2)
    fails(
        db_url,
        "accounts",
        "batch-update",
        "--plan",
        "retail",
        "--set",
        "currency=EUR",
        match="cannot change",
        code=2,
    )
    fails(
        db_url,
        "accounts",
        "batch-update",
        "--plan",
        "retail",
        "--set",
        "balance+=x",
        match="balance",
        code=2,
    )
    fails(
        db_url,
        "accounts",
        "batch-update",
        "--plan",
        "retail",
        "--set",
        "number=5555555",
        match="cannot batch-update",
    )
    result = ok(
        db_url,
        *("accounts", "batch-update", "--plan", "wholesale", "--set", "status=inactive"),
        *("--set", "balance+=2.5", "--set", "language=es", "--description", "promo"),
    )
    assert "3 account(s) updated" in result.stderr
    listed = as_json(ok(db_url, "accounts", "list", "--plan", "wholesale", "--json"))["accounts"]
    assert {(a["status"], a["balance"], a["language"]) for a in listed} == {
        ("inactive", "3.50000", "es")
    }
    promo = as_json(ok(db_url, "payments", "list", "--kind", "adjustment", "--json"))
    assert len(promo) == 3 and {p["description"] for p in promo} == {"promo"}
    all_result = ok(db_url, "accounts", "batch-update", "--all", "--set", "cps_limit=2")
    assert "7 account(s) updated" in all_result.stderr
    # Delete All: needs --all, asks first, refuses criteria with an ACCOUNT
    fails(db_url, "accounts", "delete", "--plan", "wholesale", match="--all", code=2)
    fails(db_url, "accounts", "delete", match="--all", code=2)
    fails(
        db_url, "accounts", "delete", "--plan", "wholesale", "--all", input="n\n", match="aborted"
    )
    first = listed[0]["number"]
    fails(db_url, "accounts", "delete", first, "--plan", "retail", match="not both", code=2)
    fails(db_url, "accounts", "delete", "nobody", "--yes", match="no account")
    gone = ok(db_url, "accounts", "delete", "--plan", "wholesale", "--all", "--yes")
    assert "3 account(s) deleted" in gone.stderr
    assert as_json(ok(db_url, "accounts", "list", "--json"))["total"] == 4
    assert as_json(ok(db_url, "payments", "list", "--json")) == []  # their payments went too
    none = ok(db_url, "accounts", "delete", "--plan", "wholesale", "--all", "--yes")
    assert "nothing deleted" in none.stderr
    one = as_json(ok(db_url, "accounts", "list", "--json"))["accounts"][0]["number"]
    confirmed = invoke(db_url, "accounts", "delete", one, input="y\n")
    assert confirmed.exit_code == 0 and "1 account(s) deleted" in confirmed.stderr
    # no criteria: --all --yes alone would empty the database; it needs --everything too
    fails(db_url, "accounts", "delete", "--all", "--yes", match="--everything", code=2)
    fails(db_url, "accounts", "delete", one, "--all", "--yes", match="not both", code=2)
    fails(
        db_url,
        *("accounts", "delete", "--plan", "retail", "--all", "--everything", "--yes"),
        match="no criteria",
        code=2,
    )
    assert as_json(ok(db_url, "accounts", "list", "--json"))["total"] == 3
    ok(db_url, "accounts", "delete", "--all", "--everything", "--yes")
    assert as_json(ok(db_url, "accounts", "list", "--json"))["total"] == 0


def test_export_csv_and_xml_parse_back_and_import_round_trips(db_url: str, tmp_path: Path) -> None:
    setup_plans(db_url)
    ok(db_url, "accounts", "group", "add", "vip")
    ok(
        db_url,
        "accounts",
        "add",
        "--plan",
        "retail",
        "--alias",
        "ann",
        "--last-name",
        "O'Neil",
        "--company",
        'Quote "Co", Ltd',
        "--group",
        "vip",
        "--balance",
        "12.5",
    )
    ok(
        db_url,
        "accounts",
        "add",
        "--plan",
        "wholesale",
        "--alias",
        "ben",
        "--currency",
        "EUR",
        "--private-notes",
        "line one\nline <two> & more",
    )
    ok(db_url, "accounts", "add", "--plan", "retail", "--alias", "cat", "--status", "inactive")
    exported = ok(db_url, "accounts", "export", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [r["alias"] for r in rows] == ["ann", "ben", "cat"]
    ann, ben = rows[0], rows[1]
    assert (ann["last_name"], ann["company"], ann["group"], ann["balance"]) == (
        "O'Neil",
        'Quote "Co", Ltd',
        "vip",
        "12.50000",
    )
    assert ben["private_notes"] == "line one\nline <two> & more"
    assert ben["balance_currency"] == "0.00" and ben["currency"] == "EUR"
    subset = ok(
        db_url, "accounts", "export", "--status", "inactive", "--columns", "alias,status,plan"
    ).stdout
    assert list(csv.reader(io.StringIO(subset))) == [
        ["alias", "status", "plan"],
        ["cat", "inactive", "retail"],
    ]
    xml_text = ok(db_url, "accounts", "export", "--format", "xml", "--plan", "retail").stdout
    root = ET.fromstring(xml_text)
    assert root.tag == "accounts"
    records = [{child.tag: child for child in element} for element in root]
    assert [r["alias"].text for r in records] == ["ann", "cat"]
    assert records[0]["company"].text == 'Quote "Co", Ltd'
    assert records[1]["group"].get("null") == "true"
    out_file = tmp_path / "ben.xml"
    ok(db_url, "accounts", "export", "--format", "xml", "--alias", "ben", "-o", str(out_file))
    ben_xml = ET.parse(out_file).getroot()[0]
    assert ben_xml.findtext("private_notes") == "line one\nline <two> & more"
    fails(db_url, "accounts", "export", "--columns", "alias,secret", match="secret", code=2)
    # the export imports back (read-only columns are ignored)
    csv_file = tmp_path / "all.csv"
    csv_file.write_text(exported, encoding="utf-8")
    before = as_json(ok(db_url, "accounts", "list", "--json"))["accounts"]
    ok(db_url, "accounts", "delete", "--all", "--everything", "--yes")
    imported = ok(db_url, "accounts", "import", str(csv_file))
    assert "3 account(s) imported" in imported.stderr
    after = as_json(ok(db_url, "accounts", "list", "--json"))["accounts"]
    keep = ("number", "alias", "last_name", "group", "balance", "plan", "status", "currency")
    assert [{k: a[k] for k in keep} for a in after] == [{k: b[k] for k in keep} for b in before]
    refills = as_json(ok(db_url, "payments", "list", "--json"))
    assert [(p["amount"], p["description"]) for p in refills] == [("12.50000", "opening balance")]


def test_import_reports_bad_lines_and_imports_nothing(db_url: str, tmp_path: Path) -> None:
    setup_plans(db_url)
    ok(db_url, "accounts", "add", "--plan", "retail", "--alias", "taken")
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "alias,last_name,plan,balance,status\n"
        "new1,Good,retail,5,active\n"
        "new2,Bad money,retail,1.2.3,active\n"
        "new3,No plan,gold,0,active\n"
        "taken,Dup in db,retail,0,active\n"
        "new1,Dup in file,retail,0,active\n"
        "new6,Bad status,retail,0,asleep\n"
        "new7,Too,many,cells,here,!\n",
        encoding="utf-8",
    )
    before = snapshot(db_url)
    result = invoke(db_url, "accounts", "import", str(bad))
    assert result.exit_code == 1
    for line, word in [
        (3, "balance"),
        (4, "gold"),
        (5, "taken"),
        (6, "repeats line 2"),
        (7, "asleep"),
        (8, "more cells"),
    ]:
        assert f"line {line}: " in result.output and word in result.output, (line, result.output)
    assert "line 2:" not in result.output and "nothing imported" in result.output
    assert snapshot(db_url) == before
    header = tmp_path / "header.csv"
    header.write_text("alias,colour\nx,red\n", encoding="utf-8")
    fails(db_url, "accounts", "import", str(header), match="line 1: unknown column")
    no_plan = tmp_path / "noplan.csv"
    no_plan.write_text("alias\nzed\n", encoding="utf-8")
    fails(db_url, "accounts", "import", str(no_plan), match="line 2: no plan")
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    fails(db_url, "accounts", "import", str(empty), match="empty")
    ok(db_url, "accounts", "import", str(no_plan), "--plan", "wholesale")
    zed = as_json(ok(db_url, "accounts", "show", "zed", "--json"))
    assert zed["plan"] == "wholesale"


def test_import_refuses_open_quotes_short_rows_and_negative_balances(
    db_url: str, tmp_path: Path
) -> None:
    setup_plans(db_url)
    fails(
        db_url,
        *("accounts", "add", "--plan", "retail", "--balance", "-5"),
        match="opening balance cannot be negative",
    )
    short = tmp_path / "short.csv"
    short.write_text(
        "alias,last_name,plan,balance\n"
        "a1,Good,retail,5\n"
        "a2,Short\n"  # too few cells: not filled with defaults
        "a3,Owes,retail,-2\n"
        '"a4","Notes ok",retail,0\n',
        encoding="utf-8",
    )
    result = invoke(db_url, "accounts", "import", str(short))
    assert result.exit_code == 1, result.output
    assert "line 3: fewer cells than columns (2, the header has 4)" in result.output
    assert "line 4: balance: an opening balance cannot be negative" in result.output
    assert "line 2:" not in result.output and "line 5:" not in result.output
    # an unterminated quote swallows the rows after it: refused, with the line it opens on
    open_quote = tmp_path / "quote.csv"
    open_quote.write_text(
        "alias,last_name,plan\n"
        "b1,Good,retail\n"
        'b2,"Unclosed,retail\n'
        "b3,Swallowed,retail\n"
        "b4,Swallowed,retail\n",
        encoding="utf-8",
    )
    fails(db_url, "accounts", "import", str(open_quote), match="line 3: a quote opened")
    # closed much later: the swallowed lines land in a name, which cannot hold line breaks
    closed_late = tmp_path / "late.csv"
    closed_late.write_text(
        'alias,last_name,plan\nc1,"Runs on\nc2,Swallowed,retail\nc3",retail\nc4,Good,retail\n',
        encoding="utf-8",
    )
    fails(db_url, "accounts", "import", str(closed_late), match="line 2: last_name: a line break")
    # a quoted multi-line note is fine, and the lines after it keep their physical numbers
    notes = tmp_path / "notes.csv"
    notes.write_text(
        'alias,private_notes,plan\nd1,"line one\nline two",retail\nd2,,gold\n',
        encoding="utf-8",
    )
    fails(db_url, "accounts", "import", str(notes), match="line 4: plan: no call plan 'gold'")
    assert as_json(ok(db_url, "accounts", "list", "--json"))["total"] == 0
    notes.write_text(
        'alias,private_notes,plan\nd1,"line one\nline two",retail\n\nd2,,retail\n',
        encoding="utf-8",
    )
    ok(db_url, "accounts", "import", str(notes))
    d1 = as_json(ok(db_url, "accounts", "show", "d1", "--json"))
    assert d1["private_notes"] == "line one\nline two"
    assert as_json(ok(db_url, "accounts", "list", "--json"))["total"] == 2


def test_operator_account_numbers_are_digits_in_range_and_never_shadow_ids(
    db_url: str, tmp_path: Path
) -> None:
    setup_plans(db_url)
    for wrong, word in [
        ("abc", "digits only"),
        ("#1", "digits only"),
        ("12a4567", "digits only"),
        ("\u0661\u0662\u0663\u0664\u0665\u0666", "digits only"),  # Arabic-Indic digits
        ("0123456", "cannot start with 0"),
        ("12345", "6..20 digits"),
        ("1" * 21, "6..20 digits"),
    ]:
        fails(db_url, "accounts", "add", "--plan", "retail", "--number", wrong, match=word)
    fails(db_url, "accounts", "add", "--plan", "retail", "--alias", "#1", match="cannot start")
    first = as_json(
        ok(db_url, "accounts", "add", "--plan", "retail", "--number", "123456", "--json")
    )["account"]
    fails(db_url, "accounts", "update", "123456", "--number", "0123456", match="start with 0")
    fails(db_url, "accounts", "update", "123456", "--number", "#2", match="digits only")
    fails(db_url, "accounts", "update", "123456", "--alias", "#2", match="cannot start")
    ok(db_url, "accounts", "update", "123456", "--number", "98765432109876543210")
    bad = tmp_path / "numbers.csv"
    bad.write_text(
        "number,alias,plan\n5550001,good,retail\nabc,x1,retail\n0555000,x2,retail\n"
        "#1,x3,retail\n,#9,retail\n",
        encoding="utf-8",
    )
    result = invoke(db_url, "accounts", "import", str(bad))
    assert result.exit_code == 1, result.output
    for line, word in [(3, "digits only"), (4, "start with 0"), (5, "digits only"), (6, "'#'")]:
        assert f"line {line}: " in result.output and word in result.output, (line, result.output)
    assert "line 2:" not in result.output
    assert as_json(ok(db_url, "accounts", "list", "--json"))["total"] == 1
    # a '#1' number stored before these rules cannot shadow the account with id 1
    run_sql(
        db_url,
        insert(accounts).values(
            number=f"#{first['id']}",
            alias="legacy",
            call_plan_id=first["call_plan_id"],
            currency="USD",
        ),
    )
    shown = as_json(ok(db_url, "accounts", "show", f"#{first['id']}", "--json"))
    assert shown["id"] == first["id"] and shown["number"] == "98765432109876543210"
    paid = as_json(ok(db_url, "payments", "add", f"#{first['id']}", "5", "--json"))
    assert paid["account_id"] == first["id"]
    fails(db_url, "accounts", "show", "#x", match="no account")


def test_logins_are_one_login_whatever_their_case(db_url: str, tmp_path: Path) -> None:
    setup_plans(db_url)
    for alias, last in (("alice", "carter"), ("bob@example.com", "Baker"), ("cat", "adams")):
        ok(db_url, "accounts", "add", "--plan", "retail", "--alias", alias, "--last-name", last)
    fails(db_url, "accounts", "add", "--plan", "retail", "--alias", "ALICE", match="taken")
    fails(
        db_url,
        *("accounts", "add", "--plan", "retail", "--email", "Bob@Example.COM", "--email-login"),
        match="taken",
    )
    fails(db_url, "accounts", "update", "cat", "--alias", "Alice", match="taken")
    # found in any case, by the commands and the search criteria
    assert as_json(ok(db_url, "accounts", "show", "ALICE", "--json"))["alias"] == "alice"
    assert as_json(ok(db_url, "accounts", "show", "BOB@example.com", "--json"))["last_name"] == (
        "Baker"
    )
    found = as_json(ok(db_url, "accounts", "list", "--alias", "Alice", "--json"))["accounts"]
    assert [a["alias"] for a in found] == ["alice"]
    # an account may change the case of its own login
    ok(db_url, "accounts", "update", "alice", "--alias", "Alice")
    assert as_json(ok(db_url, "accounts", "show", "alice", "--json"))["alias"] == "Alice"
    # the last-name sort ignores case: adams, Baker, carter (not Baker, adams, carter)
    listed = as_json(ok(db_url, "accounts", "list", "--sort", "last_name", "--json"))
    assert [a["last_name"] for a in listed["accounts"]] == ["adams", "Baker", "carter"]
    desc = as_json(ok(db_url, "accounts", "list", "--sort", "last_name", "--desc", "--json"))
    assert [a["last_name"] for a in desc["accounts"]] == ["carter", "Baker", "adams"]
    # import: against the database and within the file
    deck = tmp_path / "case.csv"
    deck.write_text("alias,plan\nCAT,retail\ndan,retail\nDAN,retail\n", encoding="utf-8")
    result = invoke(db_url, "accounts", "import", str(deck))
    assert result.exit_code == 1, result.output
    assert "line 2: alias 'CAT' is taken" in result.output
    assert "line 4: alias 'DAN' repeats line 3" in result.output
    # contacts: the portal login e-mail, in any case
    ok(db_url, "accounts", "contact", "add", "cat", "--name", "Cat", "--email", "Cat@Example.com")
    fails(
        db_url,
        *("accounts", "contact", "add", "alice", "--name", "C", "--email", "CAT@example.COM"),
        match="already assigned to account cat",
    )
    ok(db_url, "accounts", "contact", "remove", "cat", "CAT@EXAMPLE.COM")
    assert as_json(ok(db_url, "accounts", "contact", "list", "cat", "--json")) == []


def test_groups_callerids_contacts_and_info(db_url: str) -> None:
    setup_plans(db_url)
    ok(db_url, "accounts", "group", "add", "vip")
    fails(db_url, "accounts", "group", "add", "vip", match="exists")
    account = as_json(
        ok(
            db_url,
            "accounts",
            "add",
            "--plan",
            "retail",
            "--alias",
            "ann",
            "--group",
            "vip",
            "--json",
        )
    )["account"]
    fails(db_url, "accounts", "group", "remove", "vip", match="holds 1 account")
    fails(db_url, "accounts", "group", "remove", "nope", match="no customer group")
    # caller IDs
    ok(db_url, "accounts", "callerid", "add", "ann", "5551001")
    ok(db_url, "accounts", "callerid", "add", "ann", "5551002")
    fails(
        db_url,
        "accounts",
        "callerid",
        "add",
        "ann",
        "5551001",
        match="assigned to account ann",
    )
    fails(db_url, "accounts", "callerid", "add", "nobody", "5551003", match="no account")
    ok(db_url, "accounts", "callerid", "remove", "ann", "5551002")
    fails(db_url, "accounts", "callerid", "remove", "ann", "5551002", match="no caller ID")
    cids = as_json(ok(db_url, "accounts", "callerid", "list", "ann", "--json"))
    assert [(c["callerid"], c["active"]) for c in cids] == [("5551001", True)]
    assert as_json(ok(db_url, "accounts", "list", "--callerid", "5551001", "--json"))["total"] == 1
    # contacts: the generated password is printed once and stored only as a hash
    added = ok(
        db_url,
        *("accounts", "contact", "add", "ann", "--name", "Ann Admin", "--email", "Ann@Example.com"),
        *("--public-notes", "hello", "--private-notes", "pays late"),
    )
    password = added.stdout.strip()
    assert len(password) == 16 and "shown once" in added.stderr
    stored = snapshot(db_url)["contacts"][0]
    assert password not in str(stored)
    hashed = next(v for v in stored if isinstance(v, str) and v.startswith("scrypt$"))
    assert verify_password(password, hashed) and not verify_password("wrong", hashed)
    fails(
        db_url,
        "accounts",
        "contact",
        "add",
        "ann",
        "--name",
        "X",
        "--email",
        "ann@example.com",
        match="already assigned to account",
    )
    fails(
        db_url,
        "accounts",
        "contact",
        "add",
        "ann",
        "--name",
        "X",
        "--email",
        "no-at",
        match="e-mail",
    )
    bo = ok(
        db_url,
        "accounts",
        "contact",
        "add",
        "ann",
        "--name",
        "Bo",
        "--email",
        "bo@example.com",
        "--ask-password",
        input="s3cret-pass\ns3cret-pass\n",
    )
    assert "generated password" not in bo.stderr and bo.stdout == ""
    listed = as_json(ok(db_url, "accounts", "contact", "list", "ann", "--json"))
    assert [(c["email"], c["public_notes"], c["has_password"]) for c in listed] == [
        ("ann@example.com", "hello", True),
        ("bo@example.com", "", True),
    ]
    assert "password_hash" not in listed[0]
    ok(db_url, "accounts", "contact", "remove", "ann", "bo@example.com")
    fails(db_url, "accounts", "contact", "remove", "ann", "bo@example.com", match="no contact")
    # info: friends, caller IDs, contacts, calls, payments on one screen
    run_sql(
        db_url,
        insert(sip_friends).values(account_id=account["id"], name="ann", secret="pw"),
        insert(calls).values(
            uniqueid="1700000000.1",
            account_id=account["id"],
            number="33123456789",
            destination="France",
            started_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            billsec=61,
            cost=Decimal("0.12"),
            status="OK",
        ),
    )
    ok(db_url, "payments", "add", "ann", "10")
    info = as_json(ok(db_url, "accounts", "info", "ann", "--json"))
    assert info["group"] == "vip" and info["plan"] == "retail"
    assert info["account"]["balance"] == "10.00000" and info["available"] == "10.00000"
    assert [f["technology"] for f in info["friends"]] == ["SIP"]
    assert [c["callerid"] for c in info["callerids"]] == ["5551001"]
    assert [c["email"] for c in info["contacts"]] == ["ann@example.com"]
    assert [(c["number"], c["billsec"], c["cost"]) for c in info["last_calls"]] == [
        ("33123456789", 61, "0.12000")
    ]
    assert [p["credit"] for p in info["last_payments"]] == ["10.00000"]
    screen = ok(db_url, "accounts", "info", "ann").stdout
    for word in ("friends:", "SIP", "5551001", "ann@example.com", "France", "last payments:"):
        assert word in screen, word
    listed_row = as_json(ok(db_url, "accounts", "list", "--json"))["accounts"][0]
    assert listed_row["sip"] is True and listed_row["iax"] is False
    # removing the group with --force ungroups the account
    removed = ok(db_url, "accounts", "group", "remove", "vip", "--force")
    assert "1 account(s) ungrouped" in removed.stderr
    assert as_json(ok(db_url, "accounts", "show", "ann", "--json"))["group"] is None
    assert as_json(ok(db_url, "accounts", "group", "list", "--json")) == []
