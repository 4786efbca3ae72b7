"""The WebSocket collector against the simulated exchange over real sockets:
closed bars equal to truth, reconnects, idle detection, malformed frames,
bounded collection, make-before-break rotation, subscriptions by message."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from candled import clock, metrics
from candled.collector import Collector, CollectorSettings, collect
from candled.domain import Candle, SeriesKey
from candled.domain.timeframe import SUPPORTED
from candled.venues.binance import BinanceCodec, BinanceStream
from candled_sim import SimExchange, parse_scenario

pytestmark = pytest.mark.timeout(30)
CODEC = BinanceCodec().stream
BTC_1S = SeriesKey("binance", "BTCUSDT", "1s")
ETH_1S = SeriesKey("binance", "ETHUSDT", "1s")
SOL_1S = SeriesKey("binance", "SOLUSDT", "1s")
FAST = {"backoff_base_s": 0.05, "backoff_cap_s": 0.2}  # reconnect at once in tests

StartSim = Callable[..., Awaitable[tuple[SimExchange, str]]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    sims: list[SimExchange] = []

    async def start(**scenario: Any) -> tuple[SimExchange, str]:
        symbols = [{"symbol": s, "listed": "-1d"} for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]
        data = {"seed": 5, "symbols": symbols, **scenario}
        sim = SimExchange(parse_scenario(data, clock.now()))
        sims.append(sim)
        host, port = await sim.start("127.0.0.1", 0)
        return sim, f"ws://{host}:{port}"

    yield start
    for sim in sims:
        await sim.stop()


def assert_truth(sim: SimExchange, candles: Sequence[Candle]) -> None:
    """Every candle is a closed, published bar with exactly the venue's values."""
    assert candles
    now = clock.now()
    for c in candles:
        assert c.series.tf.close_time(c.ts) <= now
        assert sim.truth.exists(c.series, c.ts) and c == sim.truth.bar(c.series, c.ts)


class Recorder:
    """A sink and an on_connect callback that remember what they were given, and when."""

    def __init__(self) -> None:
        self.candles: list[Candle] = []
        self.connects: list[tuple[float, list[SeriesKey]]] = []

    async def sink(self, candles: Sequence[Candle]) -> None:
        self.candles.extend(candles)

    async def on_connect(self, series: Sequence[SeriesKey]) -> None:
        self.connects.append((time.monotonic(), list(series)))

    def of(self, series: SeriesKey) -> list[Candle]:
        return [c for c in self.candles if c.series == series]


async def run_until(
    collector: Collector,
    done: Callable[[], bool],
    limit_s: float,
    sample: Callable[[], None] = lambda: None,
) -> None:
    """Run the collector until `done()` (polled every 10 ms, also calling `sample`)."""
    async with asyncio.timeout(limit_s), asyncio.TaskGroup() as tg:
        task = tg.create_task(collector.run())
        while not done():
            sample()
            await asyncio.sleep(0.01)
        task.cancel()


def collector(url: str, series: Sequence[SeriesKey], rec: Recorder, **settings: Any) -> Collector:
    return Collector(
        CODEC, url, series, rec.sink, rec.on_connect, CollectorSettings(**{**FAST, **settings})
    )


async def test_collect_returns_closed_bars_equal_to_truth(start_sim: StartSim) -> None:
    sim, url = await start_sim()
    enough, timed_out, unreachable = await asyncio.gather(
        collect(CODEC, url, [BTC_1S, ETH_1S], total_timeout=10, max_candles=4),
        collect(CODEC, url, [BTC_1S], total_timeout=2.5),
        collect(CODEC, "ws://127.0.0.1:9", [BTC_1S], total_timeout=0.5),  # nobody listens
    )
    assert not enough.partial and len(enough.candles) == 4
    assert_truth(sim, enough.candles)
    assert len({(c.series, c.ts) for c in enough.candles}) == 4

    assert timed_out.partial  # the bars so far, not an error
    assert_truth(sim, timed_out.candles)
    stamps = [c.ts for c in timed_out.candles]
    assert stamps == sorted(set(stamps))

    assert unreachable.partial and unreachable.candles == []


