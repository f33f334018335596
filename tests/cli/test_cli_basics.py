"""The root group, `config show`, `db upgrade|current`, the start-up check, help everywhere."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from callgate.cli._common import EXIT_STARTUP_FAILURE, engine_for, require_migrated, run
from callgate.cli.main import cli
from callgate.config import load_settings
from callgate.schema.migrate import head_revisions


def test_config_show_json_masks_secrets() -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["--database-url", "postgresql+asyncpg://cg:pw@db/cg", "config", "show", "--json"],
        env={"CALLGATE_AMI_SECRET": "hunter2", "CALLGATE_AGI_PORT": "4600"},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["database_url"] == "postgresql+asyncpg://cg:********@db/cg"
    assert data["ami"]["secret"] == "********"
    assert data["agi"]["port"] == 4600
    assert "hunter2" not in result.output


def test_bad_setting_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["config", "show"], env={"CALLGATE_AGI_PORT": "x"})
    assert result.exit_code == 2
    assert "port" in result.output


@pytest.mark.parametrize(
    "empty_db_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)
def test_db_upgrade_then_current(empty_db_url: str) -> None:
    runner = CliRunner()
    env = {"CALLGATE_DATABASE_URL": empty_db_url}
    pending = runner.invoke(cli, ["db", "current"], env=env)
    assert pending.exit_code == 1
    assert "pending" in pending.output
    upgraded = runner.invoke(cli, ["db", "upgrade"], env=env)
    assert upgraded.exit_code == 0, upgraded.output
    current = runner.invoke(cli, ["db", "current"], env=env)
    assert current.exit_code == 0, current.output
    assert current.stdout.strip() == ", ".join(head_revisions())


@click.command()
@click.pass_context
def _fake_serve(ctx: click.Context) -> None:
    async def _check() -> None:
        async with engine_for(ctx.obj) as engine:
            await require_migrated(engine)

    run(_check())
    click.echo("started")


@pytest.mark.parametrize(
    "empty_db_url", ["sqlite", pytest.param("pg", marks=pytest.mark.pg)], indirect=True
)
def test_server_start_refused_while_migrations_pending(empty_db_url: str) -> None:
    settings = load_settings(environ={"CALLGATE_DATABASE_URL": empty_db_url})
    runner = CliRunner()
    refused = runner.invoke(_fake_serve, [], obj=settings)
    assert refused.exit_code == EXIT_STARTUP_FAILURE
    assert "pending migration" in refused.output and "callgate db upgrade" in refused.output
    assert runner.invoke(cli, ["db", "upgrade"], env={"CALLGATE_DATABASE_URL": empty_db_url})
    started = runner.invoke(_fake_serve, [], obj=settings)
    assert started.exit_code == 0 and "started" in started.output


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        out.append(path)
        if isinstance(command, click.Group):
            out.extend(_commands(command, path))
    return out


def test_every_command_has_help() -> None:
    runner = CliRunner()
    commands = _commands(cli)
    assert ("db", "upgrade") in commands and ("config", "show") in commands
    for path in commands:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, path
        group = cli
        command: click.Command = group
        for part in path:
            assert isinstance(command, click.Group)
            command = command.commands[part]
        assert command.help and command.help.strip(), f"{' '.join(path)} has no help text"
