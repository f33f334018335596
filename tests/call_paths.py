"""The call path implementations under test (``[database] call_path``), built as serve builds
them (:func:`callgate.cli.runtime.open_call_path`).

``LEAN_BACKENDS`` lists the backends that have a lean implementation; a flow test parametrised
with the ``call_path`` fixture (tests/conftest.py) skips ``lean`` on the others.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from callgate.cli.runtime import CallPath, open_call_path
from callgate.config import DbSettings, Settings

LEAN_BACKENDS = frozenset({"pg", "sqlite"})


def backend(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "pg"


async def open_test_call_path(
    name: str, engine: AsyncEngine, *, server: str = "", grace_seconds: int = 60
) -> CallPath:
    """The account lookup and ledger of call path ``name`` ("core", "lean") on ``engine``'s
    database; close it with ``await path.close()``."""
    settings = Settings(database=DbSettings(call_path=name))
    return await open_call_path(settings, engine, grace_seconds=grace_seconds, server=server)
