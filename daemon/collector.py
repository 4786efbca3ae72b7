"""WebSocket collector: live closed candles from a venue's streams.

One connection carries up to the venue's streams-per-connection limit
(more series are sharded over more connections). Streams are named in the
connect URL up to a length budget and subscribed by message beyond it, paced
under the venue's limit on incoming messages. Each connection reconnects
forever with capped, fully jittered backoff; spots idle connections (no data
frame for `idle_timeout`, or `max_idle_packets` non-data frames in a row);
and rotates before the venue's maximum connection age, make-before-break:

1. open the successor and read it until it is subscribed and delivers data
   (from then on it carries every new event);
2. close the old connection, forwarding what it delivers until the venue's
   close frame: the venue sends that after everything it had queued, so the
   old connection takes nothing with it that the successor lacks.

Bars in the overlap may be forwarded twice; the store's upsert makes that a
no-op. After every connect `on_connect` is called so the caller can backfill
the hole since the newest stored candle.

Where the codec has login messages (Alpaca's auth), a connection counts as
connected, subscribes and calls `on_connect` only once the venue accepted the
login. A stream error the codec classifies (`StreamError`) decides what comes
next, by its fault: a refused key or plan, or a message the venue rejects (a
bug on our side), ends the connection and is asked about again only after
`auth_retry_s`; another connection holding the key's only slot backs off from
`busy_retry_s`, doubling up to `busy_retry_cap_s`; the venue's own trouble
reconnects with the usual backoff; a harmless one is logged and changes
nothing. Until the venue confirms a later connection's subscription (or sends
it data), `refusal` says why (the venue's words, what to fix, where the key
comes from) for /health.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import websockets
from websockets.asyncio.client import ClientConnection

from candled import logs, metrics
from candled.domain import Candle, SeriesKey
from candled.throttle import MessagePacer
from candled.venues import VenueCodec
from candled.venues.base import StreamError, StreamFault

log = logs.get("candled.collector")
Sink = Callable[[Sequence[Candle]], Awaitable[None]]
OnConnect = Callable[[Sequence[SeriesKey]], Awaitable[None]]
# series, first missing bar (None: the stream's first bar), next present bar
OnGap = Callable[[SeriesKey, datetime | None, datetime], None]
MAX_MESSAGE = 1 << 20  # bytes; a kline frame is ~600
STREAMS_PER_MESSAGE = 200  # streams named in one subscribe message (~5 kB)
_LINK_ERRORS = (OSError, TimeoutError, websockets.WebSocketException)
# A venue that does not answer our close frame is cut off after this long.
_CLOSE_TIMEOUT_S = 2.0
# What a frame was: ours (data), a method reply, a live stream no longer
# ours, or noise (malformed, other events), which counts towards idleness.
_FrameKind = Literal["data", "reply", "foreign", "noise"]


class IdleConnection(Exception):
    """The connection is open but delivers no data."""


# Faults after which the same connection would meet the same answer: said
# loudly, then asked about again only after `auth_retry_s`.
_RARELY = {
    StreamFault.KEY_REFUSED: "venue refused the stream's credentials; reconnecting rarely",
    StreamFault.NOT_ENTITLED: "venue refused the stream under the key's plan; reconnecting rarely",
    StreamFault.REJECTED: "venue rejected a stream message candled sent (a bug); reconnecting"
    " rarely",
}
# The key's settings matter to these faults: their message says where the key comes from.
_KEY_FAULTS = frozenset({StreamFault.KEY_REFUSED, StreamFault.NOT_ENTITLED,
                         StreamFault.CONNECTION_LIMIT})  # fmt: skip


class StreamRefused(Exception):
    """The venue ended the stream with an error the codec classified (`StreamError`).
    The message names the venue, the venue's words, what to fix and, for the
    key's faults, the settings the key comes from (never the key)."""

    def __init__(self, venue: str, error: StreamError, key_source: str = "") -> None:
        if error.fault is StreamFault.KEY_REFUSED:
            text = f'venue "{venue}" refused its credentials (stream error {error.said})'
        else:
            text = f'venue "{venue}" stream error {error.said}'
        if error.fix:
            text += f": {error.fix}"
        if key_source and error.fault in _KEY_FAULTS:
            text += f" (the key: {key_source})"
        super().__init__(text)
        self.error = error


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
    # Stream names beyond this URL length are subscribed by message instead:
    # servers refuse request lines much over 8 kB.
    max_url_length: int = 4096
    # After the venue refused the key or the plan, or rejected a message of
    # ours, reconnect only this long after: the same connection meets the same
    # answer; a fixed key is picked up in minutes.
    auth_retry_s: float = 300.0
    # Another connection holds the key's only one (Alpaca's 406): wait this
    # long, twice as long after each refusal in a row, up to the cap.
    busy_retry_s: float = 30.0
    busy_retry_cap_s: float = 300.0
    # Where the key comes from, for messages: the settings and variable or
    # file names (e.g. `api_key_env = "ALPACA_KEY"`), never the key.
    key_source: str = ""


