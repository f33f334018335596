"""``callgate accounts ip`` (IP authentication) and ``accounts cli-rule`` (caller ID rules).

Running servers reload both every 30 s (with the trunks).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.schema.tables import CliRuleAction, IpDirection
from callgate.store import accounts as account_store
from callgate.store import clirules
from callgate.store import ips as ip_store
from callgate.store.db import write_transaction

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def _ip_data(entry: ip_store.IpEntry, number: str) -> dict[str, Any]:
    """An IP entry as `ip list --json` prints it (with its account's number)."""
    return dataclasses.asdict(entry) | {"account": number}


def _parse_limit(flag: str, text: str) -> int | None:
    """``--channels``/``--cps`` of ``ip update``: a count, or ``none`` for no limit."""
    if text.strip().lower() in {"none", "unlimited"}:
        return None
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"a number or 'none': {text!r}", param_hint=flag) from None


@click.group("ip")
def ip() -> None:
    """IP authentication: addresses/CIDRs that identify an account's calls (no accountcode)."""


@ip.command("add")
@click.argument("account")
@click.argument("address")
@click.option("--channels", type=int, default=None, help="Concurrent calls through this entry.")
@click.option("--cps", type=int, default=None, help="Flow speed: calls per second.")
@click.option("--tech-prefix", default="", help="Digits the customer dials first (stripped).")
@click.option("--strip", "strip_digits", type=int, default=0, help="Digits to strip after it.")
@click.option("--cli-prefix", default="", help="Prepended to the caller ID sent to the carrier.")
@click.option("--codecs", default="", help="Comma-separated codecs (informational).")
@click.option(
    "--direction",
    type=click.Choice([d.value for d in IpDirection]),
    default=IpDirection.INGRESS.value,
    show_default=True,
    help="Only ingress entries identify callers.",
)
@_json_option
def ip_add(
    account: str,
    address: str,
    channels: int | None,
    cps: int | None,
    tech_prefix: str,
    strip_digits: int,
    cli_prefix: str,
    codecs: str,
    direction: str,
    as_json: bool,
) -> None:
    """Let calls from ADDRESS (an IP or a CIDR block) identify ACCOUNT."""

    async def _go() -> tuple[ip_store.IpEntry, str]:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            found = await account_store.require_account(conn, account)
            return await ip_store.add_ip(
                conn,
                found.id,
                address,
                channel_limit=channels,
                cps_limit=cps,
                tech_prefix=tech_prefix,
                strip_digits=strip_digits,
                cli_prefix=cli_prefix,
                codecs=codecs,
                direction=IpDirection(direction),
            ), found.number

    entry, number = run(_go())
    if as_json:
        echo_json(_ip_data(entry, number))
    click.echo(f"IP {entry.address} added (entry {entry.id})", err=True)


@ip.command("list")
@click.argument("account", required=False)
@_json_option
def ip_list(account: str | None, as_json: bool) -> None:
    """List the IP entries of ACCOUNT (or of every account)."""

    async def _go() -> tuple[list[ip_store.IpEntry], dict[int, str]]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            account_id = None
            if account:
                account_id = (await account_store.require_account(conn, account)).id
            entries = await ip_store.list_ips(conn, account_id)
            numbers = await account_store.account_numbers(conn, (e.account_id for e in entries))
            return entries, numbers

    entries, numbers = run(_go())
    if as_json:
        echo_json([_ip_data(e, numbers.get(e.account_id, "")) for e in entries])
        return
    echo_table(
        ["ACCOUNT", "ADDRESS", "CHANNELS", "CPS", "TECH", "STRIP", "CLI", "CODECS", "DIRECTION"],
        [
            [
                numbers.get(e.account_id, ""),
                e.address,
                _limit(e.channel_limit),
                _limit(e.cps_limit),
                e.tech_prefix,
                e.strip_digits,
                e.cli_prefix,
                e.codecs,
                e.direction.value,
            ]
            for e in entries
        ],
    )


@ip.command("update")
@click.argument("account")
@click.argument("address")
@click.option(
    "--tech-prefix",
    default="",
    help="The entry's current tech prefix, if it has one (which entry to change).",
)
@click.option("--new-address", default=None, help="New IP address or CIDR block.")
@click.option("--new-tech-prefix", default=None, help="New tech prefix ('' for none).")
@click.option("--channels", default=None, help="Concurrent calls ('none' = no limit).")
@click.option("--cps", default=None, help="Calls per second ('none' = no limit).")
@click.option("--strip", "strip_digits", type=int, default=None, help="Digits to strip.")
@click.option("--cli-prefix", default=None, help="Prepended to the caller ID ('' for none).")
@click.option("--codecs", default=None, help="Comma-separated codecs ('' for none).")
@click.option(
    "--direction",
    type=click.Choice([d.value for d in IpDirection]),
    default=None,
    help="Only ingress entries identify callers.",
)
@_json_option
def ip_update(
    account: str,
    address: str,
    tech_prefix: str,
    new_address: str | None,
    new_tech_prefix: str | None,
    channels: str | None,
    cps: str | None,
    strip_digits: int | None,
    cli_prefix: str | None,
    codecs: str | None,
    direction: str | None,
    as_json: bool,
) -> None:
    """Change ACCOUNT's IP entry for ADDRESS (and --tech-prefix): only the options given.

    A new address or tech prefix another entry has is refused, naming its account. A new
    address or direction marks the PJSIP identify of the account's SIP friend stale
    (`callgate confgen status`). Running servers see the change within 30 s."""
    changes: dict[str, Any] = {
        name: value
        for name, value in (
            ("address", new_address),
            ("tech_prefix", new_tech_prefix),
            ("strip_digits", strip_digits),
            ("cli_prefix", cli_prefix),
            ("codecs", codecs),
            ("direction", direction),
        )
        if value is not None
    }
    if channels is not None:
        changes["channel_limit"] = _parse_limit("--channels", channels)
    if cps is not None:
        changes["cps_limit"] = _parse_limit("--cps", cps)
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")

    async def _go() -> tuple[ip_store.IpEntry, ip_store.IpEntry, str]:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            found = await account_store.require_account(conn, account)
            before, after = await ip_store.update_ip(
                conn, found.id, address, changes, tech_prefix=tech_prefix
            )
            return before, after, found.number

    before, after, number = run(_go())
    if as_json:
        echo_json(_ip_data(after, number))
    what = "updated" if after != before else "unchanged"
    click.echo(f"IP {after.address} {what} (entry {after.id})", err=True)


