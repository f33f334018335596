"""IP authentication: an account's addresses and CIDR blocks (``account_ips``).

A wholesale customer's switch sends calls from known addresses without an accountcode. Each entry
says which account such a call belongs to and how to treat it (ConnexCS's "IP Authentication"):

- ``address``: one IP address or a CIDR block (stored normalised: ``203.0.113.0/24``, a single
  host as the bare address);
- ``channel_limit`` / ``cps_limit``: concurrent calls and calls per second through this entry,
  checked by the ledger under the account lock (so they hold across callgate servers);
- ``tech_prefix``: digits the customer dials first to pick this account on a shared address;
  among the entries whose block holds the source address, the LONGEST tech prefix that starts
  the dialled number wins (an empty one matches every number), then the most specific block;
  the tech prefix is stripped before rating;
- ``strip_digits``: leading digits removed after the tech prefix;
- ``cli_prefix``: prepended to the caller ID presented to the carrier;
- ``codecs``: informational here (the SIP side is the confgen's);
- ``direction``: only ``ingress`` entries identify callers; ``egress`` ones are where calls to
  the customer go, and are listed for the operator.

:class:`IpTable` is the pure, in-memory matcher the call flow uses (no SQL on the call path);
``callgate.store.callstore.WholesaleData`` loads it with :func:`load_ip_table`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from callgate.schema.tables import IpDirection, account_ips
from callgate.store._errors_map import mapped_errors
from callgate.store.errors import InvalidDataError, NotFoundError
from callgate.store.friends import mark_identify_stale
from callgate.store.owners import refuse_taken

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class IpEntry:
    """One IP authentication entry of an account."""

    id: int
    account_id: int
    address: str
    channel_limit: int | None = None
    cps_limit: int | None = None
    tech_prefix: str = ""
    strip_digits: int = 0
    cli_prefix: str = ""
    codecs: str = ""
    direction: IpDirection = IpDirection.INGRESS

    @property
    def limit_key(self) -> str:
        """What the ledger counts this entry's channels and CPS by (the reservations'
        ``source_address``): the entry's block, plus ``#<tech prefix>`` when it has one (two
        accounts may share a block with different tech prefixes, each with its own limits)."""
        return f"{self.address}#{self.tech_prefix}" if self.tech_prefix else self.address


def parse_network(text: str) -> IpNetwork:
    """An address or CIDR block as a network (host bits of a block are dropped)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise InvalidDataError(f"not an IP address or CIDR block: {text!r}") from exc


def normalise_address(text: str) -> str:
    """``203.0.113.7/24`` -> ``203.0.113.0/24``; ``203.0.113.7/32`` -> ``203.0.113.7``."""
    network = parse_network(text)
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def parse_source_address(raw: str | None) -> IpAddress | None:
    """The IP of what Asterisk reports for a channel's signalling peer, or None.

    Accepts ``ip``, ``ip:port`` (``CHANNEL(pjsip,remote_addr)``), ``[v6]:port`` and bare IPv6.
    """
    text = (raw or "").strip()
    if not text:
        return None
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


class IpTable:
    """The ingress entries in memory, matched against a call's source address and number."""

    def __init__(self, entries: Iterable[IpEntry] = ()) -> None:
        self._entries: list[tuple[IpNetwork, IpEntry]] = [
            (parse_network(e.address), e) for e in entries if e.direction is IpDirection.INGRESS
        ]

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, source: IpAddress, dialled: str) -> IpEntry | None:
        """The entry for a call from ``source`` dialling ``dialled``, or None.

        Longest matching tech prefix first, then the most specific block, then the oldest entry.
        """
        digits = _digits(dialled)
        best: tuple[int, int, int] | None = None
        found: IpEntry | None = None
        for network, entry in self._entries:
            if source.version != network.version or source not in network:
                continue
            if entry.tech_prefix and not digits.startswith(entry.tech_prefix):
                continue
            key = (len(entry.tech_prefix), network.prefixlen, -entry.id)
            if best is None or key > best:
                best, found = key, entry
        return found


