"""The stream codec interface: a venue's candle stream as a sans-I/O session.

In the manner of the `websockets` and `h11` protocol objects, the collector
owns the sockets and the clocks, and a session owns the protocol. For each
connection the collector asks the venue's `StreamCodec` for a `StreamSession`
(`codec.session(series)`: its `path` names the streams the venue takes in the
URL), sends what the session gives it to send (`login()`, `subscribe(keys)`,
`unsubscribe(keys)`: messages with their ids), feeds it every text frame it
receives (`receive(text)`) and acts on the typed events it gets back:

- `ClosedBars`: closed bars of streams this connection carries;
- `Heartbeat`: the stream is alive and nothing closed (a bar's update, a heartbeat);
- `Gap`: bars skipped before a closed bar (a lost closing frame), or a stream's first bar;
- `Reply`: the venue's answer to a message with an id (a refusal in its `error`);
- `Refusal`: a stream error that decides what becomes of the connection (`StreamError`);
- `LoggedIn`, `Subscribed`: the venue accepted the login; it confirmed a
  subscription without an id to match;
- `Malformed`: not the shape the venue documents (counted, never raised);
- `Foreign`: data of streams this connection does not carry (any more).

A frame that is none of these (a status message, another channel's data) gives
no event. The session keeps which streams the connection carries, the ids of
messages the venue has not answered yet, the bars still forming on a stream
without a closed flag (final when the next bar opens), and the newest closed
bar of each series (shared by the sessions of one collector, so that a
reconnect's first bar is checked against the last one before it).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from candled.domain import Candle, SeriesKey

STREAMS_PER_MESSAGE = 200  # streams named in one subscribe message (~5 kB)


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """What a venue allows a stream connection; the collector shards, paces and
    rotates by it."""

    streams_per_connection: int
    max_connection_age_s: float  # the venue drops a stream connection after this long
    max_messages_per_s: float  # incoming (client to venue) messages per connection


class StreamFault(StrEnum):
    """What a stream error means for the connection, and so what the collector does."""

    KEY_REFUSED = "key_refused"  # a wrong or revoked key: fix it; retried only rarely
    NOT_ENTITLED = "not_entitled"  # the key's plan refuses the feed or the symbols: rarely
    CONNECTION_LIMIT = "connection_limit"  # another connection holds the key: long backoff
    REJECTED = "rejected"  # the venue refused a message candled sent: a bug; rarely
    VENUE_FAULT = "venue_fault"  # the venue's trouble or a slow link: reconnect as usual
    HARMLESS = "harmless"  # refused, but the connection is as it was: carry on


@dataclass(frozen=True, slots=True)
class StreamError:
    """A stream error answer, classified by the session."""

    fault: StreamFault
    code: int | None  # the venue's code, when it is one the codec knows the type of
    said: str  # the venue's code and words, bounded in length
    fix: str = ""  # what an operator changes, naming the settings (never a key)


# --- events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClosedBars:
    """Closed bars of streams the connection carries, oldest first per series."""

    candles: tuple[Candle, ...]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The stream is alive and no bar closed: a bar's update, a heartbeat."""


@dataclass(frozen=True, slots=True)
class Gap:
    """The bars of `series` in [start, end) were skipped: a closing frame was
    lost. `start` None: `end` is the series' first closed bar on the stream,
    and the close of the bar in progress at connect time may never come."""

    series: SeriesKey
    start: datetime | None
    end: datetime


