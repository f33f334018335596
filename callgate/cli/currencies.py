"""``callgate currencies add|list|set-rate``: the currencies accounts are kept and shown in."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.store import currencies as store
from callgate.store.accounts import parse_amount
from callgate.store.db import write_transaction


@click.group()
def currencies() -> None:
    """Currencies: balances are kept in the base currency and shown in the account's."""


def _data(currency: store.Currency) -> dict[str, Any]:
    return dataclasses.asdict(currency)


def _echo(currency: store.Currency, as_json: bool, verb: str) -> None:
    if as_json:
        echo_json(_data(currency))
    else:
        click.echo(
            f"{verb} {currency.code} ({currency.name}): 1 {currency.code} = {currency.value} "
            f"in the base currency, {currency.decimals} decimals"
        )


@currencies.command("add")
@click.argument("code")
@click.option("--name", required=True, help="The currency's name, e.g. Euro.")
@click.option("--rate", required=True, help="What one unit is worth in the base currency.")
@click.option("--decimals", type=int, default=2, show_default=True, help="Decimals shown (0..5).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def currencies_add(code: str, name: str, rate: str, decimals: int, as_json: bool) -> None:
    """Add currency CODE (three letters, ISO 4217), which accounts can then be created in."""
    settings = app().settings
    value = run(_parse(rate))

    async def _go() -> store.Currency:
        async with engine_for(settings) as engine, write_transaction(engine) as conn:
            return await store.add_currency(conn, code, name=name, rate=value, decimals=decimals)

    _echo(run(_go()), as_json, "added")


@currencies.command("set-rate")
@click.argument("code")
@click.argument("rate")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def currencies_set_rate(code: str, rate: str, as_json: bool) -> None:
    """Set what one unit of CODE is worth in the base currency (not the base currency's)."""
    settings = app().settings
    value = run(_parse(rate))

    async def _go() -> store.Currency:
        async with engine_for(settings) as engine, write_transaction(engine) as conn:
            return await store.set_rate(conn, code, value)

    _echo(run(_go()), as_json, "updated")


@currencies.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def currencies_list(as_json: bool) -> None:
    """The currencies, the base currency first, with how many accounts use each."""
    settings = app().settings

    async def _go() -> list[store.Currency]:
        async with engine_for(settings) as engine, engine.connect() as conn:
            return await store.list_currencies(conn)

    found = run(_go())
    if as_json:
        echo_json([_data(c) for c in found])
        return
    echo_table(
        ["CODE", "NAME", "RATE", "DECIMALS", "BASE", "ACCOUNTS"],
        [
            [c.code, c.name, c.value, c.decimals, "yes" if c.is_base else "", c.accounts]
            for c in found
        ],
    )


async def _parse(text: str) -> Any:
    return parse_amount(text, "rate")
