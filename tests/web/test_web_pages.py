"""The console's data pages over HTTP, on both databases, against known calls: the CDR list,
its CSV download, stats, and the accounts export as XML (the same writers as the CLI)."""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET

import httpx
from known_calls import seed
from webkit import login

from callgate.store import calls as call_store
from callgate.store.db import create_engine


async def _seed_calls(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await seed(engine)
    finally:
        await engine.dispose()


async def test_cdr_list_download_and_stats(client: httpx.AsyncClient, seeded_url: str) -> None:
    await _seed_calls(seeded_url)
    await login(client)
    page = await client.get("/cdrs", params={"account": "8000000001", "answered": "yes"})
    assert page.status_code == 200
    assert page.text.count("<td>8000000001</td>") == 3  # the three answered known calls
    download = await client.get("/cdrs/export.csv", params={"account": "8000000001"})
    assert download.status_code == 200
    assert download.headers["content-disposition"] == 'attachment; filename="cdrs.csv"'
    rows = list(csv.reader(io.StringIO(download.text)))
    assert tuple(rows[0]) == call_store.EXPORT_COLUMNS
    assert sorted(r[0] for r in rows[1:]) == ["c1", "c2", "c3", "c4", "c5", "c6"]
    bad = await client.get("/cdrs/export.csv", params={"since": "yesterday"})
    assert bad.status_code == 400 and "since" in bad.text

    stats = await client.get("/stats", params={"by": "day", "account": "8000000001"})
    assert stats.status_code == 200
    cells = re.findall(r"<tr><td>(2026-11-2\d)</td>(.*?)</tr>", stats.text)
    assert [day for day, _ in cells] == ["2026-11-20", "2026-11-21"]
    first = re.findall(r'<td class="num">([^<]*)</td>', cells[0][1])
    # attempts, answered, ASR, ACD, PDD, peak CPS, peak channels (as `callgate stats`)
    assert first[:7] == ["4", "2", "50.00", "45.0", "1500", "3", "3"]
    assert stats.text.count("<svg") == 6
    unknown = await client.get("/stats", params={"account": "nobody"})
    assert "nobody" in unknown.text


async def test_accounts_export_xml_follows_the_search(client: httpx.AsyncClient) -> None:
    await login(client)
    response = await client.get("/accounts/export.xml", params={"alias": "user0*"})
    assert response.status_code == 200 and response.headers["content-type"].startswith(
        "application/xml"
    )
    root = ET.fromstring(response.text)
    numbers = sorted(a.findtext("number") or "" for a in root.findall("account"))
    assert numbers == [f"71000000{n:02d}" for n in range(1, 10)]
    assert (await client.get("/accounts/export.pdf")).status_code == 404
