"""DID and package charges are payment rows: every balance movement shows in `payments list`

Revision ID: 0009
Revises: 0005
Create Date: 2026-12-06 12:40:00

``callgate dids charge`` and ``callgate packages charge`` moved balances with only a
``period_charges`` row (the once-per-period key), which no payment list or account view showed.
Payments gain the kinds ``did_charge`` and ``package_charge`` (completed, no tax, credit =
-amount), and every existing period charge gets its payment row, so the completed credits of an
account minus its call costs add up to its balance again.

On SQLite the CHECK constraint changes by rebuilding ``payments`` (batch mode): no table refers
to ``payments`` by foreign key, so the rebuild breaks nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = ("refill", "payment", "adjustment")
_NEW = (*_OLD, "did_charge", "package_charge")
_CHARGE_KINDS = {"did": "did_charge", "package": "package_charge"}


def _check(kinds: Sequence[str]) -> str:
    return "kind IN ({})".format(", ".join(f"'{k}'" for k in kinds))


def _set_kinds(kinds: Sequence[str]) -> None:
    if op.get_bind().dialect.name == "sqlite":
        with warnings.catch_warnings():
            # batch mode reflects accounts (payments refer to it) and cannot read 0003's
            # expression indexes; accounts is not rebuilt
            warnings.filterwarnings("ignore", message="Skipped unsupported reflection of expression")
            with op.batch_alter_table("payments", recreate="always") as batch_op:
                batch_op.drop_constraint(op.f("ck_payments_kind"), type_="check")
                batch_op.create_check_constraint(op.f("ck_payments_kind"), _check(kinds))
        return
    op.drop_constraint(op.f("ck_payments_kind"), "payments", type_="check")
    op.create_check_constraint(op.f("ck_payments_kind"), "payments", _check(kinds))


def upgrade() -> None:
    _set_kinds(_NEW)
    for charge_kind, payment_kind in _CHARGE_KINDS.items():
        op.execute(
            "INSERT INTO payments (account_id, kind, status, amount, tax_percent, tax_amount, "
            "credit, currency, description, created_at, completed_at) "
            f"SELECT pc.account_id, '{payment_kind}', 'completed', pc.amount, 0, 0, -pc.amount, "
            "(SELECT code FROM currencies WHERE is_base), pc.description, pc.created_at, "
            f"pc.created_at FROM period_charges pc WHERE pc.kind = '{charge_kind}' "
            "ORDER BY pc.id"
        )


def downgrade() -> None:
    # the period_charges rows stay: they were the only record before this revision
    op.execute(
        "DELETE FROM payments WHERE kind IN ({})".format(
            ", ".join(f"'{k}'" for k in _CHARGE_KINDS.values())
        )
    )
    _set_kinds(_OLD)
