"""The SQL side of the call flows: account lookup and the ledger, bound to an engine.

These adapters implement the ports of ``callgate.agi.flows.ports``; ``callgate.cli.serve``
builds them. Trunks and plan options are small tables held in memory (:class:`RoutingData`),
refreshed with the rate indexes, so the call path runs no SQL for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.rating import CallPlan
from callgate.schema.tables import accounts, call_plans, calls, rate_tables, trunks
from callgate.store import accounts as account_store
from callgate.store import clirules, ips, ledger
from callgate.store import dids as did_store
from callgate.store import packages as package_store
from callgate.store import rates as rate_store
from callgate.store._errors_map import mapped_errors
from callgate.store.accounts import Account, account_from_row
from callgate.store.db import write_transaction
from callgate.store.errors import NotFoundError
from callgate.store.ports import CallerAccount, Grant, Refused, SettledCall, TrunkInfo

log = logging.getLogger(__name__)
UTC_ZONE = ZoneInfo("UTC")
NO_LIMITS = ledger.Limits()


def caller_account(account: Account, now: datetime | None = None) -> CallerAccount:
    moment = now or datetime.now(UTC)
    ends = ledger.expiry_time(account)
    return CallerAccount(
        id=account.id,
        number=account.number,
        alias=account.alias,
        call_plan_id=account.call_plan_id,
        status=account.status.value,
        language=account.language,
        balance=account.balance,
        debit_limit=account.debit_limit,
        expired=ends is not None and moment >= ends,
    )


class SqlAccounts:
    """AccountLookup over the database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def find_for_call(
        self, *, accountcode: str, argument: str, callerid: str
    ) -> CallerAccount | None:
        async with mapped_errors("account lookup"), self.engine.connect() as conn:
            found: Account | None = None
            if accountcode:
                found = await account_store.fetch_account_by_number(conn, accountcode)
            if found is None and argument:
                found = await account_store.fetch_account_by_number(conn, argument)
                if found is None:
                    found = await account_store.fetch_account_by_alias(conn, argument)
            if found is None and callerid:
                found = await account_store.fetch_account_by_callerid(conn, callerid)
        return None if found is None else caller_account(found)

    async def find_by_pin(self, pin: str) -> CallerAccount | None:
        async with mapped_errors("PIN lookup"), self.engine.connect() as conn:
            found = await account_store.fetch_account_by_number(conn, pin)
        return None if found is None else caller_account(found)

    async def find_by_id(self, account_id: int) -> CallerAccount | None:
        async with mapped_errors("account lookup"), self.engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
        return None if row is None else caller_account(account_from_row(row))


class SqlLedger:
    """Ledger port over :mod:`callgate.store.ledger`."""

    def __init__(self, engine: AsyncEngine, *, grace_seconds: int, server: str = "") -> None:
        self.engine = engine
        self.grace_seconds = grace_seconds
        self.server = server

    async def reserve(
        self,
        *,
        account_id: int,
        uniqueid: str,
        price: ledger.Pricer,
        now: datetime,
        trunk: str,
        rate_id: int | None,
        limits: ledger.Limits = NO_LIMITS,
        asterisk: str = "",
    ) -> Grant:
        try:
            res = await ledger.reserve(
                self.engine,
                account_id=account_id,
                uniqueid=uniqueid,
                price=price,
                now=now,
                grace_seconds=self.grace_seconds,
                limits=limits,
                trunk=trunk,
                rate_id=rate_id,
                server=self.server,
                asterisk=asterisk,
            )
        except ledger.LedgerRefusal as exc:
            raise Refused(exc.status.value, str(exc)) from exc
        return Grant(res.granted_seconds, res.amount, res.available)

    async def regrant(
        self,
        *,
        uniqueid: str,
        price: ledger.Pricer,
        now: datetime,
        trunk: str,
        rate_id: int | None,
        asterisk: str = "",
    ) -> Grant:
        try:
            res = await ledger.regrant(
                self.engine,
                uniqueid=uniqueid,
                price=price,
                now=now,
                grace_seconds=self.grace_seconds,
                trunk=trunk,
                rate_id=rate_id,
                asterisk=asterisk,
            )
        except ledger.LedgerRefusal as exc:
            raise Refused(exc.status.value, str(exc)) from exc
        return Grant(res.granted_seconds, res.amount, res.available)

    async def settle(self, record: ledger.CallRecord) -> SettledCall:
        result = await ledger.settle(self.engine, record)
        return SettledCall(result.charged, result.balance, result.already_settled)

    async def release(self, uniqueid: str, note: str, *, asterisk: str = "") -> None:
        await ledger.release(self.engine, uniqueid, note=note, asterisk=asterisk)

    async def record_attempt(self, record: ledger.CallRecord) -> None:
        await ledger.record_attempt(self.engine, record)