class _Link:
    """One open connection: its socket, and method messages paced under the
    venue's incoming-message limit, with the replies still awaited."""

    def __init__(self, ws: ClientConnection, codec: VenueCodec) -> None:
        self.ws = ws
        self.opened = time.monotonic()
        self.data_seen = False
        self.logged_in = False  # the venue accepted the login messages
        self.pending: set[int] = set()  # ids of method messages not answered yet
        # Per series, the newest bar still forming (venues without a closed
        # flag). Per connection: after a reconnect an old one may be stale.
        self.forming: dict[SeriesKey, Candle] = {}
        self._codec = codec
        self._pacer = MessagePacer(codec.limits.max_ws_messages_per_s)
        self._ids = itertools.count(1)
        self._send_lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """Subscribed to everything asked for, and data is flowing."""
        return self.data_seen and not self.pending

    async def send_method(self, message: Callable[[int], str]) -> int:
        async with self._send_lock:
            wait = self._pacer.delay(time.monotonic())
            if wait > 0:  # then the window has room: the oldest send has left it
                await asyncio.sleep(wait)
            request_id = next(self._ids)
            if self._codec.limits.acknowledges_requests:
                self.pending.add(request_id)
            await self.ws.send(message(request_id))
            self._pacer.sent(time.monotonic())
            return request_id

    async def subscribe(self, series: Sequence[SeriesKey], subscribe: bool = True) -> None:
        build = self._codec.subscribe_message if subscribe else self._codec.unsubscribe_message
        # One timeframe per message: some venues take the interval once per request.
        by_tf: dict[str, list[SeriesKey]] = collections.defaultdict(list)
        for key in series:
            by_tf[key.timeframe].append(key)
        for keys in by_tf.values():
            for i in range(0, len(keys), STREAMS_PER_MESSAGE):
                chunk = keys[i : i + STREAMS_PER_MESSAGE]
                await self.send_method(functools.partial(build, chunk))


