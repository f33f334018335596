"""``callgate confgen``: Asterisk configuration from callgate's friends.

``render`` prints a file, ``write`` writes the include files (atomically, only when changed) and
with ``--reload`` reloads the Asterisk modules over AMI, showing Asterisk's answer (a refused
reload exits 1). ``status`` says whether friends changed since the last write (A2Billing's red
"regenerate" button). ``realtime init|sync`` fill Asterisk's standard Realtime tables instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from callgate.ami.errors import AmiError
from callgate.cli._common import app, echo_json, engine_for, run
from callgate.confgen import realtime, service
from callgate.confgen.errors import ConfgenError
from callgate.confgen.files import WriteResult
from callgate.confgen.reload import ReloadResult, reload_over_ami
from callgate.confgen.render import FILE_NAMES, snippet
from callgate.confgen.service import FILE_TARGETS
from callgate.config import Settings
from callgate.store.db import create_engine
from callgate.store.friends import ConfTarget

_FILE_CHOICES = [t.value for t in service.FILE_TARGETS]


@click.group()
def confgen() -> None:
    """Asterisk configuration: SIP/PJSIP/IAX friend files, Realtime tables, reload."""


def _settings_targets(settings: Settings) -> list[ConfTarget]:
    out: list[ConfTarget] = []
    for name in settings.confgen.formats:
        if name not in _FILE_CHOICES:
            raise click.UsageError(
                f"setting confgen.formats: unknown format {name!r} (use {', '.join(_FILE_CHOICES)})"
            )
        out.append(ConfTarget(name))
    return out


def _load() -> service.Snapshot:
    async def _go() -> service.Snapshot:
        async with engine_for(app().settings) as engine:
            return await service.load_snapshot(engine)

    return run(_go())


@confgen.command("render")
@click.option(
    "--sip", "what", flag_value="sip", help="sip_callgate.conf (chan_sip, Asterisk <= 20)."
)
@click.option("--pjsip", "what", flag_value="pjsip", help="pjsip_callgate.conf.")
@click.option("--iax", "what", flag_value="iax", help="iax_callgate.conf.")
@click.option("--extconfig", "what", flag_value="extconfig", help="The extconfig.conf snippet.")
@click.option("--sorcery", "what", flag_value="sorcery", help="The sorcery.conf snippet.")
def render_cmd(what: str | None) -> None:
    """Print one generated file (or a Realtime snippet) to stdout; nothing is written."""
    if what is None:
        raise click.UsageError("give --pjsip, --sip, --iax, --extconfig or --sorcery")
    try:
        if what in ("extconfig", "sorcery"):
            text = snippet(what)
        else:
            target = ConfTarget(what)
            text = service.render_files(_load(), [target])[target]
    except ConfgenError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(text, nl=False)


def _echo_reloads(results: Sequence[ReloadResult]) -> None:
    for result in results:
        status = "ok" if result.ok else "FAILED"
        click.echo(f"reload {result.target.value}: {status}: {result.command} -> {result.answer}")


@confgen.command("write")
@click.option("--dir", "directory", default=None, help="Output folder (default: confgen.dir).")
@click.option("--sip", "chosen", multiple=True, flag_value="sip", help="Write sip_callgate.conf.")
@click.option(
    "--pjsip", "chosen", multiple=True, flag_value="pjsip", help="Write pjsip_callgate.conf."
)
@click.option("--iax", "chosen", multiple=True, flag_value="iax", help="Write iax_callgate.conf.")
@click.option("--reload", "do_reload", is_flag=True, help="Reload the modules over AMI after.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def write_cmd(
    directory: str | None, chosen: tuple[str, ...], do_reload: bool, as_json: bool
) -> None:
    """Write the include files (default: the formats of confgen.formats) and clear the stale
    flag; only files whose content changed are replaced (atomically). With --reload, reload
    each written format over AMI and show Asterisk's answer; a failed reload exits 1."""
    settings = app().settings
    targets = [ConfTarget(c) for c in dict.fromkeys(chosen)] or _settings_targets(settings)
    folder = directory or settings.confgen.dir
    snapshot = _load()
    try:
        texts = service.render_files(snapshot, targets)
        results = service.write_files(folder, texts)
    except ConfgenError as exc:
        raise click.ClickException(f"nothing written: {exc}") from exc
    except OSError as exc:
        raise click.ClickException(f"cannot write in {folder}: {exc}") from exc

    async def _clear() -> None:
        async with engine_for(settings) as engine:
            await service.clear_written(engine, snapshot, targets)

    run(_clear())
    reloads: list[ReloadResult] = []
    if do_reload:
        try:
            reloads = run(reload_over_ami(settings.ami, targets))
        except AmiError as exc:
            _echo_written(results, reloads, as_json)
            raise click.ClickException(
                f"files written, but AMI at {settings.ami.host}:{settings.ami.port} failed: {exc}"
            ) from exc
    _echo_written(results, reloads, as_json)
    failed = [r for r in reloads if not r.ok]
    if failed:
        raise click.ClickException(
            "Asterisk refused the reload: "
            + "; ".join(f"{r.command} -> {r.answer}" for r in failed)
        )


