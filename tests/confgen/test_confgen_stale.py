"""`confgen status` sees every change of what it renders (issue 12, item 3), on both databases.

Each change goes through the operator's command, between a `confgen write` (up to date) and a
`confgen status` that must say which file is stale and why: an account with SIP/IAX friends
deleted or renumbered, an ingress IP added or removed (the PJSIP identify), and the chan_sip
file once written. The Realtime mark is read from the store (no Realtime database here).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from sqlalchemy import select

from callgate.cli.main import cli
from callgate.schema.tables import call_plans
from callgate.store import accounts as acc
from callgate.store import plans
from callgate.store.db import create_engine
from callgate.store.friends import ConfTarget, stale_marks


def _account(db_url: str, alias: str) -> str:
    async def _make() -> str:
        engine = create_engine(db_url)
        try:
            async with engine.begin() as conn:
                plan = await conn.scalar(select(call_plans.c.id).limit(1))
                if plan is None:
                    plan = (await plans.create_call_plan(conn, name="retail")).id
                account = await acc.create_account(conn, call_plan_id=int(plan), alias=alias)
                return account.number
        finally:
            await engine.dispose()

    return asyncio.run(_make())


class Cli:
    def __init__(self, db_url: str, **env: str) -> None:
        self.runner = CliRunner()
        self.env = {"CALLGATE_DATABASE_URL": db_url, **env}

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(cli, list(args), env=self.env)


def _status(run: Cli) -> dict[str, Any]:
    result = run("confgen", "status", "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _stale(run: Cli) -> dict[str, str]:
    return {name: entry["reason"] for name, entry in _status(run).items() if entry["stale"]}


def _written(run: Cli, *formats: str) -> None:
    result = run("confgen", "write", *formats)
    assert result.exit_code == 0, result.output
    assert _stale(run) == {}


def _realtime_marked(db_url: str) -> bool:
    async def _read() -> bool:
        engine = create_engine(db_url)
        try:
            async with engine.connect() as conn:
                return ConfTarget.REALTIME in await stale_marks(conn)
        finally:
            await engine.dispose()

    return asyncio.run(_read())


def _ok(run: Cli, *args: str) -> None:
    result = run(*args)
    assert result.exit_code == 0, result.output


def test_deleting_an_account_with_friends_marks_its_files_stale(
    db_url: str, tmp_path: Path
) -> None:
    number = _account(db_url, "alice")
    bystander = _account(db_url, "bob")
    run = Cli(db_url, CALLGATE_CONFGEN_DIR=str(tmp_path))
    _ok(run, "accounts", "friend", "add", "alice", "--sip")
    _ok(run, "accounts", "friend", "add", "alice", "--iax")
    _written(run)
    assert "[alice]" in (tmp_path / "pjsip_callgate.conf").read_text()

    _ok(run, "accounts", "delete", bystander, "--yes")  # no friends: nothing rendered changes
    assert _stale(run) == {}

    _ok(run, "accounts", "delete", number, "--yes")
    stale = _stale(run)
    assert set(stale) == {"pjsip", "iax"}
    assert "account deleted" in stale["pjsip"] and "alice" in stale["pjsip"]
    assert "IAX friend alice" in stale["iax"]
    assert run("confgen", "status", "--check").exit_code == 1
    _written(run)
    assert "[alice]" not in (tmp_path / "pjsip_callgate.conf").read_text()


def test_renumbering_an_account_marks_its_friends_accountcode_stale(
    db_url: str, tmp_path: Path
) -> None:
    number = _account(db_url, "carol")
    run = Cli(db_url, CALLGATE_CONFGEN_DIR=str(tmp_path))
    _ok(run, "accounts", "friend", "add", "carol", "--iax")
    _written(run)
    _ok(run, "accounts", "update", number, "--number", "9988776655")
    assert set(_stale(run)) == {"iax"}
    _written(run)
    assert "accountcode = 9988776655" in (tmp_path / "iax_callgate.conf").read_text()


def test_ingress_ip_changes_mark_the_pjsip_identify_stale(db_url: str, tmp_path: Path) -> None:
    number = _account(db_url, "dave")
    run = Cli(db_url, CALLGATE_CONFGEN_DIR=str(tmp_path))
    _ok(run, "accounts", "friend", "add", "dave", "--sip")
    _written(run)

    _ok(run, "accounts", "ip", "add", number, "203.0.113.9")
    stale = _stale(run)
    assert set(stale) == {"pjsip"} and "ingress IP 203.0.113.9 added" in stale["pjsip"]
    assert _realtime_marked(db_url)  # ps_endpoint_id_ips too
    _written(run)
    assert "203.0.113.9" in (tmp_path / "pjsip_callgate.conf").read_text()

    _ok(run, "accounts", "ip", "add", number, "192.0.2.1", "--direction", "egress")
    assert _stale(run) == {}  # egress entries are not rendered

    _ok(run, "accounts", "ip", "remove", number, "203.0.113.9")
    assert "ingress IP 203.0.113.9 removed" in _stale(run)["pjsip"]
    _written(run)
    assert "203.0.113.9" not in (tmp_path / "pjsip_callgate.conf").read_text()

    other = _account(db_url, "erin")  # no SIP friend: no identify to render
    _ok(run, "accounts", "ip", "add", other, "198.51.100.4")
    assert _stale(run) == {}


def test_status_tracks_sip_callgate_conf_once_written(db_url: str, tmp_path: Path) -> None:
    number = _account(db_url, "frank")
    run = Cli(db_url, CALLGATE_CONFGEN_DIR=str(tmp_path))
    _ok(run, "accounts", "friend", "add", "frank", "--sip")
    assert "sip" not in _status(run)  # not in confgen.formats, never written
    _written(run, "--sip", "--pjsip", "--iax")
    assert (tmp_path / "sip_callgate.conf").exists()
    assert _status(run)["sip"] == {"stale": False}

    _ok(run, "accounts", "friend", "remove", number, "--sip")
    assert {"sip", "pjsip"} <= set(_stale(run))
    assert "sip: STALE" in run("confgen", "status").stdout
    _written(run, "--sip", "--pjsip")
    assert "[frank]" not in (tmp_path / "sip_callgate.conf").read_text()
