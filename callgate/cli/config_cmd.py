"""``callgate config``: the effective configuration."""

from __future__ import annotations

import click

from callgate.cli._common import app, echo_json


@click.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(as_json: bool) -> None:
    """Print the effective settings (flags > environment > file > defaults); secrets masked."""
    data = app().settings.to_dict()
    if as_json:
        echo_json(data)
        return
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                click.echo(f"{key}.{sub} = {_fmt(subvalue)}")
        else:
            click.echo(f"{key} = {_fmt(value)}")


def _fmt(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
