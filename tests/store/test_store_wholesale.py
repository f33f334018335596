"""Wholesale store on both databases: IP entries, caller ID rules, DIDs, packages, alerts."""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.schema.tables import (
    AlertArea,
    AlertOperator,
    AlertState,
    CallStatus,
    CliRuleAction,
    IpDirection,
    PackageKind,
    PackagePeriod,
    accounts,
    period_charges,
)
from callgate.store import accounts as account_store
from callgate.store import alerts as alert_store
from callgate.store import clirules, dids, ips, packages, plans
from callgate.store.db import write_transaction
from callgate.store.errors import ConflictError, InvalidDataError, NotFoundError
from callgate.store.ledger import CallRecord, settle

UTC_ZONE = ZoneInfo("UTC")
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


async def _account(engine: AsyncEngine, number: str = "2000000001") -> account_store.Account:
    async with engine.begin() as conn:
        plan = await conn.scalar(select(accounts.c.call_plan_id).limit(1))
        if plan is None:
            plan = (await plans.create_call_plan(conn, name="p")).id
        return await account_store.create_account(
            conn, call_plan_id=plan, number=number, balance=Decimal("10")
        )


async def _balance(engine: AsyncEngine, account_id: int) -> Decimal:
    async with engine.connect() as conn:
        value = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account_id))
    assert isinstance(value, Decimal)
    return value


# ---------------------------------------------------------------- IP authentication (pure)


def test_addresses_normalise_and_source_addresses_parse() -> None:
    assert ips.normalise_address("203.0.113.7/24") == "203.0.113.0/24"
    assert ips.normalise_address("203.0.113.7/32") == "203.0.113.7"
    assert ips.normalise_address("2001:db8::1/64") == "2001:db8::/64"
    with pytest.raises(InvalidDataError):
        ips.normalise_address("not-an-ip")
    v4 = ipaddress.ip_address("203.0.113.7")
    assert ips.parse_source_address("203.0.113.7:5060") == v4
    assert ips.parse_source_address("203.0.113.7") == v4
    assert ips.parse_source_address("[2001:db8::1]:5061") == ipaddress.ip_address("2001:db8::1")
    assert ips.parse_source_address("2001:db8::1") == ipaddress.ip_address("2001:db8::1")
    assert ips.parse_source_address("") is None
    assert ips.parse_source_address("garbage:1") is None


def _id(entry: ips.IpEntry | None) -> int | None:
    return None if entry is None else entry.id


def test_ip_table_prefers_the_longest_tech_prefix_then_the_narrowest_block() -> None:
    table = ips.IpTable(
        [
            ips.IpEntry(1, 10, "198.51.100.0/24"),
            ips.IpEntry(2, 20, "198.51.100.7"),
            ips.IpEntry(3, 30, "198.51.100.0/24", tech_prefix="99"),
            ips.IpEntry(4, 40, "198.51.100.0/24", tech_prefix="9901"),
            ips.IpEntry(5, 50, "0.0.0.0/0", direction=IpDirection.EGRESS),
        ]
    )
    source = ipaddress.ip_address("198.51.100.7")
    assert len(table) == 4  # egress entries are not loaded
    assert _id(table.match(source, "4420")) == 2
    assert _id(table.match(ipaddress.ip_address("198.51.100.8"), "4420")) == 1
    assert _id(table.match(source, "99014420")) == 4
    assert _id(table.match(source, "994420")) == 3
    assert table.match(ipaddress.ip_address("192.0.2.1"), "4420") is None
    assert table.match(ipaddress.ip_address("2001:db8::1"), "4420") is None
    assert ips.IpEntry(4, 40, "198.51.100.0/24", tech_prefix="9901").limit_key == (
        "198.51.100.0/24#9901"
    )


