"""Caller ID (CLI/ANI) rules per account: allow, deny, rewrite.

The rules of an account are taken in order (``position``, then id):

- ``allow`` / ``deny``: the FIRST allow or deny rule whose pattern matches the caller ID decides;
  when none matches the call is allowed (default allow; end with a ``deny _.`` rule for a
  whitelist). A denied call ends with ``CALLGATE_STATUS=CLI_REJECTED`` before rating.
- ``rewrite``: the first rewrite rule whose pattern matches changes the caller ID presented to
  the carrier: ``replace_with`` when set, else ``prepend`` + the caller ID without its first
  ``strip_digits`` digits. The flow sets ``CALLERID(num)`` before Dial; the billing record keeps
  the caller ID as received.

Patterns: a plain prefix (``4420`` matches every caller ID starting with 4420), or an Asterisk
pattern starting with ``_``: ``X`` 0-9, ``Z`` 1-9, ``N`` 2-9, ``[1-5]`` a set, ``.`` one or more
characters, ``!`` zero or more; the whole caller ID must match. A leading ``+`` of the caller ID
is ignored for matching (``+4420...`` matches ``4420``).

The matching is pure (:func:`decide`); the flow holds the rules in memory
(``callgate.store.callstore.WholesaleData``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import CliRuleAction, cli_rules
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import InvalidDataError, NotFoundError


@dataclass(frozen=True, slots=True)
class CliRule:
    id: int
    account_id: int
    position: int
    action: CliRuleAction
    pattern: str
    strip_digits: int = 0
    prepend: str = ""
    replace_with: str = ""


@dataclass(frozen=True, slots=True)
class CliDecision:
    """Whether the caller ID may call, and the caller ID to present to the carrier."""

    allowed: bool
    presented: str
    rule_id: int | None = None  # the allow/deny rule that decided (None: default allow)


_CLASSES = {"X": "[0-9]", "Z": "[1-9]", "N": "[2-9]", ".": ".+", "!": ".*"}


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern[str]:
    body = pattern[1:]
    out: list[str] = []
    index = 0
    while index < len(body):
        ch = body[index]
        upper = ch.upper()
        if upper in _CLASSES:
            out.append(_CLASSES[upper])
        elif ch == "[":
            end = body.find("]", index)
            if end < 0:
                raise InvalidDataError(f"unclosed [ in pattern {pattern!r}")
            members = body[index + 1 : end]
            if not members or not re.fullmatch(r"[0-9\-]+", members):
                raise InvalidDataError(f"bad set [{members}] in pattern {pattern!r}")
            out.append(f"[{members}]")
            index = end
        else:
            out.append(re.escape(ch))
        index += 1
    return re.compile("".join(out))


def check_pattern(pattern: str) -> str:
    """A valid pattern, stripped; InvalidDataError otherwise."""
    text = pattern.strip()
    if not text:
        raise InvalidDataError("a caller ID pattern cannot be empty")
    if text.startswith("_"):
        if len(text) == 1:
            raise InvalidDataError("the pattern '_' matches nothing")
        _compile(text)
    elif not re.fullmatch(r"\+?[0-9*#]+", text):
        raise InvalidDataError(f"a plain caller ID prefix must be digits: {pattern!r}")
    return text


def pattern_matches(pattern: str, callerid: str) -> bool:
    """Whether ``callerid`` matches a plain prefix or an Asterisk ``_`` pattern."""
    cid = callerid.strip().lstrip("+")
    if not cid:
        return False
    if pattern.startswith("_"):
        return _compile(pattern).fullmatch(cid) is not None
    return cid.startswith(pattern.lstrip("+"))


def rewrite(rule: CliRule, callerid: str) -> str:
    if rule.replace_with:
        return rule.replace_with
    return rule.prepend + callerid.strip()[rule.strip_digits :]


def decide(rules: Sequence[CliRule], callerid: str) -> CliDecision:
    """Apply an account's rules (already in order) to a caller ID."""
    decided: CliRule | None = None
    rewriting: CliRule | None = None
    for rule in rules:
        if not pattern_matches(rule.pattern, callerid):
            continue
        if rule.action is CliRuleAction.REWRITE:
            rewriting = rewriting or rule
        elif decided is None:
            decided = rule
    if decided is not None and decided.action is CliRuleAction.DENY:
        return CliDecision(False, callerid, decided.id)
    presented = rewrite(rewriting, callerid) if rewriting is not None else callerid
    return CliDecision(True, presented, decided.id if decided else None)


