"""``--json`` on the commands that change something, end to end on both databases.

Each command prints exactly one JSON document on stdout (``json.loads`` of all of stdout): the
changed object as its ``show``/``list --json`` prints it, ``{"removed": ...}`` for a removal,
``{"updated"|"deleted": N, "numbers": [...]}`` for a batch, counts for an import, and
``{"from", "to", "applied"}`` for ``db upgrade``; the test then asks the database the same
question through the read-only commands. A refusal keeps stdout empty, says why on stderr and
exits non-zero.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner, Result

from callgate.cli.main import cli
from callgate.schema.migrate import alembic_config, head_revisions
from callgate.store import operators as operator_store
from callgate.store.db import create_engine
from callgate.web.security import PasswordHasher


def invoke(db_url: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={"CALLGATE_DATABASE_URL": db_url}, input=input)


def doc(db_url: str, *args: str, input: str | None = None) -> Any:
    """Run a command that must succeed; its stdout parsed as one JSON document."""
    result = invoke(db_url, *args, input=input)
    assert result.exit_code == 0, (args, result.output)
    return json.loads(result.stdout)


def refused(db_url: str, *args: str, match: str, code: int = 1) -> None:
    """With --json too, a refusal prints nothing on stdout, its reason on stderr, exits non-0."""
    result = invoke(db_url, *args)
    assert result.exit_code == code, (args, result.output)
    assert result.stdout == "", (args, result.stdout)
    assert match.lower() in result.stderr.lower(), (args, result.stderr)


def accounts_world(db_url: str) -> dict[str, str]:
    """ann and ben on "retail", cy on "wholesale", made in that order: alias -> number."""
    doc(db_url, "plans", "add", "retail", "--json")
    doc(db_url, "plans", "add", "wholesale", "--json")
    out: dict[str, str] = {}
    for alias, plan in (("ann", "retail"), ("ben", "retail"), ("cy", "wholesale")):
        made = doc(db_url, "accounts", "add", "--plan", plan, "--alias", alias, "--json")
        out[alias] = made["account"]["number"]
    return out


def listed_numbers(db_url: str, *criteria: str) -> list[str]:
    page = doc(db_url, "accounts", "list", "--per-page", "100", *criteria, "--json")
    return [row["number"] for row in page["accounts"]]


# --- accounts ------------------------------------------------------------------------------------


def test_status_prints_the_account_as_show_does(db_url: str) -> None:
    w = accounts_world(db_url)
    changed = doc(db_url, "accounts", "status", "ann", "suspended", "--json")
    assert changed["status"] == "suspended" and changed["number"] == w["ann"]
    assert changed == doc(db_url, "accounts", "show", "ann", "--json")
    assert changed["plan"] == "retail" and "balance_currency" in changed
    refused(db_url, "accounts", "status", "nobody", "active", "--json", match="no account")


def test_batch_update_prints_the_numbers_it_changed(db_url: str) -> None:
    w = accounts_world(db_url)
    result = doc(
        db_url,
        *("accounts", "batch-update", "--plan", "retail"),
        *("--set", "status=inactive", "--set", "balance+=5", "--json"),
    )
    assert result == {"updated": 2, "numbers": [w["ann"], w["ben"]]}
    assert listed_numbers(db_url, "--status", "inactive") == result["numbers"]
    for alias in ("ann", "ben"):
        assert doc(db_url, "accounts", "show", alias, "--json")["balance"] == "5.00000"
    assert doc(db_url, "accounts", "show", "cy", "--json")["balance"] == "0.00000"
    nothing = ("accounts", "batch-update", "--status", "expired", "--set", "language=fr")
    assert doc(db_url, *nothing, "--json") == {"updated": 0, "numbers": []}
    refused(db_url, "accounts", "batch-update", "--set", "status=nope", "--all", "--json",
            match="'nope' is not one of")  # fmt: skip
    assert listed_numbers(db_url, "--status", "inactive") == result["numbers"]


def test_delete_prints_the_account_removed_or_the_numbers_deleted(db_url: str) -> None:
    w = accounts_world(db_url)
    doc(db_url, "accounts", "callerid", "add", "ann", "5551234", "--json")
    shown = doc(db_url, "accounts", "show", "ann", "--json")
    assert doc(db_url, "accounts", "delete", "ann", "--yes", "--json") == {"removed": shown}
    refused(db_url, "accounts", "show", "ann", "--json", match="no account")
    # ben on retail goes, cy on wholesale stays
    deleted = doc(db_url, "accounts", "delete", "--all", "--plan", "retail", "--yes", "--json")
    assert deleted == {"deleted": 1, "numbers": [w["ben"]]}
    assert listed_numbers(db_url) == [w["cy"]]
    again = doc(db_url, "accounts", "delete", "--all", "--plan", "retail", "--yes", "--json")
    assert again == {"deleted": 0, "numbers": []}
    refused(db_url, "accounts", "delete", "--all", "--yes", "--json", match="--everything", code=2)
    assert listed_numbers(db_url) == [w["cy"]]


def test_import_prints_the_numbers_it_created(db_url: str, tmp_path: Path) -> None:
    doc(db_url, "plans", "add", "retail", "--json")
    deck = tmp_path / "accounts.csv"
    deck.write_text("number,alias,last_name\n5000000009,zed,Zed\n,amy,Amy\n", encoding="utf-8")
    result = doc(db_url, "accounts", "import", str(deck), "--plan", "retail", "--json")
    assert result["imported"] == 2 and len(result["numbers"]) == 2
    assert result["numbers"][0] == "5000000009"
    assert doc(db_url, "accounts", "show", "amy", "--json")["number"] == result["numbers"][1]
    assert sorted(listed_numbers(db_url)) == sorted(result["numbers"])
    bad = tmp_path / "bad.csv"
    bad.write_text("alias\nzed\n", encoding="utf-8")  # taken: nothing imported
    refused(db_url, "accounts", "import", str(bad), "--plan", "retail", "--json", match="line 2")
    assert len(listed_numbers(db_url)) == 2


def test_callerid_add_and_remove_print_the_caller_id(db_url: str) -> None:
    accounts_world(db_url)
    added = doc(db_url, "accounts", "callerid", "add", "ann", "5551234", "--json")
    assert added["callerid"] == "5551234" and added["active"] is True
    assert doc(db_url, "accounts", "callerid", "list", "ann", "--json") == [added]
    refused(db_url, "accounts", "callerid", "add", "ben", "5551234", "--json", match="5551234")
    removed = doc(db_url, "accounts", "callerid", "remove", "ann", "5551234", "--json")
    assert removed == {"removed": added}
    assert doc(db_url, "accounts", "callerid", "list", "ann", "--json") == []
    refused(db_url, "accounts", "callerid", "remove", "ann", "5551234", "--json", match="no caller")


def test_group_add_and_remove_print_the_group(db_url: str) -> None:
    accounts_world(db_url)
    added = doc(db_url, "accounts", "group", "add", "vip", "--description", "big ones", "--json")
    assert (added["name"], added["description"], added["accounts"]) == ("vip", "big ones", 0)
    assert doc(db_url, "accounts", "group", "list", "--json") == [added]
    doc(db_url, "accounts", "update", "ann", "--group", "vip", "--json")
    refused(db_url, "accounts", "group", "remove", "vip", "--json", match="holds 1 account")
    removed = doc(db_url, "accounts", "group", "remove", "vip", "--force", "--json")
    assert removed == {"removed": {**added, "accounts": 1}}
    assert doc(db_url, "accounts", "group", "list", "--json") == []
    assert doc(db_url, "accounts", "show", "ann", "--json")["group"] is None


def test_friend_remove_prints_the_friend_as_show_did(db_url: str) -> None:
    accounts_world(db_url)
    doc(db_url, "accounts", "friend", "add", "ann", "--sip", "--json")
    shown = doc(db_url, "accounts", "friend", "show", "ann", "--sip", "--json")
    removed = doc(db_url, "accounts", "friend", "remove", "ann", "--sip", "--json")
    assert removed == {"removed": shown} and shown["name"] == "ann" and shown["kind"] == "sip"
    assert doc(db_url, "accounts", "friend", "list", "--json") == []
    refused(db_url, "accounts", "friend", "remove", "ann", "--sip", "--json", match="no")


# --- DIDs, operators -----------------------------------------------------------------------------


def test_dids_add_and_remove_print_the_did(db_url: str) -> None:
    w = accounts_world(db_url)
    added = doc(
        db_url,
        *("dids", "add", "+1 555 123 0000", "Local/100@internal", "--account", "ann"),
        *("--retail", "0.02", "--monthly", "1.5", "--json"),
    )
    assert (added["number"], added["account"], added["kind"]) == (
        "15551230000",
        w["ann"],
        "extension",
    )
    assert added["retail_rate"] == "0.02000" and added["retail_monthly"] == "1.50000"
    assert doc(db_url, "dids", "list", "--json") == [added]
    refused(db_url, "dids", "add", "44-hello-9", "PJSIP/ann", "--account", "ann", "--json",
            match="not a DID number")  # fmt: skip
    assert doc(db_url, "dids", "remove", "15551230000", "--json") == {"removed": added}
    assert doc(db_url, "dids", "list", "--json") == []
    refused(db_url, "dids", "remove", "15551230000", "--json", match="no DID")


def _password_hash(db_url: str, login: str) -> str:
    async def _go() -> str:
        engine = create_engine(db_url)
        try:
            async with engine.connect() as conn:
                found = await operator_store.find_operator(conn, login)
                assert found is not None
                return found.password_hash
        finally:
            await engine.dispose()

    return asyncio.run(_go())


def test_operator_commands_print_the_operator_or_token(db_url: str) -> None:
    added = doc(db_url, "operators", "add", "ops", "--password-stdin", "--json",
                input="first-password\n")  # fmt: skip
    changed = doc(db_url, "operators", "passwd", "ops", "--password-stdin", "--json",
                  input="second-password\n")  # fmt: skip
    assert changed == added == doc(db_url, "operators", "list", "--json")[0]
    assert PasswordHasher().verify_sync(_password_hash(db_url, "ops"), "second-password")
    token = doc(db_url, "operators", "token", "ops", "--name", "ci", "--json")
    revoked = doc(db_url, "operators", "revoke-token", str(token["id"]), "--json")
    assert revoked["revoked"] is True and (revoked["id"], revoked["name"]) == (token["id"], "ci")
    assert doc(db_url, "operators", "tokens", "--json") == [revoked]
    refused(db_url, "operators", "revoke-token", str(token["id"]), "--json", match="already")
    assert doc(db_url, "operators", "remove", "ops", "--json") == {"removed": added}
    assert doc(db_url, "operators", "list", "--json") == []
    assert doc(db_url, "operators", "tokens", "--json") == []
    refused(db_url, "operators", "remove", "ops", "--json", match="no operator")


# --- confgen realtime init, db upgrade -----------------------------------------------------------


def test_realtime_init_prints_the_tables_created_then_existing(db_url: str, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'asterisk.db'}"
    first = doc(db_url, "confgen", "realtime", "init", "--realtime-url", url, "--json")
    assert "sippeers" in first["created"] and "ps_endpoints" in first["created"]
    assert first["existing"] == []
    second = doc(db_url, "confgen", "realtime", "init", "--realtime-url", url, "--json")
    assert second == {"created": [], "existing": first["created"]}
    assert doc(db_url, "confgen", "realtime", "sync", "--realtime-url", url, "--json")


def _all_revisions() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


@pytest.mark.parametrize(
    "empty_db_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)
def test_db_upgrade_prints_from_to_and_applied(empty_db_url: str) -> None:
    revisions = _all_revisions()
    (head,) = head_revisions()
    assert len(revisions) >= 2 and revisions[-1] == head
    first = doc(empty_db_url, "db", "upgrade", "--revision", revisions[0], "--json")
    assert first == {"from": None, "to": revisions[0], "applied": [revisions[0]]}
    rest = doc(empty_db_url, "db", "upgrade", "--json")
    assert rest == {"from": revisions[0], "to": head, "applied": revisions[1:]}
    assert invoke(empty_db_url, "db", "current").stdout.strip() == head
    assert doc(empty_db_url, "db", "upgrade", "--json") == {"from": head, "to": head, "applied": []}
