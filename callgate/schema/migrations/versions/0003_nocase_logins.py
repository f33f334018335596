"""nocase logins: aliases and contact e-mails unique whatever their case

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 04:20:00.000000

``ALICE`` could be created beside ``alice``: the plain UNIQUE constraints compare bytes. Unique
indexes on ``lower(alias)`` and ``lower(email)`` (expression indexes, on SQLite and PostgreSQL)
make a login one login in any case, and serve the case-insensitive lookups. A database that
already holds two logins differing only in case cannot take the index: the upgrade stops and
names them, so that the operator renames one first.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (
    ("ux_accounts_alias_lower", "accounts", "alias"),
    ("ux_contacts_email_lower", "contacts", "email"),
)


def _refuse_case_duplicates(table: str, column: str) -> None:
    rows = (
        op.get_bind()
        .execute(
            sa.text(
                f"SELECT lower({column}) AS login, count(*) AS n FROM {table} "
                f"GROUP BY lower({column}) HAVING count(*) > 1 ORDER BY lower({column})"
            )
        )
        .all()
    )
    if rows:
        shown = ", ".join(f"{r.login!r} ({r.n} times)" for r in rows[:10])
        raise RuntimeError(
            f"cannot make {table}.{column} unique whatever its case: these differ only in case: "
            f"{shown}; rename all but one of each, then upgrade again"
        )


def upgrade() -> None:
    for name, table, column in _INDEXES:
        _refuse_case_duplicates(table, column)
        op.create_index(name, table, [sa.text(f"lower({column})")], unique=True)


def downgrade() -> None:
    for name, table, _column in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
