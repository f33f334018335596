"""`serve`, `simulate` and `demo`: the composition root, run as operators run it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from callgate.agi.client import AsteriskEmulator, ChannelSpec, DialOutcome, FakeAsterisk
from callgate.cli.demo import seed_demo
from callgate.cli.main import cli
from callgate.config import load_settings
from callgate.store.db import create_engine
from callgate.templates import read_template


def test_demo_runs_calls_and_the_ledger_is_consistent(db_url: str) -> None:
    result = CliRunner().invoke(cli, ["demo", "--database-url", db_url, "--calls", "16", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ledger_consistent"] is True
    assert data["sockets_closed_by_server"] is True
    assert data["protocol_violations"] == []
    statuses = {record["status"] for record in data["calls"]}
    assert {"OK", "NO_ACCOUNT", "INACTIVE", "NO_RATE"} <= statuses
    answered = [r for r in data["calls"] if r["billsec"] > 0]
    assert answered and all(Decimal(r["cost"]) > 0 for r in answered)
    assert all(r["billsec"] <= r["granted_seconds"] for r in data["calls"])
    assert len(data["calls"]) == 16 + 3


def test_simulate_prints_the_decision(db_url: str) -> None:
    settings = load_settings(environ={"CALLGATE_DATABASE_URL": db_url})

    async def seed() -> None:
        engine = create_engine(db_url)
        try:
            await seed_demo(engine, settings)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    env = {"CALLGATE_DATABASE_URL": db_url}
    result = CliRunner().invoke(
        cli,
        ["simulate", "--account", "7000000001", "--number", "00442079460000", "--json"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "OK" and data["number"] == "442079460000"
    assert [r["table"] for r in data["routes"]] == ["wholesale-a", "premium-c"]
    # 0.50 at 0.04/min 30/6 buys 750 s
    assert data["granted_seconds"] == 750 and data["reserve"] == "0.50000"
    assert data["dial"].startswith("PJSIP/442079460000@carrier-a,60,U(callgate-answered^")
    assert "L(750000:30000)" in data["dial"]
    refused = CliRunner().invoke(
        cli, ["simulate", "--callerid", "15550005", "--number", "442079460000", "--json"], env=env
    )
    assert json.loads(refused.stdout)["status"] == "INACTIVE"
    unknown = CliRunner().invoke(
        cli, ["simulate", "--account", "nobody", "--number", "44", "--json"], env=env
    )
    assert json.loads(unknown.stdout)["status"] == "NO_ACCOUNT"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _run_serve(
    db_url: str,
    port: int,
    tmp_path: Path,
    *,
    drive: bool = True,
    extra_env: dict[str, str] | None = None,
) -> tuple[int, str]:
    env = {**os.environ, "CALLGATE_DATABASE_URL": db_url, "CALLGATE_AGI_DRAIN_SECONDS": "5"}
    env.update(extra_env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callgate",
        "serve",
        "--port",
        str(port),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        for _ in range(200 if drive else 0):
            if proc.returncode is not None:
                break
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            break
        if drive and proc.returncode is None:
            spec = ChannelSpec(uniqueid="srv-1", accountcode="7000000003", extension="0044207946")
            emulator = AsteriskEmulator(spec, dial_outcomes=[DialOutcome.answered(12_000)])
            call = await FakeAsterisk("127.0.0.1", port).call(spec, emulator)
            assert call.ok, call
            assert emulator.variables["CALLGATE_STATUS"] == "OK"
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def test_serve_refuses_to_start_while_migrations_are_pending(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    code, err = asyncio.run(_run_serve(url, _free_port(), tmp_path))
    assert code == 3
    assert "pending migration" in err


@pytest.mark.parametrize("event_loop", ["auto", "asyncio", "uvloop"])
def test_serve_answers_calls_and_drains_on_sigterm(
    db_url: str, tmp_path: Path, event_loop: str
) -> None:
    settings = load_settings(environ={"CALLGATE_DATABASE_URL": db_url})

    async def seed() -> None:
        engine = create_engine(db_url)
        try:
            await seed_demo(engine, settings)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    code, err = asyncio.run(
        _run_serve(
            db_url, _free_port(), tmp_path, extra_env={"CALLGATE_AGI_EVENT_LOOP": event_loop}
        )
    )
    assert code == 0, err
    assert "uniqueid=srv-1" in err and "status=OK" in err
    assert "FastAGI server stopped" in err
    # uvloop is in the test extra, so "auto" takes it
    loop = "asyncio" if event_loop == "asyncio" else "uvloop"
    assert f"({loop} event loop)" in err


def test_serve_refuses_an_unknown_event_loop(db_url: str, tmp_path: Path) -> None:
    code, err = asyncio.run(
        _run_serve(
            db_url,
            _free_port(),
            tmp_path,
            drive=False,
            extra_env={"CALLGATE_AGI_EVENT_LOOP": "trio"},
        )
    )
    assert code != 0
    assert "agi.event_loop: must be one of auto, uvloop, asyncio, not 'trio'" in err


def test_serve_exits_3_when_the_port_is_taken(db_url: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, err = asyncio.run(_run_serve(db_url, busy.getsockname()[1], tmp_path, drive=False))
    assert code == 3 and "cannot listen" in err


def test_dialplan_template_fails_closed_and_stamps_the_answer() -> None:
    text = read_template("extensions_callgate.conf")
    assert "AGI(agi://127.0.0.1:4573/call)" in text
    assert 'GotoIf($["${AGISTATUS}" = "SUCCESS"]?done)' in text
    assert text.count("Hangup(41)") == 3  # call, card and did all fail closed
    assert "Set(SHARED(CALLGATE_ANSWER_MS,${ARG1})=${STRFTIME(,,%s%3q)})" in text
    for context in ("[callgate]", "[callgate-card]", "[callgate-did]", "[callgate-answered]"):
        assert context in text
