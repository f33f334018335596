"""Friends as Asterisk objects: chan_sip peers, chan_iax2 peers, PJSIP endpoint/auth/aor/identify.

Pure: the one mapping from callgate's friends to what Asterisk reads, shared by the file
renderers (``render.py``) and the Realtime writer (``realtime.py``), so a file and a Realtime
row of the same friend cannot disagree. Every value is checked again here (a row edited by hand
in the database must not reach a file): :class:`UnsafeValueError` if one would be misread.

Choices, after A2Billing's and MagnusBilling's generated friends:

* chan_sip: ``type=friend``, ``qualify=yes``, ``directmedia=no``; a friend at a fixed address
  (``host`` not ``dynamic``) gets ``insecure=port,invite`` (IP authentication, no challenge).
* PJSIP: one ``endpoint``, ``auth`` and ``aor`` named after the friend (Asterisk allows one name
  per object type). An *IP-authenticated* friend (fixed host, or ingress ``account_ips`` on its
  account) has no inbound ``auth`` and ``identify_by=ip``, with an ``identify`` section
  ``<name>-identify`` that matches its host and addresses. chan_sip's ``nat`` becomes
  ``force_rport``/``rewrite_contact``/``rtp_symmetric``; ``dtmfmode=rfc2833`` is ``rfc4733``;
  ``call_limit`` becomes ``device_state_busy_at`` (PJSIP has no call limit; callgate's
  per-account channel limit applies to every call anyway).
* chan_iax2: ``type=friend``, ``auth=md5``, ``qualify=yes``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from callgate.confgen.errors import UnsafeValueError
from callgate.store.errors import InvalidDataError
from callgate.store.friends import Friend, check_value, validate_name

QUALIFY_FREQUENCY = 60  # seconds between OPTIONS pings (chan_sip's qualify=yes default)

_DTMF_PJSIP = {"rfc2833": "rfc4733", "info": "info", "shortinfo": "info", "inband": "inband",
               "auto": "auto", "": ""}  # fmt: skip


@dataclass(frozen=True, slots=True)
class SipPeer:
    """A ``sip.conf`` section / ``sippeers`` row."""

    name: str
    secret: str
    host: str
    context: str
    accountcode: str
    disallow: str
    allow: str
    insecure: str  # "port,invite" for a fixed host
    nat: str
    dtmfmode: str
    callerid: str
    call_limit: int | None
    deny: str
    permit: str
    language: str
    type: str = "friend"
    qualify: str = "yes"
    directmedia: str = "no"


@dataclass(frozen=True, slots=True)
class IaxPeer:
    """An ``iax.conf`` section / ``iaxfriends`` row."""

    name: str
    secret: str
    host: str
    context: str
    accountcode: str
    disallow: str
    allow: str
    callerid: str
    language: str
    type: str = "friend"
    auth: str = "md5"
    qualify: str = "yes"


@dataclass(frozen=True, slots=True)
class PjsipEndpoint:
    id: str
    context: str
    disallow: str
    allow: str
    aors: str
    auth: str  # "" for an IP-authenticated friend
    accountcode: str
    dtmf_mode: str
    force_rport: str
    rewrite_contact: str
    rtp_symmetric: str
    identify_by: str
    callerid: str
    device_state_busy_at: int | None
    deny: str
    permit: str
    language: str
    direct_media: str = "no"


@dataclass(frozen=True, slots=True)
class PjsipAuth:
    id: str
    username: str
    password: str
    auth_type: str = "userpass"


@dataclass(frozen=True, slots=True)
class PjsipAor:
    id: str
    max_contacts: int
    remove_existing: str  # "" when max_contacts is 0
    contact: str  # "" for a registering device
    qualify_frequency: int = QUALIFY_FREQUENCY


@dataclass(frozen=True, slots=True)
class PjsipIdentify:
    id: str
    endpoint: str
    matches: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PjsipFriend:
    """The PJSIP objects of one SIP friend."""

    endpoint: PjsipEndpoint
    auth: PjsipAuth | None
    aor: PjsipAor
    identify: PjsipIdentify | None


def _checked(friend: Friend) -> Friend:
    """The friend, if every value is safe to write; else UnsafeValueError."""
    try:
        validate_name(friend.name)
        for key in ("secret", "host", "context", "accountcode", "disallow", "allow", "nat",
                    "dtmfmode", "callerid", "permit", "deny", "language"):  # fmt: skip
            check_value(key, str(getattr(friend, key)))
        if not friend.secret or not friend.accountcode:
            raise InvalidDataError("empty secret or accountcode")
        if any(c in friend.accountcode for c in " ,="):
            raise InvalidDataError(f"accountcode {friend.accountcode!r} is not a plain token")
    except InvalidDataError as exc:
        raise UnsafeValueError(f"{friend.kind.value} friend {friend.name!r}: {exc}") from exc
    return friend


def _address(text: str, owner: str) -> str:
    """An IP address or network for ``match =`` (host names are allowed for a friend's host)."""
    try:
        check_value("address", text)
        return ipaddress.ip_network(text, strict=False).with_prefixlen
    except (ValueError, InvalidDataError) as exc:
        raise UnsafeValueError(
            f"{owner}: address {text!r} is not an IP address or network"
        ) from exc


def sip_peers(friends: Sequence[Friend]) -> list[SipPeer]:
    return [
        SipPeer(
            name=f.name,
            secret=f.secret,
            host=f.host,
            context=f.context,
            accountcode=f.accountcode,
            disallow=f.disallow,
            allow=f.allow,
            insecure="" if f.dynamic else "port,invite",
            nat=f.nat,
            dtmfmode=f.dtmfmode,
            callerid=f.callerid,
            call_limit=f.call_limit,
            deny=f.deny,
            permit=f.permit,
            language=f.language,
        )
        for f in map(_checked, sorted(friends, key=lambda f: f.name))
    ]


def iax_peers(friends: Sequence[Friend]) -> list[IaxPeer]:
    return [
        IaxPeer(
            name=f.name,
            secret=f.secret,
            host=f.host,
            context=f.context,
            accountcode=f.accountcode,
            disallow=f.disallow,
            allow=f.allow,
            callerid=f.callerid,
            language=f.language,
        )
        for f in map(_checked, sorted(friends, key=lambda f: f.name))
    ]


def _nat_flags(nat: str) -> tuple[str, str, str]:
    """chan_sip ``nat`` -> PJSIP (force_rport, rewrite_contact, rtp_symmetric), "" = default."""
    if not nat:
        return "", "", ""
    tokens = set(nat.split(","))
    if tokens & {"no", "never"} and not tokens - {"no", "never"}:
        return "no", "no", "no"
    rport = bool(tokens & {"yes", "force_rport", "auto_force_rport", "route"})
    media = bool(tokens & {"yes", "comedia", "auto_comedia"})
    yes = {True: "yes", False: "no"}
    return yes[rport], yes[rport], yes[media]


def _host_match(host: str) -> str:
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host  # a host name: PJSIP resolves it when it loads the identify


def _contact(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"sip:{host}"
    return f"sip:[{address.compressed}]" if address.version == 6 else f"sip:{address}"


def pjsip_friends(
    friends: Sequence[Friend], ips: Mapping[int, Sequence[str]] | None = None
) -> list[PjsipFriend]:
    """The PJSIP objects of each SIP friend; ``ips`` are ingress ``account_ips`` by account."""
    out: list[PjsipFriend] = []
    for f in map(_checked, sorted(friends, key=lambda f: f.name)):
        addresses = [_address(a, f"account #{f.account_id}") for a in (ips or {}).get(
            f.account_id, ())]  # fmt: skip
        ip_auth = not f.dynamic or bool(addresses)
        force_rport, rewrite_contact, rtp_symmetric = _nat_flags(f.nat)
        endpoint = PjsipEndpoint(
            id=f.name,
            context=f.context,
            disallow=f.disallow,
            allow=f.allow,
            aors=f.name,
            auth="" if ip_auth else f.name,
            accountcode=f.accountcode,
            dtmf_mode=_DTMF_PJSIP[f.dtmfmode],
            force_rport=force_rport,
            rewrite_contact=rewrite_contact,
            rtp_symmetric=rtp_symmetric,
            identify_by="ip" if ip_auth else "username",
            callerid=f.callerid,
            device_state_busy_at=f.call_limit,
            deny=f.deny,
            permit=f.permit,
            language=f.language,
        )
        auth = None if ip_auth else PjsipAuth(id=f.name, username=f.name, password=f.secret)
        if f.dynamic:
            aor = PjsipAor(id=f.name, max_contacts=1, remove_existing="yes", contact="")
        else:
            aor = PjsipAor(id=f.name, max_contacts=0, remove_existing="", contact=_contact(f.host))
        identify = None
        if ip_auth:
            matches = ([] if f.dynamic else [_host_match(f.host)]) + addresses
            identify = PjsipIdentify(
                id=f"{f.name}-identify", endpoint=f.name, matches=tuple(dict.fromkeys(matches))
            )
        out.append(PjsipFriend(endpoint=endpoint, auth=auth, aor=aor, identify=identify))
    return out
