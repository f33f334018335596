"""Reload the Asterisk module that reads a generated file, over AMI, and report its answer.

The CLI commands (recorded on Asterisk 22.10.1, see ``transcripts/README.md``):

* PJSIP: ``module reload res_pjsip.so`` -> ``Module 'res_pjsip.so' reloaded successfully.``
  (Asterisk 22 has no ``pjsip reload``: ``No such command``);
* chan_sip: ``sip reload`` (Asterisk <= 20; on 21+ ``No such command``, chan_sip is gone);
* chan_iax2: ``iax2 reload`` (its output is one empty line).

An error is never hidden: ``Response: Error`` (the client raises ``AmiActionError``) and
answers that say the reload did not happen (``No such module``, ``does not support reloads``...)
give a :class:`ReloadResult` with ``ok=False`` and Asterisk's own words.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from callgate.ami.client import AmiClient
from callgate.ami.errors import AmiActionError
from callgate.config import AmiSettings
from callgate.store.friends import ConfTarget

RELOAD_COMMANDS: dict[ConfTarget, str] = {
    ConfTarget.PJSIP: "module reload res_pjsip.so",
    ConfTarget.SIP: "sip reload",
    ConfTarget.IAX: "iax2 reload",
}

# Texts of cli.c / loader.c that mean the module was not reloaded although AMI said Success.
_FAILURE_MARKERS = (
    "no such command",
    "no such module",
    "does not support reload",
    "not found",
    "failed",
    "error",
    "not running",
    "is not loaded",
    "not properly initialized",
    "reload already in progress",
)


class CliRunner(Protocol):
    """What a reload needs from AMI (``callgate.ami.client.AmiClient`` is one)."""

    async def command(self, cli: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class ReloadResult:
    target: ConfTarget
    command: str
    ok: bool
    output: tuple[str, ...]  # Asterisk's Output lines (or its error message)

    @property
    def answer(self) -> str:
        """Asterisk's answer on one line ("(no output)" when it said nothing)."""
        text = " / ".join(line for line in self.output if line.strip())
        return text or "(no output)"


def reload_failed(output: Iterable[str]) -> bool:
    """True when a ``Response: Success`` output still says the reload did not happen."""
    text = "\n".join(output).lower()
    return any(marker in text for marker in _FAILURE_MARKERS)


async def reload_target(runner: CliRunner, target: ConfTarget) -> ReloadResult:
    """Run the reload command of ``target``; AMI errors other than ``Response: Error``
    (disconnected, timeout) propagate."""
    command = RELOAD_COMMANDS[target]
    try:
        lines = await runner.command(command)
    except AmiActionError as exc:
        output = tuple(exc.message.splitlines()) or ("error",)
        return ReloadResult(target, command, False, output)
    return ReloadResult(target, command, not reload_failed(lines), tuple(lines))


async def reload_targets(runner: CliRunner, targets: Iterable[ConfTarget]) -> list[ReloadResult]:
    """Reload each target in turn (all of them, even after a failure)."""
    return [await reload_target(runner, target) for target in targets]


async def reload_over_ami(
    ami: AmiSettings, targets: Iterable[ConfTarget], *, deadline: float = 10.0
) -> list[ReloadResult]:
    """Connect to Asterisk's AMI (``settings.ami``, events off), reload ``targets``, log off.

    Connection and login failures raise :class:`callgate.ami.errors.AmiError`; each AMI action
    has ``deadline`` seconds.
    """
    client = AmiClient(
        ami.host,
        ami.port,
        ami.username,
        ami.secret.value,
        events=False,
        md5=ami.md5,
        connect_timeout=deadline,
        action_timeout=deadline,
        name="confgen",
    )
    await client.connect()
    try:
        return await reload_targets(client, targets)
    finally:
        await client.close()