async def test_ip_entries_add_list_remove(engine: AsyncEngine) -> None:
    account = await _account(engine)
    other = await _account(engine, "2000000002")
    async with engine.begin() as conn:
        entry = await ips.add_ip(
            conn,
            account.id,
            "203.0.113.9/24",
            channel_limit=5,
            cps_limit=2,
            tech_prefix="77",
            cli_prefix="+1",
            codecs="ULAW, alaw",
        )
        assert entry.address == "203.0.113.0/24" and entry.codecs == "ulaw,alaw"
    with pytest.raises(ConflictError):  # the same block and tech prefix on another account
        async with engine.begin() as conn:
            await ips.add_ip(conn, other.id, "203.0.113.0/24", tech_prefix="77")
    with pytest.raises(InvalidDataError):
        async with engine.begin() as conn:
            await ips.add_ip(conn, other.id, "203.0.113.0/24", tech_prefix="7a")
    async with engine.begin() as conn:
        await ips.add_ip(conn, other.id, "203.0.113.0/24", tech_prefix="78")
        listed = await ips.list_ips(conn, account.id)
        assert [(e.address, e.channel_limit, e.cps_limit) for e in listed] == [
            ("203.0.113.0/24", 5, 2)
        ]
        table = await ips.load_ip_table(conn)
        assert len(table) == 2
        await ips.remove_ip(conn, account.id, "203.0.113.0/24", tech_prefix="77")
        with pytest.raises(NotFoundError):
            await ips.remove_ip(conn, account.id, "203.0.113.0/24", tech_prefix="77")


# ---------------------------------------------------------------- caller ID rules


@pytest.mark.parametrize(
    ("pattern", "callerid", "expected"),
    [
        ("4420", "442079460000", True),
        ("4420", "+442079460000", True),
        ("4420", "4430", False),
        ("_X.", "1", False),  # "." is one or more
        ("_X.", "12", True),
        ("_X!", "1", True),
        ("_NXX", "212", True),
        ("_NXX", "112", False),
        ("_Z[1-3]X", "125", True),
        ("_Z[1-3]X", "145", False),
        ("_0X.", "02079460000", True),
        ("_0X.", "", False),
    ],
)
def test_caller_id_patterns(pattern: str, callerid: str, expected: bool) -> None:
    assert clirules.pattern_matches(pattern, callerid) is expected


def test_first_allow_or_deny_wins_default_allow_and_first_rewrite_applies() -> None:
    allow, deny, rewrite, rewrite2 = (
        clirules.CliRule(1, 1, 10, CliRuleAction.ALLOW, "_6660X."),
        clirules.CliRule(2, 1, 20, CliRuleAction.DENY, "666"),
        clirules.CliRule(3, 1, 30, CliRuleAction.REWRITE, "_0X.", strip_digits=1, prepend="44"),
        clirules.CliRule(4, 1, 40, CliRuleAction.REWRITE, "_X.", replace_with="18005550000"),
    )
    rules = (allow, deny, rewrite, rewrite2)
    assert clirules.decide(rules, "6661") == clirules.CliDecision(False, "6661", 2)
    assert clirules.decide(rules, "666012") == clirules.CliDecision(True, "18005550000", 1)
    assert clirules.decide(rules, "0201") == clirules.CliDecision(True, "44201", None)
    assert clirules.decide((), "anything") == clirules.CliDecision(True, "anything", None)


def test_bad_patterns_are_refused() -> None:
    for bad in ("", "_", "_[12", "_[a]", "12a"):
        with pytest.raises(InvalidDataError):
            clirules.check_pattern(bad)


