"""Reload over a real AMI socket (FakeAmiServer answers as the recorded Asterisk 22.10.1)."""

from __future__ import annotations

from callgate.ami.client import AmiClient
from callgate.ami.fakeserver import FakeAmiServer
from callgate.confgen.reload import RELOAD_COMMANDS, reload_failed, reload_over_ami, reload_targets
from callgate.config import AmiSettings, Secret
from callgate.store.friends import ConfTarget


async def test_pjsip_and_iax_reload_succeed_and_sip_is_shown_failing() -> None:
    async with FakeAmiServer() as server:
        client = AmiClient(server.host, server.port, server.username, server.secret,
                           events=False, md5=True, action_timeout=5.0)  # fmt: skip
        await client.connect()
        try:
            results = await reload_targets(
                client, [ConfTarget.PJSIP, ConfTarget.IAX, ConfTarget.SIP]
            )
        finally:
            await client.close()
        commands = [a.get("Command") for a in server.actions if a.name == "Command"]
    pjsip, iax, sip = results
    assert commands == ["module reload res_pjsip.so", "iax2 reload", "sip reload"]
    assert pjsip.ok and pjsip.answer == "Module 'res_pjsip.so' reloaded successfully."
    assert iax.ok and iax.answer == "(no output)"
    assert not sip.ok and sip.answer.startswith("No such command 'sip reload'")
    assert RELOAD_COMMANDS[ConfTarget.PJSIP] != "pjsip reload"  # gone in Asterisk 22


async def test_reload_over_ami_uses_the_settings() -> None:
    async with FakeAmiServer(secret="s3") as server:
        ami = AmiSettings(host=server.host, port=server.port, username=server.username,
                          secret=Secret("s3"), md5=False)  # fmt: skip
        results = await reload_over_ami(ami, [ConfTarget.PJSIP])
        assert server.logins == 1
    assert [r.ok for r in results] == [True]


def test_success_responses_that_mean_failure() -> None:
    assert reload_failed(["The module 'res_agi.so' does not support reloads"])
    assert reload_failed(["No such module 'chan_sip.so'"])
    assert not reload_failed(["Module 'res_pjsip.so' reloaded successfully."])
    assert not reload_failed([""])
