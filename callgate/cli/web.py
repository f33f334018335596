"""``callgate web``: the web console alone (``callgate serve`` runs it too when ``[web]
enabled``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket

import click
import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.cli._common import app, require_migrated, startup_failure
from callgate.config import Settings
from callgate.store.db import create_engine
from callgate.web.app import create_app, load_secret

log = logging.getLogger(__name__)


@click.command()
@click.option("--host", default=None, help="Address to listen on (setting web.host).")
@click.option("--port", type=int, default=None, help="Port to listen on (setting web.port).")
def web(host: str | None, port: int | None) -> None:
    """Serve the web console until SIGTERM/SIGINT (loopback 127.0.0.1:8080 by default).

    Exits with code 3 when it cannot start: the database is unreachable, migrations are
    pending, or the address is taken.
    """
    settings = app().settings
    settings = dataclasses.replace(
        settings,
        web=dataclasses.replace(
            settings.web,
            host=settings.web.host if host is None else host,
            port=settings.web.port if port is None else port,
        ),
    )
    asyncio.run(_web(settings))


def bind(settings: Settings) -> socket.socket:
    """The console's listening socket; raises OSError when the address is taken."""
    host, port = settings.web.host, settings.web.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def web_server(settings: Settings, engine: AsyncEngine) -> uvicorn.Server:
    """A uvicorn server for the console over ``engine`` (not started: ``_serve(sockets=...)``
    runs it under the caller's signal handling)."""
    secret = await load_secret(settings, engine)
    application = create_app(settings, engine, secret=secret)
    config = uvicorn.Config(
        application,
        host=settings.web.host,
        port=settings.web.port,
        log_config=None,  # the CLI's one logging configuration
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )
    return uvicorn.Server(config)


async def _web(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    try:
        await require_migrated(engine)
        try:
            server = await web_server(settings, engine)
        except ValueError as exc:  # a [web] setting that cannot be used
            startup_failure(str(exc))
        try:
            sock = bind(settings)
        except OSError as exc:
            startup_failure(f"cannot listen on {settings.web.host}:{settings.web.port}: {exc}")
        click.echo(
            f"callgate web console on http://{settings.web.host}:{sock.getsockname()[1]}/",
            err=True,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # stop cleanly, exit 0
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        try:
            with sock:
                # uvicorn's _serve: serve() would re-raise the signal after stopping (exit -15)
                await server._serve(sockets=[sock])
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    finally:
        await engine.dispose()
