"""calls keyed by the Asterisk server: (asterisk, uniqueid) instead of uniqueid

Two Asterisk boxes can issue the same uniqueid. Reservations, calls and package holds gain an
``asterisk`` column (the configured system name of the FastAGI peer, else its address) and their
unique key becomes (asterisk, uniqueid); the Asterisk CDRs record which Asterisk sent them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 04:45:00
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEYED = ("reservations", "calls", "package_usage")


def _asterisk() -> sa.Column[str]:
    return sa.Column("asterisk", sa.String(length=64), server_default="", nullable=False)


@contextmanager
def _quiet_reflection() -> Iterator[None]:
    """SQLite's batch mode reflects the tables it rebuilds and those they refer to (accounts);
    SQLAlchemy cannot reflect 0003's expression indexes and warns. They are not rebuilt here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipped unsupported reflection of expression")
        yield


def upgrade() -> None:
    with _quiet_reflection():
        _upgrade()


def downgrade() -> None:
    with _quiet_reflection():
        _downgrade()


def _upgrade() -> None:
    for table in _KEYED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(_asterisk())
            batch_op.drop_constraint(f"uq_{table}_uniqueid", type_="unique")
            batch_op.create_unique_constraint(
                f"uq_{table}_asterisk_uniqueid", ["asterisk", "uniqueid"]
            )
            if table == "calls":
                batch_op.create_index("ix_calls_uniqueid", ["uniqueid"], unique=False)
    with op.batch_alter_table("asterisk_cdrs", schema=None) as batch_op:
        batch_op.add_column(_asterisk())


def _downgrade() -> None:
    with op.batch_alter_table("asterisk_cdrs", schema=None) as batch_op:
        batch_op.drop_column("asterisk")
    for table in reversed(_KEYED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            if table == "calls":
                batch_op.drop_index("ix_calls_uniqueid")
            batch_op.drop_constraint(f"uq_{table}_asterisk_uniqueid", type_="unique")
            batch_op.create_unique_constraint(f"uq_{table}_uniqueid", ["uniqueid"])
            batch_op.drop_column("asterisk")
