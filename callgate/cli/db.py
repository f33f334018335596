"""``callgate db``: schema migrations."""

from __future__ import annotations

import click

from callgate.cli._common import app, engine_for, run
from callgate.schema.migrate import current_revisions, head_revisions, pending_revisions, upgrade


@click.group()
def db() -> None:
    """Create and migrate the database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def upgrade_cmd(revision: str) -> None:
    """Apply the pending migrations (creates the schema in an empty database)."""

    async def _go() -> tuple[str, ...]:
        async with engine_for(app().settings) as engine:
            await upgrade(engine, revision)
            return await current_revisions(engine)

    revisions = run(_go())
    click.echo(f"database at revision {', '.join(revisions) or '(none)'}", err=True)


@db.command("current")
def current_cmd() -> None:
    """Print the database's revision, and whether migrations are pending (exit 1 if so)."""

    async def _go() -> tuple[tuple[str, ...], list[str]]:
        async with engine_for(app().settings) as engine:
            return await current_revisions(engine), await pending_revisions(engine)

    current, pending = run(_go())
    click.echo(", ".join(current) or "(none)")
    if pending:
        raise click.ClickException(
            f"{len(pending)} migration(s) pending ({', '.join(pending)}); head is "
            f"{', '.join(head_revisions())}: run `callgate db upgrade`"
        )
