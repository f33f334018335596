"""Asterisk's Realtime tables (both databases): Asterisk's column names, sync = upsert + delete of
callgate's own rows only, runtime columns preserved, conflicts refused, another database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, insert, inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callgate.confgen import realtime, service
from callgate.confgen.asterisk_conf import parse_config
from callgate.confgen.errors import RealtimeConflictError, RealtimeError
from callgate.confgen.render import render_pjsip, render_sip
from callgate.schema.tables import account_ips, call_plans
from callgate.store import accounts as acc
from callgate.store import friends as fr
from callgate.store import plans
from callgate.store.db import create_engine
from callgate.store.friends import ConfTarget, FriendKind

# Column names as Asterisk's ast-db-manage scripts spell them (a sample of each table).
ASTERISK_COLUMNS = {
    "sippeers": {"id", "name", "ipaddr", "port", "regseconds", "defaultuser", "fullcontact",
                 "host", "type", "context", "permit", "deny", "secret", "nat", "dtmfmode",
                 "directmedia", "disallow", "allow", "insecure", "accountcode", "callerid",
                 "qualify", "call-limit", "language", "useragent", "lastms"},
    "iaxfriends": {"id", "name", "type", "secret", "auth", "context", "host", "ipaddr", "port",
                   "regseconds", "accountcode", "callerid", "disallow", "allow", "qualify",
                   "language"},
    "ps_endpoints": {"id", "transport", "aors", "auth", "context", "disallow", "allow",
                     "direct_media", "dtmf_mode", "force_rport", "identify_by",
                     "rewrite_contact", "rtp_symmetric", "callerid", "device_state_busy_at",
                     "language", "accountcode", "deny", "permit"},
    "ps_auths": {"id", "auth_type", "password", "username", "realm", "md5_cred"},
    "ps_aors": {"id", "contact", "max_contacts", "remove_existing", "qualify_frequency"},
    "ps_endpoint_id_ips": {"id", "endpoint", "match"},
}  # fmt: skip
ASTERISK_INDEXES = {"sippeers_name", "sippeers_name_host", "iaxfriends_name", "ps_endpoints_id"}


async def make_account(conn: AsyncConnection, alias: str) -> acc.Account:
    plan = await conn.scalar(select(call_plans.c.id).limit(1))
    if plan is None:
        plan = (await plans.create_call_plan(conn, name="retail")).id
    return await acc.create_account(conn, call_plan_id=int(plan), alias=alias)


def _columns(conn: Connection) -> dict[str, set[str]]:
    insp = inspect(conn)
    return {t: {c["name"] for c in insp.get_columns(t)} for t in ASTERISK_COLUMNS}


def _indexes(conn: Connection) -> set[str]:
    insp = inspect(conn)
    return {str(i["name"]) for t in ASTERISK_COLUMNS for i in insp.get_indexes(t)}


async def _rows(engine: AsyncEngine, table: str) -> dict[str, dict[str, Any]]:
    t = next(x for x in realtime.TABLES if x.name == table)
    key = realtime.KEY_COLUMN[table]
    async with engine.connect() as conn:
        return {r[key]: dict(r) for r in (await conn.execute(select(t))).mappings()}


async def _friends(engine: AsyncEngine) -> dict[str, int]:
    async with engine.begin() as conn:
        alice = await make_account(conn, "alice")
        bob = await make_account(conn, "bob")
        carol = await make_account(conn, "carol")
        await fr.create_friend(conn, FriendKind.SIP, alice.id, callerid='"Alice" <5551001>',
                               call_limit=2, language="en")  # fmt: skip
        await fr.create_friend(conn, FriendKind.SIP, bob.id, host="192.0.2.10",
                               permit="192.0.2.0/24", deny="0.0.0.0/0")  # fmt: skip
        await fr.create_friend(conn, FriendKind.SIP, carol.id)
        await fr.create_friend(conn, FriendKind.IAX, alice.id)
        await conn.execute(
            insert(account_ips),
            [{"account_id": carol.id, "address": a, "direction": "ingress"}
             for a in ("203.0.113.7", "198.51.100.0/28")],
        )  # fmt: skip
    return {"alice": alice.id, "bob": bob.id, "carol": carol.id}


async def test_init_creates_asterisks_tables_once(engine: AsyncEngine) -> None:
    first = await service.init_realtime(engine)
    assert set(first.created) == set(ASTERISK_COLUMNS) and first.existing == ()
    async with engine.connect() as conn:
        columns = await conn.run_sync(_columns)
        indexes = await conn.run_sync(_indexes)
    for table, wanted in ASTERISK_COLUMNS.items():
        assert wanted <= columns[table], (table, wanted - columns[table])
    assert ASTERISK_INDEXES <= indexes
    again = await service.init_realtime(engine)
    assert again.created == () and set(again.existing) == set(ASTERISK_COLUMNS)


async def test_sync_writes_rows_that_match_the_files(engine: AsyncEngine) -> None:
    await _friends(engine)
    await service.init_realtime(engine)
    report = await service.sync_realtime(engine, engine)
    assert report.inserted == {"sippeers": 3, "iaxfriends": 1, "ps_endpoints": 3, "ps_auths": 1,
                               "ps_aors": 3, "ps_endpoint_id_ips": 3}  # fmt: skip
    snapshot = await service.load_snapshot(engine)
    assert ConfTarget.REALTIME not in snapshot.stale  # sync cleared its mark
    assert ConfTarget.PJSIP in snapshot.stale  # the files were not written
    sip = await _rows(engine, "sippeers")
    alice = sip["alice"]
    assert alice["accountcode"] == snapshot.sip[0].accountcode
    assert (alice["type"], alice["host"], alice["call-limit"], alice["language"]) == (
        "friend", "dynamic", 2, "en")  # fmt: skip
    assert alice["insecure"] is None  # empty options are NULL: Asterisk's default applies
    assert sip["bob"]["insecure"] == "port,invite" and sip["bob"]["permit"] == "192.0.2.0/24"
    # the files and the rows come from one mapping: every option of the file is in the row
    conf = parse_config(render_sip(list(snapshot.sip)))
    for section in conf.sections:
        row = sip[section.name]
        for key, value in section.as_dict().items():
            assert str(row[key]) == value, (section.name, key)
    pconf = parse_config(render_pjsip(list(snapshot.sip), snapshot.ips))
    tables = {"endpoint": "ps_endpoints", "auth": "ps_auths", "aor": "ps_aors"}
    for type_, table in tables.items():
        rows = await _rows(engine, table)
        sections = pconf.of_type(type_)
        assert set(rows) == {s.name for s in sections}
        for section in sections:
            for key, value in section.as_dict().items():
                if key != "type":
                    assert str(rows[section.name][key]) == value, (table, section.name, key)
    ident = await _rows(engine, "ps_endpoint_id_ips")
    assert {(r["endpoint"], r["match"]) for r in ident.values()} == {
        ("bob", "192.0.2.10"),
        ("carol", "198.51.100.0/28"),
        ("carol", "203.0.113.7/32"),
    }
    assert set(ident) == {"bob-identify", "carol-identify", "carol-identify-2"}
    iax = await _rows(engine, "iaxfriends")
    assert iax["alice"]["auth"] == "md5" and iax["alice"]["secret"] == snapshot.iax[0].secret


async def test_resync_updates_keeps_runtime_columns_and_deletes_only_its_rows(
    engine: AsyncEngine,
) -> None:
    ids = await _friends(engine)
    await service.init_realtime(engine)
    await service.sync_realtime(engine, engine)
    async with engine.begin() as conn:
        # Asterisk registered alice; an operator keeps a peer of their own
        await conn.execute(
            update(realtime.sippeers)
            .where(realtime.sippeers.c.name == "alice")
            .values(ipaddr="10.9.8.7", port=5062, regseconds=1900000000, fullcontact="sip:a@x")
        )
        await conn.execute(insert(realtime.sippeers).values(name="operator-peer", host="dynamic"))
        await fr.update_friend(conn, FriendKind.SIP, ids["alice"], callerid="5551002")
        await fr.delete_friend(conn, FriendKind.SIP, ids["bob"])
    report = await service.sync_realtime(engine, engine)
    assert report.updated["sippeers"] == 1 and report.deleted["sippeers"] == 1
    assert report.unchanged["sippeers"] == 1 and report.deleted["ps_endpoint_id_ips"] == 1
    assert report.deleted["ps_auths"] == 0 and report.unchanged["iaxfriends"] == 1
    sip = await _rows(engine, "sippeers")
    assert set(sip) == {"alice", "carol", "operator-peer"}
    assert sip["alice"]["callerid"] == "5551002"
    assert (sip["alice"]["ipaddr"], sip["alice"]["port"], sip["alice"]["fullcontact"]) == (
        "10.9.8.7", 5062, "sip:a@x")  # fmt: skip
    assert "bob" not in await _rows(engine, "ps_endpoints")
    idle = await service.sync_realtime(engine, engine)
    assert idle.changes == 0


async def test_existing_foreign_row_is_a_conflict_and_nothing_is_written(
    engine: AsyncEngine,
) -> None:
    await _friends(engine)
    await service.init_realtime(engine)
    async with engine.begin() as conn:
        await conn.execute(insert(realtime.ps_aors).values(id="carol", max_contacts=5))
    with pytest.raises(RealtimeConflictError, match="ps_aors:carol"):
        await service.sync_realtime(engine, engine)
    assert await _rows(engine, "sippeers") == {}
    assert (await _rows(engine, "ps_aors"))["carol"]["max_contacts"] == 5
    snapshot = await service.load_snapshot(engine)
    assert snapshot.realtime_owned is None and ConfTarget.REALTIME in snapshot.stale


async def test_missing_tables_say_how_to_create_them(engine: AsyncEngine) -> None:
    await _friends(engine)
    with pytest.raises(RealtimeError, match="confgen realtime init"):
        await service.sync_realtime(engine, engine)


async def test_realtime_in_another_database(engine: AsyncEngine, tmp_path: Path) -> None:
    await _friends(engine)
    other = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'asterisk.db'}")
    try:
        await service.init_realtime(other)
        report = await service.sync_realtime(engine, other)
        assert report.inserted["sippeers"] == 3
        assert set(await _rows(other, "sippeers")) == {"alice", "bob", "carol"}
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: inspect(c).get_table_names())
        assert "sippeers" not in names  # callgate's database was not touched
    finally:
        await other.dispose()


async def test_tables_made_by_asterisks_own_scripts_with_enum_types(
    engine: AsyncEngine, db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("named ENUM types are PostgreSQL's")
    await _friends(engine)
    await service.init_realtime(engine)
    async with engine.begin() as conn:
        # as 4da0c5f79a9c_create_tables.py makes it on PostgreSQL
        await conn.execute(text("DROP TABLE sippeers"))
        await conn.execute(text("CREATE TYPE type_values AS ENUM ('friend', 'user', 'peer')"))
        await conn.execute(text("CREATE TYPE yes_no_values AS ENUM ('yes', 'no')"))
        await conn.execute(
            text(
                "CREATE TABLE sippeers (id SERIAL PRIMARY KEY, name VARCHAR(40) NOT NULL UNIQUE, "
                "ipaddr VARCHAR(45), port INTEGER, host VARCHAR(40), type type_values, "
                "context VARCHAR(40), permit VARCHAR(95), deny VARCHAR(95), secret VARCHAR(40), "
                "dtmfmode VARCHAR(20), directmedia VARCHAR(10), nat VARCHAR(29), "
                "language VARCHAR(40), disallow VARCHAR(200), allow VARCHAR(200), "
                "insecure VARCHAR(40), accountcode VARCHAR(80), callerid VARCHAR(40), "
                'qualify VARCHAR(40), "call-limit" INTEGER, allowtransfer yes_no_values)'
            )
        )
    report = await service.sync_realtime(engine, engine)
    assert report.inserted["sippeers"] == 3
    async with engine.connect() as conn:
        kinds = (await conn.execute(text("SELECT type::text FROM sippeers"))).scalars().all()
    assert kinds == ["friend"] * 3
