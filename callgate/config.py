"""Settings: one frozen object, built once by the CLI and passed down.

Precedence, highest first: command-line flags > environment (``CALLGATE_*``) > a TOML file >
defaults. Library code never reads the environment or files; only :func:`load_settings` does,
and only ``callgate.cli`` calls it.

Names: a top-level field ``database_url`` is ``CALLGATE_DATABASE_URL`` in the environment and
``database_url`` at the top of the TOML file; a nested field ``agi.port`` is ``CALLGATE_AGI_PORT``
and ``port`` under ``[agi]``. Secrets (passwords, the AMI secret, the password in a database URL)
are held in :class:`Secret` or masked by :func:`mask_url`, so that printing settings never leaks
them.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "CALLGATE_"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///callgate.db"


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret string whose repr and str never show the value."""

    value: str = field(repr=False)

    def __str__(self) -> str:
        return "********" if self.value else ""

    def __repr__(self) -> str:
        return "Secret('********')" if self.value else "Secret('')"

    def __bool__(self) -> bool:
        return bool(self.value)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``********``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:********@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class AgiSettings:
    """The FastAGI server."""

    host: str = "127.0.0.1"
    port: int = 4573
    allow: tuple[str, ...] = ()  # Asterisk addresses or CIDRs allowed to connect; empty = any
    # "address=name" per Asterisk box: the name keys its calls (with the uniqueid); an address
    # not listed keys its calls by the address itself
    system_names: tuple[str, ...] = ()
    max_sessions: int = 5000
    max_setups: int = 50  # direct-dial calls between header and Dial; beyond: they wait in line
    setup_wait_ms: int = 200  # for a set-up slot, at most this long; then refused (cause 42)
    header_timeout_ms: int = 5000
    command_timeout_ms: int = 10000
    drain_seconds: int = 30
    # the event loop of `callgate serve`: "asyncio" (the standard library's), "uvloop" (pip
    # install 'callgate[uvloop]'; refused at start-up when it is not installed) or "auto" (uvloop
    # when installed). README "Load" has both measured: uvloop is faster below capacity, but
    # past it calls queue longer instead of being shed at once
    event_loop: str = "asyncio"
    # a hold of the event loop this long or more (every live call waits behind it) is logged
    # with what the loop was running, and counted; 0 turns the watch off
    loop_stall_ms: int = 50

    def __post_init__(self) -> None:
        if self.event_loop not in EVENT_LOOPS:
            raise SettingsError(
                f"setting agi.event_loop: must be one of {', '.join(EVENT_LOOPS)},"
                f" not {self.event_loop!r}"
            )
        if self.loop_stall_ms < 0 or 0 < self.loop_stall_ms <= LOOP_BEAT_MS:
            raise SettingsError(
                f"setting agi.loop_stall_ms: must be 0 (off) or more than {LOOP_BEAT_MS},"
                f" not {self.loop_stall_ms}"
            )


EVENT_LOOPS = ("auto", "uvloop", "asyncio")
# the loop watch's beat; agi.loop_stall_ms must be longer. With a beat every 10 ms an idle serve
# used 2.4 % of a core (the wake-ups); every 25 ms, with a thread that sleeps until a stall is
# due, 1.0-1.1 % (README, "Load")
LOOP_BEAT_MS = 25
CALL_PATHS = ("lean", "core")


@dataclass(frozen=True, slots=True)
class DbSettings:
    """The database (its URL is the top-level ``database_url``)."""

    # how the call path (account lookup, reserve, regrant, settle, release, the attempt record)
    # reaches the database: "lean", the backend's own driver without SQLAlchemy's execution
    # (PostgreSQL: asyncpg directly; SQLite: the stdlib sqlite3 on the event loop); "core",
    # SQLAlchemy Core like the rest
    call_path: str = "lean"

    def __post_init__(self) -> None:
        if self.call_path not in CALL_PATHS:
            raise SettingsError(
                f"setting database.call_path: must be one of {', '.join(CALL_PATHS)},"
                f" not {self.call_path!r}"
            )