async def test_dropped_connections_reconnect_and_call_on_connect_each_time(
    start_sim: StartSim,
) -> None:
    sim, url = await start_sim(faults={"ws_drop": {"every": "1s"}})
    rec = Recorder()
    c = collector(url, [BTC_1S, ETH_1S], rec)
    await run_until(c, lambda: len(rec.connects) >= 3, limit_s=10)

    (shard,) = c.shards
    assert shard.connects == len(rec.connects) >= 3  # on_connect once per connect
    assert all(series == [BTC_1S, ETH_1S] for _, series in rec.connects)
    assert c.reconnects["error"] >= 2 and sim.counters.ws_drops >= 2
    if rec.candles:  # a connection that lived past its second update delivered a close
        assert_truth(sim, rec.candles)


@pytest.mark.parametrize("pings", [False, True], ids=["silent", "only-pings"])
async def test_idle_connection_is_replaced_within_idle_timeout(
    start_sim: StartSim, pings: bool
) -> None:
    sim, url = await start_sim(
        ws={"ping_interval": "200ms"},
        faults={"ws_idle": {"after": "300ms", "duration": "30s", "pings": pings}},
    )
    rec = Recorder()
    c = collector(url, [BTC_1S], rec, idle_timeout_s=1.5)
    await run_until(c, lambda: len(rec.connects) >= 2, limit_s=10)

    (first, _), (second, _) = rec.connects[:2]
    # Data stopped at most 0.3 s + one update (1 s) in; then the 1.5 s idle timeout.
    assert 1.5 <= second - first <= 0.3 + 1.0 + 1.5 + 0.3
    assert c.reconnects == {"idle": 1}
    assert sim.counters.ws_idle_periods >= 1
    # Pings went on through the idle period (every 200 ms), or stopped with the data.
    if pings:
        assert sim.counters.pings_sent >= 6
    else:
        assert sim.counters.pings_sent <= 2


