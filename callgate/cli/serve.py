"""``callgate serve``: the FastAGI server (and, as they land, AMI listener and metrics)."""

from __future__ import annotations

import asyncio

import click

from callgate.agi.server import install_signal_handlers
from callgate.cli._common import app, require_migrated, startup_failure
from callgate.cli.runtime import StartupError, open_runtime, with_agi_port
from callgate.config import Settings
from callgate.store.db import create_engine


@click.command()
@click.option("--host", default=None, help="Address to listen on (setting agi.host).")
@click.option("--port", type=int, default=None, help="Port to listen on (setting agi.port).")
def serve(host: str | None, port: int | None) -> None:
    """Run the FastAGI server until SIGTERM/SIGINT, then drain the live calls.

    Exits with code 3 when it cannot start: the database is unreachable, migrations are
    pending, the rates cannot be loaded, or the address is taken.
    """
    settings = app().settings
    settings = with_agi_port(
        settings, host or settings.agi.host, port if port is not None else settings.agi.port
    )
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    await require_migrated(engine)
    try:
        runtime = await asyncio.wait_for(
            open_runtime(settings, engine=engine, monitoring=True), timeout=120
        )
    except (StartupError, TimeoutError) as exc:
        startup_failure(str(exc) or "start-up timed out")
    remove = install_signal_handlers(
        asyncio.get_running_loop(), runtime.server, settings.agi.drain_seconds
    )
    click.echo(f"callgate serving FastAGI on {settings.agi.host}:{runtime.server.port}", err=True)
    try:
        await runtime.server.wait_stopped()
    finally:
        remove()
        await runtime.stop(settings.agi.drain_seconds)