async def test_caller_id_rules_add_list_remove(engine: AsyncEngine) -> None:
    account = await _account(engine)
    async with engine.begin() as conn:
        first = await clirules.add_rule(conn, account.id, CliRuleAction.DENY, "666")
        second = await clirules.add_rule(
            conn, account.id, CliRuleAction.ALLOW, "_6661.", position=5
        )
        with pytest.raises(InvalidDataError):
            await clirules.add_rule(conn, account.id, CliRuleAction.REWRITE, "_X.")
        with pytest.raises(InvalidDataError):
            await clirules.add_rule(conn, account.id, CliRuleAction.DENY, "1", prepend="4")
        listed = await clirules.list_rules(conn, account.id)
        assert [r.id for r in listed] == [second.id, first.id] and first.position == 10
        by = clirules.by_account(listed)
        assert clirules.decide(by[account.id], "66612").allowed
        assert not clirules.decide(by[account.id], "6662").allowed
        await clirules.remove_rule(conn, account.id, first.id)
        with pytest.raises(NotFoundError):
            await clirules.remove_rule(conn, account.id, first.id)


# ---------------------------------------------------------------- DIDs


async def test_dids_add_list_remove_and_monthly_charge_once(engine: AsyncEngine) -> None:
    account = await _account(engine)
    async with engine.begin() as conn:
        await plans.create_trunk(conn, name="prov", technology="SIP", peer="prov")
        did = await dids.add_did(
            conn,
            "+1 (555) 123-0000",
            "Local/100@internal",
            account_id=account.id,
            provider_trunk="prov",
            provider_cost=Decimal("0.005"),
            retail_rate=Decimal("0.02"),
            retail_monthly=Decimal("1.50"),
        )
        assert did.number == "15551230000" and did.kind is dids.DestinationKind.EXTENSION
        assert did.provider_trunk == "prov" and did.account == account.number
        with pytest.raises(InvalidDataError):
            await dids.add_did(conn, "15551230001", "bogus dest", account_id=account.id)
        with pytest.raises(NotFoundError):
            await dids.add_did(
                conn, "15551230001", "PJSIP/bob", account_id=account.id, provider_trunk="nope"
            )
        assert [d.number for d in await dids.list_dids(conn, account.id)] == ["15551230000"]
    for text in ("44-hello-9", "4420x", "++44207", "44--207", "(44 207", "4\u0664\u0664", "12"):
        async with engine.begin() as conn:  # refused, not rewritten to its digits
            with pytest.raises(InvalidDataError, match="not a DID number"):
                await dids.add_did(conn, text, "Local/100@internal", account_id=account.id)
            with pytest.raises(InvalidDataError, match="not a DID number"):
                await dids.remove_did(conn, text)
    async with engine.connect() as conn:
        assert [d.number for d in await dids.list_dids(conn)] == ["15551230000"]
        assert (await dids.fetch_did(conn, "449")) is None
    async with engine.begin() as conn:
        spaced = await dids.add_did(conn, "44 20-7946.0000", "PJSIP/bob", account_id=None)
        assert spaced.number == "442079460000"
        await dids.remove_did(conn, "+44 20 7946 0000")
    for _ in range(2):
        charged = await dids.charge_monthly(engine, now=NOW, zone=UTC_ZONE)
    assert [c.charged for c in charged] == [False]
    assert await _balance(engine, account.id) == Decimal("8.50000")
    async with engine.begin() as conn:
        await dids.remove_did(conn, "15551230000")
        with pytest.raises(NotFoundError):
            await dids.remove_did(conn, "15551230000")


# ---------------------------------------------------------------- packages


def test_period_keys() -> None:
    zone = ZoneInfo("America/New_York")
    late = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)  # still November 30th in New York
    assert packages.period_key(PackagePeriod.MONTHLY, late, zone) == "2026-11"
    assert packages.period_key(PackagePeriod.DAILY, late, zone) == "2026-11-30"
    assert packages.period_key(PackagePeriod.WEEKLY, late, zone) == "2026-W49"