@dataclass(eq=False)
class Shard:
    series: list[SeriesKey]
    connected: bool = False
    connects: int = 0
    healthy: bool = False  # delivered data since the last connect: resets the backoff
    # Why the venue keeps this shard's stream down (`StreamRefused`), until a
    # later connection is subscribed.
    refusal: str | None = None
    streams: dict[str, SeriesKey] = field(default_factory=dict)  # stream name -> series
    link: _Link | None = None
    task: asyncio.Task[None] | None = None


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
        on_gap: OnGap | None = None,
    ) -> None:
        self.codec = codec
        self._on_gap = on_gap
        self._last_closed: dict[SeriesKey, datetime] = {}
        self.ws_url = ws_url
        self._sink = sink
        self._on_connect = on_connect
        self.settings = settings or CollectorSettings()
        self.shards: list[Shard] = []
        self._rnd = random.Random()
        self._tg: asyncio.TaskGroup | None = None
        self.reconnects: collections.Counter[str] = collections.Counter()  # by reason
        self.malformed = 0  # frames that did not parse
        self._place(sorted(set(series)))

    @property
    def connected(self) -> bool:
        return bool(self.shards) and all(s.connected for s in self.shards)

    @property
    def refusal(self) -> str | None:
        """Why the venue keeps a stream down (see `StreamRefused`); None when nothing does."""
        return next((s.refusal for s in self.shards if s.refusal is not None), None)

    async def run(self) -> None:
        """Keep every shard connected until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for shard in self.shards:
                self._start(shard)
            try:
                await asyncio.Future()  # shards come and go with add() and remove()
            finally:
                self._tg = None

    def _start(self, shard: Shard) -> None:
        assert self._tg is not None
        shard.task = self._tg.create_task(self._keep_connected(shard))

    def _place(self, keys: Sequence[SeriesKey]) -> dict[Shard, list[SeriesKey]]:
        """Put new series on shards with room, opening shards as needed."""
        per = self.codec.limits.streams_per_connection
        placed: dict[Shard, list[SeriesKey]] = collections.defaultdict(list)
        known = {k for s in self.shards for k in s.series}
        for key in keys:
            if key in known:
                continue
            known.add(key)
            shard = next((s for s in self.shards if len(s.series) < per), None)
            if shard is None:
                shard = Shard([])
                self.shards.append(shard)
            shard.series.append(key)
            shard.streams[self.codec.stream_name(key)] = key
            placed[shard].append(key)
        return placed

    async def add(self, keys: Sequence[SeriesKey]) -> None:
        """Stream `keys` too: subscribed on open connections, or on new shards."""
        for shard, added in self._place(keys).items():
            if shard.task is None and self._tg is not None:
                self._start(shard)  # a new shard connects with its streams
            elif shard.link is not None:
                await self._resubscribe(shard.link, added, subscribe=True)

    async def remove(self, keys: Sequence[SeriesKey]) -> None:
        """Stop streaming `keys`; a shard left without streams is closed."""
        gone = set(keys)
        for shard in list(self.shards):
            removed = [k for k in shard.series if k in gone]
            if not removed:
                continue
            shard.series = [k for k in shard.series if k not in gone]
            for key in removed:
                shard.streams.pop(self.codec.stream_name(key), None)
            if not shard.series:
                self.shards.remove(shard)
                if shard.task is not None:
                    shard.task.cancel()
            elif shard.link is not None:
                await self._resubscribe(shard.link, removed, subscribe=False)

    async def _resubscribe(self, link: _Link, keys: Sequence[SeriesKey], subscribe: bool) -> None:
        try:
            await link.subscribe(keys, subscribe)
        except _LINK_ERRORS as e:  # the reconnect subscribes whatever the shard holds then
            log.warning("stream (un)subscribe failed", venue=self.codec.venue,
                        error=f"{type(e).__name__}: {e}")  # fmt: skip

    async def _keep_connected(self, shard: Shard) -> None:
        attempt = busy = 0
        while True:
            fault = None
            try:
                await self._connected_loop(shard)
            except IdleConnection as e:
                reason, error = "idle", str(e)
            except StreamRefused as e:
                fault = e.error.fault
                reason, error = fault.value, str(e)
            except _LINK_ERRORS as e:
                # By type and message: a repr may hold what was sent.
                reason, error = "error", f"{type(e).__name__}: {e}"
            if shard.healthy:
                attempt = 0
            if shard.connected or fault is not StreamFault.CONNECTION_LIMIT:
                busy = 0  # the key's connection was ours, or the refusals are no longer in a row
            shard.connected = shard.healthy = False
            shard.link = None
            self.reconnects[reason] += 1
            metrics.reconnects.labels(self.codec.venue, reason).inc()
            delay = backoff_delay(
                attempt, self.settings.backoff_base_s, self.settings.backoff_cap_s, self._rnd
            )
            attempt += 1
            if fault in _RARELY:
                assert fault is not None
                shard.refusal, delay = error, self.settings.auth_retry_s
                log.error(_RARELY[fault], venue=self.codec.venue, error=error, retry_in_s=delay)
                await asyncio.sleep(delay)
                continue
            if fault is StreamFault.CONNECTION_LIMIT:
                s = self.settings
                delay = min(s.busy_retry_cap_s, s.busy_retry_s * 2 ** min(busy, 30))
                busy += 1
                shard.refusal = error
                log.error("another connection uses the venue's key; backing off",
                          venue=self.codec.venue, error=error, retry_in_s=delay)  # fmt: skip
                await asyncio.sleep(delay)
                continue
            log.warning(
                "stream connection lost, reconnecting",
                venue=self.codec.venue, reason=reason, error=error,
                retry_in_s=round(delay, 2), streams=len(shard.series),
            )  # fmt: skip
            await asyncio.sleep(delay)

    def _lifetime_s(self) -> float:
        s = self.settings
        max_age = s.max_age_s or self.codec.limits.max_connection_age_s
        return max(1.0, max_age - min(s.rotate_margin_s, max_age / 2))

    async def _connected_loop(self, shard: Shard) -> None:
        link = await self._open(shard)
        try:
            while True:
                await self._pump(link, shard, until=link.opened + self._lifetime_s())
                link = await self._rotate(link, shard)
        finally:
            await self._close(link, shard, forward=False)

    async def _open(self, shard: Shard) -> _Link:
        """Connect, subscribe the shard's streams, and tell `on_connect`."""
        wanted = list(shard.series)
        in_url, length = 0, len(self.ws_url + self.codec.stream_path([]))
        for key in wanted if self.codec.limits.subscribe_in_url else ():
            length += len(self.codec.stream_name(key)) + 1
            if length > self.settings.max_url_length:
                break
            in_url += 1
        ws = await websockets.connect(
            self.ws_url + self.codec.stream_path(wanted[:in_url]),
            open_timeout=self.settings.open_timeout_s,
            close_timeout=_CLOSE_TIMEOUT_S,
            max_size=MAX_MESSAGE,
        )
        link = _Link(ws, self.codec)
        try:
            shard.link = link
            logins = self.codec.login_messages()
            for message in logins:
                await ws.send(message)
            if logins:
                await self._await_login(link, shard)
            # add()/remove() calls that came while connecting went to no link.
            current = set(shard.series)
            asked = set(wanted)
            await link.subscribe(wanted[in_url:] + [k for k in shard.series if k not in asked])
            await link.subscribe([k for k in wanted if k not in current], subscribe=False)
            shard.connected = True
            shard.connects += 1
            log.info("stream connected", venue=self.codec.venue, streams=len(shard.series),
                     by_message=len(wanted) - in_url)  # fmt: skip
            if self._on_connect is not None:
                await self._on_connect(list(shard.series))
        except BaseException:
            await self._close(link, shard, forward=False)
            raise
        return link

    async def _await_login(self, link: _Link, shard: Shard) -> None:
        """Read until the venue accepts the login; its refusal raises
        (`StreamRefused`), and so does silence past `open_timeout_s`."""
        async with asyncio.timeout(self.settings.open_timeout_s):
            while not link.logged_in:
                await self._handle(link, shard, await link.ws.recv())

    async def _rotate(self, old: _Link, shard: Shard) -> _Link:
        """Make before break: see the module docstring."""
        new = await self._open(shard)
        try:
            await self._pump(new, shard, until_ready=True)
            await self._close(old, shard, forward=True)
        except BaseException:
            await self._close(new, shard, forward=False)
            raise
        self.reconnects["rotate"] += 1
        metrics.reconnects.labels(self.codec.venue, "rotate").inc()
        return new

    async def _close(self, link: _Link, shard: Shard, *, forward: bool) -> None:
        """Close `link`, reading what it delivers until the venue's close frame
        (forwarded, or dropped). Reading is what lets the closing handshake
        finish: unread frames pause websockets' reading, and close() would
        then wait out close_timeout (websockets issue 1555)."""

        async def hang_up() -> None:
            with contextlib.suppress(*_LINK_ERRORS):
                await link.ws.close()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(hang_up())
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    message = await link.ws.recv()
                    if forward:
                        await self._handle(link, shard, message)

    async def _pump(
        self,
        link: _Link,
        shard: Shard,
        *,
        until: float | None = None,
        until_ready: bool = False,
    ) -> None:
        """Forward closed candles from `link` until `until` (monotonic) or, with
        `until_ready`, until the link is ready; raise when it is idle or broken."""
        s = self.settings
        # A quiet venue's stream may be silent for hours while healthy.
        idle_timeout_s = math.inf if self.codec.limits.quiet_stream else s.idle_timeout_s
        last_data = time.monotonic()
        non_data = 0
        while not (until_ready and link.ready):
            now = time.monotonic()
            if until is not None and now >= until:
                return
            idle_left = last_data + idle_timeout_s - now
            if idle_left <= 0:
                raise IdleConnection(f"no data frame for {s.idle_timeout_s:g}s")
            wait = idle_left if until is None else min(idle_left, until - now)
            try:
                async with asyncio.timeout(None if math.isinf(wait) else wait):
                    message = await link.ws.recv()
            except TimeoutError:
                continue  # the loop head decides: idle or rotate
            kind = await self._handle(link, shard, message)
            if kind == "data":
                # After the sink: a slow store must not pass for a silent venue.
                last_data, non_data = time.monotonic(), 0
            elif kind == "noise":
                non_data += 1
                if non_data >= s.max_idle_packets:
                    raise IdleConnection(f"{non_data} frames in a row without data")

    async def _handle(self, link: _Link, shard: Shard, message: str | bytes) -> _FrameKind:
        """Parse one frame: forward its closed candles, note replies and malformed frames."""
        result = self.codec.parse_frame(
            message if isinstance(message, str) else message.decode("utf-8", "replace")
        )
        error = result.stream_error
        if error is not None and error.fault is not StreamFault.HARMLESS:
            raise StreamRefused(self.codec.venue, error, self.settings.key_source)
        if error is not None:
            log.error("venue refused a stream message; the connection stands",
                      venue=self.codec.venue, error=f"{error.said}: {error.fix}")  # fmt: skip
            return "reply"
        if result.error is not None:  # with an id or not (some venues give none)
            log.error("venue refused a stream request", venue=self.codec.venue,
                      error=result.error)  # fmt: skip
        if result.subscribed or result.is_data:
            shard.refusal = None  # the venue took the subscription: nothing keeps it down
        if result.logged_in:
            link.logged_in = True
            return "reply"
        if result.reply_id is not None:
            link.pending.discard(result.reply_id)
            return "reply"
        if result.malformed:
            self.malformed += 1
            metrics.malformed.labels(self.codec.venue, "ws").inc()
        if not result.is_data:
            return "noise"
        if result.stream is not None and result.stream not in shard.streams:
            # A stream being unsubscribed: alive, but no longer ours to forward.
            metrics.malformed.labels(self.codec.venue, "unknown_stream").inc()
            return "foreign"
        # Frames that batch several streams (stream None) are sorted bar by bar.
        closed, forming = self._ours(shard, result.candles), self._ours(shard, result.forming)
        if not closed and not forming and (result.candles or result.forming):
            return "foreign"
        link.data_seen = shard.healthy = True
        closed += self._finalised(link, forming)
        if closed:
            metrics.live_candles.labels(self.codec.venue).inc(len(closed))
            self._check_sequence(closed)
            await self._sink(closed)
        return "data"

    def _ours(self, shard: Shard, candles: Sequence[Candle]) -> list[Candle]:
        """The candles of streams this shard carries; others are counted and dropped."""
        ours = [c for c in candles if self.codec.stream_name(c.series) in shard.streams]
        if len(ours) < len(candles):
            metrics.malformed.labels(self.codec.venue, "unknown_stream").inc(
                len(candles) - len(ours)
            )
        return ours

    @staticmethod
    def _finalised(link: _Link, forming: Sequence[Candle]) -> list[Candle]:
        """Bars that a later bar's first update has closed (venues without a closed flag)."""
        final = []
        for bar in forming:
            held = link.forming.get(bar.series)
            if held is not None and bar.ts < held.ts:
                continue  # a late update of a bar already closed
            if held is not None and bar.ts > held.ts:
                final.append(held)
            link.forming[bar.series] = bar
        return final

    def _check_sequence(self, candles: Sequence[Candle]) -> None:
        """Report bars skipped between two closed bars of a stream (a lost
        closing frame), so the caller can fetch them at once."""
        sparse = self.codec.limits.sparse
        for c in candles:
            prev = self._last_closed.get(c.series)
            expected = c.series.tf.next(prev) if prev is not None else None
            # The first bar of a stream is reported too (expected None): the
            # close of the bar in progress at connect time may never come. On
            # a sparse venue a skipped bar is most likely one without trades:
            # not worth a request each; the heal cycle judges those.
            skipped = expected is not None and c.ts > expected and not sparse
            if (expected is None or skipped) and self._on_gap is not None:
                self._on_gap(c.series, expected, c.ts)
            if prev is None or c.ts > prev:
                self._last_closed[c.series] = c.ts


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
    the candles gathered so far are returned, marked partial, instead of an error.
    Each bar appears once, in arrival order."""
    gathered: dict[tuple[SeriesKey, datetime], Candle] = {}
    enough = asyncio.Event()

    async def sink(candles: Sequence[Candle]) -> None:
        for candle in candles:
            gathered.setdefault((candle.series, candle.ts), candle)
        if max_candles is not None and len(gathered) >= max_candles:
            enough.set()

    collector = Collector(codec, ws_url, series, sink, settings=settings)
    try:
        async with asyncio.timeout(total_timeout), asyncio.TaskGroup() as tg:
            task = tg.create_task(collector.run())
            await enough.wait()
            task.cancel()
    except TimeoutError:
        return CollectResult(list(gathered.values()), partial=True)
    return CollectResult(list(gathered.values())[:max_candles], partial=False)
