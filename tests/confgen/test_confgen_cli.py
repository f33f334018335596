"""The commands, end to end on both databases: `accounts friend`, `confgen render|write|status`,
`confgen write --reload` against a real AMI socket, `confgen realtime init|sync`."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from click.testing import CliRunner, Result
from sqlalchemy import select

from callgate.ami.fakeserver import FakeAmiServer
from callgate.cli.main import cli
from callgate.confgen.asterisk_conf import parse_config
from callgate.schema.tables import call_plans
from callgate.store import accounts as acc
from callgate.store import plans
from callgate.store.db import create_engine


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


@contextmanager
def fake_ami_in_thread() -> Iterator[FakeAmiServer]:
    """A FakeAmiServer on its own event loop (the CLI runs asyncio.run in the test thread)."""
    loop = asyncio.new_event_loop()
    server = FakeAmiServer(secret="ami-secret")
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(5)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_friend_add_marks_stale_write_clears_and_bad_values_are_refused(
    db_url: str, tmp_path: Path
) -> None:
    number = _account(db_url, "alice")
    run = Cli(db_url, CALLGATE_CONFGEN_DIR=str(tmp_path))
    assert "pjsip: up to date" in run("confgen", "status").stdout

    added = run("accounts", "friend", "add", "alice", "--pjsip", "--callerid", '"Alice" <5551001>',
                "--json")  # fmt: skip
    assert added.exit_code == 0, added.output
    friend = json.loads(added.stdout)
    assert friend["name"] == "alice" and friend["accountcode"] == number
    assert "confgen write" in added.stderr
    status = run("confgen", "status")
    assert "pjsip: STALE" in status.stdout and "SIP friend alice added" in status.stdout
    assert run("confgen", "status", "--check").exit_code == 1

    shown = run("confgen", "render", "--pjsip")
    assert shown.exit_code == 0, shown.output
    conf = parse_config(shown.stdout)
    endpoint = [s for s in conf.named("alice") if s.get("type") == "endpoint"][0]
    assert endpoint.get("accountcode") == number
    assert not (tmp_path / "pjsip_callgate.conf").exists()  # render writes nothing

    written = run("confgen", "write")
    assert written.exit_code == 0, written.output
    assert f"written: {tmp_path / 'pjsip_callgate.conf'}" in written.stdout
    assert f"written: {tmp_path / 'iax_callgate.conf'}" in written.stdout
    assert not (tmp_path / "sip_callgate.conf").exists()  # not in confgen.formats
    assert run("confgen", "status", "--check").exit_code == 0
    text = (tmp_path / "pjsip_callgate.conf").read_text()
    assert "DO NOT EDIT" in text and friend["secret"] in text
    again = run("confgen", "write", "--json")
    assert [f["changed"] for f in json.loads(again.stdout)["files"]] == [False, False]

    for bad, why in [
        (["--name", "al;ice"], "';'"),
        (["--callerid", "x\ncontext=free"], "a newline"),
        (["--name", "jos\u00e9"], "non-ASCII"),
        (["--context", "[general]"], "'\\['"),
    ]:
        refused = run("accounts", "friend", "add", "alice", "--iax", *bad)
        assert refused.exit_code == 1, (bad, refused.output)
        assert why.replace("\\", "") in refused.output, refused.output
    assert run("confgen", "status", "--check").exit_code == 0  # nothing was stored

    shown_friend = run("accounts", "friend", "show", "alice", "--sip", "--conf")
    assert "[alice]" in shown_friend.stdout and "type = friend" in shown_friend.stdout
    removed = run("accounts", "friend", "remove", number, "--sip")
    assert removed.exit_code == 0, removed.output
    assert "pjsip: STALE" in run("confgen", "status").stdout
    assert run("confgen", "write", "--pjsip").exit_code == 0
    assert "[alice]" not in (tmp_path / "pjsip_callgate.conf").read_text()


def test_write_reload_shows_asterisks_answer_and_fails_on_error(
    db_url: str, tmp_path: Path
) -> None:
    _account(db_url, "bob")
    with fake_ami_in_thread() as server:
        run = Cli(
            db_url,
            CALLGATE_AMI_HOST=server.host,
            CALLGATE_AMI_PORT=str(server.port),
            CALLGATE_AMI_USERNAME=server.username,
            CALLGATE_AMI_SECRET="ami-secret",
        )
        assert run("accounts", "friend", "add", "bob", "--sip").exit_code == 0
        ok = run("confgen", "write", "--dir", str(tmp_path), "--pjsip", "--iax", "--reload")
        assert ok.exit_code == 0, ok.output
        assert "Module 'res_pjsip.so' reloaded successfully." in ok.stdout
        assert "reload iax: ok: iax2 reload" in ok.stdout
        # Asterisk 22 has no chan_sip: the error is shown and the command fails
        failed = run("confgen", "write", "--dir", str(tmp_path), "--sip", "--reload")
        assert failed.exit_code == 1
        assert "No such command 'sip reload'" in failed.output
        assert (tmp_path / "sip_callgate.conf").exists()  # the file was written before
    down = Cli(db_url, CALLGATE_AMI_PORT="1")("confgen", "write", "--dir", str(tmp_path),
                                             "--reload")  # fmt: skip
    assert down.exit_code == 1 and "AMI" in down.output


def test_realtime_init_and_sync_commands(db_url: str, tmp_path: Path) -> None:
    _account(db_url, "carol")
    url = f"sqlite+aiosqlite:///{tmp_path / 'asterisk.db'}"
    run = Cli(db_url)
    assert run("accounts", "friend", "add", "carol", "--sip").exit_code == 0
    missing = run("confgen", "realtime", "sync", "--realtime-url", url)
    assert missing.exit_code == 1 and "confgen realtime init" in missing.output
    init = run("confgen", "realtime", "init", "--realtime-url", url)
    assert init.exit_code == 0 and "created: sippeers" in init.stdout
    synced = run("confgen", "realtime", "sync", "--realtime-url", url, "--json")
    assert synced.exit_code == 0, synced.output
    counts = json.loads(synced.stdout)
    assert counts["sippeers"]["inserted"] == 1 and counts["ps_auths"]["inserted"] == 1
    assert "realtime: up to date" in run("confgen", "status").stdout
    snippet = run("confgen", "render", "--sorcery")
    assert "endpoint = realtime,ps_endpoints" in snippet.stdout
