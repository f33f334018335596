"""``callgate serve``: the FastAGI server, AMI listener, metrics and (``[web] enabled``) the web
console."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any

import click
import uvicorn

from callgate.agi.server import install_signal_handlers
from callgate.cli._common import app, require_migrated, startup_failure
from callgate.cli.runtime import StartupError, open_runtime, with_agi_port
from callgate.cli.web import bind, web_server
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
    run_with_loop(_serve(settings), event_loop_for(settings.agi.event_loop))


def event_loop_for(choice: str) -> str:
    """The event loop ``[agi] event_loop`` names: "asyncio" (the default), "uvloop", or "auto":
    uvloop when it is installed (as uvicorn's "auto"), else asyncio's. "uvloop" without uvloop
    installed is a start-up failure (exit 3), not a silent fallback."""
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not installed:
        startup_failure(
            "agi.event_loop = uvloop, but uvloop is not installed (pip install 'callgate[uvloop]')"
        )
    if choice == "auto":
        return "uvloop" if installed else "asyncio"
    return choice


def run_with_loop(coro: Coroutine[Any, Any, None], loop: str) -> None:
    """Run ``coro`` to completion on a new event loop of the kind ``loop`` names."""
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro)
    else:
        asyncio.run(coro)


async def _serve(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    await require_migrated(engine)
    try:
        runtime = await asyncio.wait_for(
            open_runtime(settings, engine=engine, monitoring=True), timeout=120
        )
    except (StartupError, TimeoutError) as exc:
        startup_failure(str(exc) or "start-up timed out")
    console: asyncio.Task[None] | None = None
    server: uvicorn.Server | None = None
    if settings.web.enabled:
        try:
            server = await web_server(settings, runtime.engine)
            sock = bind(settings)
        except (OSError, ValueError) as exc:
            await runtime.stop(0)
            startup_failure(
                f"cannot serve the web console on {settings.web.host}:{settings.web.port}: {exc}"
            )
        # uvicorn's _serve: without its own signal handlers, which are serve's below
        console = asyncio.create_task(server._serve(sockets=[sock]), name="web-console")
        click.echo(
            f"callgate web console on http://{settings.web.host}:{settings.web.port}/", err=True
        )
    remove = install_signal_handlers(
        asyncio.get_running_loop(), runtime.server, settings.agi.drain_seconds
    )
    uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    where = f"{settings.agi.host}:{runtime.server.port}"
    loop = "uvloop" if uvloop else "asyncio"
    click.echo(f"callgate serving FastAGI on {where} ({loop} event loop)", err=True)
    try:
        await runtime.server.wait_stopped()
    finally:
        remove()
        if server is not None and console is not None:
            server.should_exit = True
            await console
        await runtime.stop(settings.agi.drain_seconds)