@dataclass(frozen=True, slots=True)
class AmiSettings:
    """The Asterisk Manager Interface connection."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "callgate"
    secret: Secret = Secret("")
    md5: bool = True
    ping_interval_seconds: int = 20
    reconnect_max_seconds: int = 30


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The Prometheus endpoint."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9464


@dataclass(frozen=True, slots=True)
class BillingSettings:
    """Call control and billing policy."""

    account_number_length: int = 10
    timezone: str = "UTC"  # the operator's zone: rate week windows, CDR days
    international_prefixes: tuple[str, ...] = ("011", "00")
    dial_ring_seconds: int = 60
    dial_warning_seconds: int = 30  # L(limit:warn:repeat): warn this long before the end
    dial_warning_repeat_seconds: int = 0
    reservation_grace_seconds: int = 120
    reaper_interval_seconds: int = 30  # how often expired reservations are reconciled
    max_call_seconds: int = 36000


@dataclass(frozen=True, slots=True)
class ConfgenSettings:
    """Asterisk configuration generation (``callgate confgen``)."""

    dir: str = "/etc/asterisk"  # where `confgen write` puts the generated includes
    formats: tuple[str, ...] = ("pjsip", "iax")  # add "sip" for chan_sip (Asterisk <= 20)
    database_url: str = ""  # the Realtime tables' database; empty = callgate's own


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """The SMTP relay alert e-mails go through (empty host: e-mails stay pending)."""

    host: str = ""
    port: int = 25
    username: str = ""
    password: Secret = Secret("")
    starttls: bool = False
    sender: str = "callgate@localhost"
    timeout_seconds: int = 10


@dataclass(frozen=True, slots=True)
class WholesaleSettings:
    """IP authentication, recording and alerts (callgate's wholesale call control)."""

    # how the flow reads a call's SIP source address, per channel technology ("" = don't)
    source_address_pjsip: str = "${CHANNEL(pjsip,remote_addr)}"
    source_address_sip: str = "${CHANNEL(recvip)}"
    source_address_iax2: str = "${CHANNEL(peerip)}"
    recordings_dir: str = "/var/spool/asterisk/monitor/callgate"  # MixMonitor files
    alert_check_seconds: int = 60  # every account with alerts is evaluated this often


@dataclass(frozen=True, slots=True)
class WebSettings:
    """The web console (``callgate web``, or ``callgate serve`` when enabled)."""

    enabled: bool = False  # `callgate serve` starts the console too
    host: str = "127.0.0.1"
    port: int = 8080
    # signs the session cookies; empty = generated once and kept in the database (settings key
    # web.secret), so every `callgate web` on the same database shares it across restarts
    secret: Secret = Secret("")
    # Secure cookies: "auto" = unless host is a loopback address; "always" (behind a TLS proxy
    # on loopback) or "never"
    cookie_secure: str = "auto"
    session_hours: int = 12  # a session ends this long after login
    login_max_failures: int = 5  # failed logins per address and login within the window ...
    login_window_seconds: int = 300  # ... after which that login is refused for the window


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything callgate reads from its configuration."""

    database_url: str = DEFAULT_DATABASE_URL
    log_level: str = "INFO"
    server_name: str = ""  # this callgate in billing records; default: the host name
    database: DbSettings = DbSettings()
    agi: AgiSettings = AgiSettings()
    ami: AmiSettings = AmiSettings()
    metrics: MetricsSettings = MetricsSettings()
    billing: BillingSettings = BillingSettings()
    confgen: ConfgenSettings = ConfgenSettings()
    smtp: SmtpSettings = SmtpSettings()
    wholesale: WholesaleSettings = WholesaleSettings()
    web: WebSettings = WebSettings()

    def to_dict(self, *, reveal: bool = False) -> dict[str, Any]:
        """Plain values for printing; secrets masked unless ``reveal``."""
        return _to_dict(self, reveal=reveal)


_SECTIONS = {f.name for f in dataclasses.fields(Settings) if dataclasses.is_dataclass(f.default)}


def _to_dict(obj: Any, *, reveal: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, Secret):
            out[f.name] = _to_dict(value, reveal=reveal)
        elif isinstance(value, Secret):
            out[f.name] = value.value if reveal else str(value)
        elif f.name == "database_url" and not reveal:
            out[f.name] = mask_url(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def _field_type(cls: type, name: str) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[name]


def _coerce(name: str, raw: Any, target: Any) -> Any:
    """Convert a TOML or environment value to the field's type, or raise SettingsError."""
    origin = typing.get_origin(target)
    try:
        if target is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if target is int:
            if isinstance(raw, bool):
                raise ValueError(f"not an integer: {raw!r}")
            return int(raw)
        if target is str:
            return str(raw)
        if target is Secret:
            return raw if isinstance(raw, Secret) else Secret(str(raw))
        if origin is tuple:
            if isinstance(raw, str):
                items = [p.strip() for p in raw.split(",") if p.strip()]
            elif isinstance(raw, list | tuple):
                items = [str(p) for p in raw]
            else:
                raise ValueError(f"not a list: {raw!r}")
            return tuple(items)
        if isinstance(target, types.UnionType):  # pragma: no cover - no such field yet
            return raw
    except ValueError as exc:
        raise SettingsError(f"setting {name}: {exc}") from exc
    raise SettingsError(f"setting {name}: unsupported type {target!r}")  # pragma: no cover


def _apply(base: Any, values: Mapping[str, Any], where: str) -> Any:
    changes: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(base)}
    for key, raw in values.items():
        if key not in names:
            raise SettingsError(f"{where}: unknown setting {key!r}")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and not isinstance(current, Secret):
            if not isinstance(raw, Mapping):
                raise SettingsError(f"{where}: {key} must be a table")
            changes[key] = _apply(current, raw, f"{where} [{key}]")
        else:
            changes[key] = _coerce(key, raw, _field_type(type(base), key))
    return dataclasses.replace(base, **changes)


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """CALLGATE_* variables as a nested mapping; unknown names are ignored (CALLGATE_CONFIG...)."""
    out: dict[str, Any] = {}
    top = {f.name for f in dataclasses.fields(Settings)} - _SECTIONS
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in top:
            out[key] = value
            continue
        section, _, rest = key.partition("_")
        if section in _SECTIONS and rest:
            sub = getattr(Settings(), section)
            if rest in {f.name for f in dataclasses.fields(sub)}:
                out.setdefault(section, {})[rest] = value
    return out


def load_settings(
    *,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: defaults < TOML file < environment < ``overrides`` (the flags).

    ``config_file`` defaults to ``$CALLGATE_CONFIG`` when set; a named file that does not exist is
    an error. ``overrides`` is nested like the TOML file; ``None`` values are ignored.
    """
    env = os.environ if environ is None else environ
    settings: Settings = Settings()
    path = config_file or env.get("CALLGATE_CONFIG")
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SettingsError(f"config file not found: {p}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {p}: {exc}") from exc
        settings = typing.cast(Settings, _apply(settings, data, str(p)))
    settings = typing.cast(Settings, _apply(settings, _env_values(env), "environment"))
    if overrides:
        settings = typing.cast(Settings, _apply(settings, _drop_none(overrides), "flags"))
    return settings


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            nested = _drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out