async def test_a_run_of_non_data_frames_counts_as_idle() -> None:
    async def chatter(ws: ServerConnection) -> None:
        for _ in range(20):  # alive, but never a kline
            await ws.send(json.dumps({"stream": "btcusdt@kline_1s", "data": {"e": "trade"}}))
        await ws.wait_closed()

    rec = Recorder()
    async with serve(chatter, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        c = collector(f"ws://127.0.0.1:{port}", [BTC_1S], rec, max_idle_packets=5)
        began = time.monotonic()
        await run_until(c, lambda: c.reconnects["idle"] >= 2, limit_s=5)
    assert time.monotonic() - began < 2  # long before the 30 s idle timeout
    assert rec.candles == []


async def test_malformed_frames_are_counted_and_skipped(start_sim: StartSim) -> None:
    sim, url = await start_sim(faults={"malformed_frames": {"every": 1}})
    counted = (
        metrics.REGISTRY.get_sample_value(
            "candled_malformed_messages_total", {"venue": "binance", "source": "ws"}
        )
        or 0.0
    )
    rec = Recorder()
    c = collector(url, [BTC_1S, ETH_1S], rec)
    await run_until(c, lambda: len(rec.candles) >= 4, limit_s=10)

    assert c.malformed >= 4 and sim.counters.malformed_frames_sent >= c.malformed
    after = metrics.REGISTRY.get_sample_value(
        "candled_malformed_messages_total", {"venue": "binance", "source": "ws"}
    )
    assert after == counted + c.malformed
    assert c.shards[0].connects == 1 and not c.reconnects  # the connection lived on
    assert_truth(sim, rec.candles)


async def test_rotation_makes_before_it_breaks_and_loses_no_bar(start_sim: StartSim) -> None:
    # The sim closes connections at 4 s; we rotate at 1.5 s (2.5 s less a 1 s margin).
    sim, url = await start_sim(ws={"max_connection_age": "4s"})
    rec = Recorder()
    c = collector(url, [BTC_1S, ETH_1S], rec, max_age_s=2.5, rotate_margin_s=1.0)
    open_at_once = 0

    def sample() -> None:
        nonlocal open_at_once
        open_at_once = max(open_at_once, sim.counters.ws_open)

    await run_until(c, lambda: c.reconnects["rotate"] >= 3, limit_s=20, sample=sample)

    assert not c.reconnects["error"] and not c.reconnects["idle"]  # never dropped by the venue
    assert open_at_once == 2  # the new connection opened before the old one closed
    assert c.shards[0].connects == len(rec.connects) == 4
    assert_truth(sim, rec.candles)
    for series in (BTC_1S, ETH_1S):
        stamps = sorted({c.ts for c in rec.of(series)})
        expected = list(series.tf.bars(stamps[0], stamps[-1] + timedelta(seconds=1)))
        assert stamps == expected, f"{series}: bars missing across rotations"
        assert len(stamps) >= 4


async def test_streams_beyond_the_url_budget_and_added_later_are_subscribed(
    start_sim: StartSim,
) -> None:
    sim, url = await start_sim()
    rec = Recorder()
    # Room in the URL for one stream name: the other is subscribed by message.
    budget = len(url + CODEC.connect_path([BTC_1S]))
    c = collector(url, [BTC_1S, ETH_1S], rec, max_url_length=budget)

    async with asyncio.timeout(15), asyncio.TaskGroup() as tg:
        task = tg.create_task(c.run())
        while not (rec.of(BTC_1S) and rec.of(ETH_1S)):
            await asyncio.sleep(0.01)
        await c.add([SOL_1S])
        while not rec.of(SOL_1S):
            await asyncio.sleep(0.01)
        await c.remove([BTC_1S])
        removed_at, eth_at = len(rec.of(BTC_1S)), len(rec.of(ETH_1S))
        # The others go on: three closes of ETH, so two of BTC's would have come.
        while len(rec.of(ETH_1S)) < eth_at + 3:
            await asyncio.sleep(0.01)
        task.cancel()

    assert len(rec.of(BTC_1S)) <= removed_at + 1  # one close may already be on its way
    assert c.shards[0].connects == 1 and not c.reconnects  # all on the one connection
    assert_truth(sim, rec.candles)


async def test_a_full_shard_connects(start_sim: StartSim) -> None:
    symbols = [{"symbol": f"S{i:02d}USDT", "listed": "-1d"} for i in range(64)]
    sim, url = await start_sim(symbols=symbols)
    series = [SeriesKey("binance", s["symbol"], tf) for s in symbols for tf in SUPPORTED]
    assert len(series) == CODEC.limits.streams_per_connection  # 1024: one shard
    rec = Recorder()
    c = collector(url, series, rec)
    seconds = {s for s in series if s.timeframe == "1s"}
    await run_until(c, lambda: seconds <= {c.series for c in rec.candles}, limit_s=15)

    assert len(c.shards) == 1 and c.shards[0].connects == 1 and not c.reconnects
    assert_truth(sim, rec.candles)


class SparseBinance(BinanceStream):
    """Binance's wire format, declared sparse: a skipped bar may be one without trades."""

    SPARSE = True


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
async def test_lost_closing_frames_are_reported_as_gaps_on_dense_venues_only(
    start_sim: StartSim, sparse: bool
) -> None:
    sim, url = await start_sim(faults={"lost_closing_frames": {"every": 2}})
    rec = Recorder()
    gaps: list[tuple[SeriesKey, datetime | None, datetime]] = []
    codec = SparseBinance("binance") if sparse else CODEC
    c = Collector(codec, url, [BTC_1S], rec.sink, settings=CollectorSettings(**FAST),
                  on_gap=lambda *gap: gaps.append(gap))  # fmt: skip
    await run_until(c, lambda: len(rec.candles) >= 4, limit_s=15)

    assert sim.counters.closing_frames_lost >= 3
    first, *skipped = gaps
    assert first == (BTC_1S, None, rec.candles[0].ts)  # a stream's first bar, always
    if sparse:
        assert skipped == []  # the heal cycle judges them, not a request each
    else:
        stamps = [c.ts for c in rec.candles]
        holes = [
            (BTC_1S.tf.next(a), b) for a, b in itertools.pairwise(stamps) if b > BTC_1S.tf.next(a)
        ]
        assert skipped[: len(holes)] == [(BTC_1S, a, b) for a, b in holes] and holes
