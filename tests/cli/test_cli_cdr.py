"""``callgate cdr|calls|stats|channels`` as operators run them, on both databases."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from known_calls import DAY1, SPECS, Spec, seed

from callgate.cli.main import cli
from callgate.store.channels import LiveChannel, write_channels
from callgate.store.db import create_engine


def _seed(db_url: str, specs: tuple[Spec, ...] = SPECS) -> None:
    async def main() -> None:
        engine = create_engine(db_url)
        try:
            await seed(engine, specs)
        finally:
            await engine.dispose()

    asyncio.run(main())


def _run(db_url: str, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(
        cli, list(args), env={"CALLGATE_DATABASE_URL": db_url, "CALLGATE_BILLING_TIMEZONE": "UTC"}
    )
    assert result.exit_code == code, result.output
    return result


def test_cdr_list_and_filters(db_url: str) -> None:
    _seed(db_url)
    rows = json.loads(_run(db_url, "cdr", "list", "--json").stdout)
    assert [r["uniqueid"] for r in rows] == ["c6", "c5", "c4", "c3", "c2", "c1"]
    assert rows[0]["account"] == "8000000001" and rows[0]["status"] == "NO_CREDIT"
    uk_day1 = json.loads(
        _run(
            db_url,
            "cdr",
            "list",
            "--destination",
            "44",
            "--since",
            "2026-11-20",
            "--until",
            "2026-11-21",
            "--answered",
            "--json",
        ).stdout
    )
    assert [r["uniqueid"] for r in uk_day1] == ["c2", "c1"]
    table = _run(db_url, "cdr", "list", "--account", "8000000001", "--status", "ok").stdout
    assert table.splitlines()[0].split()[:3] == ["STARTED_AT", "UNIQUEID", "ACCOUNT"]
    assert len(table.splitlines()) == 6  # header + 5 OK calls
    bad = _run(db_url, "cdr", "list", "--since", "yesterday", code=2)
    assert "--since" in bad.output
    missing = _run(db_url, "cdr", "list", "--account", "nobody", code=1)
    assert "nobody" in missing.output


def test_cdr_export_streams_csv_and_jsonl(db_url: str, tmp_path: Path) -> None:
    _seed(db_url)
    out = _run(db_url, "cdr", "export", "--format", "csv")
    records = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["uniqueid"] for r in records] == ["c1", "c2", "c3", "c4", "c5", "c6"]
    assert records[0]["cost"] == "0.60000" and records[0]["billsec"] == "60"
    assert records[0]["started_at"] == "2026-11-20T10:00:00+00:00"
    assert "6 record(s) exported" in out.stderr
    target = tmp_path / "cdr.jsonl"
    _run(db_url, "cdr", "export", "--format", "jsonl", "--trunk", "carrier-b", "-o", str(target))
    lines = target.read_text().splitlines()
    assert [json.loads(line)["uniqueid"] for line in lines] == ["c4"]


def test_cdr_recalc_twice_refunds_once(db_url: str) -> None:
    _seed(db_url, (Spec("t1", DAY1, 3600, "ANSWER", 900, 16),))
    args = ["cdr", "recalc", "--day", "2026-11-20", "--longer-than", "600", "--new-duration"]
    dry = json.loads(_run(db_url, *args, "600", "--dry-run", "--json").stdout)
    assert dry["dry_run"] and Decimal(dry["refunded"]) == Decimal("30")
    first = json.loads(_run(db_url, *args, "600", "--json").stdout)
    assert Decimal(first["refunded"]) == Decimal("30") and first["calls"][0]["new_billsec"] == 600
    second = json.loads(_run(db_url, *args, "600", "--json").stdout)
    assert second["calls"] == [] and Decimal(second["refunded"]) == 0
    account = json.loads(_run(db_url, "calls", "list", "--account", "8000000001", "--json").stdout)
    assert account[0]["billsec"] == 600 and account[0]["cost"] == "6.00000"
    _run(db_url, *args, "x", code=2)


def test_stats_command(db_url: str) -> None:
    _seed(db_url)
    (overall,) = json.loads(_run(db_url, "stats", "--json").stdout)
    assert (overall["attempts"], overall["answered"], overall["asr_percent"]) == (6, 3, "50.00")
    assert (overall["acd_seconds"], overall["pdd_ms"], overall["peak_cps"]) == ("70.0", 1625, 3)
    assert overall["hangup_causes"] == {"16": 3, "17": 1, "19": 1, "none": 1}
    days = json.loads(
        _run(db_url, "stats", "--by", "day", "--account", "8000000001", "--json").stdout
    )
    assert [(d["period"], d["attempts"]) for d in days] == [("2026-11-20", 4), ("2026-11-21", 2)]
    text = _run(db_url, "stats", "--since", "2026-11-21").stdout
    assert text.splitlines()[1].split()[:4] == ["all", "2", "1", "50.00"]


def test_channels_command(db_url: str) -> None:
    now = datetime.now(UTC)

    async def main() -> None:
        engine = create_engine(db_url)
        try:
            async with engine.begin() as conn:
                await write_channels(
                    conn,
                    [
                        LiveChannel(
                            uniqueid="u1",
                            channel="PJSIP/customer-00000001",
                            started_at=now - timedelta(seconds=75),
                            updated_at=now,
                            accountcode="acct-1001",
                            callerid="5551001",
                            destination="442079460000",
                            state="Up",
                            server="pbx",
                        ),
                        LiveChannel(
                            uniqueid="u2",
                            channel="PJSIP/other-00000002",
                            started_at=now,
                            updated_at=now,
                            accountcode="acct-2002",
                            state="Ring",
                        ),
                    ],
                )
        finally:
            await engine.dispose()

    asyncio.run(main())
    rows = json.loads(_run(db_url, "channels", "--account", "acct-1001", "--json").stdout)
    assert len(rows) == 1
    row = rows[0]
    assert (row["channel"], row["account"], row["caller"], row["destination"], row["state"]) == (
        "PJSIP/customer-00000001",
        "acct-1001",
        "5551001",
        "442079460000",
        "Up",
    )
    assert 74 <= row["duration_seconds"] <= 80
    text = _run(db_url, "channels").stdout.splitlines()
    assert text[0].split() == ["CHANNEL", "ACCOUNT", "CALLER", "DESTINATION", "STATE", "DURATION"]
    assert len(text) == 3 and "0:01:1" in text[1]


@pytest.mark.parametrize("command", [["calls", "list"], ["stats"], ["cdr", "recalc"]])
def test_help_texts(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0 and len(result.output) > 100
