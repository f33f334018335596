"""The one schema: SQLAlchemy Core tables for SQLite and PostgreSQL.

The schema changes only through Alembic migrations (``callgate/schema/migrations``); a test proves
that the migrations and these tables do not drift. Money columns are :class:`Money` (exact, five
decimals), timestamps are :class:`UtcDateTime` (aware UTC). Closed sets are strings guarded by a
CHECK constraint whose values come from the ``StrEnum`` beside them, so code and database agree.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)

from callgate.rating.model import RoutingMode as RoutingMode  # one set, the rating core's
from callgate.schema.types import Money, UtcDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


class AccountStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    PENDING_APPROVAL = "pending_approval"
    SUSPENDED = "suspended"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class ExpiryMode(StrEnum):
    NEVER = "never"
    AT_DATE = "at_date"  # expires at expires_at
    DAYS_AFTER_FIRST_USE = "days_after_first_use"  # expiry_days after first_use_at
    DAYS_AFTER_CREATION = "days_after_creation"  # expiry_days after created_at


class TrunkTechnology(StrEnum):
    PJSIP = "PJSIP"
    SIP = "SIP"
    IAX2 = "IAX2"
    DAHDI = "DAHDI"
    LOCAL = "Local"


class EnabledStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class IpDirection(StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


class PaymentKind(StrEnum):
    """What moved a balance (besides calls, which are CDRs). The last two are written only by
    ``callgate dids charge`` / ``callgate packages charge``, beside their ``period_charges`` row."""

    REFILL = "refill"
    PAYMENT = "payment"
    ADJUSTMENT = "adjustment"
    DID_CHARGE = "did_charge"
    PACKAGE_CHARGE = "package_charge"


class PaymentStatus(StrEnum):
    COMPLETED = "completed"
    PENDING = "pending"
    CANCELLED = "cancelled"


class ReservationStatus(StrEnum):
    OPEN = "open"
    SETTLED = "settled"
    EXPIRED = "expired"  # past its expiry, settled by the reaper from the Asterisk CDR
    UNRESOLVED = "unresolved"  # past its expiry, no CDR: an operator must settle or release it
    RELEASED = "released"  # closed without a charge by an operator


class CallStatus(StrEnum):
    """CALLGATE_STATUS: the outcome callgate gives the dialplan and the billing record."""

    OK = "OK"
    NO_ACCOUNT = "NO_ACCOUNT"
    INACTIVE = "INACTIVE"
    EXPIRED = "EXPIRED"
    NO_CREDIT = "NO_CREDIT"
    NO_RATE = "NO_RATE"
    CHANNEL_LIMIT = "CHANNEL_LIMIT"
    CPS_LIMIT = "CPS_LIMIT"
    ROUTE_FAILED = "ROUTE_FAILED"
    ERROR = "ERROR"
    CLI_REJECTED = "CLI_REJECTED"  # the account's caller ID rules deny this caller ID


def _in(column: str, enum: type[StrEnum]) -> str:
    values = ", ".join(f"'{member.value}'" for member in enum)
    return f"{column} IN ({values})"


def _created() -> Column[object]:
    return Column("created_at", UtcDateTime(), nullable=False, server_default=func.now())


currencies = Table(
    "currencies",
    metadata,
    Column("code", String(3), primary_key=True),
    Column("name", String(64), nullable=False, server_default=""),
    # the value of one unit in the base currency (no server default: see schema/types.py)
    Column("value", Money(), nullable=False),
    Column("is_base", Boolean(), nullable=False, server_default="0"),
    Column("updated_at", UtcDateTime(), nullable=False, server_default=func.now()),
    # decimals shown for amounts in this currency (balances are kept in the base currency)
    Column("decimals", Integer(), nullable=False, server_default="2"),
    CheckConstraint("value > 0", name="value_positive"),
    CheckConstraint("decimals >= 0 AND decimals <= 5", name="decimals_range"),
    CheckConstraint("length(code) = 3", name="code_length"),
)

customer_groups = Table(
    "customer_groups",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("description", Text(), nullable=False, server_default=""),
    _created(),
)

trunks = Table(
    "trunks",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("technology", String(8), nullable=False),
    Column("peer", String(128), nullable=False),  # endpoint/peer name or host
    Column("dial_prefix", String(32), nullable=False, server_default=""),
    Column("strip_digits", Integer(), nullable=False, server_default="0"),
    Column("dial_options", String(128), nullable=False, server_default=""),
    Column(
        "failover_trunk_id",
        Integer(),
        ForeignKey("trunks.id", ondelete="SET NULL"),
        nullable=True,
    ),
    Column("channel_limit", Integer(), nullable=True),  # null = unlimited
    Column("status", String(8), nullable=False, server_default=EnabledStatus.ACTIVE.value),
    _created(),
    CheckConstraint(_in("technology", TrunkTechnology), name="technology"),
    CheckConstraint(_in("status", EnabledStatus), name="status"),
    CheckConstraint("strip_digits >= 0", name="strip_digits"),
    CheckConstraint("channel_limit IS NULL OR channel_limit >= 0", name="channel_limit"),
)

call_plans = Table(
    "call_plans",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("routing_mode", String(8), nullable=False, server_default=RoutingMode.LCR.value),
    Column("max_call_seconds", Integer(), nullable=False, server_default="36000"),
    # remove the international prefix (00, 011...) before rating, as A2Billing's removeinterprefix
    Column("remove_international_prefix", Boolean(), nullable=False, server_default="1"),
    Column("description", Text(), nullable=False, server_default=""),
    _created(),
    CheckConstraint(_in("routing_mode", RoutingMode), name="routing_mode"),
    CheckConstraint("max_call_seconds > 0", name="max_call_seconds"),
)

rate_tables = Table(
    "rate_tables",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("trunk_id", Integer(), ForeignKey("trunks.id", ondelete="SET NULL"), nullable=True),
    Column("record_calls", Boolean(), nullable=False, server_default="0"),
    Column("description", Text(), nullable=False, server_default=""),
    # bumped on every change of the table's rates: a running server rebuilds that index
    Column("version", Integer(), nullable=False, server_default="1"),
    _created(),
    Column("updated_at", UtcDateTime(), nullable=False, server_default=func.now()),
)

call_plan_rate_tables = Table(
    "call_plan_rate_tables",
    metadata,
    Column(
        "call_plan_id",
        Integer(),
        ForeignKey("call_plans.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "rate_table_id",
        Integer(),
        ForeignKey("rate_tables.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("priority", Integer(), nullable=False, server_default="1"),
    PrimaryKeyConstraint("call_plan_id", "rate_table_id"),
    CheckConstraint("priority >= 0", name="priority"),
)
Index("ix_call_plan_rate_tables_rate_table", call_plan_rate_tables.c.rate_table_id)

rates = Table(
    "rates",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column(
        "rate_table_id",
        Integer(),
        ForeignKey("rate_tables.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("prefix", String(32), nullable=False),
    Column("destination", String(128), nullable=False, server_default=""),
    Column("rate", Money(), nullable=False),
    Column("connect_fee", Money(), nullable=False, server_default="0"),
    Column("disconnect_fee", Money(), nullable=False, server_default="0"),
    Column("disconnect_after", Integer(), nullable=False, server_default="0"),
    Column("initial_block", Integer(), nullable=False, server_default="0"),
    Column("increment", Integer(), nullable=False, server_default="0"),
    Column("minimal_cost", Money(), nullable=False, server_default="0"),
    Column("buy_rate", Money(), nullable=False, server_default="0"),
    Column("buy_initial_block", Integer(), nullable=False, server_default="0"),
    Column("buy_increment", Integer(), nullable=False, server_default="0"),
    Column("trunk_id", Integer(), ForeignKey("trunks.id", ondelete="SET NULL"), nullable=True),
    Column("valid_from", UtcDateTime(), nullable=True),
    Column("valid_to", UtcDateTime(), nullable=True),
    Column("week_start", Integer(), nullable=True),
    Column("week_end", Integer(), nullable=True),
    CheckConstraint("length(prefix) > 0", name="prefix"),
    CheckConstraint(
        "rate >= 0 AND connect_fee >= 0 AND disconnect_fee >= 0 AND minimal_cost >= 0"
        " AND buy_rate >= 0",
        name="prices_not_negative",
    ),
    CheckConstraint(
        "disconnect_after >= 0 AND initial_block >= 0 AND increment >= 0"
        " AND buy_initial_block >= 0 AND buy_increment >= 0",
        name="blocks_not_negative",
    ),
    CheckConstraint(
        "valid_from IS NULL OR valid_to IS NULL OR valid_to > valid_from", name="validity"
    ),
    CheckConstraint(
        "(week_start IS NULL AND week_end IS NULL) OR (week_start BETWEEN 0 AND 10079"
        " AND week_end BETWEEN 0 AND 10079)",
        name="week_window",
    ),
)
Index("ix_rates_table_prefix", rates.c.rate_table_id, rates.c.prefix)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column("number", String(32), nullable=False, unique=True),  # secret, random
    Column("alias", String(128), nullable=False, unique=True),  # login; may be an e-mail
    Column("first_name", String(64), nullable=False, server_default=""),
    Column("last_name", String(64), nullable=False, server_default=""),
    Column("company", String(128), nullable=False, server_default=""),
    Column("email", String(128), nullable=False, server_default=""),
    Column("phone", String(32), nullable=False, server_default=""),
    Column("address", String(255), nullable=False, server_default=""),
    Column("city", String(64), nullable=False, server_default=""),
    Column("state", String(64), nullable=False, server_default=""),
    Column("country", String(64), nullable=False, server_default=""),
    Column("zipcode", String(16), nullable=False, server_default=""),
    Column("website", String(255), nullable=False, server_default=""),
    Column("paypal_email", String(128), nullable=False, server_default=""),
    Column(
        "group_id",
        Integer(),
        ForeignKey("customer_groups.id", ondelete="SET NULL"),
        nullable=True,
    ),
    Column(
        "call_plan_id",
        Integer(),
        ForeignKey("call_plans.id", ondelete="RESTRICT"),
        nullable=False,
    ),
    Column("status", String(16), nullable=False, server_default=AccountStatus.ACTIVE.value),
    Column("language", String(8), nullable=False, server_default="en"),
    Column(
        "currency",
        String(3),
        ForeignKey("currencies.code", ondelete="RESTRICT"),
        nullable=False,
    ),
    Column("balance", Money(), nullable=False, server_default="0"),  # base currency
    Column("debit_limit", Money(), nullable=False, server_default="0"),  # postpaid credit
    Column("minimum_payment", Money(), nullable=False, server_default="0"),
    Column("tax_percent", Money(), nullable=False, server_default="0"),
    Column("portal_access", Boolean(), nullable=False, server_default="1"),
    Column("password_hash", String(255), nullable=True),
    Column("channel_limit", Integer(), nullable=True),  # null = unlimited
    Column("cps_limit", Integer(), nullable=True),  # null = unlimited
    Column("expiry_mode", String(24), nullable=False, server_default=ExpiryMode.NEVER.value),
    Column("expires_at", UtcDateTime(), nullable=True),
    Column("expiry_days", Integer(), nullable=True),
    Column("first_use_at", UtcDateTime(), nullable=True),
    Column("last_use_at", UtcDateTime(), nullable=True),
    Column("call_count", Integer(), nullable=False, server_default="0"),
    Column("public_notes", Text(), nullable=False, server_default=""),
    Column("private_notes", Text(), nullable=False, server_default=""),
    _created(),
    Column("updated_at", UtcDateTime(), nullable=False, server_default=func.now()),
    CheckConstraint(_in("status", AccountStatus), name="status"),
    CheckConstraint(_in("expiry_mode", ExpiryMode), name="expiry_mode"),
    CheckConstraint(
        "debit_limit >= 0 AND minimum_payment >= 0 AND tax_percent >= 0",
        name="money_not_negative",
    ),
    CheckConstraint("channel_limit IS NULL OR channel_limit >= 0", name="channel_limit"),
    CheckConstraint("cps_limit IS NULL OR cps_limit >= 0", name="cps_limit"),
    CheckConstraint("expiry_days IS NULL OR expiry_days > 0", name="expiry_days"),
    CheckConstraint("call_count >= 0", name="call_count"),
    CheckConstraint("length(number) > 0 AND length(alias) > 0", name="identifiers"),
)
Index("ix_accounts_call_plan", accounts.c.call_plan_id)
Index("ix_accounts_group", accounts.c.group_id)
# a login is one login whatever its case: ALICE cannot sit beside alice (migration 0003)
Index("ux_accounts_alias_lower", func.lower(accounts.c.alias), unique=True)

account_callerids = Table(
    "account_callerids",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column(
        "account_id",
        Integer(),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("callerid", String(64), nullable=False, unique=True),
    Column("active", Boolean(), nullable=False, server_default="1"),
    _created(),
    CheckConstraint("length(callerid) > 0", name="callerid"),
)
Index("ix_account_callerids_account", account_callerids.c.account_id)

account_ips = Table(
    "account_ips",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column(
        "account_id",
        Integer(),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("address", String(64), nullable=False),  # an IP address or a CIDR block
    Column("channel_limit", Integer(), nullable=True),
    Column("cps_limit", Integer(), nullable=True),
    Column("tech_prefix", String(16), nullable=False, server_default=""),
    Column("strip_digits", Integer(), nullable=False, server_default="0"),
    Column("cli_prefix", String(16), nullable=False, server_default=""),
    Column("codecs", String(128), nullable=False, server_default=""),
    Column("direction", String(8), nullable=False, server_default=IpDirection.INGRESS.value),
    _created(),
    UniqueConstraint("address", "tech_prefix", name="uq_account_ips_address_tech_prefix"),
    CheckConstraint(_in("direction", IpDirection), name="direction"),
    CheckConstraint("strip_digits >= 0", name="strip_digits"),
    CheckConstraint("channel_limit IS NULL OR channel_limit >= 0", name="channel_limit"),
    CheckConstraint("cps_limit IS NULL OR cps_limit >= 0", name="cps_limit"),
)
Index("ix_account_ips_account", account_ips.c.account_id)


def _friend_table(name: str) -> Table:
    """SIP and IAX friends have the same shape; the name is the account's alias."""
    return Table(
        name,
        metadata,
        Column("id", Integer(), primary_key=True),
        Column(
            "account_id",
            Integer(),
            ForeignKey("accounts.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        Column("name", String(80), nullable=False, unique=True),
        Column("secret", String(128), nullable=False),
        Column("host", String(128), nullable=False, server_default="dynamic"),
        Column("context", String(80), nullable=False, server_default="callgate"),
        Column("disallow", String(128), nullable=False, server_default="all"),
        Column("allow", String(128), nullable=False, server_default="ulaw,alaw"),
        Column("nat", String(64), nullable=False, server_default=""),
        Column("dtmfmode", String(16), nullable=False, server_default=""),
        Column("callerid", String(128), nullable=False, server_default=""),
        Column("call_limit", Integer(), nullable=True),
        Column("permit", String(255), nullable=False, server_default=""),
        Column("deny", String(255), nullable=False, server_default=""),
        Column("language", String(8), nullable=False, server_default=""),
        _created(),
        Column("updated_at", UtcDateTime(), nullable=False, server_default=func.now()),
        CheckConstraint("call_limit IS NULL OR call_limit >= 0", name="call_limit"),
    )


sip_friends = _friend_table("sip_friends")
iax_friends = _friend_table("iax_friends")

contacts = Table(
    "contacts",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column(
        "account_id",
        Integer(),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", String(128), nullable=False),
    Column("email", String(128), nullable=False, unique=True),  # the portal login
    Column("password_hash", String(255), nullable=True),
    Column("public_notes", Text(), nullable=False, server_default=""),
    Column("private_notes", Text(), nullable=False, server_default=""),
    _created(),
)
Index("ix_contacts_account", contacts.c.account_id)
Index("ux_contacts_email_lower", func.lower(contacts.c.email), unique=True)

payments = Table(
    "payments",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column(
        "account_id",
        Integer(),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("amount", Money(), nullable=False),  # gross, base currency
    Column("tax_percent", Money(), nullable=False, server_default="0"),
    Column("tax_amount", Money(), nullable=False, server_default="0"),
    Column("credit", Money(), nullable=False),  # what the balance moves by: amount - tax
    Column("currency", String(3), nullable=False),
    Column("description", Text(), nullable=False, server_default=""),
    _created(),
    Column("completed_at", UtcDateTime(), nullable=True),
    Column("cancelled_at", UtcDateTime(), nullable=True),
    CheckConstraint(_in("kind", PaymentKind), name="kind"),
    CheckConstraint(_in("status", PaymentStatus), name="status"),
    CheckConstraint("amount >= 0 OR kind = 'adjustment'", name="amount"),
    CheckConstraint("tax_amount >= 0 AND tax_percent >= 0", name="tax"),
)
Index("ix_payments_account_created", payments.c.account_id, payments.c.created_at)

reservations = Table(
    "reservations",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column("uniqueid", String(64), nullable=False),  # Asterisk's call key, with asterisk
    # the Asterisk that sent the call ([agi] system_names, else its address): two Asterisk boxes
    # can issue the same uniqueid, so the call key is (asterisk, uniqueid)
    Column("asterisk", String(64), nullable=False, server_default=""),
    Column(
        "account_id",
        Integer(),
        ForeignKey("accounts.id", ondelete="RESTRICT"),
        nullable=False,
    ),
    Column("amount", Money(), nullable=False),
    Column("granted_seconds", Integer(), nullable=False),
    Column("status", String(16), nullable=False, server_default=ReservationStatus.OPEN.value),
    Column("source_address", String(64), nullable=False, server_default=""),  # IP auth limits
    Column("rate_id", Integer(), nullable=True),
    Column("trunk", String(64), nullable=False, server_default=""),
    Column("server", String(64), nullable=False, server_default=""),  # which callgate
    _created(),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("closed_at", UtcDateTime(), nullable=True),
    Column("charged", Money(), nullable=True),
    Column("note", Text(), nullable=False, server_default=""),
    CheckConstraint(_in("status", ReservationStatus), name="status"),
    CheckConstraint("amount >= 0 AND granted_seconds >= 0", name="amount"),
    UniqueConstraint("asterisk", "uniqueid", name="uq_reservations_asterisk_uniqueid"),
)
Index("ix_reservations_account_status", reservations.c.account_id, reservations.c.status)
Index("ix_reservations_status_expires", reservations.c.status, reservations.c.expires_at)

calls = Table(
    "calls",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column("uniqueid", String(64), nullable=False),
    Column("asterisk", String(64), nullable=False, server_default=""),
    Column(
        "account_id",
        Integer(),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=True,  # an attempt by an unknown caller has no account
    ),
    Column("script", String(16), nullable=False, server_default="call"),  # call, card, did
    Column("channel", String(128), nullable=False, server_default=""),
    Column("callerid", String(64), nullable=False, server_default=""),
    Column("dialed_number", String(64), nullable=False, server_default=""),
    Column("number", String(64), nullable=False, server_default=""),  # normalised
    Column("prefix", String(32), nullable=False, server_default=""),
    Column("destination", String(128), nullable=False, server_default=""),
    Column("rate_table", String(64), nullable=False, server_default=""),
    Column("rate_id", Integer(), nullable=True),
    Column("sell_rate", Money(), nullable=True),
    Column("buy_rate", Money(), nullable=True),
    Column("trunk", String(64), nullable=False, server_default=""),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("answered_at", UtcDateTime(), nullable=True),
    Column("ended_at", UtcDateTime(), nullable=True),
    Column("billsec", Integer(), nullable=False, server_default="0"),
    Column("granted_seconds", Integer(), nullable=False, server_default="0"),
    Column("pdd_ms", Integer(), nullable=True),
    Column("dial_status", String(16), nullable=False, server_default=""),
    Column("hangup_cause", Integer(), nullable=True),
    Column("cost", Money(), nullable=False, server_default="0"),
    Column("buy_cost", Money(), nullable=False, server_default="0"),
    Column("status", String(16), nullable=False),
    Column("server", String(64), nullable=False, server_default=""),
    Column("note", Text(), nullable=False, server_default=""),
    _created(),
    Column("recording", String(255), nullable=False, server_default=""),  # MixMonitor file
    CheckConstraint(_in("status", CallStatus), name="status"),
    CheckConstraint("billsec >= 0 AND granted_seconds >= 0", name="seconds"),
    CheckConstraint("cost >= 0 AND buy_cost >= 0", name="cost"),
    UniqueConstraint("asterisk", "uniqueid", name="uq_calls_asterisk_uniqueid"),
)
Index("ix_calls_uniqueid", calls.c.uniqueid)
Index("ix_calls_account_started", calls.c.account_id, calls.c.started_at)
Index("ix_calls_started", calls.c.started_at)

asterisk_cdrs = Table(
    "asterisk_cdrs",
    metadata,
    Column("id", Integer(), primary_key=True),
    # sha256 over the event's fields: the same Cdr event seen twice is stored once
    Column("fingerprint", String(64), nullable=False, unique=True),
    Column("uniqueid", String(64), nullable=False),
    Column("asterisk", String(64), nullable=False, server_default=""),  # the listener's server
    Column("linkedid", String(64), nullable=False, server_default=""),
    Column("accountcode", String(64), nullable=False, server_default=""),
    Column("source", String(64), nullable=False, server_default=""),
    Column("destination", String(64), nullable=False, server_default=""),
    Column("destination_context", String(80), nullable=False, server_default=""),
    Column("callerid", String(128), nullable=False, server_default=""),
    Column("channel", String(128), nullable=False, server_default=""),
    Column("destination_channel", String(128), nullable=False, server_default=""),
    Column("last_application", String(64), nullable=False, server_default=""),
    Column("last_data", Text(), nullable=False, server_default=""),
    # Asterisk's local times without a zone, as sent ("YYYY-MM-DD HH:MM:SS")
    Column("start_time", String(32), nullable=False, server_default=""),
    Column("answer_time", String(32), nullable=False, server_default=""),
    Column("end_time", String(32), nullable=False, server_default=""),
    Column("duration", Integer(), nullable=False, server_default="0"),
    Column("billsec", Integer(), nullable=False, server_default="0"),
    Column("disposition", String(16), nullable=False, server_default=""),
    Column("amaflags", String(16), nullable=False, server_default=""),
    Column("userfield", String(255), nullable=False, server_default=""),
    Column("raw", Text(), nullable=False, server_default=""),  # the whole event, JSON
    Column("received_at", UtcDateTime(), nullable=False, server_default=func.now()),
)
Index("ix_asterisk_cdrs_uniqueid", asterisk_cdrs.c.uniqueid)
Index("ix_asterisk_cdrs_linkedid", asterisk_cdrs.c.linkedid)

live_channels = Table(
    "live_channels",
    metadata,
    Column("uniqueid", String(64), primary_key=True),
    Column("channel", String(128), nullable=False),
    Column("linkedid", String(64), nullable=False, server_default=""),
    Column("accountcode", String(64), nullable=False, server_default=""),
    Column("callerid", String(64), nullable=False, server_default=""),
    Column("destination", String(64), nullable=False, server_default=""),
    Column("context", String(80), nullable=False, server_default=""),
    Column("state", String(32), nullable=False, server_default=""),
    Column("application", String(64), nullable=False, server_default=""),
    Column("bridged_to", String(128), nullable=False, server_default=""),
    Column("server", String(64), nullable=False, server_default=""),  # which Asterisk
    Column("started_at", UtcDateTime(), nullable=False),
    Column("answered_at", UtcDateTime(), nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
)
Index("ix_live_channels_accountcode", live_channels.c.accountcode)

settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text(), nullable=False),
    Column("description", Text(), nullable=False, server_default=""),
    Column("updated_at", UtcDateTime(), nullable=False, server_default=func.now()),
)


# --------------------------------------------------------------------------- wholesale
# IP authentication lives in ``account_ips`` above; these tables hold the rest of wholesale call
# control: caller ID rules, DIDs, packages, period charges, alerts and their outbox. The call's
# recording path is the ``recording`` column of ``calls`` (added by migration 0002).


class CliRuleAction(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REWRITE = "rewrite"


class PackageKind(StrEnum):
    FREE_MINUTES = "free_minutes"
    FREE_CALLS = "free_calls"
    UNLIMITED = "unlimited"


class PackagePeriod(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


class PackageUseStatus(StrEnum):
    OPEN = "open"  # held by a call in progress
    SETTLED = "settled"
    RELEASED = "released"


class ChargeKind(StrEnum):
    PACKAGE = "package"
    DID = "did"


class AlertArea(StrEnum):
    BALANCE = "balance"
    CHANNELS = "channels"
    DAILY_SPEND = "daily_spend"


class AlertOperator(StrEnum):
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="


class AlertState(StrEnum):
    ARMED = "armed"  # the condition is false: the next crossing fires
    FIRED = "fired"  # fired; re-armed when the condition is false again


class NotificationChannel(StrEnum):
    EMAIL = "email"
    PHONE = "phone"


class NotificationStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


cli_rules = Table(
    "cli_rules",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column(
        "account_id",
        Integer(),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("position", Integer(), nullable=False, server_default="0"),  # lower first
    Column("action", String(8), nullable=False),
    Column("pattern", String(64), nullable=False),  # a prefix or an Asterisk _pattern
    Column("strip_digits", Integer(), nullable=False, server_default="0"),  # rewrite
    Column("prepend", String(32), nullable=False, server_default=""),  # rewrite
    Column("replace_with", String(64), nullable=False, server_default=""),  # rewrite
    _created(),
    CheckConstraint(_in("action", CliRuleAction), name="action"),
    CheckConstraint("strip_digits >= 0", name="strip_digits"),
    CheckConstraint("length(pattern) > 0", name="pattern"),
)
Index("ix_cli_rules_account", cli_rules.c.account_id, cli_rules.c.position)

dids = Table(
    "dids",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column("number", String(32), nullable=False, unique=True),
    # PJSIP/<alias>, SIP/<alias>, IAX2/<alias>, Local/<exten>@<context>, or digits to dial out
    Column("destination", String(128), nullable=False),
    Column(
        "account_id",
        Integer(),
        ForeignKey("accounts.id", ondelete="SET NULL"),
        nullable=True,  # an unassigned DID refuses its calls
    ),
    Column(
        "provider_trunk_id",
        Integer(),
        ForeignKey("trunks.id", ondelete="SET NULL"),
        nullable=True,
    ),
    Column("provider_cost", Money(), nullable=False, server_default="0"),  # per minute
    Column("retail_rate", Money(), nullable=False, server_default="0"),  # per minute
    Column("retail_monthly", Money(), nullable=False, server_default="0"),
    Column("status", String(8), nullable=False, server_default=EnabledStatus.ACTIVE.value),
    Column("description", Text(), nullable=False, server_default=""),
    _created(),
    CheckConstraint(_in("status", EnabledStatus), name="status"),
    CheckConstraint(
        "provider_cost >= 0 AND retail_rate >= 0 AND retail_monthly >= 0", name="prices"
    ),
    CheckConstraint("length(number) > 0 AND length(destination) > 0", name="identifiers"),
)
Index("ix_dids_account", dids.c.account_id)

packages = Table(
    "packages",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("period", String(8), nullable=False, server_default=PackagePeriod.MONTHLY.value),
    Column("quantity", Integer(), nullable=False, server_default="0"),  # minutes or calls
    Column("price", Money(), nullable=False, server_default="0"),  # per period and unit
    Column("prefixes", Text(), nullable=False, server_default=""),  # comma-separated; "" = all
    Column("description", Text(), nullable=False, server_default=""),
    _created(),
    CheckConstraint(_in("kind", PackageKind), name="kind"),
    CheckConstraint(_in("period", PackagePeriod), name="period"),
    CheckConstraint("quantity >= 0", name="quantity"),
    CheckConstraint("price >= 0", name="price"),
)

account_packages = Table(
    "account_packages",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column(
        "account_id",
        Integer(),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "package_id",
        Integer(),
        ForeignKey("packages.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("quantity", Integer(), nullable=False, server_default="1"),  # units of the package
    Column("auto_decrement", Boolean(), nullable=False, server_default="0"),
    _created(),
    UniqueConstraint("account_id", "package_id", name="uq_account_packages_account_package"),
    CheckConstraint("quantity > 0", name="quantity"),
)
Index("ix_account_packages_package", account_packages.c.package_id)

package_usage = Table(
    "package_usage",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column(
        "account_package_id",
        Integer(),
        ForeignKey("account_packages.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("uniqueid", String(64), nullable=False),  # one package per call
    Column("asterisk", String(64), nullable=False, server_default=""),
    Column("period", String(16), nullable=False),  # 2026-11, 2026-W47, 2026-11-22
    Column("seconds", Integer(), nullable=False, server_default="0"),  # held, then used
    Column("status", String(8), nullable=False, server_default=PackageUseStatus.OPEN.value),
    Column("expires_at", UtcDateTime(), nullable=False),  # an open hold counts until then
    _created(),
    CheckConstraint(_in("status", PackageUseStatus), name="status"),
    CheckConstraint("seconds >= 0", name="seconds"),
    UniqueConstraint("asterisk", "uniqueid", name="uq_package_usage_asterisk_uniqueid"),
)
Index(
    "ix_package_usage_account_package_period",
    package_usage.c.account_package_id,
    package_usage.c.period,
)

period_charges = Table(
    "period_charges",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column(
        "account_id",
        Integer(),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("kind", String(8), nullable=False),
    Column("ref_id", Integer(), nullable=False),  # the package id or the DID id
    Column("period", String(16), nullable=False),
    Column("amount", Money(), nullable=False),
    Column("description", Text(), nullable=False, server_default=""),
    _created(),
    UniqueConstraint(
        "account_id", "kind", "ref_id", "period", name="uq_period_charges_account_kind_ref"
    ),
    CheckConstraint(_in("kind", ChargeKind), name="kind"),
    CheckConstraint("amount >= 0", name="amount"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column(
        "account_id",
        Integer(),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", String(64), nullable=False),
    Column("recipient", String(128), nullable=False),  # an e-mail address or a phone number
    Column("area", String(16), nullable=False),
    Column("operator", String(2), nullable=False),
    Column("threshold", Money(), nullable=False),
    Column("state", String(8), nullable=False, server_default=AlertState.ARMED.value),
    Column("last_value", Money(), nullable=True),
    Column("fired_at", UtcDateTime(), nullable=True),
    _created(),
    UniqueConstraint("account_id", "name", name="uq_alerts_account_name"),
    CheckConstraint(_in("area", AlertArea), name="area"),
    CheckConstraint(_in("operator", AlertOperator), name="operator"),
    CheckConstraint(_in("state", AlertState), name="state"),
)

alert_notifications = Table(
    "alert_notifications",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column(
        "alert_id",
        Integer(),
        ForeignKey("alerts.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("channel", String(8), nullable=False),
    Column("recipient", String(128), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("body", Text(), nullable=False),
    Column("status", String(8), nullable=False, server_default=NotificationStatus.PENDING.value),
    Column("attempts", Integer(), nullable=False, server_default="0"),
    Column("error", Text(), nullable=False, server_default=""),
    _created(),
    Column("sent_at", UtcDateTime(), nullable=True),
    CheckConstraint(_in("channel", NotificationChannel), name="channel"),
    CheckConstraint(_in("status", NotificationStatus), name="status"),
)
Index("ix_alert_notifications_status", alert_notifications.c.status)

# --- the web console (issue 13) -----------------------------------------------------------------
# Operators log in to the console with a password (an argon2 hash; the password is never stored)
# and call the JSON API with a bearer token (its sha256 hex; the token is shown once).
operators = Table(
    "operators",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column("login", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    _created(),
    Column("disabled", Boolean(), nullable=False, server_default="0"),
)
Index("ux_operators_login_lower", func.lower(operators.c.login), unique=True)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer(), primary_key=True),
    Column(
        "operator_id",
        Integer(),
        ForeignKey("operators.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", String(64), nullable=False, server_default=""),
    Column("token_hash", String(64), nullable=False, unique=True),  # sha256 hex of the token
    _created(),
    Column("last_used_at", UtcDateTime(), nullable=True),
    Column("revoked", Boolean(), nullable=False, server_default="0"),
)
Index("ix_api_tokens_operator_id", api_tokens.c.operator_id)