@ip.command("remove")
@click.argument("account")
@click.argument("address")
@click.option("--tech-prefix", default="", help="The entry's tech prefix, if it has one.")
@_json_option
def ip_remove(account: str, address: str, tech_prefix: str, as_json: bool) -> None:
    """Remove ACCOUNT's IP entry for ADDRESS. With --json, prints {"removed": <the entry>}."""

    async def _go() -> tuple[ip_store.IpEntry, str]:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            found = await account_store.require_account(conn, account)
            removed = await ip_store.remove_ip(conn, found.id, address, tech_prefix=tech_prefix)
            return removed, found.number

    removed, number = run(_go())
    if as_json:
        echo_json({"removed": _ip_data(removed, number)})
    click.echo(f"IP {removed.address} removed", err=True)


# --- caller ID rules -----------------------------------------------------------------------------


@click.group("cli-rule")
def cli_rule() -> None:
    """Caller ID (CLI/ANI) rules: allow/deny patterns (first match wins, default allow) and
    rewriting of the caller ID presented to the carrier."""


@cli_rule.command("add")
@click.argument("account")
@click.argument("action", type=click.Choice([a.value for a in CliRuleAction]))
@click.argument("pattern")
@click.option("--position", type=int, default=None, help="Order (lower first; default: last).")
@click.option("--strip", "strip_digits", type=int, default=0, help="rewrite: digits to strip.")
@click.option("--prepend", default="", help="rewrite: digits to prepend.")
@click.option("--replace", "replace_with", default="", help="rewrite: the caller ID to present.")
@_json_option
def rule_add(
    account: str,
    action: str,
    pattern: str,
    position: int | None,
    strip_digits: int,
    prepend: str,
    replace_with: str,
    as_json: bool,
) -> None:
    """Add a rule to ACCOUNT: ACTION (allow, deny, rewrite) for caller IDs matching PATTERN
    (a prefix, or an Asterisk pattern such as _0X.)."""

    async def _go() -> clirules.CliRule:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            found = await account_store.require_account(conn, account)
            return await clirules.add_rule(
                conn,
                found.id,
                CliRuleAction(action),
                pattern,
                position=position,
                strip_digits=strip_digits,
                prepend=prepend,
                replace_with=replace_with,
            )

    rule = run(_go())
    if as_json:
        echo_json(dataclasses.asdict(rule))
    click.echo(f"rule {rule.id} added at position {rule.position}", err=True)


@cli_rule.command("list")
@click.argument("account")
@_json_option
def rule_list(account: str, as_json: bool) -> None:
    """List ACCOUNT's caller ID rules in the order they apply."""

    async def _go() -> list[clirules.CliRule]:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            found = await account_store.require_account(conn, account)
            return await clirules.list_rules(conn, found.id)

    rules = run(_go())
    if as_json:
        echo_json([dataclasses.asdict(r) for r in rules])
        return
    echo_table(
        ["ID", "POSITION", "ACTION", "PATTERN", "STRIP", "PREPEND", "REPLACE"],
        [
            [r.id, r.position, r.action.value, r.pattern, r.strip_digits, r.prepend, r.replace_with]
            for r in rules
        ],
    )


@cli_rule.command("remove")
@click.argument("account")
@click.argument("rule_id", type=int)
@_json_option
def rule_remove(account: str, rule_id: int, as_json: bool) -> None:
    """Remove ACCOUNT's caller ID rule RULE_ID. With --json, prints {"removed": <the rule>}."""

    async def _go() -> clirules.CliRule:
        async with engine_for(app().settings) as engine, write_transaction(engine) as conn:
            found = await account_store.require_account(conn, account)
            return await clirules.remove_rule(conn, found.id, rule_id)

    removed = run(_go())
    if as_json:
        echo_json({"removed": dataclasses.asdict(removed)})
    click.echo(f"rule {rule_id} removed", err=True)


@cli_rule.command("test")
@click.argument("account")
@click.argument("callerid")
@_json_option
def rule_test(account: str, callerid: str, as_json: bool) -> None:
    """What ACCOUNT's rules do with CALLERID: allowed or not, and the caller ID presented."""

    async def _go() -> clirules.CliDecision:
        async with engine_for(app().settings) as engine, engine.connect() as conn:
            found = await account_store.require_account(conn, account)
            return clirules.decide(await clirules.list_rules(conn, found.id), callerid)

    decision = run(_go())
    if as_json:
        echo_json(dataclasses.asdict(decision))
        return
    verdict = "allowed" if decision.allowed else "DENIED"
    click.echo(f"{verdict}; presented as {decision.presented} (rule {decision.rule_id or '-'})")