@dataclass(frozen=True, slots=True)
class Reply:
    """The venue's answer to the message with `request_id` (None: the venue gave
    none); `error` holds its words when it refused the message."""

    request_id: int | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A stream error that decides what becomes of the connection (by its fault)."""

    error: StreamError


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """The venue accepted the login messages."""


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The venue confirmed a (un)subscription without an id to match (Alpaca's
    `subscription` answer): the subscribe went through."""


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame, or part of one, not in the documented shape."""

    reason: str


@dataclass(frozen=True, slots=True)
class Foreign:
    """Data of streams the connection does not carry (being unsubscribed): alive,
    but not ours to forward. `count`: the frames or bars left out."""

    count: int


StreamEvent = (
    ClosedBars | Heartbeat | Gap | Reply | Refusal | LoggedIn | Subscribed | Malformed | Foreign
)
HEARTBEAT = Heartbeat()


# --- the interface -------------------------------------------------------------


class StreamSession(Protocol):
    """One connection's protocol state; pure: it never reads a clock or a socket."""

    @property
    def path(self) -> str:
        """Path (with query) to connect to, naming the streams the URL carries."""
        ...

    @property
    def logged_in(self) -> bool:
        """The venue accepted the login (True where the venue has none)."""
        ...

    @property
    def ready(self) -> bool:
        """Every message with an id is answered, and data has arrived."""
        ...

    @property
    def streams(self) -> list[SeriesKey]:
        """The series this connection carries (named in the URL or subscribed)."""
        ...

    def carries(self, key: SeriesKey) -> bool:
        """Whether the connection carries `key`'s stream."""
        ...

    def login(self) -> list[str]:
        """Messages to send right after connecting, before any subscribe."""
        ...

    def subscribe(self, keys: Sequence[SeriesKey]) -> list[str]:
        """Messages that subscribe `keys`; from now on their data is ours."""
        ...

    def unsubscribe(self, keys: Sequence[SeriesKey]) -> list[str]:
        """Messages that unsubscribe `keys`; from now on their data is foreign."""
        ...

    def receive(self, text: str) -> list[StreamEvent]:
        """The events of one received text frame, in order; never raises."""
        ...


class StreamCodec(Protocol):
    """A venue's candle stream: its limits, stream names and sessions."""

    @property
    def venue(self) -> str:
        """The venue name stored with every candle the stream delivers."""
        ...

    @property
    def limits(self) -> StreamLimits:
        """Streams per connection, connection age, messages per second."""
        ...

    @property
    def quiet(self) -> bool:
        """A healthy stream may stay silent for long (no heartbeat, nothing while
        the market is closed): silence says nothing; WebSocket pings still find
        a dead link."""
        ...

    def has_stream(self, key: SeriesKey) -> bool:
        """Whether the stream carries `key` (other live series are polled)."""
        ...

    def stream_name(self, key: SeriesKey) -> str:
        """The venue's name for `key`'s stream."""
        ...

    def connect_path(self, series: Sequence[SeriesKey]) -> str:
        """Path (with query) to open a connection naming `series` in its URL
        (venues that take no stream there ignore them)."""
        ...

    def session(
        self,
        series: Sequence[SeriesKey] = (),
        *,
        max_path: int | None = None,
        last_closed: dict[SeriesKey, datetime] | None = None,
    ) -> StreamSession:
        """A session for a new connection meant to carry `series`: its `path`
        names as many of them (from the first) as the venue takes in the URL
        within `max_path` characters (None: no bound); the others are for
        `subscribe`. `last_closed`: the newest closed bar per series, shared
        by the sessions of one collector (None: the session's own)."""
        ...


# --- implementation aids ------------------------------------------------------------


