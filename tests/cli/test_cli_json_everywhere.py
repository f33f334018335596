"""Every command that changes something accepts ``--json`` (README, "Command-line conventions").

The test walks the whole click tree from the root group, so a new command fails here until it
either takes ``--json`` or is named below as read-only or long-running, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import click

from callgate.cli.main import cli

# Commands that change nothing (their output is the data itself: a file, a revision, a path) or
# that run until stopped. Everything else must take --json.
READ_ONLY_OR_LONG_RUNNING: dict[tuple[str, ...], str] = {
    ("accounts", "export"): "writes the accounts as CSV/XML",
    ("cdr", "export"): "writes the CDRs as CSV",
    ("rates", "export"): "writes a rate deck as CSV",
    ("confgen", "render"): "prints one generated file",
    ("db", "current"): "prints the revision",
    ("recordings", "path"): "prints one file path",
    ("serve",): "the FastAGI server: runs until stopped",
    ("web",): "the web console: runs until stopped",
}


def _leaves(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _leaves(sub, (*path, name))
    else:
        yield path


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group), path
        command = command.commands[name]
    return command


def _json_flag(command: click.Command) -> click.Option | None:
    for param in command.params:
        if isinstance(param, click.Option) and "--json" in param.opts:
            return param
    return None


def test_every_command_that_changes_something_takes_json() -> None:
    missing = [
        " ".join(path)
        for path in _leaves(cli)
        if path not in READ_ONLY_OR_LONG_RUNNING and _json_flag(_command(path)) is None
    ]
    assert missing == [], (
        "these commands lack --json; add it (one JSON document on stdout), or, if they change "
        f"nothing, list them in READ_ONLY_OR_LONG_RUNNING: {missing}"
    )


def test_json_is_a_plain_flag_everywhere() -> None:
    for path in _leaves(cli):
        flag = _json_flag(_command(path))
        if flag is not None:
            assert flag.is_flag and not flag.multiple, path
            assert flag.help, path


def test_the_exemptions_name_real_commands() -> None:
    leaves = set(_leaves(cli))
    stale = [p for p in READ_ONLY_OR_LONG_RUNNING if p not in leaves]
    assert stale == [], f"no such commands any more: drop them from the list: {stale}"


def test_the_walk_sees_the_nested_groups() -> None:
    leaves = set(_leaves(cli))
    assert {("accounts", "friend", "remove"), ("confgen", "realtime", "init")} <= leaves
    assert ("operators", "revoke-token") in leaves  # added to `operators` by another module
