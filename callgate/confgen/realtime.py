"""Friends in Asterisk's standard Realtime tables, with Asterisk's own column names.

The tables are Asterisk's, not callgate's: their definitions here mirror Asterisk's
``contrib/ast-db-manage/config`` Alembic scripts (``4da0c5f79a9c_create_tables`` for
``sippeers``/``iaxfriends``, ``43956d550a44_add_tables_for_pjsip`` for the ``ps_*`` tables, and
later revisions: ``accountcode`` on ``ps_endpoints`` and widened to 80, endpoint ACLs, ids of
255). They live in their own :data:`metadata`, outside callgate's migrations, and
``callgate confgen realtime init`` creates only the ones that are absent. Only the columns
callgate writes, and those Asterisk itself updates at run time (chan_sip/chan_iax2 registration:
``ipaddr``, ``port``, ``regseconds``, ``fullcontact``...), are declared: Realtime drivers read
``SELECT *`` by column name, so a table made by Asterisk's own scripts (every column) works too.
Asterisk's scripts declare yes/no and similar columns as named ENUM types; here they are
VARCHARs of the same width (Asterisk itself later turned ``identify_by`` into a free list, and
named ENUM types are schema-wide objects that clash). Writes go through the *reflected* tables
of the target database, so existing ENUM columns get the right casts.

Sync (:func:`sync_realtime`) upserts the rows of today's friends and deletes the rows of friends
that no longer exist, touching only rows callgate owns: the keys it wrote are kept in callgate's
``settings`` table (``confgen.realtime.owned``). An existing row with a key callgate wants but
did not write is a :class:`RealtimeConflictError`, never overwritten. An update sets only the
columns callgate manages, so registration data written by Asterisk survives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callgate.confgen import model
from callgate.confgen.errors import RealtimeConflictError, RealtimeError
from callgate.store.friends import Friend

metadata = MetaData()  # Asterisk's tables: Asterisk's names, no naming convention of ours

sippeers = Table(
    "sippeers",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("name", String(40), nullable=False, unique=True),
    Column("ipaddr", String(45)),
    Column("port", Integer()),
    Column("regseconds", Integer()),
    Column("defaultuser", String(40)),
    Column("fullcontact", String(80)),
    Column("regserver", String(100)),
    Column("useragent", String(255)),
    Column("lastms", Integer()),
    Column("host", String(40)),
    Column("type", String(6)),  # ENUM type_values: friend, user, peer
    Column("context", String(40)),
    Column("permit", String(95)),
    Column("deny", String(95)),
    Column("secret", String(40)),
    Column("md5secret", String(40)),
    Column("remotesecret", String(40)),
    Column("transport", String(7)),
    Column("dtmfmode", String(9)),
    Column("directmedia", String(6)),
    Column("nat", String(29)),
    Column("callgroup", String(40)),
    Column("pickupgroup", String(40)),
    Column("language", String(40)),
    Column("disallow", String(200)),
    Column("allow", String(200)),
    Column("insecure", String(40)),
    Column("trustrpid", String(3)),
    Column("progressinband", String(5)),
    Column("accountcode", String(80)),
    Column("setvar", String(200)),
    Column("callerid", String(40)),
    Column("amaflags", String(40)),
    Column("callcounter", String(3)),
    Column("busylevel", Integer()),
    Column("allowsubscribe", String(3)),
    Column("mailbox", String(40)),
    Column("regexten", String(40)),
    Column("fromdomain", String(40)),
    Column("fromuser", String(40)),
    Column("qualify", String(40)),
    Column("defaultip", String(45)),
    Column("rtptimeout", Integer()),
    Column("rtpholdtimeout", Integer()),
    Column("sendrpid", String(16)),
    Column("outboundproxy", String(40)),
    Column("qualifyfreq", Integer()),
    Column("contactpermit", String(95)),
    Column("contactdeny", String(95)),
    Column("cid_number", String(40)),
    Column("mohsuggest", String(40)),
    Column("call-limit", Integer()),
    Column("allowtransfer", String(3)),
    Column("dynamic", String(3)),
    Column("path", String(256)),
    Column("supportpath", String(3)),
)
Index("sippeers_name", sippeers.c.name)
Index("sippeers_name_host", sippeers.c.name, sippeers.c.host)
Index("sippeers_ipaddr_port", sippeers.c.ipaddr, sippeers.c.port)
Index("sippeers_host_port", sippeers.c.host, sippeers.c.port)

iaxfriends = Table(
    "iaxfriends",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("name", String(40), nullable=False, unique=True),
    Column("type", String(6)),
    Column("username", String(40)),
    Column("mailbox", String(40)),
    Column("secret", String(40)),
    Column("dbsecret", String(40)),
    Column("context", String(40)),
    Column("regcontext", String(40)),
    Column("host", String(40)),
    Column("ipaddr", String(40)),
    Column("port", Integer()),
    Column("defaultip", String(20)),
    Column("sourceaddress", String(20)),
    Column("mask", String(20)),
    Column("regexten", String(40)),
    Column("regseconds", Integer()),
    Column("accountcode", String(80)),
    Column("mohinterpret", String(20)),
    Column("mohsuggest", String(20)),
    Column("inkeys", String(40)),
    Column("outkeys", String(40)),
    Column("language", String(10)),
    Column("callerid", String(100)),
    Column("cid_number", String(40)),
    Column("sendani", String(3)),
    Column("fullname", String(40)),
    Column("trunk", String(3)),
    Column("auth", String(20)),
    Column("maxauthreq", Integer()),
    Column("requirecalltoken", String(4)),
    Column("encryption", String(6)),
    Column("transfer", String(9)),
    Column("jitterbuffer", String(3)),
    Column("forcejitterbuffer", String(3)),
    Column("disallow", String(200)),
    Column("allow", String(200)),
    Column("codecpriority", String(40)),
    Column("qualify", String(10)),
    Column("qualifysmoothing", String(3)),
    Column("qualifyfreqok", String(10)),
    Column("qualifyfreqnotok", String(10)),
    Column("timezone", String(20)),
    Column("adsi", String(3)),
    Column("amaflags", String(20)),
    Column("setvar", String(200)),
)
Index("iaxfriends_name", iaxfriends.c.name)
Index("iaxfriends_name_host", iaxfriends.c.name, iaxfriends.c.host)
Index("iaxfriends_name_ipaddr_port", iaxfriends.c.name, iaxfriends.c.ipaddr, iaxfriends.c.port)
Index("iaxfriends_ipaddr_port", iaxfriends.c.ipaddr, iaxfriends.c.port)
Index("iaxfriends_host_port", iaxfriends.c.host, iaxfriends.c.port)

ps_endpoints = Table(
    "ps_endpoints",
    metadata,
    Column("id", String(255), nullable=False, unique=True),
    Column("transport", String(40)),
    Column("aors", String(2048)),
    Column("auth", String(255)),
    Column("context", String(40)),
    Column("disallow", String(200)),
    Column("allow", String(200)),
    Column("direct_media", String(3)),
    Column("dtmf_mode", String(9)),
    Column("force_rport", String(3)),
    Column("identify_by", String(80)),
    Column("mailboxes", String(40)),
    Column("outbound_auth", String(255)),
    Column("outbound_proxy", String(255)),
    Column("rewrite_contact", String(3)),
    Column("rtp_symmetric", String(3)),
    Column("callerid", String(40)),
    Column("device_state_busy_at", Integer()),
    Column("language", String(40)),
    Column("from_user", String(40)),
    Column("from_domain", String(40)),
    Column("accountcode", String(80)),
    Column("deny", String(95)),
    Column("permit", String(95)),
    Column("acl", String(40)),
    Column("contact_deny", String(95)),
    Column("contact_permit", String(95)),
    Column("contact_acl", String(40)),
    Column("set_var", Text()),
)
Index("ps_endpoints_id", ps_endpoints.c.id)

ps_auths = Table(
    "ps_auths",
    metadata,
    Column("id", String(255), nullable=False, unique=True),
    Column("auth_type", String(8)),
    Column("nonce_lifetime", Integer()),
    Column("md5_cred", String(40)),
    Column("password", String(80)),
    Column("realm", String(255)),
    Column("username", String(40)),
)
Index("ps_auths_id", ps_auths.c.id)

ps_aors = Table(
    "ps_aors",
    metadata,
    Column("id", String(255), nullable=False, unique=True),
    Column("contact", String(255)),
    Column("default_expiration", Integer()),
    Column("mailboxes", String(80)),
    Column("max_contacts", Integer()),
    Column("minimum_expiration", Integer()),
    Column("remove_existing", String(3)),
    Column("qualify_frequency", Integer()),
    Column("authenticate_qualify", String(3)),
    Column("maximum_expiration", Integer()),
    Column("outbound_proxy", String(255)),
    Column("support_path", String(3)),
)
Index("ps_aors_id", ps_aors.c.id)

ps_endpoint_id_ips = Table(
    "ps_endpoint_id_ips",
    metadata,
    Column("id", String(255), nullable=False, unique=True),
    Column("endpoint", String(255)),
    Column("match", String(80)),
    Column("srv_lookups", String(3)),
    Column("match_header", String(255)),
)
Index("ps_endpoint_id_ips_id", ps_endpoint_id_ips.c.id)

TABLES: tuple[Table, ...] = (sippeers, iaxfriends, ps_endpoints, ps_auths, ps_aors,
                             ps_endpoint_id_ips)  # fmt: skip
KEY_COLUMN = {
    "sippeers": "name",
    "iaxfriends": "name",
    "ps_endpoints": "id",
    "ps_auths": "id",
    "ps_aors": "id",
    "ps_endpoint_id_ips": "id",
}

Rows = dict[str, list[dict[str, Any]]]


def _null(value: Any) -> Any:
    """Empty option -> NULL: Realtime drivers skip NULL columns (Asterisk's default applies)."""
    return None if value == "" else value


def _row(**values: Any) -> dict[str, Any]:
    return {key: _null(value) for key, value in values.items()}


def realtime_rows(
    sip: Sequence[Friend], iax: Sequence[Friend], ips: Mapping[int, Sequence[str]] | None = None
) -> Rows:
    """The rows each Realtime table should hold for these friends (pure; same mapping as the
    files, :mod:`callgate.confgen.model`)."""
    rows: Rows = {table.name: [] for table in TABLES}
    for p in model.sip_peers(sip):
        rows["sippeers"].append(
            _row(name=p.name, type=p.type, host=p.host, secret=p.secret, context=p.context,
                 accountcode=p.accountcode, disallow=p.disallow, allow=p.allow,
                 insecure=p.insecure, nat=p.nat, dtmfmode=p.dtmfmode, qualify=p.qualify,
                 directmedia=p.directmedia, callerid=p.callerid, deny=p.deny, permit=p.permit,
                 language=p.language, **{"call-limit": p.call_limit})
        )  # fmt: skip
    for q in model.iax_peers(iax):
        rows["iaxfriends"].append(
            _row(name=q.name, type=q.type, host=q.host, secret=q.secret, auth=q.auth,
                 context=q.context, accountcode=q.accountcode, disallow=q.disallow,
                 allow=q.allow, qualify=q.qualify, callerid=q.callerid, language=q.language)
        )  # fmt: skip
    for f in model.pjsip_friends(sip, ips):
        e = f.endpoint
        rows["ps_endpoints"].append(
            _row(id=e.id, context=e.context, disallow=e.disallow, allow=e.allow, aors=e.aors,
                 auth=e.auth, accountcode=e.accountcode, identify_by=e.identify_by,
                 direct_media=e.direct_media, dtmf_mode=e.dtmf_mode, force_rport=e.force_rport,
                 rewrite_contact=e.rewrite_contact, rtp_symmetric=e.rtp_symmetric,
                 callerid=e.callerid, device_state_busy_at=e.device_state_busy_at, deny=e.deny,
                 permit=e.permit, language=e.language)
        )  # fmt: skip
        if f.auth is not None:
            rows["ps_auths"].append(
                _row(id=f.auth.id, auth_type=f.auth.auth_type, username=f.auth.username,
                     password=f.auth.password)
            )  # fmt: skip
        rows["ps_aors"].append(
            _row(id=f.aor.id, max_contacts=f.aor.max_contacts,
                 remove_existing=f.aor.remove_existing, contact=f.aor.contact,
                 qualify_frequency=f.aor.qualify_frequency)
        )  # fmt: skip
        if f.identify is not None:
            for n, match in enumerate(f.identify.matches, start=1):
                row_id = f.identify.id if n == 1 else f"{f.identify.id}-{n}"
                rows["ps_endpoint_id_ips"].append(
                    _row(id=row_id, endpoint=f.identify.endpoint, match=match)
                )
    return rows


# -- database ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InitReport:
    created: tuple[str, ...]
    existing: tuple[str, ...]


@dataclass(slots=True)
class SyncReport:
    inserted: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    unchanged: dict[str, int] = field(default_factory=dict)

    @property
    def changes(self) -> int:
        return sum(self.inserted.values()) + sum(self.updated.values()) + sum(
            self.deleted.values())  # fmt: skip


async def init_tables(engine: AsyncEngine) -> InitReport:
    """Create the Realtime tables that are absent (``create_all`` with ``checkfirst``)."""

    def _create(conn: Connection) -> InitReport:
        existing = set(inspect(conn).get_table_names())
        metadata.create_all(conn, checkfirst=True)
        names = [t.name for t in TABLES]
        return InitReport(
            created=tuple(n for n in names if n not in existing),
            existing=tuple(n for n in names if n in existing),
        )

    try:
        async with engine.begin() as conn:
            return await conn.run_sync(_create)
    except SQLAlchemyError as exc:
        raise RealtimeError(f"cannot create the Realtime tables: {exc}") from exc


async def _reflect(conn: AsyncConnection) -> dict[str, Table]:
    def _load(sync_conn: Connection) -> dict[str, Table]:
        reflected = MetaData()
        out: dict[str, Table] = {}
        for table in TABLES:
            try:
                out[table.name] = Table(table.name, reflected, autoload_with=sync_conn)
            except NoSuchTableError as exc:
                raise RealtimeError(
                    f"the Realtime table {table.name} does not exist: run "
                    "`callgate confgen realtime init` (or Asterisk's ast-db-manage) first"
                ) from exc
        return out

    return await conn.run_sync(_load)


def _check_columns(tables: Mapping[str, Table], rows: Rows) -> None:
    for name, table_rows in rows.items():
        wanted = {key for row in table_rows for key in row} | {KEY_COLUMN[name]}
        missing = sorted(wanted - set(tables[name].c.keys()))
        if missing:
            raise RealtimeError(
                f"the Realtime table {name} has no column(s) {', '.join(missing)}: upgrade it with "
                "Asterisk's ast-db-manage (config) scripts"
            )


async def find_conflicts(
    conn: AsyncConnection, rows: Rows, owned: Mapping[str, Sequence[str]]
) -> list[str]:
    """``table:key`` of existing rows callgate would write but did not write itself."""
    tables = await _reflect(conn)
    out: list[str] = []
    for name, table_rows in rows.items():
        key = tables[name].c[KEY_COLUMN[name]]
        wanted = {row[KEY_COLUMN[name]] for row in table_rows} - set(owned.get(name, ()))
        if not wanted:
            continue
        found = (await conn.execute(select(key).where(key.in_(sorted(wanted))))).scalars().all()
        out.extend(f"{name}:{value}" for value in sorted(found))
    return out


async def write_rows(
    conn: AsyncConnection, rows: Rows, owned: Mapping[str, Sequence[str]]
) -> SyncReport:
    """Upsert ``rows`` and delete owned rows no longer wanted, in the caller's transaction.

    ``owned`` are the keys callgate wrote before; any other existing key is a conflict.
    """
    tables = await _reflect(conn)
    _check_columns(tables, rows)
    conflicts = await find_conflicts(conn, rows, owned)
    if conflicts:
        raise RealtimeConflictError(
            "rows exist that callgate did not write; rename the friend or remove them: "
            + ", ".join(conflicts)
        )
    report = SyncReport()
    for name in (t.name for t in TABLES):
        table = tables[name]
        key_name = KEY_COLUMN[name]
        key = table.c[key_name]
        wanted = {row[key_name]: row for row in rows.get(name, [])}
        managed = sorted({k for row in wanted.values() for k in row} - {key_name})
        existing: dict[Any, dict[str, Any]] = {}
        if wanted:
            query = select(key, *(table.c[c] for c in managed)).where(key.in_(sorted(wanted)))
            for found in (await conn.execute(query)).mappings():
                existing[found[key_name]] = {c: found[c] for c in managed}
        inserted = updated = unchanged = 0
        for row_key, row in wanted.items():
            if row_key not in existing:
                await conn.execute(insert(table).values(**row))
                inserted += 1
            elif any(existing[row_key][c] != row.get(c) for c in managed):
                values = {c: row.get(c) for c in managed}
                await conn.execute(update(table).where(key == row_key).values(**values))
                updated += 1
            else:
                unchanged += 1
        gone = sorted(set(owned.get(name, ())) - set(wanted))
        deleted = 0
        if gone:
            result = await conn.execute(delete(table).where(key.in_(gone)))
            deleted = result.rowcount or 0
        report.inserted[name] = inserted
        report.updated[name] = updated
        report.unchanged[name] = unchanged
        report.deleted[name] = deleted
    return report


def owned_keys(rows: Rows) -> dict[str, list[str]]:
    """The keys of ``rows`` per table (what callgate owns after writing them)."""
    return {name: sorted(str(r[KEY_COLUMN[name]]) for r in table_rows)
            for name, table_rows in rows.items()}  # fmt: skip
