"""WebSocket collector: live closed candles from a venue's streams.

One connection carries up to the venue's streams-per-connection limit
(more series are sharded over more connections). Each connection reconnects
forever with capped, fully jittered backoff; spots idle connections (no data
frame for `idle_timeout`, or `max_idle_packets` non-data frames in a row);
rotates before the venue's maximum connection age by opening the new
connection before closing the old one. After every connect `on_connect` is
called so the caller can backfill the hole since the newest stored candle.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import websockets
from websockets.asyncio.client import ClientConnection

from daemon import logs, metrics
from daemon.domain import Candle, SeriesKey
from daemon.venues import VenueCodec

log = logs.get("candled.collector")
Sink = Callable[[Sequence[Candle]], Awaitable[None]]
OnConnect = Callable[[Sequence[SeriesKey]], Awaitable[None]]
MAX_MESSAGE = 1 << 20  # bytes; a kline frame is ~600


class IdleConnection(Exception):
    """The connection is open but delivers no data."""


@dataclass
class CollectorSettings:
    idle_timeout_s: float = 30.0
    max_idle_packets: int = 50
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 60.0
    open_timeout_s: float = 10.0
    # Rotate this long before the venue's maximum connection age.
    rotate_margin_s: float = 300.0
    max_age_s: float | None = None  # None: the codec's limit


@dataclass
class Shard:
    series: list[SeriesKey]
    connected: bool = False
    connects: int = 0
    healthy: bool = False  # delivered data since the last connect: resets the backoff
    streams: set[str] = field(default_factory=set)


def backoff_delay(attempt: int, base: float, cap: float, rnd: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rnd.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


class Collector:
    def __init__(
        self,
        codec: VenueCodec,
        ws_url: str,
        series: Sequence[SeriesKey],
        sink: Sink,
        on_connect: OnConnect | None = None,
        settings: CollectorSettings | None = None,
    ) -> None:
        self.codec = codec
        self.ws_url = ws_url
        self._sink = sink
        self._on_connect = on_connect
        self.settings = settings or CollectorSettings()
        per = codec.limits.streams_per_connection
        ordered = sorted(set(series))
        self.shards = [Shard(ordered[i : i + per]) for i in range(0, len(ordered), per)]
        self._rnd = random.Random()

    @property
    def connected(self) -> bool:
        return bool(self.shards) and all(s.connected for s in self.shards)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for shard in self.shards:
                tg.create_task(self._keep_connected(shard))

    async def _keep_connected(self, shard: Shard) -> None:
        attempt = 0
        while True:
            try:
                await self._connected_loop(shard)
            except IdleConnection as e:
                reason, error = "idle", str(e)
            except (OSError, TimeoutError, websockets.WebSocketException) as e:
                reason, error = "error", repr(e)
            if shard.healthy:
                attempt = 0
            shard.connected = shard.healthy = False
            metrics.reconnects.labels(self.codec.venue, reason).inc()
            delay = backoff_delay(
                attempt, self.settings.backoff_base_s, self.settings.backoff_cap_s, self._rnd
            )
            attempt += 1
            log.warning(
                "stream connection lost, reconnecting",
                venue=self.codec.venue, reason=reason, error=error,
                retry_in_s=round(delay, 2), streams=len(shard.series),
            )  # fmt: skip
            await asyncio.sleep(delay)

    async def _connected_loop(self, shard: Shard) -> None:
        ws = await self._connect(shard)
        try:
            while True:
                await self._read(ws, shard)  # returns when it is time to rotate
                new = await self._connect(shard)  # make before break
                await ws.close()
                ws = new
                metrics.reconnects.labels(self.codec.venue, "rotate").inc()
        finally:
            await ws.close()

    async def _connect(self, shard: Shard) -> ClientConnection:
        url = self.ws_url + self.codec.stream_path(shard.series)
        ws = await websockets.connect(
            url, open_timeout=self.settings.open_timeout_s, max_size=MAX_MESSAGE
        )
        shard.connected = True
        shard.connects += 1
        shard.streams = {self.codec.stream_name(s) for s in shard.series}
        log.info("stream connected", venue=self.codec.venue, streams=len(shard.series))
        if self._on_connect is not None:
            try:
                await self._on_connect(shard.series)
            except BaseException:
                await ws.close()
                raise
        return ws

    async def _read(self, ws: ClientConnection, shard: Shard) -> None:
        """Forward closed candles until rotation is due; raise when idle or broken."""
        s = self.settings
        max_age = s.max_age_s or self.codec.limits.max_connection_age_s
        rotate_at = time.monotonic() + max(1.0, max_age - min(s.rotate_margin_s, max_age / 2))
        last_data = time.monotonic()
        non_data = 0
        while True:
            now = time.monotonic()
            if now >= rotate_at:
                return
            idle_left = last_data + s.idle_timeout_s - now
            if idle_left <= 0:
                raise IdleConnection(f"no data frame for {s.idle_timeout_s:.0f}s")
            try:
                async with asyncio.timeout(min(idle_left, rotate_at - now)):
                    message = await ws.recv()
            except TimeoutError:
                continue  # the loop head decides: idle or rotate
            result = self.codec.parse_frame(
                message if isinstance(message, str) else message.decode("utf-8", "replace")
            )
            if result.malformed:
                metrics.malformed.labels(self.codec.venue, "ws").inc()
            if not result.is_data:
                non_data += 1
                if non_data >= s.max_idle_packets:
                    raise IdleConnection(f"{non_data} frames in a row without data")
                continue
            if result.stream not in shard.streams:
                metrics.malformed.labels(self.codec.venue, "unknown_stream").inc()
                continue
            last_data, non_data = time.monotonic(), 0
            shard.healthy = True
            if result.candles:
                metrics.live_candles.labels(self.codec.venue).inc(len(result.candles))
                await self._sink(result.candles)


@dataclass(frozen=True)
class CollectResult:
    candles: list[Candle]
    partial: bool  # the total timeout expired before `max_candles` arrived


async def collect(
    codec: VenueCodec,
    ws_url: str,
    series: Sequence[SeriesKey],
    total_timeout: float,
    *,
    max_candles: int | None = None,
    settings: CollectorSettings | None = None,
) -> CollectResult:
    """Collect closed candles for a bounded time. When `total_timeout` expires
    the candles gathered so far are returned, marked partial, instead of an error."""
    gathered: list[Candle] = []
    enough = asyncio.Event()

    async def sink(candles: Sequence[Candle]) -> None:
        gathered.extend(candles)
        if max_candles is not None and len(gathered) >= max_candles:
            enough.set()

    collector = Collector(codec, ws_url, series, sink, settings=settings)
    try:
        async with asyncio.timeout(total_timeout), asyncio.TaskGroup() as tg:
            task = tg.create_task(collector.run())
            await enough.wait()
            task.cancel()
    except TimeoutError:
        return CollectResult(gathered, partial=True)
    return CollectResult(gathered[:max_candles], partial=False)
