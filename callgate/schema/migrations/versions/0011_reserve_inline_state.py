"""PostgreSQL: callgate_reserve_if_unchanged checks the state in simple statements of its own

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 06:55:00

The function of migration 0010 read the state after the lock through ``callgate_call_state``,
one query for every count whether the account has that limit or not. Measured with
``bench/pg_ops.py`` (PostgreSQL CPU of the reserve: the state read and this function), that
cost 0.795 ms a reserve, of which the check alone about 0.3 ms: a SQL function called from
PL/pgSQL is planned and run as a function of its own, and a query whose subqueries depend on
the parameters is planned again on every call. Here each check is a small statement of its own,
run only when it can matter: the row's version (a changed account row changes it, and an
unchanged row has the limits the state was read with), the sum of the open reservations, and
the counts of a channel or CPS limit only when the account (or the IP entry, by the
parameters) has one. Each is a new statement of a VOLATILE function, so its snapshot is taken
after the lock was granted and sees every reservation committed while the lock was waited for.
Same signature, same result as 0010's: only the cost changes.
"""


from __future__ import annotations

import runpy
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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
  v_version text;
  v_channel_limit integer;
  v_cps_limit integer;
BEGIN
  PERFORM 1 FROM accounts WHERE id = p_account FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  -- each read below is a statement of its own: its snapshot is taken after the lock
  SELECT a.xmin::text, a.channel_limit, a.cps_limit INTO v_version, v_channel_limit, v_cps_limit
    FROM accounts a WHERE a.id = p_account;
  -- a changed row changes its version; an unchanged one has the limits the state was read with
  IF v_version IS DISTINCT FROM p_row_version THEN
    RETURN false;
  END IF;
  IF (SELECT coalesce(sum(r.amount), 0) FROM reservations r
      WHERE r.account_id = p_account AND r.status = 'open') IS DISTINCT FROM p_reserved THEN
    RETURN false;
  END IF;
  IF v_channel_limit IS NOT NULL AND (SELECT count(*) FROM reservations r
      WHERE r.account_id = p_account AND r.status = 'open') IS DISTINCT FROM p_in_use THEN
    RETURN false;
  END IF;
  IF v_cps_limit IS NOT NULL AND (SELECT count(*) FROM reservations r
      WHERE r.account_id = p_account AND r.created_at > p_since) IS DISTINCT FROM p_recent THEN
    RETURN false;
  END IF;
  IF p_address <> '' AND p_count_address_channels AND (SELECT count(*) FROM reservations r
      WHERE r.source_address = p_address AND r.status = 'open')
      IS DISTINCT FROM p_address_in_use THEN
    RETURN false;
  END IF;
  IF p_address <> '' AND p_count_address_cps AND (SELECT count(*) FROM reservations r
      WHERE r.source_address = p_address AND r.created_at > p_since)
      IS DISTINCT FROM p_address_recent THEN
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
    op.execute(_RESERVE_IF_UNCHANGED)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # the body of migration 0010, read from it (alembic loads migrations by path)
    previous = runpy.run_path(str(Path(__file__).with_name("0010_reserve_functions.py")))
    op.execute(previous["_RESERVE_IF_UNCHANGED"])