async def test_free_minutes_hold_settle_release_and_expiry(engine: AsyncEngine) -> None:
    account = await _account(engine)
    async with engine.begin() as conn:
        await packages.add_package(conn, "uk", PackageKind.FREE_MINUTES, quantity=1, prefixes="44")
        await packages.assign(conn, account.id, "uk", quantity=2)  # 2 x 1 minute
        coverage = await packages.coverage(conn)
    assert coverage == {account.id: (("44",),)}

    async def hold(uniqueid: str, number: str = "4420", now: datetime = NOW) -> int:
        got = await packages.hold_free_seconds(
            engine,
            account_id=account.id,
            uniqueid=uniqueid,
            number=number,
            cap=3600,
            now=now,
            zone=UTC_ZONE,
            hold_seconds=100,
        )
        return got.seconds if got else 0

    assert await hold("u0", number="3312") == 0  # not covered
    assert await hold("u1") == 120
    assert await hold("u2") == 0  # the first call holds everything
    await packages.settle_usage(engine, "u1", 45)
    assert await packages.settle_usage(engine, "u1", 99) is False  # idempotent
    assert await hold("u3") == 75
    await packages.release_usage(engine, "u3")
    assert await hold("u4") == 75
    # u4's hold expires (its session died): the seconds count again after expires_at
    assert await hold("u5", now=NOW + timedelta(seconds=101)) == 75
    # next month: a fresh allowance
    assert await hold("u6", now=NOW + timedelta(days=10)) == 120


async def test_free_calls_count_answered_calls_only(engine: AsyncEngine) -> None:
    account = await _account(engine)
    async with engine.begin() as conn:
        await packages.add_package(
            conn, "two", PackageKind.FREE_CALLS, quantity=2, period=PackagePeriod.DAILY
        )
        await packages.assign(conn, account.id, "two")

    async def hold(uniqueid: str) -> int:
        got = await packages.hold_free_seconds(
            engine,
            account_id=account.id,
            uniqueid=uniqueid,
            number="1",
            cap=600,
            now=NOW,
            zone=UTC_ZONE,
            hold_seconds=700,
        )
        return got.seconds if got else 0

    assert await hold("c1") == 600
    await packages.settle_usage(engine, "c1", 0)  # unanswered: uses nothing
    assert await hold("c2") == 600
    assert await hold("c3") == 600
    assert await hold("c4") == 0  # two open holds use both calls
    await packages.settle_usage(engine, "c2", 30)
    await packages.settle_usage(engine, "c3", 12)
    assert await hold("c5") == 0


async def test_concurrent_holds_never_share_free_seconds(engine: AsyncEngine) -> None:
    account = await _account(engine)
    async with engine.begin() as conn:
        await packages.add_package(conn, "m", PackageKind.FREE_MINUTES, quantity=1)
        await packages.assign(conn, account.id, "m")
    held = await asyncio.gather(
        *(
            packages.hold_free_seconds(
                engine,
                account_id=account.id,
                uniqueid=f"k{n}",
                number="44",
                cap=40,
                now=NOW,
                zone=UTC_ZONE,
                hold_seconds=100,
            )
            for n in range(4)
        )
    )
    assert sorted(h.seconds if h else 0 for h in held) == [0, 0, 20, 40]