class RoutingData:
    """RoutePlans: call plans from a plan source (the rate cache), trunks and plan options in
    memory. :meth:`refresh` reloads trunks and plan options (two small queries)."""

    def __init__(self, engine: AsyncEngine, plan_source: Callable[[int], CallPlan | None]) -> None:
        self.engine = engine
        self._plan_source = plan_source
        self._trunks: dict[str, TrunkInfo] = {}
        self._strip_international: dict[int, bool] = {}
        self._recording_tables: frozenset[str] = frozenset()

    async def refresh(self) -> None:
        async with mapped_errors("routing data"), self.engine.connect() as conn:
            trunk_rows = (await conn.execute(select(trunks))).all()
            plan_rows = (
                await conn.execute(
                    select(call_plans.c.id, call_plans.c.remove_international_prefix)
                )
            ).all()
            recording = (
                await conn.execute(select(rate_tables.c.name).where(rate_tables.c.record_calls))
            ).all()
        self._recording_tables = frozenset(row.name for row in recording)
        by_id = {row.id: row.name for row in trunk_rows}
        self._trunks = {
            row.name: TrunkInfo(
                name=row.name,
                technology=row.technology,
                peer=row.peer,
                dial_prefix=row.dial_prefix,
                strip_digits=row.strip_digits,
                dial_options=row.dial_options,
                failover=by_id.get(row.failover_trunk_id),
                active=row.status == "active",
            )
            for row in trunk_rows
        }
        self._strip_international = {
            row.id: bool(row.remove_international_prefix) for row in plan_rows
        }

    def plan(self, plan_id: int) -> CallPlan | None:
        return self._plan_source(plan_id)

    def remove_international_prefix(self, plan_id: int) -> bool:
        return self._strip_international.get(plan_id, True)

    def trunk(self, name: str) -> TrunkInfo | None:
        return self._trunks.get(name)

    def records(self, table_name: str) -> bool:
        return table_name in self._recording_tables

    async def plan_for(self, plan_id: int, number: str) -> CallPlan | None:
        return self._plan_source(plan_id)


class SimulatedRouting(RoutingData):
    """RoutePlans for ``callgate simulate``: each plan read from the database with only the
    rates that can match the number (rates answer as the server's full index would)."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine, lambda _plan_id: None)

    async def plan_for(self, plan_id: int, number: str) -> CallPlan | None:
        async with mapped_errors("rates"), self.engine.connect() as conn:
            try:
                return await rate_store.fetch_plan_for_number(conn, plan_id, number)
            except NotFoundError:
                return None


class QuoteLedger:
    """CreditGate for ``callgate simulate``: the ledger's checks and price, nothing reserved."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def reserve(
        self,
        *,
        account_id: int,
        uniqueid: str,
        price: ledger.Pricer,
        now: datetime,
        trunk: str,
        rate_id: int | None,
        limits: ledger.Limits = NO_LIMITS,
        asterisk: str = "",
    ) -> Grant:
        del asterisk  # nothing is reserved, so nothing is keyed
        try:
            available, granted, amount = await ledger.quote(
                self.engine, account_id=account_id, price=price, now=now, limits=limits
            )
        except ledger.LedgerRefusal as exc:
            raise Refused(exc.status.value, str(exc)) from exc
        return Grant(granted, amount, available)