class StreamCodecBase:
    """What stream codecs share: the venue name, `LIMITS`, `SPARSE`, `QUIET`,
    `TIMEFRAMES`, `PATH` and the `SESSION` class each connection gets. An
    implementation aid; `StreamCodec` is the interface."""

    LIMITS: ClassVar[StreamLimits]
    SPARSE: ClassVar[bool]  # no bar for a period without trades: a skipped bar is no gap
    QUIET: ClassVar[bool] = False
    TIMEFRAMES: ClassVar[Collection[str] | None] = None  # None: every timeframe the venue has
    PATH: ClassVar[str]  # the connect path without streams in it
    SESSION: ClassVar[type[SessionBase[Any]]]

    def __init__(self, venue: str) -> None:
        self._venue = venue

    @property
    def venue(self) -> str:
        """The venue name stored with every candle the stream delivers."""
        return self._venue

    @property
    def limits(self) -> StreamLimits:
        """The venue's `LIMITS`."""
        return self.LIMITS

    @property
    def quiet(self) -> bool:
        """`QUIET`: silence is no sign of a dead stream."""
        return self.QUIET

    @property
    def sparse(self) -> bool:
        """`SPARSE`: a skipped bar is most likely one without trades."""
        return self.SPARSE

    def has_stream(self, key: SeriesKey) -> bool:
        """Whether `key`'s timeframe is one the stream carries."""
        return self.TIMEFRAMES is None or key.timeframe in self.TIMEFRAMES

    def stream_name(self, key: SeriesKey) -> str:
        """Each codec's own."""
        raise NotImplementedError

    def connect_path(self, series: Sequence[SeriesKey]) -> str:
        """`PATH`: streams are subscribed by message only."""
        return self.PATH

    def session(
        self,
        series: Sequence[SeriesKey] = (),
        *,
        max_path: int | None = None,
        last_closed: dict[SeriesKey, datetime] | None = None,
    ) -> SessionBase[Any]:
        """A `SESSION` whose path names the first of `series` that fit (`in_url`)."""
        named = series[: self.in_url(series, max_path)]
        return self.SESSION(self, self.connect_path(named), named, last_closed)

    def in_url(self, series: Sequence[SeriesKey], max_path: int | None) -> int:
        """How many of `series`, from the first, the connect path names within
        `max_path` characters: none, for venues subscribed by message only."""
        return 0


CodecT = TypeVar("CodecT", bound=StreamCodecBase)


