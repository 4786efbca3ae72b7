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

The protocol is the venue's stream session's (`candled.venues.stream`): the
collector opens one per connection, sends what it gives to send (login,
subscribe and unsubscribe messages, paced under the venue's limit on incoming
messages), feeds it every frame and acts on its events: closed bars go to the
sink, gaps to `on_gap`, malformed and foreign data are counted. The collector
itself keeps sockets, timers, sharding and rotation only.

Where the venue has a login (Alpaca's auth), a connection counts as
connected, subscribes and calls `on_connect` only once the venue accepted the
login. A stream error the session classifies (`Refusal`) decides what comes
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
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import websockets
from websockets.asyncio.client import ClientConnection

from candled import logs, metrics
from candled.domain import Candle, SeriesKey
from candled.errors import CandledError
from candled.throttle import MessagePacer
from candled.venues import (
    ClosedBars,
    Foreign,
    Gap,
    Heartbeat,
    LoggedIn,
    Malformed,
    Refusal,
    Reply,
    StreamCodec,
    StreamError,
    StreamFault,
    StreamSession,
    Subscribed,
)

log = logs.get("candled.collector")
Sink = Callable[[Sequence[Candle]], Awaitable[None]]
OnConnect = Callable[[Sequence[SeriesKey]], Awaitable[None]]
# series, first missing bar (None: the stream's first bar), next present bar
OnGap = Callable[[SeriesKey, datetime | None, datetime], None]
MAX_MESSAGE = 1 << 20  # bytes; a kline frame is ~600
_LINK_ERRORS = (OSError, TimeoutError, websockets.WebSocketException)
# A venue that does not answer our close frame is cut off after this long.
_CLOSE_TIMEOUT_S = 2.0
# What a frame was, the first that applies: data of ours (closed bars or a
# sign of life), data of streams no longer ours, an answer to a message, or
# noise (malformed, other events), which counts towards idleness.
_FrameKind = Literal["data", "foreign", "reply", "noise"]
_RANK: dict[_FrameKind, int] = {"noise": 0, "reply": 1, "foreign": 2, "data": 3}


class IdleConnection(CandledError):
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


class StreamRefused(CandledError):
    """The venue ended the stream with an error the session classified (`StreamError`).
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
    """How a collector connects, spots idle connections, backs off and rotates."""

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
    """One open connection: its socket and session, and its messages paced
    under the venue's incoming-message limit."""

    def __init__(self, ws: ClientConnection, session: StreamSession, per_s: float) -> None:
        self.ws = ws
        self.session = session
        self.opened = time.monotonic()
        self._pacer = MessagePacer(per_s)
        self._send_lock = asyncio.Lock()

    async def send(self, messages: Sequence[str]) -> None:
        """Send `messages` in order, paced."""
        if not messages:
            return
        async with self._send_lock:
            for message in messages:
                wait = self._pacer.delay(time.monotonic())
                if wait > 0:  # then the window has room: the oldest send has left it
                    await asyncio.sleep(wait)
                await self.ws.send(message)
                self._pacer.sent(time.monotonic())


@dataclass(eq=False)
class Shard:
    """Series that share one connection (at a time: two while rotating)."""

    series: list[SeriesKey]
    connected: bool = False
    connects: int = 0
    healthy: bool = False  # delivered data since the last connect: resets the backoff
    # Why the venue keeps this shard's stream down (`StreamRefused`), until a
    # later connection is subscribed.
    refusal: str | None = None
    link: _Link | None = None
    task: asyncio.Task[None] | None = None


def backoff_delay(attempt: int, base: float, cap: float, rnd: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rnd.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


class Collector:
    """Keeps a venue's streamed series connected and hands their closed bars to
    `sink` (see the module docstring); `add` and `remove` change the series
    while it runs."""

    def __init__(
        self,
        codec: StreamCodec,
        ws_url: str,
        series: Sequence[SeriesKey],
        sink: Sink,
        on_connect: OnConnect | None = None,
        settings: CollectorSettings | None = None,
        on_gap: OnGap | None = None,
    ) -> None:
        self.codec = codec
        self._on_gap = on_gap
        # The newest closed bar per series, shared by every session: a
        # reconnect's first bar is checked against the last one before it.
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
        self._live_candles = metrics.live_candles.labels(codec.venue)  # looked up once
        self._place(sorted(set(series)))

    @property
    def connected(self) -> bool:
        """Every shard has an open, subscribed connection."""
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
            placed[shard].append(key)
        return placed

    async def add(self, keys: Sequence[SeriesKey]) -> None:
        """Stream `keys` too: subscribed on open connections, or on new shards."""
        for shard, added in self._place(keys).items():
            if shard.task is None and self._tg is not None:
                self._start(shard)  # a new shard connects with its streams
            elif shard.link is not None:
                await self._send(shard.link, shard.link.session.subscribe(added))

    async def remove(self, keys: Sequence[SeriesKey]) -> None:
        """Stop streaming `keys`; a shard left without streams is closed."""
        gone = set(keys)
        for shard in list(self.shards):
            removed = [k for k in shard.series if k in gone]
            if not removed:
                continue
            shard.series = [k for k in shard.series if k not in gone]
            if not shard.series:
                self.shards.remove(shard)
                if shard.task is not None:
                    shard.task.cancel()
            elif shard.link is not None:
                await self._send(shard.link, shard.link.session.unsubscribe(removed))

    async def _send(self, link: _Link, messages: Sequence[str]) -> None:
        try:
            await link.send(messages)
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
        """Connect, log in, subscribe the shard's streams, and tell `on_connect`."""
        session = self.codec.session(
            list(shard.series),
            max_path=self.settings.max_url_length - len(self.ws_url),
            last_closed=self._last_closed,
        )
        in_url = len(session.streams)
        ws = await websockets.connect(
            self.ws_url + session.path,
            open_timeout=self.settings.open_timeout_s,
            close_timeout=_CLOSE_TIMEOUT_S,
            max_size=MAX_MESSAGE,
        )
        link = _Link(ws, session, self.codec.limits.max_messages_per_s)
        try:
            await link.send(session.login())
            if not session.logged_in:
                await self._await_login(link, shard)
            # From here on add() and remove() reach this link; what they did
            # while it was connecting is in the shard's series.
            shard.link = link
            current = set(shard.series)
            await link.send(session.subscribe([k for k in shard.series
                                               if not session.carries(k)]))  # fmt: skip
            await link.send(session.unsubscribe([k for k in session.streams if k not in current]))
            shard.connected = True
            shard.connects += 1
            log.info("stream connected", venue=self.codec.venue, streams=len(shard.series),
                     by_message=len(shard.series) - in_url)  # fmt: skip
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
            while not link.session.logged_in:
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
        `until_ready`, until its session is ready; raise when it is idle or broken."""
        s = self.settings
        # A quiet venue's stream may be silent for hours while healthy.
        idle_timeout_s = math.inf if self.codec.quiet else s.idle_timeout_s
        last_data = time.monotonic()
        non_data = 0
        while not (until_ready and link.session.ready):
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
        """Feed one frame to the link's session and act on its events: closed
        bars to the sink, gaps to `on_gap`, refusals raised, the rest counted."""
        venue = self.codec.venue
        kind: _FrameKind = "noise"
        events = link.session.receive(
            message if isinstance(message, str) else message.decode("utf-8", "replace")
        )
        for event in events:
            match event:
                case ClosedBars(candles):
                    kind = "data"
                    self._live_candles.inc(len(candles))
                    await self._sink(candles)
                case Heartbeat():
                    kind = "data"
                case Gap(series, start, end):
                    if self._on_gap is not None:
                        self._on_gap(series, start, end)
                case Foreign(count):
                    kind = _ranked(kind, "foreign")
                    metrics.malformed.labels(venue, "unknown_stream").inc(count)
                case Refusal(error) if error.fault is not StreamFault.HARMLESS:
                    raise StreamRefused(venue, error, self.settings.key_source)
                case Refusal(error):
                    kind = _ranked(kind, "reply")
                    log.error("venue refused a stream message; the connection stands",
                              venue=venue, error=f"{error.said}: {error.fix}")  # fmt: skip
                case Reply(_, error):
                    kind = _ranked(kind, "reply")
                    if error is not None:
                        log.error("venue refused a stream request", venue=venue, error=error)
                case LoggedIn() | Subscribed():
                    kind = _ranked(kind, "reply")
                case Malformed():
                    self.malformed += 1
                    metrics.malformed.labels(venue, "ws").inc()
        if kind in ("data", "foreign") or any(isinstance(e, Subscribed) for e in events):
            shard.refusal = None  # the venue took the subscription: nothing keeps it down
        if kind == "data":
            shard.healthy = True
        return kind


def _ranked(kind: _FrameKind, other: _FrameKind) -> _FrameKind:
    """The frame's kind: what says most about the stream (data, then foreign data, ...)."""
    return other if _RANK[other] > _RANK[kind] else kind


@dataclass(frozen=True)
class CollectResult:
    """What `collect` gathered."""

    candles: list[Candle]
    partial: bool  # the total timeout expired before `max_candles` arrived


async def collect(
    codec: StreamCodec,
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
