"""The coverage page in a real browser: headless Chromium loads `/coverage` from
a running daemon whose store has known holes, and the test reads what it
rendered (the DOM after load) and takes a screenshot.

Set CANDLED_COVERAGE_SCREENSHOT=PATH to keep the screenshot (README's picture
is made that way: `CANDLED_COVERAGE_SCREENSHOT=docs/coverage.png`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import xml.etree.ElementTree as ET
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from candled import clock
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.daemon_proc import running_daemon, series_toml, venue_toml, wait_until, write_config
from tests.pg import free_port, unavailable

OLD, NEW = "AAAUSDT", "BBBUSDT"  # listed 30 days ago, and 3 hours ago


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        unavailable("chromium is not installed (scripts/install-chromium.sh, `make test` runs it)")
    return found


class Cells(HTMLParser):
    """The rendered table: per series, its cells' (start, state) in order."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[tuple[str, str]]] = {}
        self._row: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-series"):
            self._row = a["data-series"]
            self.rows[self._row or ""] = []
        elif tag == "td" and self._row and a.get("data-state"):
            self.rows[self._row].append((a.get("data-start") or "", a.get("data-state") or ""))


async def browse(url: str, out: Path, *args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={out.parent / 'chromium-profile'}", *args, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(120):
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    return stdout


@pytest.mark.timeout(300)
async def test_chromium_renders_the_holes_the_store_has(migrated: str, tmp_path: Path) -> None:
    tsdb_dsn = migrated
    scenario = {"seed": 5, "symbols": [{"symbol": OLD, "listed": "-30d"},
                                       {"symbol": NEW, "listed": "-3h"}]}  # fmt: skip
    sim = SimExchange(parse_scenario(scenario, clock.now()))
    _, sim_port = await sim.start("127.0.0.1", 0)
    hport = free_port()
    # A long heal interval: the holes made below stay until the test has looked.
    body = '[healing]\ninterval = "1h"\n' + venue_toml("binance", sim_port)
    body += series_toml("binance", [OLD, NEW], ["1m"], lookback='"8h"')
    config = write_config(tmp_path, body, health_port=hport)
    conn = await asyncpg.connect(tsdb_dsn)
    try:
        async with running_daemon(config, tsdb_dsn, tmp_path / "daemon.log"):
            await wait_until(lambda: _all_ok(conn), within=180)
            # A hole of 20 bars in the hour that began four hours ago.
            hour = clock.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=4)
            deleted = await conn.execute(
                "DELETE FROM candles WHERE symbol = $1 AND ts >= $2 AND ts < $3",
                OLD, hour + timedelta(minutes=10), hour + timedelta(minutes=30),
            )  # fmt: skip
            assert deleted == "DELETE 20"
            url = f"http://127.0.0.1:{hport}/coverage"
            async with aiohttp.ClientSession() as http, http.get(url) as r:
                assert r.status == 200 and r.content_type == "text/html"
            dom = await browse(url, tmp_path / "dump", "--dump-dom")
            shot = tmp_path / "coverage.png"
            await browse(url, shot, f"--screenshot={shot}", "--window-size=1280,420",
                         "--hide-scrollbars")  # fmt: skip
            # The same picture from the command line, while the hole is there.
            svg = tmp_path / "coverage.svg"
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "candled", "coverage", "--config", str(config),
                "--out", str(svg), env={**os.environ, "CANDLED_DATABASE_URL": tsdb_dsn},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            async with asyncio.timeout(120):
                said, _ = await proc.communicate()
            code = proc.returncode
    finally:
        await conn.close()
        await sim.stop()
    page = Cells()
    page.feed(dom.decode())
    old, new = page.rows[f"binance:{OLD}:1m"], page.rows[f"binance:{NEW}:1m"]
    by_start = dict(old)
    assert by_start[hour.isoformat()] == "missing", old
    # Every other settled hour of the old series is complete; the newest may not be settled.
    assert {s for t, s in old if t != hour.isoformat()} <= {"complete", "pending"}
    states = [s for _, s in new]
    # The new series' first hours are before its listing (genesis), then complete.
    assert states[0] == "before-genesis" and "complete" in states, states
    assert "missing" not in states
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"
    assert code == 1, said.decode()  # bars are missing
    assert "20 of" in said.decode(), said.decode()
    rects = ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}rect")
    drawn = [r.get("class") for r in rects if r.get("class")]
    assert drawn.count("s-missing") == 1 and "s-before-genesis" in drawn
    keep = os.environ.get("CANDLED_COVERAGE_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


async def _all_ok(conn: asyncpg.Connection) -> bool | None:
    rows = await conn.fetch("SELECT status FROM series_status")
    return (len(rows) == 2 and all(r["status"] == "OK" for r in rows)) or None
