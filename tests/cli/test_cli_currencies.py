"""`callgate currencies` and balances shown in the account's currency, on both databases."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner, Result

from callgate.cli.main import cli


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


def test_currencies_add_list_set_rate_and_the_card_list_in_currency(db_url: str) -> None:
    run = Cli(db_url)
    # Once only USD existed and nothing added one: `--currency EUR` failed.
    eur = run.json("currencies", "add", "eur", "--name", "Euro", "--rate", "1.08")
    assert eur == {
        "code": "EUR",
        "name": "Euro",
        "value": "1.08000",
        "decimals": 2,
        "is_base": False,
        "accounts": 0,
        "updated_at": eur["updated_at"],
    }
    run("currencies", "add", "JPY", "--name", "Yen", "--rate", "0.0067", "--decimals", "0")
    run("plans", "add", "retail")
    run("accounts", "add", "--plan", "retail", "--alias", "eve", "--currency", "EUR")
    run("payments", "add", "eve", "10.80")
    run("accounts", "add", "--plan", "retail", "--alias", "ken", "--currency", "JPY")
    run("payments", "add", "ken", "10")
    rows = {r["alias"]: r for r in run.json("accounts", "list", "--sort", "alias")["accounts"]}
    assert rows["eve"]["balance_currency"] == "10.00" and rows["eve"]["currency"] == "EUR"
    assert rows["ken"]["balance_currency"] == "1493"  # 10 / 0.0067 = 1492.54, 0 decimals
    table = run("accounts", "list").stdout
    assert "10.00" in table and "1493" in table
    assert "balance (EUR)" in run("accounts", "info", "eve").stdout

    updated = run.json("currencies", "set-rate", "EUR", "1.2")
    assert updated["value"] == "1.20000"
    rows = {r["alias"]: r for r in run.json("accounts", "list")["accounts"]}
    assert rows["eve"]["balance_currency"] == "9.00"
    listed = run.json("currencies", "list")
    assert [(c["code"], c["is_base"], c["accounts"]) for c in listed] == [
        ("USD", True, 0),
        ("EUR", False, 1),
        ("JPY", False, 1),
    ]
    assert "EUR" in run("currencies", "list").stdout


def test_currency_mistakes_are_clear_errors(db_url: str) -> None:
    run = Cli(db_url)
    run("currencies", "add", "EUR", "--name", "Euro", "--rate", "1.08")
    cases = {
        ("currencies", "add", "EUR", "--name", "Euro", "--rate", "1.1"): "EUR (Euro) already",
        ("currencies", "add", "EU", "--name", "x", "--rate", "1"): "three letters",
        ("currencies", "add", "GBP", "--name", "Pound", "--rate", "0"): "must be positive",
        ("currencies", "add", "GBP", "--name", "Pound", "--rate", "-1"): "must be positive",
        ("currencies", "add", "GBP", "--name", "Pound", "--rate", "1e3"): "rate",
        ("currencies", "add", "GBP", "--name", "P", "--rate", "1", "--decimals", "9"): "0..5",
        ("currencies", "set-rate", "USD", "2"): "base currency",
        ("currencies", "set-rate", "CHF", "2"): "no currency 'CHF'",
    }
    for argv, message in cases.items():
        refused = run(*argv, ok=False)
        assert refused.exit_code == 1 and message in refused.output, (argv, refused.output)
    assert [c["code"] for c in run.json("currencies", "list")] == ["USD", "EUR"]
