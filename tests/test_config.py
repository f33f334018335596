"""Settings: flags > environment > TOML file > defaults, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from callgate.config import DEFAULT_DATABASE_URL, Secret, SettingsError, load_settings, mask_url


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.agi.port == 4573 and settings.agi.host == "127.0.0.1"


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "callgate.toml"
    config.write_text(
        'database_url = "sqlite+aiosqlite:///file.db"\n'
        "[agi]\nport = 5001\nallow = ['10.0.0.1']\n"
        "[ami]\nsecret = 's3cret'\n",
        encoding="utf-8",
    )
    env = {"CALLGATE_AGI_PORT": "5002", "CALLGATE_BILLING_TIMEZONE": "Europe/Paris"}
    settings = load_settings(config_file=config, environ=env)
    assert settings.database_url == "sqlite+aiosqlite:///file.db"
    assert settings.agi.port == 5002
    assert settings.agi.allow == ("10.0.0.1",)
    assert settings.billing.timezone == "Europe/Paris"
    assert settings.ami.secret == Secret("s3cret")
    flagged = load_settings(
        config_file=config, environ=env, overrides={"agi": {"port": 5003}, "database_url": None}
    )
    assert flagged.agi.port == 5003
    assert flagged.database_url == "sqlite+aiosqlite:///file.db"


def test_secrets_are_masked_when_printed() -> None:
    settings = load_settings(
        environ={
            "CALLGATE_AMI_SECRET": "hunter2",
            "CALLGATE_DATABASE_URL": "postgresql+asyncpg://cg:pw@db:5432/callgate",
        }
    )
    shown = settings.to_dict()
    assert shown["ami"]["secret"] == "********"
    assert shown["database_url"] == "postgresql+asyncpg://cg:********@db:5432/callgate"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(shown)
    assert settings.to_dict(reveal=True)["ami"]["secret"] == "hunter2"
    assert mask_url("sqlite+aiosqlite:///x.db") == "sqlite+aiosqlite:///x.db"


def test_bad_values_are_named() -> None:
    with pytest.raises(SettingsError, match="port"):
        load_settings(environ={"CALLGATE_AGI_PORT": "many"})
    with pytest.raises(SettingsError, match="enabled"):
        load_settings(environ={"CALLGATE_AMI_ENABLED": "perhaps"})
    with pytest.raises(SettingsError, match="not found"):
        load_settings(config_file="/nonexistent/callgate.toml", environ={})


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[agi]\nprot = 1\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="prot"):
        load_settings(config_file=config, environ={})


def test_the_event_loop_is_asyncio_unless_chosen() -> None:
    assert load_settings(environ={}).agi.event_loop == "asyncio"
    chosen = load_settings(environ={"CALLGATE_AGI_EVENT_LOOP": "uvloop"})
    assert chosen.agi.event_loop == "uvloop"
    with pytest.raises(SettingsError, match="agi.event_loop: must be one of auto, uvloop, asyncio"):
        load_settings(environ={"CALLGATE_AGI_EVENT_LOOP": "trio"})