def rule_from_row(row: Any) -> CliRule:
    m = row._mapping
    return CliRule(
        id=m["id"],
        account_id=m["account_id"],
        position=m["position"],
        action=CliRuleAction(m["action"]),
        pattern=m["pattern"],
        strip_digits=m["strip_digits"],
        prepend=m["prepend"],
        replace_with=m["replace_with"],
    )


async def add_rule(
    conn: AsyncConnection,
    account_id: int,
    action: CliRuleAction,
    pattern: str,
    *,
    position: int | None = None,
    strip_digits: int = 0,
    prepend: str = "",
    replace_with: str = "",
) -> CliRule:
    """Add a rule; without ``position`` it goes last (10 after the current last)."""
    text = check_pattern(pattern)
    if strip_digits < 0:
        raise InvalidDataError("strip digits cannot be negative")
    if action is not CliRuleAction.REWRITE and (strip_digits or prepend or replace_with):
        raise InvalidDataError("strip/prepend/replace apply to rewrite rules only")
    if action is CliRuleAction.REWRITE and not (strip_digits or prepend or replace_with):
        raise InvalidDataError("a rewrite rule needs --strip, --prepend or --replace")
    async with mapped_errors("caller ID rule"):
        if position is None:
            last = await conn.scalar(
                select(func.max(cli_rules.c.position)).where(cli_rules.c.account_id == account_id)
            )
            position = (int(last) + 10) if last is not None else 10
        values = {
            "account_id": account_id,
            "position": position,
            "action": action.value,
            "pattern": text,
            "strip_digits": strip_digits,
            "prepend": prepend.strip(),
            "replace_with": replace_with.strip(),
        }
        new_id = await conn.scalar(insert(cli_rules).values(**values).returning(cli_rules.c.id))
    assert new_id is not None
    return CliRule(
        id=int(new_id),
        account_id=account_id,
        position=position,
        action=action,
        pattern=text,
        strip_digits=strip_digits,
        prepend=prepend.strip(),
        replace_with=replace_with.strip(),
    )


async def list_rules(conn: AsyncConnection, account_id: int | None = None) -> list[CliRule]:
    query = select(cli_rules).order_by(cli_rules.c.account_id, cli_rules.c.position, cli_rules.c.id)
    if account_id is not None:
        query = query.where(cli_rules.c.account_id == account_id)
    async with mapped_errors("caller ID rules"):
        return [rule_from_row(r) for r in await conn.execute(query)]


async def remove_rule(conn: AsyncConnection, account_id: int, rule_id: int) -> CliRule:
    """Remove the account's rule ``rule_id``; returns the rule removed."""
    async with mapped_errors("caller ID rule"):
        row = (
            await conn.execute(
                delete(cli_rules)
                .where(cli_rules.c.id == rule_id, cli_rules.c.account_id == account_id)
                .returning(cli_rules)
            )
        ).first()
    if row is None:
        raise NotFoundError(f"the account has no caller ID rule {rule_id}")
    return rule_from_row(row)


def by_account(rules: Iterable[CliRule]) -> dict[int, tuple[CliRule, ...]]:
    out: dict[int, list[CliRule]] = {}
    for rule in rules:
        out.setdefault(rule.account_id, []).append(rule)
    return {k: tuple(sorted(v, key=lambda r: (r.position, r.id))) for k, v in out.items()}
