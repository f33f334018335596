"""The call path implementations under test (``[database] call_path``), built as serve builds
them (:func:`callgate.cli.runtime.open_call_path`).

``LEAN_BACKENDS`` lists the backends that have a lean implementation; a flow test parametrised
with the ``call_path`` fixture (tests/conftest.py) skips ``lean`` on the others.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.cli.runtime import CallPath, open_call_path
from callgate.config import DbSettings, Settings
from callgate.schema.tables import AccountStatus
from callgate.store.accounts import Account

LEAN_BACKENDS = frozenset({"pg", "sqlite"})


def backend(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "pg"


async def open_test_call_path(
    name: str, engine: AsyncEngine, *, server: str = "", grace_seconds: int = 60
) -> CallPath:
    """The account lookup and ledger of call path ``name`` ("core", "lean") on ``engine``'s
    database; close it with ``await path.close()``."""
    settings = Settings(database=DbSettings(call_path=name))
    return await open_call_path(settings, engine, grace_seconds=grace_seconds, server=server)


def used_at(at: datetime) -> dict[str, Any]:
    """The columns a call writes on its account (first and last use, the count), set by hand
    beside :func:`every_account_field`."""
    return {"first_use_at": at, "last_use_at": at + timedelta(hours=1), "call_count": 4}


def check_decoded(lean: Account, core: Account, at: datetime) -> None:
    """A lean ledger's account equals the core's, field by field (an account made with
    :func:`every_account_field` and :func:`used_at` at ``at``)."""
    assert lean == core
    assert (lean.status, lean.portal_access, lean.last_use_at) == (
        AccountStatus.SUSPENDED,
        False,
        at + timedelta(hours=1),
    )


def every_account_field(expires_at: datetime) -> dict[str, Any]:
    """``create_account`` arguments that set every field of an account a caller can set to a
    value other than its default: a lean ledger's decoding of an account row is checked
    against the core's field by field."""
    return {
        "alias": "Every",
        **{name: f"{name}-x" for name in ("first_name", "last_name", "company", "phone")},
        **{name: f"{name}-y" for name in ("address", "city", "state", "country", "zipcode")},
        "email": "every@example.com",
        "website": "https://example.com",
        "paypal_email": "pay@example.com",
        "status": "suspended",
        "language": "fr",
        "debit_limit": Decimal("3.25"),
        "minimum_payment": Decimal("1.5"),
        "tax_percent": Decimal("19.6"),
        "portal_access": False,
        "channel_limit": 3,
        "cps_limit": 2,
        "expiry_mode": "at_date",
        "expires_at": expires_at,
        "expiry_days": 30,
        "public_notes": "public",
        "private_notes": "private",
    }
