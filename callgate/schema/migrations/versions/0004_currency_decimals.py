"""currency decimals: how many places an amount in a currency is shown with

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 04:55:00.000000

Balances are kept in the base currency; the card list and the account view also show them in the
account's currency (A2Billing's "BAL (CUR)"), with that currency's number of decimals (JPY 0,
USD 2, up to the 5 places money is kept with). Existing currencies get 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_CHECK = "decimals >= 0 AND decimals <= 5"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # no batch rebuild: dropping the old currencies table would break the accounts' foreign
        # keys; SQLite adds a column with its own CHECK in place
        op.execute(
            "ALTER TABLE currencies ADD COLUMN decimals INTEGER DEFAULT '2' NOT NULL "
            f"CONSTRAINT ck_currencies_decimals_range CHECK ({_CHECK})"
        )
        return
    op.add_column(
        "currencies", sa.Column("decimals", sa.Integer(), server_default="2", nullable=False)
    )
    op.create_check_constraint(op.f("ck_currencies_decimals_range"), "currencies", _CHECK)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f("ck_currencies_decimals_range"), "currencies", type_="check")
    op.drop_column("currencies", "decimals")