class SessionBase(Generic[CodecT]):
    """What sessions share: the streams carried, request ids and the replies
    awaited, bars forming, sequence checks. A venue's session implements
    `receive` (with `_reply` and `_data`) and `_request`; `LOGIN` venues also
    `login`."""

    # The venue answers each (un)subscribe with a reply carrying its id.
    ACKNOWLEDGED: ClassVar[bool] = True
    # The venue expects a login first: the session is not logged in until it says so.
    LOGIN: ClassVar[bool] = False

    def __init__(
        self,
        codec: CodecT,
        path: str,
        named: Sequence[SeriesKey] = (),
        last_closed: dict[SeriesKey, datetime] | None = None,
    ) -> None:
        """A session connecting to `path`, which names the streams of `named`."""
        self.codec = codec
        self._path = path
        self._streams = {codec.stream_name(k): k for k in named}  # stream name -> series
        self._ids = itertools.count(1)
        self._awaiting: set[int] = set()
        self._logged_in = not self.LOGIN
        self._data_seen = False
        # Per series, the newest bar still forming (streams without a closed flag).
        self._forming: dict[SeriesKey, Candle] = {}
        self._last_closed = {} if last_closed is None else last_closed

    @property
    def path(self) -> str:
        """Path (with query) to connect to."""
        return self._path

    @property
    def logged_in(self) -> bool:
        """The venue accepted the login (True where the venue has none)."""
        return self._logged_in

    @property
    def ready(self) -> bool:
        """Every message with an id is answered, and data has arrived."""
        return self._data_seen and not self._awaiting

    @property
    def awaiting(self) -> frozenset[int]:
        """Ids of messages the venue has not answered yet."""
        return frozenset(self._awaiting)

    @property
    def streams(self) -> list[SeriesKey]:
        """The series this connection carries."""
        return list(self._streams.values())

    def carries(self, key: SeriesKey) -> bool:
        """Whether the connection carries `key`'s stream."""
        return self.codec.stream_name(key) in self._streams

    def login(self) -> list[str]:
        """No login: nothing to send first."""
        return []

    def subscribe(self, keys: Sequence[SeriesKey]) -> list[str]:
        """One message per timeframe and `STREAMS_PER_MESSAGE` streams."""
        for key in keys:
            self._streams[self.codec.stream_name(key)] = key
        return self._requests(keys, subscribe=True)

    def unsubscribe(self, keys: Sequence[SeriesKey]) -> list[str]:
        """One message per timeframe and `STREAMS_PER_MESSAGE` streams."""
        for key in keys:
            self._streams.pop(self.codec.stream_name(key), None)
            self._forming.pop(key, None)  # stale by the time it may be subscribed again
        return self._requests(keys, subscribe=False)

    def receive(self, text: str) -> list[StreamEvent]:
        """Each venue's own."""
        raise NotImplementedError

    def _request(self, keys: Sequence[SeriesKey], request_id: int, subscribe: bool) -> str:
        """The venue's (un)subscribe message for `keys`, all of one timeframe."""
        raise NotImplementedError

    def _requests(self, keys: Sequence[SeriesKey], subscribe: bool) -> list[str]:
        # One timeframe per message: some venues take the interval once per request.
        by_tf: dict[str, list[SeriesKey]] = collections.defaultdict(list)
        for key in keys:
            by_tf[key.timeframe].append(key)
        messages = []
        for group in by_tf.values():
            for i in range(0, len(group), STREAMS_PER_MESSAGE):
                request_id = next(self._ids)
                if self.ACKNOWLEDGED:
                    self._awaiting.add(request_id)
                messages.append(self._request(group[i : i + STREAMS_PER_MESSAGE], request_id,
                                              subscribe))  # fmt: skip
        return messages

    def _reply(self, request_id: int | None, error: str | None = None) -> Reply:
        """The venue answered `request_id`: no longer awaited."""
        if request_id is not None:
            self._awaiting.discard(request_id)
        return Reply(request_id, error)

    def _data(
        self, closed: Sequence[Candle] = (), forming: Sequence[Candle] = ()
    ) -> list[StreamEvent]:
        """The events of a data frame: its `closed` bars, and its `forming` bars
        (oldest first; a stream without a closed flag), of which one is final
        when a later bar of its series opens. Bars of streams not carried are
        left out (`Foreign`); a frame of none of ours says nothing about ours."""
        ours, foreign = self._ours(closed)
        ours_forming, foreign_forming = self._ours(forming)
        events: list[StreamEvent] = []
        if foreign or foreign_forming:
            events.append(Foreign(foreign + foreign_forming))
            if not ours and not ours_forming:
                return events
        self._data_seen = True
        if ours_forming:
            ours += self._finalised(ours_forming)
        if not ours:
            events.append(HEARTBEAT)
            return events
        events += self._gaps(ours)
        events.append(ClosedBars(tuple(ours)))
        return events

    def _ours(self, candles: Sequence[Candle]) -> tuple[list[Candle], int]:
        """The candles of streams carried, and how many others there were."""
        if not candles:
            return [], 0
        name, streams = self.codec.stream_name, self._streams
        ours = [c for c in candles if name(c.series) in streams]
        return ours, len(candles) - len(ours)

    def _finalised(self, forming: Sequence[Candle]) -> list[Candle]:
        """Bars that a later bar's first update has closed."""
        final = []
        for bar in forming:
            held = self._forming.get(bar.series)
            if held is not None and bar.ts < held.ts:
                continue  # a late update of a bar already closed
            if held is not None and bar.ts > held.ts:
                final.append(held)
            self._forming[bar.series] = bar
        return final

    def _gaps(self, candles: Sequence[Candle]) -> list[Gap]:
        """Bars skipped between two closed bars of a series (a lost closing
        frame), and each series' first closed bar."""
        gaps = []
        last, sparse = self._last_closed, self.codec.sparse
        for c in candles:
            prev = last.get(c.series)
            expected = c.series.tf.next(prev) if prev is not None else None
            # On a sparse venue a skipped bar is most likely one without
            # trades: not worth a request each; the heal cycle judges those.
            if expected is None or (c.ts > expected and not sparse):
                gaps.append(Gap(c.series, expected, c.ts))
            if prev is None or c.ts > prev:
                last[c.series] = c.ts
        return gaps
