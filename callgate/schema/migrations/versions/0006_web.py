"""web: operators and api_tokens for the web console and the JSON API

Revision ID: 0006
Revises: 0009
Create Date: 2026-12-06 12:30:00.000000

Operators log in to the console (``callgate web``) with a login, unique whatever its case, and a
password kept as an argon2 hash; API tokens are kept as the sha256 hex of the token. Two new
tables, nothing else changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import callgate.schema.types

revision: str = "0006"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _created() -> sa.Column[object]:
    return sa.Column(
        "created_at",
        callgate.schema.types.UtcDateTime(timezone=True),
        server_default=sa.text("(CURRENT_TIMESTAMP)"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("login", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        _created(),
        sa.Column("disabled", sa.Boolean(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operators")),
        sa.UniqueConstraint("login", name=op.f("uq_operators_login")),
    )
    op.create_index("ux_operators_login_lower", "operators", [sa.text("lower(login)")], unique=True)
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("operator_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), server_default="", nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        _created(),
        sa.Column("last_used_at", callgate.schema.types.UtcDateTime(timezone=True), nullable=True),
        sa.Column("revoked", sa.Boolean(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["operator_id"],
            ["operators.id"],
            name=op.f("fk_api_tokens_operator_id_operators"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index("ix_api_tokens_operator_id", "api_tokens", ["operator_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_api_tokens_operator_id", table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_index("ux_operators_login_lower", table_name="operators")
    op.drop_table("operators")
