"""``callgate db``: schema migrations."""

from __future__ import annotations

import click

from callgate.cli._common import app, echo_json, engine_for, run
from callgate.schema.migrate import current_revisions, head_revisions, pending_revisions, upgrade


@click.group()
def db() -> None:
    """Create and migrate the database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def upgrade_cmd(revision: str, as_json: bool) -> None:
    """Apply the pending migrations (creates the schema in an empty database). With --json,
    prints {"from": revision or null, "to": revision, "applied": [revisions, oldest first]}."""

    async def _go() -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
        async with engine_for(app().settings) as engine:
            before = await current_revisions(engine)
            pending_before = await pending_revisions(engine)
            await upgrade(engine, revision)
            pending_after = set(await pending_revisions(engine))
            after = await current_revisions(engine)
        return before, after, [r for r in pending_before if r not in pending_after]

    before, revisions, applied = run(_go())
    if as_json:
        echo_json({"from": _revision(before), "to": _revision(revisions), "applied": applied})
    click.echo(f"database at revision {', '.join(revisions) or '(none)'}", err=True)


def _revision(revisions: tuple[str, ...]) -> str | None:
    """One revision as text (the migrations are one line, so one head), None before the first."""
    return ", ".join(revisions) or None


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