def entry_from_row(row: Any) -> IpEntry:
    m = row._mapping
    return IpEntry(
        id=m["id"],
        account_id=m["account_id"],
        address=m["address"],
        channel_limit=m["channel_limit"],
        cps_limit=m["cps_limit"],
        tech_prefix=m["tech_prefix"],
        strip_digits=m["strip_digits"],
        cli_prefix=m["cli_prefix"],
        codecs=m["codecs"],
        direction=IpDirection(m["direction"]),
    )


def _check_digits(name: str, value: str, *, plus: bool = False) -> str:
    text = value.strip()
    body = text[1:] if plus and text.startswith("+") else text
    if body and not body.isdigit():
        raise InvalidDataError(f"{name} must be digits: {value!r}")
    return text


IP_FIELDS = frozenset(
    {
        "address",
        "channel_limit",
        "cps_limit",
        "tech_prefix",
        "strip_digits",
        "cli_prefix",
        "codecs",
        "direction",
    }
)
"""The fields of an entry an operator sets (``ip add`` takes them all, ``ip update`` some)."""


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    """The column values of ``values`` (any of :data:`IP_FIELDS`), checked and normalised."""
    out = dict(values)
    if "address" in out:
        out["address"] = normalise_address(str(out["address"]))
    for name, what in (("channel_limit", "channel limit"), ("cps_limit", "CPS limit")):
        if out.get(name) is not None and out[name] < 0:
            raise InvalidDataError(f"the {what} cannot be negative")
    if "strip_digits" in out and out["strip_digits"] < 0:
        raise InvalidDataError("strip digits cannot be negative")
    if "tech_prefix" in out:
        out["tech_prefix"] = _check_digits("the tech prefix", out["tech_prefix"])
    if "cli_prefix" in out:
        out["cli_prefix"] = _check_digits("the CLI prefix", out["cli_prefix"], plus=True)
    if "codecs" in out:
        out["codecs"] = ",".join(c.strip().lower() for c in out["codecs"].split(",") if c.strip())
    if "direction" in out:
        out["direction"] = IpDirection(out["direction"]).value
    return out


async def _refuse_duplicate(
    conn: AsyncConnection, address: str, tech_prefix: str, *, other_than: int | None = None
) -> None:
    """ConflictError naming the owner when another entry has ``(address, tech_prefix)``."""
    prefix_text = f" with tech prefix {tech_prefix}" if tech_prefix else ""
    where = [account_ips.c.address == address, account_ips.c.tech_prefix == tech_prefix]
    if other_than is not None:
        where.append(account_ips.c.id != other_than)
    await refuse_taken(conn, f"IP {address}{prefix_text}", account_ips, *where)


async def add_ip(
    conn: AsyncConnection,
    account_id: int,
    address: str,
    *,
    channel_limit: int | None = None,
    cps_limit: int | None = None,
    tech_prefix: str = "",
    strip_digits: int = 0,
    cli_prefix: str = "",
    codecs: str = "",
    direction: IpDirection = IpDirection.INGRESS,
) -> IpEntry:
    """Add an entry; ``(address, tech_prefix)`` is unique across accounts (ConflictError)."""
    values = _checked(
        {
            "address": address,
            "channel_limit": channel_limit,
            "cps_limit": cps_limit,
            "tech_prefix": tech_prefix,
            "strip_digits": strip_digits,
            "cli_prefix": cli_prefix,
            "codecs": codecs,
            "direction": direction,
        }
    )
    normalised = values["address"]
    async with mapped_errors(f"IP {normalised}"):
        await _refuse_duplicate(conn, normalised, values["tech_prefix"])
        row = (
            await conn.execute(
                insert(account_ips).values(account_id=account_id, **values).returning(account_ips)
            )
        ).one()
        if direction is IpDirection.INGRESS:
            await mark_identify_stale(conn, account_id, f"ingress IP {normalised} added")
    return entry_from_row(row)


async def fetch_ip(
    conn: AsyncConnection,
    account_id: int,
    address: str,
    *,
    tech_prefix: str = "",
    lock: bool = False,
) -> IpEntry:
    """The account's entry for ``address`` and ``tech_prefix``; NotFoundError if none."""
    normalised = normalise_address(address)
    query = select(account_ips).where(
        account_ips.c.account_id == account_id,
        account_ips.c.address == normalised,
        account_ips.c.tech_prefix == tech_prefix.strip(),
    )
    if lock:
        query = query.with_for_update()
    async with mapped_errors(f"IP {normalised}"):
        row = (await conn.execute(query)).first()
    if row is None:
        raise NotFoundError(
            f"the account has no IP entry {normalised} (tech prefix {tech_prefix.strip()!r})"
        )
    return entry_from_row(row)