class WholesaleData:
    """The wholesale ports over the database: IpDirectory, CliPolicy, PackageLedger,
    DidDirectory and CallExtras.

    IP entries, caller ID rules and which accounts hold packages are held in memory and reloaded
    by :meth:`refresh` (the server does it with the trunks, every 30 s): the call path runs no
    SQL for them. Package holds, DIDs and the recording path are SQL.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        zone: ZoneInfo = UTC_ZONE,
        grace_seconds: int = 120,
    ) -> None:
        self.engine = engine
        self.zone = zone
        self.grace_seconds = grace_seconds
        self._ips = ips.IpTable()
        self._cli: dict[int, tuple[clirules.CliRule, ...]] = {}
        self._coverage: dict[int, tuple[tuple[str, ...], ...]] = {}

    async def refresh(self) -> None:
        async with mapped_errors("wholesale data"), self.engine.connect() as conn:
            ip_table = await ips.load_ip_table(conn)
            rules = clirules.by_account(await clirules.list_rules(conn))
            coverage = await package_store.coverage(conn)
        self._ips, self._cli, self._coverage = ip_table, rules, coverage

    # IpDirectory
    def match_ip(self, source: str, dialled: str) -> ips.IpEntry | None:
        address = ips.parse_source_address(source)
        return None if address is None else self._ips.match(address, dialled)

    # CliPolicy
    def check_cli(self, account_id: int, callerid: str) -> clirules.CliDecision:
        return clirules.decide(self._cli.get(account_id, ()), callerid)

    # PackageLedger
    def covered(self, account_id: int, number: str) -> bool:
        return any(
            not prefixes or any(number.startswith(p) for p in prefixes)
            for prefixes in self._coverage.get(account_id, ())
        )

    async def hold(
        self,
        *,
        account_id: int,
        uniqueid: str,
        number: str,
        cap: int,
        now: datetime,
        asterisk: str = "",
    ) -> package_store.FreeAllowance | None:
        return await package_store.hold_free_seconds(
            self.engine,
            account_id=account_id,
            uniqueid=uniqueid,
            number=number,
            cap=cap,
            now=now,
            zone=self.zone,
            hold_seconds=cap + self.grace_seconds,
            asterisk=asterisk,
        )

    async def settle(self, uniqueid: str, used_seconds: int, *, asterisk: str = "") -> None:
        await package_store.settle_usage(self.engine, uniqueid, used_seconds, asterisk=asterisk)

    async def release(self, uniqueid: str, *, asterisk: str = "") -> None:
        await package_store.release_usage(self.engine, uniqueid, asterisk=asterisk)

    # DidDirectory
    async def find_did(self, number: str) -> did_store.Did | None:
        async with self.engine.connect() as conn:
            return await did_store.fetch_did(conn, number)

    # CallExtras
    async def set_recording(self, uniqueid: str, path: str, *, asterisk: str = "") -> None:
        async with mapped_errors("recording path"), write_transaction(self.engine) as conn:
            await conn.execute(
                update(calls)
                .where(calls.c.uniqueid == uniqueid, calls.c.asterisk == asterisk)
                .values(recording=path)
            )


class SimulatedWholesale(WholesaleData):
    """The wholesale ports for ``callgate simulate``: the same IP entries, caller ID rules and
    package coverage; :meth:`hold` says what the live hold would hold, and holds nothing."""

    async def hold(
        self,
        *,
        account_id: int,
        uniqueid: str,
        number: str,
        cap: int,
        now: datetime,
        asterisk: str = "",
    ) -> package_store.FreeAllowance | None:
        del asterisk  # nothing is held, so nothing is keyed
        return await package_store.peek_free_seconds(
            self.engine,
            account_id=account_id,
            uniqueid=uniqueid,
            number=number,
            cap=cap,
            now=now,
            zone=self.zone,
        )