async def test_period_charge_is_idempotent(engine: AsyncEngine) -> None:
    account = await _account(engine)
    other = await _account(engine, "2000000002")
    async with engine.begin() as conn:
        await packages.add_package(
            conn, "m", PackageKind.FREE_MINUTES, quantity=100, price=Decimal("1.25")
        )
        await packages.add_package(
            conn, "d", PackageKind.UNLIMITED, period=PackagePeriod.DAILY, price=Decimal("0.10")
        )
        await packages.assign(conn, account.id, "m", quantity=2, auto_decrement=True)
        await packages.assign(conn, account.id, "d", auto_decrement=True)
        await packages.assign(conn, other.id, "m")  # no auto-decrement: never charged
    first = await packages.charge_packages(engine, now=NOW, zone=UTC_ZONE)
    again = await asyncio.gather(
        packages.charge_packages(engine, now=NOW, zone=UTC_ZONE),
        packages.charge_packages(engine, now=NOW + timedelta(hours=1), zone=UTC_ZONE),
    )
    assert [c.charged for c in first] == [True, True]
    assert all(not c.charged for batch in again for c in batch)
    assert await _balance(engine, account.id) == Decimal("7.40000")  # 10 - 2 x 1.25 - 0.10
    assert await _balance(engine, other.id) == Decimal("10.00000")
    # the next day: only the daily package
    daily = await packages.charge_packages(
        engine, now=NOW + timedelta(days=1), zone=UTC_ZONE, period=PackagePeriod.DAILY
    )
    assert [(c.period, c.charged) for c in daily] == [("2026-11-23", True)]
    async with engine.connect() as conn:
        rows = (await conn.execute(select(period_charges.c.period))).scalars().all()
    assert sorted(rows) == ["2026-11", "2026-11-22", "2026-11-23"]
    async with engine.begin() as conn:
        await packages.unassign(conn, account.id, "d")
        with pytest.raises(NotFoundError):
            await packages.unassign(conn, account.id, "d")
        with pytest.raises(InvalidDataError):
            await packages.add_package(conn, "z", PackageKind.FREE_CALLS)


# ---------------------------------------------------------------- alerts


async def _evaluate(engine: AsyncEngine, account_id: int, now: datetime = NOW) -> list[int]:
    async with write_transaction(engine) as conn:
        return await alert_store.evaluate_account(conn, account_id, now=now, zone=UTC_ZONE)


async def test_alert_fires_once_and_rearms(engine: AsyncEngine) -> None:
    account = await _account(engine)
    async with engine.begin() as conn:
        with pytest.raises(InvalidDataError):
            await alert_store.add_alert(
                conn, account.id, "x", "nobody", AlertArea.BALANCE, AlertOperator.LT, Decimal(1)
            )
        await alert_store.add_alert(
            conn,
            account.id,
            "spend",
            "ops@example.com",
            AlertArea.DAILY_SPEND,
            AlertOperator.GE,
            Decimal("1.00"),
        )
    assert await _evaluate(engine, account.id) == []
    for n, cost in enumerate(("0.60", "0.60", "0.60")):
        await settle(
            engine,
            CallRecord(
                uniqueid=f"s{n}",
                status=CallStatus.OK,
                started_at=NOW,
                account_id=account.id,
                billsec=60,
                cost=Decimal(cost),
            ),
        )
        fired = await _evaluate(engine, account.id)
        assert len(fired) == (1 if n == 1 else 0)  # crosses 1.00 on the second call only
    async with engine.connect() as conn:
        (alert,) = await alert_store.list_alerts(conn, account.id)
    assert alert.state is AlertState.FIRED and alert.last_value == Decimal("1.80000")
    # the next day the spend is 0: re-armed, and nothing is sent
    assert await _evaluate(engine, account.id, NOW + timedelta(days=1)) == []
    async with engine.connect() as conn:
        (alert,) = await alert_store.list_alerts(conn, account.id)
        notes = await alert_store.list_notifications(conn, account.id)
    assert alert.state is AlertState.ARMED and len(notes) == 1


async def test_concurrent_evaluations_fire_once_and_claims_are_exclusive(
    engine: AsyncEngine,
) -> None:
    account = await _account(engine)
    async with engine.begin() as conn:
        await alert_store.add_alert(
            conn,
            account.id,
            "chan",
            "ops@example.com",
            AlertArea.CHANNELS,
            AlertOperator.LE,
            Decimal(0),
        )
    results = await asyncio.gather(*(_evaluate(engine, account.id) for _ in range(5)))
    created = [n for batch in results for n in batch]
    assert len(created) == 1
    async with engine.begin() as conn:
        assert await alert_store.pending_emails(conn) == created
        assert await alert_store.claim_email(conn, created[0]) is not None
        assert await alert_store.claim_email(conn, created[0]) is None
        await alert_store.mark_failed(conn, created[0], "relay down")
        assert await alert_store.pending_emails(conn) == created  # back for a retry
