"""Fixtures shared by every test: the two databases.

Every store and flow test runs on both backends through the parametrised ``db_url`` fixture:
SQLite in a temporary file, and a real PostgreSQL from ``$CALLGATE_TEST_PG_URL`` (else a local
server on 127.0.0.1:5432 if one answers). The schema is migrated once per test session into a
template (a file for SQLite, ``CREATE DATABASE ... TEMPLATE`` for PostgreSQL) and each test gets
a fresh copy. Without PostgreSQL the PG half skips with its reason, except when
``CALLGATE_REQUIRE_PG=1`` (CI), where that skip is a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.schema.migrate import upgrade
from callgate.store.db import create_engine

# Hypothesis runs its entry points (trio's, which selenium brings in) when first imported; trio
# hands it a PRNG it warns about. Import it here, before pytest's warning filters make that
# warning an error in whichever late hook imports it first.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="It looks like `register_random`")
    import hypothesis  # noqa: F401

# the web tests' fixtures (tests/web/webkit.py): a seeded database, the app, a server, a browser
pytest_plugins = ["web.webkit"]

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


def _pg_admin_url() -> str:
    return os.environ.get("CALLGATE_TEST_PG_URL", DEFAULT_PG_URL)


async def _pg_version(url: str) -> str:
    engine = create_engine(url, poolclass=_null_pool())
    try:
        async with asyncio.timeout(5):
            async with engine.connect() as conn:
                return str(await conn.scalar(text("SHOW server_version")))
    finally:
        await engine.dispose()


def _null_pool() -> type:
    from sqlalchemy.pool import NullPool

    return NullPool


_PG_STATE: dict[str, str | None] = {}


def pg_problem() -> str | None:
    """None when PostgreSQL answers; else why not (cached for the session)."""
    if "problem" not in _PG_STATE:
        try:
            _PG_STATE["version"] = asyncio.run(_pg_version(_pg_admin_url()))
            _PG_STATE["problem"] = None
        except (OSError, TimeoutError, SQLAlchemyError) as exc:
            _PG_STATE["problem"] = f"PostgreSQL at {_pg_admin_url()} unreachable: {exc!r}"
    return _PG_STATE["problem"]


def pytest_report_header(config: pytest.Config) -> list[str]:
    problem = pg_problem()
    pg = _PG_STATE.get("version") if problem is None else f"unavailable ({problem})"
    return [f"SQLite {sqlite3.sqlite_version}; PostgreSQL {pg}"]


def skip_or_fail_without_pg() -> None:
    problem = pg_problem()
    if problem is None:
        return
    if os.environ.get("CALLGATE_REQUIRE_PG") == "1":
        pytest.fail(f"CALLGATE_REQUIRE_PG=1 but {problem}")
    pytest.skip(problem)


async def _admin_execute(sql: str) -> None:
    engine = create_engine(_pg_admin_url(), poolclass=_null_pool(), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def _pg_url_for(database: str) -> str:
    return make_url(_pg_admin_url()).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"

    async def _build() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(_build())
    with sqlite3.connect(path) as conn:  # fold the WAL into the file before copying it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    skip_or_fail_without_pg()
    name = f"cgtpl_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin_execute(f'CREATE DATABASE "{name}"'))

    async def _build() -> None:
        engine = create_engine(_pg_url_for(name), poolclass=_null_pool())
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(_build())
        yield name
    finally:
        asyncio.run(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated database URL, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "callgate.db"
        shutil.copyfile(template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    template_name: str = request.getfixturevalue("pg_template")
    name = f"cgt_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"'))
    try:
        yield _pg_url_for(name)
    finally:
        asyncio.run(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty (never migrated) database on the backend of ``backend`` param, else SQLite."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    skip_or_fail_without_pg()
    name = f"cge_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin_execute(f'CREATE DATABASE "{name}"'))
    try:
        yield _pg_url_for(name)
    finally:
        asyncio.run(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh migrated database (both backends)."""
    eng = create_engine(db_url)
    try:
        yield eng
    finally:
        await eng.dispose()
