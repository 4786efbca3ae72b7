"""Venue credentials never leak: not to a redirect target, not into a log line,
a table, `/health` or `/metrics`, whatever a venue answers.

The real daemon runs at debug level with an Alpaca venue holding the
simulator's fixed key and secret. Its REST URL is a "front" that answers per
symbol: LOOP redirects to itself forever, AWAY redirects to another origin
(the "catcher", which records what reaches it), FAIL answers a 500, then
drops the connection, then answers; anything else is an empty page. The
stream goes to the Alpaca simulator, which checks the credentials. aiohttp's
redirect errors carry the request's headers, and so the secret, in their
repr: the daemon must not follow venue redirects, and must describe errors
by type, status and URL only."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from unittest.mock import patch

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from candled import clock
from candled_sim import SimExchange, parse_scenario
from candled_sim.alpaca import SIM_KEY, SIM_SECRET
from tests.daemon_proc import log_events, running_daemon, stop, tail, wait_for_event, wait_until
from tests.pg import free_port

EMPTY_PAGE = {"bars": {}, "next_page_token": None}


class Front:
    """The venue's REST URL: redirects and errors by symbol (see the module doc)."""

    def __init__(self, catcher_port: int) -> None:
        self.catcher = f"http://127.0.0.1:{catcher_port}"
        self.served: dict[str, int] = {}
        self._fail_turns = itertools.count()

    async def bars(self, request: web.Request) -> web.StreamResponse:
        symbol = request.query.get("symbols", "")
        self.served[symbol] = self.served.get(symbol, 0) + 1
        if symbol == "LOOP":
            raise web.HTTPFound(request.path_qs)
        if symbol == "AWAY":
            raise web.HTTPTemporaryRedirect(self.catcher + request.path_qs)
        if symbol == "FAIL":
            turn = next(self._fail_turns) % 3
            if turn == 0:
                return web.json_response({"message": "internal server error"}, status=500)
            if turn == 1:
                assert request.transport is not None
                request.transport.close()  # no answer at all
                return web.Response()
        return web.json_response(EMPTY_PAGE)


class Catcher:
    """Another origin: remembers every header that reached it."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    async def bars(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        return web.json_response(EMPTY_PAGE)


@asynccontextmanager
async def serving(path: str, handler: object, port: int = 0) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get(path, handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def config(tmp_path: Path, front_port: int, sim_port: int, health_port: int) -> Path:
    path = tmp_path / "config.toml"
    series = "".join(
        f"""
[[series]]
venue = "alpaca"
symbols = ["{symbol}"]
timeframes = ["1m"]
profile = "CRYPTO"
live = {"true" if symbol == "AAPL" else "false"}
lookback = "2h"
"""
        for symbol in ("LOOP", "AWAY", "FAIL", "AAPL")
    )
    path.write_text(f"""
[daemon]
health_listen = "127.0.0.1:{health_port}"
log_level = "debug"
log_format = "json"
state_dir = "{tmp_path / "state"}"

[healing]
interval = "3s"
max_fills = 2

[[venues]]
name = "alpaca"
kind = "alpaca"
rest_url = "http://127.0.0.1:{front_port}"
ws_url = "ws://127.0.0.1:{sim_port}"
api_key_env = "CANDLED_TEST_ALPACA_KEY"
api_secret_env = "CANDLED_TEST_ALPACA_SECRET"
{series}""")
    return path


async def every_table_as_text(dsn: str) -> str:
    """Every row of every table in the database (schemas of extensions aside), as text."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            """SELECT format('%I.%I', table_schema, table_name) AS name
               FROM information_schema.tables
               WHERE table_type = 'BASE TABLE'
                 AND table_schema NOT IN ('pg_catalog', 'information_schema')
                 AND table_schema NOT LIKE '\\_timescaledb%'
                 AND table_schema <> 'timescaledb_information'"""
        )
        texts = []
        for table in tables:
            rows = await conn.fetch(f"SELECT t::text AS row FROM {table['name']} t")
            texts += [table["name"], *(r["row"] for r in rows)]
        return "\n".join(texts)
    finally:
        await conn.close()


async def error_attempts(dsn: str) -> list[str] | None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT detail FROM repair_attempts WHERE outcome = 'error'")
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await conn.close()
    return [r["detail"] for r in rows] or None


@pytest.mark.timeout(180)
async def test_the_secret_leaks_nowhere_on_redirects_and_errors(
    tmp_path: Path, tsdb_dsn: str
) -> None:
    scenario = parse_scenario({"symbols": [{"symbol": "AAPL", "listed": "-3d"}]}, clock.now())
    sim = SimExchange(scenario, protocol="alpaca")
    _, sim_port = await sim.start("127.0.0.1", 0)
    catcher = Catcher()
    health_port = free_port()
    env = {"CANDLED_TEST_ALPACA_KEY": SIM_KEY, "CANDLED_TEST_ALPACA_SECRET": SIM_SECRET}
    log = tmp_path / "daemon.log"
    try:
        async with serving("/v2/stocks/bars", catcher.bars) as catcher_port:
            front = Front(catcher_port)
            async with serving("/v2/stocks/bars", front.bars) as front_port:
                path = config(tmp_path, front_port, sim_port, health_port)
                with patch.dict(os.environ, env):
                    async with running_daemon(path, tsdb_dsn, log) as proc:
                        # The erroring symbol is retried (each retry logged), the
                        # redirecting ones fail, and a heal cycle records them.
                        await wait_for_event(log, "request retry", proc)
                        await wait_for_event(log, "stream connected", proc)
                        assert SIM_SECRET not in log.read_text(), "the secret was logged"
                        await wait_for_event(log, "heal cycle done", proc, within=120)
                        details = await wait_until(lambda: error_attempts(tsdb_dsn), 60)
                        async with aiohttp.ClientSession() as http:
                            base = f"http://127.0.0.1:{health_port}"
                            async with http.get(base + "/health") as r:
                                health = await r.text()
                            async with http.get(base + "/metrics") as r:
                                metrics_text = await r.text()
                        assert await stop(proc) == 0, tail(log)
    finally:
        await sim.stop()

    # The credentials were used (the stream authenticated with them) ...
    assert sim.counters.ws_connections >= 1
    assert front.served.get("LOOP") and front.served.get("AWAY") and front.served.get("FAIL")
    # ... never sent to another origin: a redirect is not followed.
    assert not any(SIM_SECRET in json.dumps(h) or SIM_KEY in json.dumps(h)
                   for h in catcher.headers), catcher.headers  # fmt: skip
    text = log.read_text()
    leaked = [line for line in text.splitlines() if SIM_SECRET in line]
    assert not leaked, leaked[:3]
    # The failures are told by type, status and URL.
    failed = [e for e in log_events(log) if e.get("event") == "backfill job failed"]
    redirect_errors = [e["error"] for e in failed if "redirect" in e.get("error", "")]
    assert redirect_errors, [e.get("error") for e in failed]
    assert any("302" in e for e in redirect_errors) and any("307" in e for e in redirect_errors)
    assert any("/v2/stocks/bars" in e for e in redirect_errors)
    assert any("redirect" in d for d in details), details
    tables = await every_table_as_text(tsdb_dsn)
    assert "repair_attempts" in tables
    assert SIM_SECRET not in tables
    assert SIM_SECRET not in health
    assert SIM_SECRET not in metrics_text
    # The key id is no secret to the venue, but has no business in these either.
    for shown in (tables, health, metrics_text):
        assert SIM_KEY not in shown