def _echo_written(
    results: Sequence[WriteResult], reloads: Sequence[ReloadResult], as_json: bool
) -> None:
    if as_json:
        echo_json(
            {
                "files": [
                    {"path": str(r.path), "changed": r.changed, "bytes": r.size} for r in results
                ],
                "reloads": [
                    {"target": r.target.value, "command": r.command, "ok": r.ok,
                     "output": list(r.output)}
                    for r in reloads
                ],
            }
        )  # fmt: skip
        return
    for r in results:
        click.echo(f"{'written' if r.changed else 'unchanged'}: {r.path}")
    _echo_reloads(reloads)


@confgen.command("status")
@click.option("--check", is_flag=True, help="Exit 1 when something is stale (for monitoring).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_cmd(check: bool, as_json: bool) -> None:
    """Say whether what the generated files (and Realtime) show changed since they were last
    written: friends, the accounts that own them, their ingress IPs.

    Shows the formats of confgen.formats, every other include file present in confgen.dir
    (sip_callgate.conf written with --sip...), and Realtime once it has been synced."""
    settings = app().settings
    snapshot = _load()
    shown: list[ConfTarget] = list(_settings_targets(settings))
    folder = Path(settings.confgen.dir)
    shown += [t for t in FILE_TARGETS if t not in shown and (folder / FILE_NAMES[t]).exists()]
    if snapshot.realtime_owned is not None:
        shown.append(ConfTarget.REALTIME)
    data: dict[str, Any] = {}
    for target in shown:
        mark = snapshot.stale.get(target)
        data[target.value] = (
            {"stale": False}
            if mark is None
            else {"stale": True, "since": mark.at, "reason": mark.reason}
        )
    if as_json:
        echo_json(data)
    else:
        for name, entry in data.items():
            if entry["stale"]:
                how = "run `callgate confgen realtime sync`" if name == "realtime" else (
                    "run `callgate confgen write --reload`")  # fmt: skip
                click.echo(
                    f"{name}: STALE since {entry['since'].isoformat()} ({entry['reason']}); {how}"
                )
            else:
                click.echo(f"{name}: up to date")
    if check and any(entry["stale"] for entry in data.values()):
        click.get_current_context().exit(1)


@confgen.group("realtime")
def realtime_group() -> None:
    """Asterisk's Realtime tables (sippeers, iaxfriends, ps_endpoints, ps_auths, ps_aors,
    ps_endpoint_id_ips), in callgate's database or another (--realtime-url)."""


_URL_OPTION = click.option(
    "--realtime-url",
    default=None,
    help="Database of the Realtime tables (default: confgen.database_url, else callgate's).",
)


def _realtime_url(settings: Settings, url: str | None) -> str:
    return url or settings.confgen.database_url or settings.database_url


@realtime_group.command("init")
@_URL_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def realtime_init_cmd(realtime_url: str | None, as_json: bool) -> None:
    """Create the Realtime tables that are absent (existing ones are left as they are). With
    --json, prints {"created": [tables], "existing": [tables]}."""
    url = _realtime_url(app().settings, realtime_url)

    async def _init() -> realtime.InitReport:
        engine = create_engine(url)
        try:
            return await service.init_realtime(engine)
        finally:
            await engine.dispose()

    try:
        report = run(_init())
    except ConfgenError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        echo_json({"created": list(report.created), "existing": list(report.existing)})
        return
    for name in report.created:
        click.echo(f"created: {name}")
    for name in report.existing:
        click.echo(f"exists:  {name}")


@realtime_group.command("sync")
@_URL_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def realtime_sync_cmd(realtime_url: str | None, as_json: bool) -> None:
    """Upsert today's friends into the Realtime tables and delete the rows of removed friends
    (only rows callgate wrote; another row with the same name is an error, never overwritten)."""
    settings = app().settings
    url = _realtime_url(settings, realtime_url)

    async def _sync() -> realtime.SyncReport:
        async with engine_for(settings) as engine:
            other = create_engine(url)
            try:
                return await service.sync_realtime(engine, other)
            finally:
                await other.dispose()

    try:
        report = run(_sync())
    except ConfgenError as exc:
        raise click.ClickException(str(exc)) from exc
    data = {
        name: {
            "inserted": report.inserted[name],
            "updated": report.updated[name],
            "deleted": report.deleted[name],
            "unchanged": report.unchanged[name],
        }
        for name in report.inserted
    }
    if as_json:
        echo_json(data)
        return
    for name, counts in data.items():
        click.echo(
            f"{name}: {counts['inserted']} inserted, {counts['updated']} updated, "
            f"{counts['deleted']} deleted, {counts['unchanged']} unchanged"
        )