async def update_ip(
    conn: AsyncConnection,
    account_id: int,
    address: str,
    changes: dict[str, Any],
    *,
    tech_prefix: str = "",
) -> tuple[IpEntry, IpEntry]:
    """Change the account's entry for ``address`` and ``tech_prefix`` (its current ones):
    ``changes`` holds the :data:`IP_FIELDS` to set, the others stay. Returns the entry before
    and after.

    A new ``(address, tech_prefix)`` that another entry has is refused (ConflictError naming its
    account). A change to what PJSIP ``identify`` matches (the address of an ingress entry, or
    the direction) marks that stale. Reservations of calls in progress keep counting against the
    entry's old limit key (block and tech prefix) until they end.
    """
    unknown = set(changes) - IP_FIELDS
    if unknown:
        raise InvalidDataError(f"unknown IP entry field(s): {', '.join(sorted(unknown))}")
    values = _checked(changes)
    current = await fetch_ip(conn, account_id, address, tech_prefix=tech_prefix, lock=True)
    values = {k: v for k, v in values.items() if v != _column(current, k)}
    if not values:
        return current, current
    new_address = values.get("address", current.address)
    new_prefix = values.get("tech_prefix", current.tech_prefix)
    async with mapped_errors(f"IP {new_address}"):
        if "address" in values or "tech_prefix" in values:
            await _refuse_duplicate(conn, new_address, new_prefix, other_than=current.id)
        row = (
            await conn.execute(
                update(account_ips)
                .where(account_ips.c.id == current.id)
                .values(**values)
                .returning(account_ips)
            )
        ).one()
        after = entry_from_row(row)
        ingress = IpDirection.INGRESS in (current.direction, after.direction)
        if ingress and (current.address != after.address or current.direction != after.direction):
            await mark_identify_stale(
                conn,
                account_id,
                f"ingress IP {current.address} changed to {after.address} {after.direction.value}",
            )
    return current, after


def _column(entry: IpEntry, name: str) -> Any:
    value = getattr(entry, name)
    return value.value if isinstance(value, IpDirection) else value


async def list_ips(conn: AsyncConnection, account_id: int | None = None) -> list[IpEntry]:
    """Entries of one account (or of all), by address and tech prefix."""
    query = select(account_ips).order_by(
        account_ips.c.account_id, account_ips.c.address, account_ips.c.tech_prefix
    )
    if account_id is not None:
        query = query.where(account_ips.c.account_id == account_id)
    async with mapped_errors("IP list"):
        return [entry_from_row(r) for r in await conn.execute(query)]


async def remove_ip(
    conn: AsyncConnection, account_id: int, address: str, *, tech_prefix: str = ""
) -> IpEntry:
    """Remove the account's entry for ``address`` (and ``tech_prefix``); NotFoundError if none.
    Returns the entry removed."""
    normalised = normalise_address(address)
    async with mapped_errors(f"IP {normalised}"):
        row = (
            await conn.execute(
                delete(account_ips)
                .where(
                    account_ips.c.account_id == account_id,
                    account_ips.c.address == normalised,
                    account_ips.c.tech_prefix == tech_prefix.strip(),
                )
                .returning(account_ips)
            )
        ).first()
        if row is not None and row.direction == IpDirection.INGRESS.value:
            await mark_identify_stale(conn, account_id, f"ingress IP {normalised} removed")
    if row is None:
        raise NotFoundError(
            f"the account has no IP entry {normalised} (tech prefix {tech_prefix!r})"
        )
    return entry_from_row(row)


async def load_ip_table(conn: AsyncConnection) -> IpTable:
    """Every ingress entry, for the call flow's in-memory matcher."""
    query = select(account_ips).where(account_ips.c.direction == IpDirection.INGRESS.value)
    async with mapped_errors("IP table"):
        return IpTable(entry_from_row(r) for r in await conn.execute(query))
