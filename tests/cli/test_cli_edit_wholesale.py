"""`accounts ip update`, `accounts contact update|reset-password`, `packages update|remove`,
`alerts update`, and `--json` on every command of those groups that changes something, end to
end through the CLI on both databases (issue 12, item 12). Every refusal exits non-zero with a
message naming what is in the way and leaves the database as it was."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import test_cli_mail
from click.testing import CliRunner, Result
from db_rows import rows, snapshot
from sqlalchemy import Table
from test_cli_mail import Inbox

from callgate.cli.main import cli
from callgate.config import Settings
from callgate.schema.tables import (
    account_ips,
    account_packages,
    accounts,
    alert_notifications,
    alerts,
    cli_rules,
    contacts,
    package_usage,
    packages,
    payments,
    period_charges,
    settings,
)
from callgate.store import packages as package_store
from callgate.store.contacts import verify_password
from callgate.store.db import create_engine
from callgate.web.app import create_app

relay = test_cli_mail.relay  # a real SMTP server on a loopback port (a fixture)

TABLES: tuple[Table, ...] = (
    accounts,
    account_ips,
    cli_rules,
    contacts,
    packages,
    account_packages,
    package_usage,
    period_charges,
    payments,
    alerts,
    alert_notifications,
    settings,
)
SECRET = "s" * 32
ZONE = ZoneInfo("Europe/London")


class Cli:
    def __init__(self, db_url: str, tmp_path: Path, **env: str) -> None:
        self.db_url = db_url
        self.env = {
            "CALLGATE_DATABASE_URL": db_url,
            "CALLGATE_BILLING_TIMEZONE": "Europe/London",
            "CALLGATE_CONFGEN_DIR": str(tmp_path),
            "CALLGATE_LOG_LEVEL": "WARNING",
            **env,
        }
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True, stdin: str | None = None) -> Result:
        result = self.runner.invoke(cli, list(args), env=self.env, input=stdin)
        if ok:
            assert result.exit_code == 0, (args, result.output, result.exception)
        return result

    def json(self, *args: str, stdin: str | None = None) -> Any:
        """Run with --json: stdout is exactly one JSON document."""
        return json.loads(self(*args, "--json", stdin=stdin).stdout)

    def fails(self, *args: str, match: str, code: int = 1) -> Result:
        """The command is refused with ``match`` in its message and changes nothing."""
        before = snapshot(self.db_url, TABLES)
        result = self(*args, ok=False)
        assert result.exit_code == code, (args, result.output)
        assert match in result.output, (args, result.output)
        assert result.stdout == "" or code == 2, (args, result.stdout)
        assert snapshot(self.db_url, TABLES) == before, args
        return result

    def stale(self) -> dict[str, str]:
        """`confgen status --json`: the stale targets and why."""
        status = self.json("confgen", "status")
        return {name: entry["reason"] for name, entry in status.items() if entry["stale"]}


def _setup(run: Cli) -> None:
    run("plans", "add", "retail")
    run("accounts", "add", "--plan", "retail", "--alias", "acme", "--first-name", "Ann",
        "--last-name", "Acme", "--balance", "10")  # fmt: skip
    run("accounts", "add", "--plan", "retail", "--alias", "beta", "--company", "Beta Voice",
        "--balance", "10")  # fmt: skip


def _one(items: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    (found,) = [i for i in items if all(i[k] == v for k, v in match.items())]
    return found


def _balance(db_url: str, alias: str) -> Decimal:
    (row,) = [r for r in rows(db_url, accounts) if r["alias"] == alias]
    return Decimal(row["balance"])


# --- accounts ip update ------------------------------------------------------------------------


def test_ip_update_changes_only_what_is_given(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    added = run.json("accounts", "ip", "add", "acme", "203.0.113.7/24", "--channels", "30")
    assert added == _one(run.json("accounts", "ip", "list"), address="203.0.113.0/24")
    assert (added["channel_limit"], added["cps_limit"], added["direction"]) == (30, None, "ingress")
    run("accounts", "friend", "add", "acme", "--sip")
    run("confgen", "write")
    assert run.stale() == {}

    changed = run.json(
        "accounts", "ip", "update", "acme", "203.0.113.0/24", "--channels", "none",
        "--cps", "3", "--strip", "2", "--cli-prefix", "+44", "--codecs", "ULAW, alaw",
    )  # fmt: skip
    assert changed == _one(run.json("accounts", "ip", "list", "acme"), id=added["id"])
    assert changed == added | {
        "channel_limit": None,
        "cps_limit": 3,
        "strip_digits": 2,
        "cli_prefix": "+44",
        "codecs": "ulaw,alaw",
    }
    assert run.stale() == {}  # what PJSIP identify matches did not change

    moved = run.json(
        "accounts", "ip", "update", "acme", "203.0.113.0/24", "--new-address", "203.0.113.9/32",
        "--new-tech-prefix", "55",
    )  # fmt: skip
    assert (moved["id"], moved["address"], moved["tech_prefix"]) == (
        added["id"],
        "203.0.113.9",
        "55",
    )
    assert moved["cps_limit"] == 3  # the rest stays
    stale = run.stale()
    assert set(stale) == {"pjsip"} and "203.0.113.0/24 changed to 203.0.113.9" in stale["pjsip"]
    run("confgen", "write")
    conf = (tmp_path / "pjsip_callgate.conf").read_text()
    assert "203.0.113.9" in conf and "203.0.113.0/24" not in conf

    # the tech prefix alone does not change the identify; the direction does
    run("accounts", "ip", "update", "acme", "203.0.113.9", "--tech-prefix", "55",
        "--new-tech-prefix", "")  # fmt: skip
    assert run.stale() == {}
    egress = run.json("accounts", "ip", "update", "acme", "203.0.113.9", "--direction", "egress")
    assert egress["direction"] == "egress" and "pjsip" in run.stale()
    run("confgen", "write")
    assert "203.0.113.9" not in (tmp_path / "pjsip_callgate.conf").read_text()

    # without --json nothing is printed on stdout
    quiet = run("accounts", "ip", "update", "acme", "203.0.113.9", "--cps", "4")
    assert quiet.stdout == "" and "updated" in quiet.stderr


def test_ip_update_refusals_change_nothing(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    run("accounts", "ip", "add", "acme", "203.0.113.0/24")
    run("accounts", "ip", "add", "beta", "198.51.100.7", "--tech-prefix", "7788")
    run("accounts", "friend", "add", "acme", "--sip")
    run("confgen", "write")
    run.fails(
        "accounts", "ip", "update", "acme", "203.0.113.0/24", "--new-address", "198.51.100.7",
        "--new-tech-prefix", "7788",
        match="IP 198.51.100.7 with tech prefix 7788 is already assigned to account beta "
        "(Beta Voice)",
    )  # fmt: skip
    taken = run.fails(
        "accounts", "ip", "update", "beta", "198.51.100.7", "--tech-prefix", "7788",
        "--new-address", "203.0.113.0/24", "--new-tech-prefix", "", "--json",
        match="IP 203.0.113.0/24 is already assigned to account acme (Ann Acme)",
    )  # fmt: skip
    for raw in ("UNIQUE constraint", "duplicate key", "account_ips."):
        assert raw not in taken.output
    run.fails("accounts", "ip", "update", "beta", "198.51.100.7", "--cps", "1",
              match="no IP entry 198.51.100.7 (tech prefix '')")  # fmt: skip
    run.fails("accounts", "ip", "update", "acme", "203.0.113.0/24", "--new-address", "300.1.1.1",
              match="not an IP address")  # fmt: skip
    run.fails("accounts", "ip", "update", "acme", "203.0.113.0/24", "--channels", "-1",
              match="cannot be negative")  # fmt: skip
    run.fails("accounts", "ip", "update", "acme", "203.0.113.0/24", "--new-tech-prefix", "7a",
              match="the tech prefix must be digits")  # fmt: skip
    run.fails("accounts", "ip", "update", "acme", "203.0.113.0/24", "--channels", "lots",
              match="a number or 'none'", code=2)  # fmt: skip
    run.fails("accounts", "ip", "update", "acme", "203.0.113.0/24", match="nothing to change",
              code=2)  # fmt: skip
    run.fails("accounts", "ip", "update", "nobody", "203.0.113.0/24", "--cps", "1",
              match="nobody")  # fmt: skip
    assert run.stale() == {}
    # its own address and tech prefix again is no duplicate
    same = run.json("accounts", "ip", "update", "acme", "203.0.113.0/24",
                    "--new-address", "203.0.113.0/24")  # fmt: skip
    assert same["address"] == "203.0.113.0/24" and run.stale() == {}


def test_json_of_ip_and_cli_rule_changes(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    entry = run.json("accounts", "ip", "add", "beta", "198.51.100.7", "--tech-prefix", "7788",
                     "--strip", "1", "--cli-prefix", "1")  # fmt: skip
    assert [entry] == run.json("accounts", "ip", "list", "beta")
    removed = run.json("accounts", "ip", "remove", "beta", "198.51.100.7", "--tech-prefix", "7788")
    assert removed == {"removed": entry}
    assert run.json("accounts", "ip", "list") == []

    deny = run.json("accounts", "cli-rule", "add", "acme", "deny", "666")
    rewrite = run.json("accounts", "cli-rule", "add", "acme", "rewrite", "_0X.", "--strip", "1",
                       "--prepend", "44")  # fmt: skip
    assert run.json("accounts", "cli-rule", "list", "acme") == [deny, rewrite]
    assert (deny["action"], rewrite["prepend"]) == ("deny", "44")
    gone = run.json("accounts", "cli-rule", "remove", "acme", str(deny["id"]))
    assert gone == {"removed": deny}
    assert run.json("accounts", "cli-rule", "list", "acme") == [rewrite]
    run.fails("accounts", "cli-rule", "remove", "acme", str(deny["id"]), "--json",
              match=f"no caller ID rule {deny['id']}")  # fmt: skip
    run.fails("accounts", "ip", "remove", "beta", "198.51.100.7", "--json",
              match="no IP entry 198.51.100.7")  # fmt: skip
    # without --json: nothing on stdout, as before
    assert run("accounts", "ip", "add", "acme", "192.0.2.1").stdout == ""
    assert run("accounts", "ip", "remove", "acme", "192.0.2.1").stdout == ""
    assert run("accounts", "cli-rule", "add", "acme", "allow", "44").stdout == ""


# --- accounts contact update / reset-password ---------------------------------------------------


def _hash(db_url: str, email: str) -> str:
    (row,) = [r for r in rows(db_url, contacts) if r["email"] == email]
    return str(row["password_hash"])


def test_contact_update_and_its_refusals(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    added = run.json("accounts", "contact", "add", "acme", "--name", "Ann",
                     "--email", "Ann@Example.com", "--private-notes", "pays late")  # fmt: skip
    password = added.pop("password")
    assert [added] == run.json("accounts", "contact", "list", "acme")
    assert verify_password(password, _hash(db_url, "ann@example.com"))
    run("accounts", "contact", "add", "beta", "--name", "Bob", "--email", "bob@example.com")
    stored_hash = _hash(db_url, "ann@example.com")

    changed = run.json("accounts", "contact", "update", "acme", "ANN@example.com",
                       "--name", "Ann B", "--public-notes", "Ask for Sam.")  # fmt: skip
    assert changed == run.json("accounts", "contact", "list", "acme")[0]
    assert changed == added | {"name": "Ann B", "public_notes": "Ask for Sam."}
    by_id = run.json("accounts", "contact", "update", "acme", str(added["id"]),
                     "--email", "Ann.B@Example.com", "--private-notes", "")  # fmt: skip
    assert (by_id["email"], by_id["private_notes"], by_id["name"]) == (
        "ann.b@example.com",
        "",
        "Ann B",
    )
    assert _hash(db_url, "ann.b@example.com") == stored_hash  # the password stays
    # its own e-mail in another case is no duplicate
    run(
        "accounts", "contact", "update", "acme", "ann.b@example.com", "--email", "ANN.B@example.com"
    )

    run.fails("accounts", "contact", "update", "acme", "ann.b@example.com", "--email",
              "BOB@Example.com",
              match="contact e-mail bob@example.com is already assigned to account beta "
              "(Beta Voice)")  # fmt: skip
    run.fails("accounts", "contact", "update", "beta", "ann.b@example.com", "--name", "X",
              match="the account has no contact 'ann.b@example.com'")  # fmt: skip
    run.fails("accounts", "contact", "update", "acme", "ann.b@example.com", "--email", "nope",
              match="not an e-mail address")  # fmt: skip
    run.fails("accounts", "contact", "update", "acme", "ann.b@example.com", "--name", " ",
              match="a contact needs a name")  # fmt: skip
    run.fails("accounts", "contact", "update", "acme", "ann.b@example.com",
              match="nothing to change", code=2)  # fmt: skip

    removed = run.json("accounts", "contact", "remove", "acme", "ANN.B@EXAMPLE.COM")
    assert removed == {"removed": by_id}
    assert run.json("accounts", "contact", "list", "acme") == []
    run.fails("accounts", "contact", "remove", "acme", "ann.b@example.com", "--json",
              match="no contact")  # fmt: skip
    # without --json the commands print nothing on stdout but a generated password
    run("accounts", "contact", "add", "acme", "--name", "C", "--email", "c@example.com")
    assert run("accounts", "contact", "update", "acme", "c@example.com", "--name", "D").stdout == ""
    assert run("accounts", "contact", "remove", "acme", "c@example.com").stdout == ""


def test_reset_password_generated_typed_and_refused(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    run("accounts", "contact", "add", "acme", "--name", "Ann", "--email", "ann@example.com")
    first = _hash(db_url, "ann@example.com")

    printed = run("accounts", "contact", "reset-password", "acme", "Ann@Example.com")
    generated = printed.stdout.strip()
    assert len(generated) == 16 and "shown once" in printed.stderr
    assert verify_password(generated, _hash(db_url, "ann@example.com"))
    assert _hash(db_url, "ann@example.com") != first

    as_json = run.json("accounts", "contact", "reset-password", "acme", "ann@example.com")
    assert verify_password(as_json.pop("password"), _hash(db_url, "ann@example.com"))
    assert not verify_password(generated, _hash(db_url, "ann@example.com"))
    assert [as_json] == run.json("accounts", "contact", "list", "acme")

    typed = run("accounts", "contact", "reset-password", "acme", "ann@example.com",
                "--ask-password", stdin="typed-password\ntyped-password\n")  # fmt: skip
    assert "typed-password" not in typed.stdout
    assert verify_password("typed-password", _hash(db_url, "ann@example.com"))
    typed_json = run.json("accounts", "contact", "reset-password", "acme", "ann@example.com",
                          "--ask-password", stdin="typed-again\ntyped-again\n")  # fmt: skip
    assert "password" not in typed_json  # typed, not generated: not printed
    assert verify_password("typed-again", _hash(db_url, "ann@example.com"))

    run.fails("accounts", "contact", "reset-password", "acme", "ann@example.com",
              "--send-password",
              match="--send-password: no SMTP relay is configured")  # fmt: skip
    run.fails("accounts", "contact", "reset-password", "beta", "ann@example.com",
              match="the account has no contact")  # fmt: skip
    before = snapshot(db_url, TABLES)
    short = run("accounts", "contact", "reset-password", "acme", "ann@example.com",
                "--ask-password", stdin="short\nshort\n", ok=False)  # fmt: skip
    assert short.exit_code == 1 and "at least 8 characters" in short.output
    assert snapshot(db_url, TABLES) == before


def test_reset_password_sent_through_the_relay(
    db_url: str, tmp_path: Path, relay: tuple[Inbox, int]
) -> None:
    inbox, port = relay
    run = Cli(db_url, tmp_path, **test_cli_mail._smtp_env(port))
    _setup(run)
    run("accounts", "contact", "add", "acme", "--name", "Ann", "--email", "ann@example.com")
    sent = run.json("accounts", "contact", "reset-password", "acme", "ann@example.com",
                    "--send-password")  # fmt: skip
    assert "password" not in sent and sent["email"] == "ann@example.com"
    ((_, rcpt_tos, message),) = inbox.messages
    assert rcpt_tos == ["ann@example.com"]
    password = message.get_content().split("Password: ", 1)[1].split()[0]
    assert verify_password(password, _hash(db_url, "ann@example.com"))
    run.fails("accounts", "contact", "reset-password", "acme", "ann@example.com",
              "--send-password", "--ask-password", match="leave out --ask-password",
              code=2)  # fmt: skip


async def _portal_login(db_url: str, email: str, password: str) -> httpx.Cookies:
    """Log in to the customer portal (the real ASGI app); the session cookie."""
    engine = create_engine(db_url)
    try:
        app = create_app(Settings(), engine, secret=SECRET)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            page = await client.get("/portal/login")
            token = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert token, page.text
            logged = await client.post(
                "/portal/login",
                data={"email": email, "password": password, "csrf": token.group(1)},
            )
            assert logged.status_code == 303, logged.text
            assert (await client.get("/portal/")).status_code == 200
            return client.cookies
    finally:
        await engine.dispose()


async def _portal_status(db_url: str, cookies: httpx.Cookies) -> int:
    """What GET /portal/ answers to a browser holding ``cookies``."""
    engine = create_engine(db_url)
    try:
        app = create_app(Settings(), engine, secret=SECRET)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", cookies=cookies
        ) as client:
            return (await client.get("/portal/")).status_code
    finally:
        await engine.dispose()


def test_a_new_password_ends_the_contact_s_portal_sessions(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    run("accounts", "contact", "add", "acme", "--name", "Ann", "--email", "ann@example.com",
        "--ask-password", stdin="old-password\nold-password\n")  # fmt: skip
    run("accounts", "contact", "add", "acme", "--name", "Sam", "--email", "sam@example.com",
        "--ask-password", stdin="sam-password\nsam-password\n")  # fmt: skip
    ann = asyncio.run(_portal_login(db_url, "ann@example.com", "old-password"))
    sam = asyncio.run(_portal_login(db_url, "sam@example.com", "sam-password"))
    assert asyncio.run(_portal_status(db_url, ann)) == 200

    # the same password typed again is a new hash: the session ends all the same
    run("accounts", "contact", "reset-password", "acme", "ann@example.com", "--ask-password",
        stdin="old-password\nold-password\n")  # fmt: skip
    assert asyncio.run(_portal_status(db_url, ann)) == 303  # to the login page
    assert asyncio.run(_portal_status(db_url, sam)) == 200  # another contact's stays
    again = asyncio.run(_portal_login(db_url, "ann@example.com", "old-password"))
    assert asyncio.run(_portal_status(db_url, again)) == 200
    # an update of the other fields keeps the session
    run("accounts", "contact", "update", "acme", "ann@example.com", "--public-notes", "hi")
    assert asyncio.run(_portal_status(db_url, again)) == 200


# --- packages update / remove --------------------------------------------------------------------


def test_packages_update_and_remove(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)
    created = run.json("packages", "add", "uk100", "--kind", "free_minutes", "--quantity", "100",
                       "--price", "1.50", "--prefixes", "44")  # fmt: skip
    assert [created] == run.json("packages", "list")
    held = run.json("packages", "assign", "acme", "uk100", "--quantity", "2", "--auto-decrement")
    assert [held] == run.json("packages", "list", "--account", "acme")
    assert (held["quantity"], held["auto_decrement"], held["package"]) == (2, True, created)

    changed = run.json("packages", "update", "uk100", "--price", "2", "--quantity", "120",
                       "--prefixes", "44,353", "--description", "UK and Ireland")  # fmt: skip
    assert [changed] == run.json("packages", "list")
    assert changed == created | {
        "price": changed["price"],
        "quantity": 120,
        "prefixes": ["44", "353"],
        "description": "UK and Ireland",
    }
    assert Decimal(changed["price"]) == Decimal("2")
    # the same kind and period again is no change: allowed while held
    same = run.json("packages", "update", "uk100", "--kind", "free_minutes", "--period", "monthly")
    assert same == changed
    run("packages", "add", "other", "--kind", "unlimited")
    for argv, what in (
        (("--kind", "unlimited"), "its kind cannot change"),
        (("--period", "daily"), "its period cannot change"),
        (("--kind", "free_calls", "--period", "weekly"), "its kind and period cannot change"),
    ):
        run.fails("packages", "update", "uk100", *argv,
                  match=f"package 'uk100' is held by 1 account(s): {what}")  # fmt: skip
    run.fails("packages", "update", "uk100", "--name", "other", match="package 'other' exists")
    run.fails("packages", "update", "uk100", "--quantity", "-1", match="cannot be negative")
    run.fails("packages", "update", "uk100", "--prefixes", "44x", match="must be digits")
    run.fails("packages", "update", "uk100", "--price", "abc", match="--price", code=2)
    run.fails("packages", "update", "nope", "--price", "1", match="no package 'nope'")
    run.fails("packages", "update", "uk100", match="nothing to change", code=2)
    run.fails("packages", "remove", "uk100", match="package 'uk100' is held by 1 account(s)")
    run("packages", "assign", "beta", "uk100")
    run.fails("packages", "remove", "uk100", "--json", match="is held by 2 account(s)")

    charged = run.json("packages", "charge")
    # acme: 2 units at the new price; beta's is not auto-decrement
    assert [(c["charged"], Decimal(c["amount"])) for c in charged] == [(True, Decimal("4"))]
    assert _balance(db_url, "acme") == Decimal("6")
    taken = run.json("packages", "unassign", "acme", "uk100")
    assert taken == {"removed": held | {"package": changed}}
    run("packages", "unassign", "beta", "uk100")
    renamed = run.json("packages", "update", "uk100", "--name", "uk", "--period", "daily",
                       "--kind", "unlimited", "--quantity", "0")  # fmt: skip
    assert (renamed["name"], renamed["period"], renamed["kind"]) == ("uk", "daily", "unlimited")
    removed = run.json("packages", "remove", "uk")
    assert removed == {"removed": renamed}
    assert [p["name"] for p in run.json("packages", "list")] == ["other"]
    # the charge made and its payment stay
    assert [r["ref_id"] for r in rows(db_url, period_charges)] == [created["id"]]
    kinds = [p["kind"] for p in run.json("payments", "list", "--account", "acme")]
    assert kinds.count("package_charge") == 1
    assert _balance(db_url, "acme") == Decimal("6")
    run.fails("packages", "remove", "uk", match="no package 'uk'")
    run.fails("packages", "unassign", "acme", "other", "--json", match="does not hold")
    # without --json nothing on stdout
    for args in (
        ("packages", "add", "p2", "--kind", "unlimited"),
        ("packages", "update", "p2", "--description", "x"),
        ("packages", "assign", "acme", "p2"),
        ("packages", "unassign", "acme", "p2"),
        ("packages", "remove", "p2"),
    ):
        assert run(*args).stdout == "", args


async def _hold(db_url: str, account_id: int, uniqueid: str) -> int:
    """Hold and settle 10 free minutes of a call to 44... (the live call flow's store calls);
    the free seconds the account had before the call."""
    engine = create_engine(db_url)
    now = datetime.now(UTC)
    try:
        before = await package_store.peek_free_seconds(
            engine, account_id=account_id, uniqueid=uniqueid, number="442079460000",
            cap=100_000, now=now, zone=ZONE,
        )  # fmt: skip
        held = await package_store.hold_free_seconds(
            engine, account_id=account_id, uniqueid=uniqueid, number="442079460000",
            cap=600, now=now, zone=ZONE, hold_seconds=3600,
        )  # fmt: skip
        assert held is not None
        await package_store.settle_usage(engine, uniqueid, 600)
    finally:
        await engine.dispose()
    assert before is not None
    return before.seconds


def test_a_package_made_after_a_removal_inherits_nothing(db_url: str, tmp_path: Path) -> None:
    """SQLite gives a new row the highest id + 1: without care, a package made after the newest
    one was removed took its id, and with it its charged periods (so `packages charge` skipped
    it)."""
    run = Cli(db_url, tmp_path)
    _setup(run)
    (acme,) = [r["id"] for r in rows(db_url, accounts) if r["alias"] == "acme"]
    old = run.json("packages", "add", "old", "--kind", "free_minutes", "--quantity", "60",
                   "--price", "1")  # fmt: skip
    run("packages", "assign", "acme", "old", "--auto-decrement")
    assert [c["charged"] for c in run.json("packages", "charge")] == [True]
    assert asyncio.run(_hold(db_url, acme, "call-1")) == 3600
    assert asyncio.run(_hold(db_url, acme, "call-2")) == 3000  # 10 minutes used
    run("packages", "unassign", "acme", "old")
    run("packages", "remove", "old")
    assert _balance(db_url, "acme") == Decimal("9")

    new = run.json("packages", "add", "new", "--kind", "free_minutes", "--quantity", "60",
                   "--price", "1")  # fmt: skip
    assert new["id"] != old["id"]
    assert [p["id"] for p in run.json("packages", "list")] == [new["id"]]
    run("packages", "assign", "acme", "new", "--auto-decrement")
    assert [(c["charged"], c["ref_id"]) for c in run.json("packages", "charge")] == [
        (True, new["id"])
    ]
    assert _balance(db_url, "acme") == Decimal("8")
    assert asyncio.run(_hold(db_url, acme, "call-3")) == 3600  # none of old's usage
    charges = sorted(r["ref_id"] for r in rows(db_url, period_charges))
    assert charges == sorted([old["id"], new["id"]])
    # and the id after that one is past both
    later = run.json("packages", "add", "later", "--kind", "unlimited")
    assert later["id"] > max(old["id"], new["id"])


def test_a_did_added_after_a_removal_is_charged_its_month(db_url: str, tmp_path: Path) -> None:
    """The same id-reuse trap for DIDs: on SQLite a DID added after the newest one was removed
    took its id, so `dids charge` thought the new DID already paid this month."""
    run = Cli(db_url, tmp_path)
    _setup(run)
    old = run.json("dids", "add", "442071230001", "Local/100@from-did", "--account", "acme",
                   "--monthly", "2")  # fmt: skip
    assert [c["charged"] for c in run.json("dids", "charge")] == [True]
    run("dids", "remove", "442071230001")
    assert _balance(db_url, "acme") == Decimal("8")

    new = run.json("dids", "add", "442071230002", "Local/100@from-did", "--account", "acme",
                   "--monthly", "3")  # fmt: skip
    assert new["id"] != old["id"]
    assert [(c["charged"], c["ref_id"]) for c in run.json("dids", "charge")] == [(True, new["id"])]
    assert _balance(db_url, "acme") == Decimal("5")
    assert sorted(r["ref_id"] for r in rows(db_url, period_charges)) == sorted(
        [old["id"], new["id"]]
    )


# --- alerts update -------------------------------------------------------------------------------


def test_alerts_update_rearms_on_a_new_condition(db_url: str, tmp_path: Path) -> None:
    run = Cli(db_url, tmp_path)
    _setup(run)  # acme's balance is 10
    added = run.json("alerts", "add", "acme", "low", "--recipient", "+15550001111",
                     "--area", "balance", "--operator", "<", "--threshold", "20")  # fmt: skip
    assert [added] == run.json("alerts", "list")
    assert run.json("alerts", "check") == {"fired": 1, "waiting_without_relay": 0}
    fired = run.json("alerts", "list")[0]
    assert fired["state"] == "fired" and fired["fired_at"] is not None

    # a new recipient (or name) keeps the state: no second notification
    moved = run.json("alerts", "update", "acme", "low", "--recipient", "+15550002222")
    assert moved == fired | {"recipient": "+15550002222"}
    assert moved == run.json("alerts", "list")[0]
    assert run.json("alerts", "check", "--account", "acme")["fired"] == 0

    # a new threshold re-arms it: it fires again, once, when the new condition holds
    rearmed = run.json("alerts", "update", "acme", "low", "--threshold", "15")
    assert (rearmed["state"], rearmed["fired_at"], rearmed["last_value"]) == ("armed", None, None)
    assert Decimal(rearmed["threshold"]) == Decimal("15")
    assert run.json("alerts", "check")["fired"] == 1
    assert run.json("alerts", "check")["fired"] == 0
    # a condition that does not hold: armed, and nothing fires
    run("alerts", "update", "acme", "low", "--operator", ">", "--threshold", "50")
    assert run.json("alerts", "check")["fired"] == 0
    assert run.json("alerts", "list")[0]["state"] == "armed"
    changed = run.json("alerts", "update", "acme", "low", "--area", "channels", "--operator",
                       "<=", "--threshold", "0", "--name", "idle")  # fmt: skip
    assert (changed["name"], changed["area"], changed["operator"]) == ("idle", "channels", "<=")
    assert run.json("alerts", "check")["fired"] == 1
    notes = run.json("alerts", "notifications", "--account", "acme")
    assert sorted(n["recipient"] for n in notes) == ["+15550001111", "+15550002222",
                                                     "+15550002222"]  # fmt: skip

    run("alerts", "add", "acme", "other", "--recipient", "+15550003333", "--area", "balance",
        "--operator", "<", "--threshold", "1")  # fmt: skip
    run.fails("alerts", "update", "acme", "idle", "--name", "other",
              match="the account has an alert 'other'")  # fmt: skip
    run.fails("alerts", "update", "acme", "idle", "--recipient", "nobody",
              match="a recipient is an e-mail address or a phone number")  # fmt: skip
    run.fails("alerts", "update", "beta", "idle", "--threshold", "1",
              match="the account has no alert 'idle'")  # fmt: skip
    run.fails("alerts", "update", "acme", "idle", "--threshold", "x", match="--threshold", code=2)
    run.fails("alerts", "update", "acme", "idle", match="nothing to change", code=2)

    warned = run("alerts", "update", "acme", "idle", "--recipient", "ops@example.com")
    assert "warning: no SMTP relay is configured" in warned.stderr and warned.stdout == ""
    last = run.json("alerts", "list", "--account", "acme")
    removed = run.json("alerts", "remove", "acme", "idle")
    assert removed == {"removed": _one(last, name="idle")}
    assert [a["name"] for a in run.json("alerts", "list")] == ["other"]
    run.fails("alerts", "remove", "acme", "idle", "--json", match="no alert 'idle'")
    assert run("alerts", "check").stdout == ""  # without --json: nothing on stdout
