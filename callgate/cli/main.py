"""The ``callgate`` command: the root group and its global options."""

from __future__ import annotations

import logging.config
from typing import Any

import click

from callgate import __version__
from callgate.cli import (
    accounts,
    confgen,
    config_cmd,
    db,
    demo,
    friends,
    operators,
    payments,
    plans,
    serve,
    simulate,
    web,
)
from callgate.cli import alerts as alerts_cmd
from callgate.cli import calls as calls_cmd
from callgate.cli import cdr as cdr_cmd
from callgate.cli import channels as channels_cmd
from callgate.cli import contacts as contacts_cmd
from callgate.cli import currencies as currencies_cmd
from callgate.cli import dids as dids_cmd
from callgate.cli import ips as ips_cmd
from callgate.cli import operator_tokens as _operator_tokens  # noqa: F401 - adds operators token*
from callgate.cli import packages as packages_cmd
from callgate.cli import recordings as recordings_cmd
from callgate.cli import stats as stats_cmd
from callgate.cli._common import AppContext
from callgate.config import SettingsError, load_settings


def configure_logging(level: str) -> None:
    """The one logging configuration (only the CLI configures logging)."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "plain": {
                    "format": "%(asctime)s %(levelname)s %(name)s [%(uniqueid)s]: %(message)s"
                },
            },
            "filters": {"uniqueid": {"()": "callgate.agi.session.UniqueidLogFilter"}},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "plain",
                    "filters": ["uniqueid"],
                    "stream": "ext://sys.stderr",
                }
            },
            "loggers": {"alembic": {"level": "WARNING"}},
            "root": {"level": level.upper(), "handlers": ["stderr"]},
        }
    )
    # The format names no source line, thread or process: do not compute them for every record
    # (the logging HOWTO's "Optimization"; a call's log line costs 8.3 -> 6.2 us).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


@click.group()
@click.version_option(__version__, prog_name="callgate")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML configuration file (default: $CALLGATE_CONFIG).",
)
@click.option(
    "--database-url",
    default=None,
    help="Database URL (env CALLGATE_DATABASE_URL; default sqlite+aiosqlite:///callgate.db).",
)
@click.option("--log-level", default=None, help="Log level (env CALLGATE_LOG_LEVEL).")
@click.pass_context
def cli(
    ctx: click.Context, config_file: str | None, database_url: str | None, log_level: str | None
) -> None:
    """callgate: call control and real-time billing for Asterisk."""
    overrides: dict[str, Any] = {"database_url": database_url, "log_level": log_level}
    try:
        settings = load_settings(config_file=config_file, overrides=overrides)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from exc
    configure_logging(settings.log_level)
    ctx.obj = AppContext(settings=settings)


cli.add_command(config_cmd.config)
cli.add_command(db.db)
cli.add_command(plans.plans)
cli.add_command(plans.tables)
cli.add_command(plans.trunks)
cli.add_command(plans.rates)
cli.add_command(accounts.accounts)
cli.add_command(payments.payments)
cli.add_command(serve.serve)
cli.add_command(simulate.simulate)
cli.add_command(demo.demo)
cli.add_command(confgen.confgen)
accounts.accounts.add_command(friends.friend)
cli.add_command(calls_cmd.calls)
cli.add_command(cdr_cmd.cdr)
cli.add_command(channels_cmd.channels)
cli.add_command(stats_cmd.stats)
accounts.accounts.add_command(ips_cmd.ip)
accounts.accounts.add_command(ips_cmd.cli_rule)
accounts.accounts.add_command(contacts_cmd.contact)
cli.add_command(dids_cmd.dids)
cli.add_command(packages_cmd.packages)
cli.add_command(alerts_cmd.alerts)
cli.add_command(recordings_cmd.recordings)
cli.add_command(currencies_cmd.currencies)
cli.add_command(operators.operators)
cli.add_command(web.web)


def main() -> None:
    cli(prog_name="callgate")
