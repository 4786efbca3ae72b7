"""`candled sim --protocol NAME`: every personality serves the same kind of
truth through its venue's protocol, read back by that venue's codec."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import datetime, timedelta

import aiohttp
import pytest

from candled import clock
from candled.domain import Candle, SeriesKey
from candled.venues import Credentials, get_codec
from candled_sim import alpaca, oanda
from candled_sim.server import PROTOCOLS, SimExchange
from tests.daemon_proc import REPO
from tests.pg import free_port

CREDENTIALS = {
    "alpaca": Credentials(alpaca.SIM_KEY, alpaca.SIM_SECRET),
    "oanda": Credentials(oanda.SIM_TOKEN),
}


async def newest_bars(protocol: str, base_url: str, symbol: str, now: datetime) -> list[Candle]:
    codec = get_codec(protocol, credentials=CREDENTIALS.get(protocol))
    key = SeriesKey(protocol, symbol, "1m")
    end = key.tf.floor(now)
    request = codec.history_request(key, end - timedelta(hours=2), end, 120)
    async with aiohttp.ClientSession() as http, http.request(
        request.method, base_url + request.path, params=dict(request.params),
        headers=dict(request.headers),
    ) as response:  # fmt: skip
        return codec.parse_history(key, response.status, await response.read(), now)


def prices(candles: list[Candle]) -> list[tuple[object, ...]]:
    # Volumes are the venue's own unit on some venues (OANDA: ticks); prices are not.
    return [(c.ts, c.open, c.high, c.low, c.close) for c in candles]


def expected(protocol: str, symbol: str, now: datetime) -> list[Candle]:
    """What a sim started without a scenario serves: its truth is deterministic."""
    key = SeriesKey("sim", symbol, "1m")
    end = key.tf.floor(now)
    sparse = get_codec(protocol).limits.sparse
    truth = SimExchange(protocol=protocol).truth
    return truth.candles(key, end - timedelta(hours=2), end, now, sparse=sparse)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
async def test_each_protocol_serves_its_default_symbols(protocol: str) -> None:
    sim = SimExchange(protocol=protocol)
    host, port = await sim.start("127.0.0.1", 0)
    try:
        symbols = sim.truth.symbols
        assert len(symbols) == 2
        now = clock.now()
        for symbol in symbols:
            got = await newest_bars(protocol, f"http://{host}:{port}", symbol, now)
            assert prices(got) == prices(expected(protocol, symbol, now))
    finally:
        await sim.stop()


async def test_the_cli_speaks_the_protocol_it_is_given() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "candled", "sim", "--protocol", "oanda", "--listen",
        f"127.0.0.1:{port}", cwd=REPO, env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    now = clock.now()
                    got = await newest_bars("oanda", f"http://127.0.0.1:{port}", "USD_JPY", now)
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.2)  # not listening yet
        assert prices(got) == prices(expected("oanda", "USD_JPY", now))
    finally:
        proc.terminate()
        await proc.wait()

    bad = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "candled", "sim", "--protocol", "nasdaq", cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await bad.communicate()
    assert bad.returncode == 2 and b"unknown protocol 'nasdaq'" in out
