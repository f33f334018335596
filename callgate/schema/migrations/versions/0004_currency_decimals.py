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


def upgrade() -> None:
    with op.batch_alter_table("currencies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("decimals", sa.Integer(), server_default="2", nullable=False)
        )
        batch_op.create_check_constraint(
            op.f("ck_currencies_decimals_range"), "decimals >= 0 AND decimals <= 5"
        )


def downgrade() -> None:
    with op.batch_alter_table("currencies", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_currencies_decimals_range"), type_="check")
        batch_op.drop_column("decimals")
