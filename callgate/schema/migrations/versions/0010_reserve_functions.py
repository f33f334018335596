"""PostgreSQL: the call path's reserve in one round trip when nothing changed meanwhile

Revision ID: 0010
Revises: 0006
Create Date: 2026-12-06 22:50:00

Two SQL functions for :mod:`callgate.store.lean_pg` (PostgreSQL only; SQLite has no server
round trips to save):

- ``callgate_call_state(account, exclude, since, address, count_address_channels,
  count_address_cps)``: what a reserve decides on beside the account's row: the row's version
  (``xmin``, which every UPDATE of the row changes), the sum of the account's open reservations
  (without the reservation ``exclude``), and the counts its channel and CPS limits and the IP
  entry's limits need (NULL when not limited). STABLE: it reads with the snapshot of the
  statement that calls it, so the account's columns read beside it are of the same moment.
- ``callgate_reserve_if_unchanged(...)``: locks the account row (FOR NO KEY UPDATE, the lock
  order of every ledger path), reads the state again in a fresh snapshot (a new statement of a
  VOLATILE function: one taken after the lock was granted), and inserts the reservation only if
  the state is the one the caller priced the call on; returns whether it did. The caller reads
  the state in one statement, decides in Python (the same checks and pricer as every ledger),
  then calls this: two round trips instead of BEGIN, lock, read, insert and COMMIT (four),
  and the decision is made on exactly what the lock then protects. When something changed (a
  concurrent call of the same account), it returns false having changed nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CALL_STATE = """
CREATE OR REPLACE FUNCTION callgate_call_state(
  p_account integer, p_exclude integer, p_since timestamptz, p_address text,
  p_count_address_channels boolean, p_count_address_cps boolean)
RETURNS TABLE (row_version text, reserved numeric, in_use bigint, recent bigint,
  address_in_use bigint, address_recent bigint)
LANGUAGE sql STABLE AS $$
SELECT a.xmin::text,
  (SELECT coalesce(sum(r.amount), 0) FROM reservations r
    WHERE r.account_id = a.id AND r.status = 'open' AND r.id <> p_exclude),
  CASE WHEN a.channel_limit IS NOT NULL THEN
    (SELECT count(*) FROM reservations r WHERE r.account_id = a.id AND r.status = 'open')
  END,
  CASE WHEN a.cps_limit IS NOT NULL THEN
    (SELECT count(*) FROM reservations r WHERE r.account_id = a.id AND r.created_at > p_since)
  END,
  CASE WHEN p_address <> '' AND p_count_address_channels THEN
    (SELECT count(*) FROM reservations r WHERE r.source_address = p_address
      AND r.status = 'open')
  END,
  CASE WHEN p_address <> '' AND p_count_address_cps THEN
    (SELECT count(*) FROM reservations r WHERE r.source_address = p_address
      AND r.created_at > p_since)
  END
FROM accounts a WHERE a.id = p_account
$$
"""

_RESERVE_IF_UNCHANGED = """
CREATE OR REPLACE FUNCTION callgate_reserve_if_unchanged(
  p_account integer, p_since timestamptz, p_address text,
  p_count_address_channels boolean, p_count_address_cps boolean,
  p_row_version text, p_reserved numeric, p_in_use bigint, p_recent bigint,
  p_address_in_use bigint, p_address_recent bigint,
  p_uniqueid text, p_asterisk text, p_amount numeric, p_granted_seconds integer,
  p_rate_id integer, p_trunk text, p_server text, p_created_at timestamptz,
  p_expires_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  state record;
BEGIN
  PERFORM 1 FROM accounts WHERE id = p_account FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  SELECT * INTO state FROM callgate_call_state(
    p_account, 0, p_since, p_address, p_count_address_channels, p_count_address_cps);
  IF state.row_version IS DISTINCT FROM p_row_version
     OR state.reserved IS DISTINCT FROM p_reserved
     OR state.in_use IS DISTINCT FROM p_in_use
     OR state.recent IS DISTINCT FROM p_recent
     OR state.address_in_use IS DISTINCT FROM p_address_in_use
     OR state.address_recent IS DISTINCT FROM p_address_recent THEN
    RETURN false;
  END IF;
  INSERT INTO reservations (uniqueid, asterisk, account_id, amount, granted_seconds, status,
    source_address, rate_id, trunk, server, created_at, expires_at)
  VALUES (p_uniqueid, p_asterisk, p_account, p_amount, p_granted_seconds, 'open',
    p_address, p_rate_id, p_trunk, p_server, p_created_at, p_expires_at);
  RETURN true;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_CALL_STATE)
    op.execute(_RESERVE_IF_UNCHANGED)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "DROP FUNCTION IF EXISTS callgate_reserve_if_unchanged("
        "integer, timestamptz, text, boolean, boolean, text, numeric, bigint, bigint, bigint,"
        " bigint, text, text, numeric, integer, integer, text, text, timestamptz, timestamptz)"
    )
    op.execute(
        "DROP FUNCTION IF EXISTS callgate_call_state("
        "integer, integer, timestamptz, text, boolean, boolean)"
    )
