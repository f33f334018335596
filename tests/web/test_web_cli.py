"""`callgate web` and `callgate serve` with `[web] enabled`, run as operators run them: a real
process on a loopback port, a real HTTP client."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
from webkit import OPERATOR, PASSWORD


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _run(
    args: list[str], env: dict[str, str], cwd: Path, url: str | None
) -> tuple[int, str, list[int]]:
    """Start callgate, GET ``url``'s login page and log in (if given), SIGTERM, collect."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callgate", *args,
        env={**os.environ, **env}, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    statuses: list[int] = []
    try:
        if url is not None:
            async with httpx.AsyncClient(base_url=url) as client:
                for _ in range(300):
                    if proc.returncode is not None:
                        break
                    try:
                        page = await client.get("/login")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
                statuses.append(page.status_code)
                token = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
                logged = await client.post(
                    "/login", data={"csrf": token, "login": OPERATOR, "password": PASSWORD}
                )
                statuses.append(logged.status_code)
                statuses.append((await client.get("/accounts")).status_code)
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            _out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode(), statuses


def test_callgate_web_serves_the_console(seeded_url: str, tmp_path: Path) -> None:
    port = _free_port()
    env = {"CALLGATE_DATABASE_URL": seeded_url}
    code, err, statuses = asyncio.run(
        _run(["web", "--port", str(port)], env, tmp_path, f"http://127.0.0.1:{port}")
    )
    assert code == 0, err
    assert statuses == [200, 303, 200]
    assert f"web console on http://127.0.0.1:{port}/" in err


def test_callgate_web_refuses_a_taken_port_or_pending_migrations(
    seeded_url: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        code, err, _ = asyncio.run(
            _run(
                ["web", "--port", str(port)], {"CALLGATE_DATABASE_URL": seeded_url}, tmp_path, None
            )
        )
    assert code == 3 and f"cannot listen on 127.0.0.1:{port}" in err
    bad = {"CALLGATE_DATABASE_URL": seeded_url, "CALLGATE_WEB_COOKIE_SECURE": "sometimes"}
    code, err, _ = asyncio.run(_run(["web"], bad, tmp_path, None))
    assert code == 3 and "web.cookie_secure" in err
    fresh = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    code, err, _ = asyncio.run(_run(["web"], {"CALLGATE_DATABASE_URL": fresh}, tmp_path, None))
    assert code == 3 and "pending migration" in err


def test_serve_runs_the_console_when_enabled(seeded_url: str, tmp_path: Path) -> None:
    port, agi_port = _free_port(), _free_port()
    env = {
        "CALLGATE_DATABASE_URL": seeded_url,
        "CALLGATE_WEB_ENABLED": "true",
        "CALLGATE_WEB_PORT": str(port),
        "CALLGATE_METRICS_ENABLED": "false",
        "CALLGATE_AGI_DRAIN_SECONDS": "2",
    }
    code, err, statuses = asyncio.run(
        _run(["serve", "--port", str(agi_port)], env, tmp_path, f"http://127.0.0.1:{port}")
    )
    assert code == 0, err
    assert statuses == [200, 303, 200]
    assert "callgate serving FastAGI" in err and "web console" in err
