"""Friends in the store (both databases): create/fetch/list/update/delete, secrets, refusal of
values Asterisk would misread, and the stale flag."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callgate.schema.tables import account_ips, call_plans, sip_friends
from callgate.store import accounts as acc
from callgate.store import friends as fr
from callgate.store import plans
from callgate.store.errors import ConflictError, InvalidDataError, NotFoundError
from callgate.store.friends import ConfTarget, FriendKind


async def make_account(conn: AsyncConnection, alias: str) -> acc.Account:
    plan = await conn.scalar(select(call_plans.c.id).limit(1))
    if plan is None:
        plan = (await plans.create_call_plan(conn, name="retail")).id
    return await acc.create_account(conn, call_plan_id=int(plan), alias=alias)


async def test_create_sip_friend_named_after_the_alias(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        account = await make_account(conn, "alice")
        friend = await fr.create_friend(conn, FriendKind.SIP, account.id, callerid="5551001")
    assert friend.name == "alice" and friend.accountcode == account.number
    assert friend.name != account.number and account.number not in repr(friend.name)
    assert (friend.host, friend.context, friend.disallow, friend.allow) == (
        "dynamic", "callgate", "all", "ulaw,alaw")  # fmt: skip
    assert (friend.nat, friend.dtmfmode) == ("force_rport,comedia", "rfc2833")  # A2Billing's
    assert len(friend.secret) >= 32 and friend.secret not in repr(friend)
    async with engine.connect() as conn:
        assert await fr.fetch_friend(conn, FriendKind.SIP, account.id) == friend
        assert await fr.list_friends(conn, FriendKind.SIP) == [friend]
        assert await fr.list_friends(conn, FriendKind.IAX) == []
        with pytest.raises(NotFoundError):
            await fr.fetch_friend(conn, FriendKind.IAX, account.id)


async def test_secrets_are_random_and_distinct(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        a = await make_account(conn, "a1")
        b = await make_account(conn, "b1")
        sa = await fr.create_friend(conn, FriendKind.SIP, a.id)
        ia = await fr.create_friend(conn, FriendKind.IAX, a.id)
        sb = await fr.create_friend(conn, FriendKind.SIP, b.id)
    secrets_ = {sa.secret, ia.secret, sb.secret}
    assert len(secrets_) == 3
    assert all(s.replace("-", "").replace("_", "").isalnum() for s in secrets_)
    assert ia.nat == "" and ia.dtmfmode == ""  # no SIP defaults on IAX


async def test_one_friend_per_kind_and_unique_names(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        a = await make_account(conn, "alice")
        b = await make_account(conn, "bob")
        await fr.create_friend(conn, FriendKind.SIP, a.id)
        with pytest.raises(ConflictError, match="already has a SIP friend"):
            await fr.create_friend(conn, FriendKind.SIP, a.id)
        with pytest.raises(ConflictError, match="name 'alice' is already assigned"):
            await fr.create_friend(conn, FriendKind.SIP, b.id, name="alice")
        with pytest.raises(InvalidDataError, match="account number is secret"):
            await fr.create_friend(conn, FriendKind.IAX, b.id, name=b.number)
        with pytest.raises(NotFoundError):
            await fr.create_friend(conn, FriendKind.SIP, 99999)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "alice\nbob"}, "a newline"),
        ({"name": "al;ice"}, "';'"),
        ({"name": "[alice]"}, "'\\['"),
        ({"name": "jos\u00e9"}, "non-ASCII"),
        ({"name": "a=b"}, "'='"),
        ({"name": "x" * 41}, "longer than 40"),
        ({"name": "general"}, "reserved"),
        ({"callerid": "Bob\r\nsecret=x"}, "carriage return"),
        ({"callerid": "Bob ; x"}, "';'"),
        ({"context": "from;x"}, "';'"),
        ({"context": "a b"}, "space"),
        ({"allow": "ulaw;alaw"}, "';'"),
        ({"allow": "ulaw,,alaw"}, "empty item"),
        ({"allow": "ulaw,a=b"}, "'='"),
        ({"host": "1.2.3.4\n"}, "newline"),
        ({"host": "not a host"}, "host name"),
        ({"nat": "sometimes"}, "unknown"),
        ({"dtmfmode": "morse"}, "use one of"),
        ({"permit": "10.0.0.0/8,nothing"}, "not an address"),
        ({"language": "english!"}, "language code"),
        ({"call_limit": -1}, "0.."),
    ],
)
def test_values_asterisk_would_misread_are_refused(
    options: dict[str, object], message: str
) -> None:
    values = dict(options)
    with pytest.raises(InvalidDataError, match=message):
        if "name" in values:
            fr.validate_name(str(values.pop("name")))
        fr.validate_friend_fields(FriendKind.SIP, values)


async def test_refused_values_are_never_stored(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        account = await make_account(conn, "victim")
        with pytest.raises(InvalidDataError, match="a newline"):
            await fr.create_friend(conn, FriendKind.SIP, account.id, name="victim\n[general]")
        with pytest.raises(InvalidDataError, match="carriage return"):
            await fr.create_friend(conn, FriendKind.SIP, account.id, callerid="x\r\ncontext=free")
        assert await fr.find_friend(conn, FriendKind.SIP, account.id) is None
        assert await fr.stale_marks(conn) == {}


async def test_alias_that_cannot_name_a_peer_needs_a_name(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        account = await make_account(conn, "ann@example.com")
        with pytest.raises(InvalidDataError, match="'@'"):
            await fr.create_friend(conn, FriendKind.SIP, account.id)
        friend = await fr.create_friend(conn, FriendKind.SIP, account.id, name="ann")
    assert friend.name == "ann"


async def test_iax_friends_refuse_sip_only_options(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        account = await make_account(conn, "iaxer")
        for option in (
            {"nat": "yes"},
            {"dtmfmode": "info"},
            {"call_limit": 3},
            {"permit": "1.2.3.4"},
        ):
            with pytest.raises(InvalidDataError, match="SIP option"):
                await fr.create_friend(conn, FriendKind.IAX, account.id, **option)


async def test_values_are_normalised(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        account = await make_account(conn, "norm")
        friend = await fr.create_friend(
            conn, FriendKind.SIP, account.id, host="DYNAMIC", allow=" ULAW , alaw,ulaw",
            permit="192.0.2.7, 10.1.2.3/255.255.255.0", nat="comedia,force_rport",
        )  # fmt: skip
    assert friend.host == "dynamic" and friend.allow == "ulaw,alaw"
    assert friend.permit == "192.0.2.7/32,10.1.2.0/24" and friend.nat == "comedia,force_rport"


async def test_update_and_new_secret_and_delete(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        account = await make_account(conn, "upd")
        first = await fr.create_friend(conn, FriendKind.SIP, account.id)
        same = await fr.update_friend(conn, FriendKind.SIP, account.id, context="callgate")
        assert same == first  # nothing changed
        changed = await fr.update_friend(
            conn, FriendKind.SIP, account.id, host="192.0.2.5", call_limit=4, new_secret=True
        )
        assert changed.host == "192.0.2.5" and changed.call_limit == 4
        assert changed.secret != first.secret and changed.updated_at is not None
        renamed = await fr.update_friend(conn, FriendKind.SIP, account.id, name="upd-2")
        assert renamed.name == "upd-2"
        with pytest.raises(InvalidDataError, match="newline"):
            await fr.update_friend(conn, FriendKind.SIP, account.id, callerid="a\nb")
        removed = await fr.delete_friend(conn, FriendKind.SIP, account.id)
        assert removed.name == "upd-2"
        assert await fr.find_friend(conn, FriendKind.SIP, account.id) is None
        with pytest.raises(NotFoundError):
            await fr.delete_friend(conn, FriendKind.SIP, account.id)


async def test_friend_changes_mark_targets_stale_and_clear_is_compare_and_delete(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        assert await fr.stale_marks(conn) == {}
        account = await make_account(conn, "stale")
        await fr.create_friend(conn, FriendKind.IAX, account.id)
        marks = await fr.stale_marks(conn)
    assert set(marks) == {ConfTarget.IAX, ConfTarget.REALTIME}
    assert "IAX friend stale added" in marks[ConfTarget.IAX].reason
    async with engine.begin() as conn:
        await fr.create_friend(conn, FriendKind.SIP, account.id)
    async with engine.begin() as conn:
        # the IAX mark seen before is still the stored one: cleared; the SIP marks were not seen
        seen = [marks[ConfTarget.IAX]]
        assert await fr.clear_stale(conn, seen) == 1
        now = await fr.stale_marks(conn)
    assert set(now) == {ConfTarget.SIP, ConfTarget.PJSIP, ConfTarget.REALTIME}
    async with engine.begin() as conn:
        # an old mark does not clear a newer change (realtime was re-marked by the SIP add)
        assert await fr.clear_stale(conn, [marks[ConfTarget.REALTIME]]) == 0
        await fr.delete_friend(conn, FriendKind.SIP, account.id)
        after = await fr.stale_marks(conn)
    assert "SIP friend stale removed" in after[ConfTarget.PJSIP].reason


async def test_identify_addresses_come_from_ingress_account_ips(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        account = await make_account(conn, "wholesale")
        await conn.execute(
            insert(account_ips),
            [
                {"account_id": account.id, "address": "203.0.113.9", "direction": "ingress"},
                {"account_id": account.id, "address": "198.51.100.0/24", "direction": "ingress"},
                {"account_id": account.id, "address": "192.0.2.1", "direction": "egress"},
            ],
        )
        ips = await fr.list_identify_addresses(conn)
        row = (await conn.execute(select(sip_friends))).first()
    assert ips == {account.id: ("198.51.100.0/24", "203.0.113.9")}
    assert row is None
