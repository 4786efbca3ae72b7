"""The Alpaca market data v2 personality: stock bars over REST, minute bars on the stream.

Credentials: the sim accepts one fixed key pair, `SIM_KEY` / `SIM_SECRET`
("candled-sim-alpaca-key" / "candled-sim-alpaca-secret"). REST requests need
them in `APCA-API-KEY-ID` / `APCA-API-SECRET-KEY` (else 403 `{"message":
"forbidden"}`); the stream needs them in its auth message (else 402 "auth failed").

REST, as documented (stock-pricing-data/historical.md): `GET /v2/stocks/bars`
(`symbols`, comma separated) and `GET /v2/stocks/{symbol}/bars`, with
`timeframe` (required), `start` (default: the start of the current UTC day),
`end` (default: now; both inclusive), `limit` (1-10000, default 1000), `feed`
(iex or sip: the same truth), `adjustment` (raw, split, dividend, all: the truth
has no corporate actions), `sort` (asc, desc) and `page_token`. Answers hold
bars only for periods with trades inside the symbol's sessions (sparse:
`Truth.traded`), the bar in progress included with its values so far; symbols
without bars (unknown ones too) are left out of the multi-symbol answer. Bars go
symbol by symbol, then by time. When a page is full, `next_page_token` names its
last bar and the next request continues after it (also when nothing follows:
Alpaca says only that there "may be more data"). Alpaca "may return less [than
`limit`], even if there are more available data points" (the docs' `limit`):
`AlpacaPersonality.page_bars` caps every page so, a token on each page it cuts
short; `endless_pages` puts a fresh token on every page, the last too (a venue
whose pages never end). Bad values are answered 422 with
`{"code": 42210000, "message": ...}`, a request without `symbols` or `timeframe`
or with an unknown parameter 400. Each client may send `min([rest]
weight_per_minute, 200)` requests a clock minute (Alpaca's Basic plan); more get
429; every answer carries `X-RateLimit-Limit/-Remaining/-Reset`. Timeframes the
truth has no grid for (2Hour, 1Week, ...) are answered 422 saying so.

Stream `/v2/iex` or `/v2/sip` (realtime.md): `[{"T":"success","msg":"connected"}]`
on connect; the client has `AUTH_TIMEOUT_S` to authenticate (404 "auth timeout");
one authenticated connection per key and feed (406 "connection limit exceeded",
then closed: "the number of connections to a single endpoint ... is 1"); a feed
outside the key's plan (`AlpacaPersonality.feeds`) is refused at login (409
"insufficient subscription"); subscribe before auth: 401. `bars` and
`updatedBars` take symbols or "*"; a subscription past `symbol_limit` symbols
is refused (405, the subscription unchanged), a channel of another stream
(`orderbooks`, `news`) too (410); after every (un)subscribe the whole
subscription is sent. `fault_streams(code)` tells every logged-in connection
of an error: 407 "slow client" (then closed, as Alpaca drops slow readers) or
500 "internal error" (left open). Just after each minute closes, the
minute's bars of all subscribed symbols go out in one frame (`"T": "b"`; none for
a minute without trades or outside the sessions). About one traded minute in
four (`corrected`) gets a late trade: its "b" carries a smaller volume, and
`correction_delay_s` (30 s, as on Alpaca) later the corrected bar goes to
`updatedBars` subscribers (`"T": "u"`, the truth's final values). Faults from the
scenario's `[faults]` are Binance's and do not apply here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from aiohttp import WSMsgType, web

from candled.domain import Candle, SeriesKey, Timeframe
from candled_sim import alpaca_wire as wire
from candled_sim.personality import SimContext, send_json, websocket
from candled_sim.truth import Truth
from candled_sim.wire import SIM_VENUE

SIM_KEY, SIM_SECRET = "candled-sim-alpaca-key", "candled-sim-alpaca-secret"
REQUESTS_PER_MINUTE = 200  # Basic plan (alpaca.markets/support/usage-limit-api-calls)
AUTH_TIMEOUT_S = 10.0
_MINUTE = Timeframe.parse("1m")
_PUSH_LAG_S = 0.05  # push just after a minute closes, as Alpaca does (20-100 ms)
_PARAMS = frozenset({"symbols", "timeframe", "start", "end", "limit", "feed", "adjustment",
                     "sort", "page_token", "asof", "currency"})  # fmt: skip


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = wire.INVALID_VALUE if status == 422 else wire.BAD_REQUEST
        self.message = message


@dataclass(frozen=True, slots=True)
class BarsQuery:
    symbols: tuple[str, ...]  # in answer order
    tf: Timeframe
    start: datetime  # labels, both inclusive
    end: datetime
    limit: int
    descending: bool
    after: tuple[str, datetime] | None  # page_token: continue after this bar


def parse_bars_query(query: Mapping[str, str], symbols: list[str], now: datetime) -> BarsQuery:
    unknown = sorted(set(query) - _PARAMS)
    if unknown:
        raise BadRequest(400, f"unexpected parameter: {unknown[0]}")
    if not symbols or not all(symbols):
        raise BadRequest(400, "missing symbols")
    text = query.get("timeframe")
    if not text:
        raise BadRequest(400, "missing timeframe")
    m = wire.TIMEFRAME.match(text)
    if m is None or not 1 <= int(m.group(1)) <= wire.MAX_AMOUNT[m.group(2)]:
        raise BadRequest(422, "invalid timeframe")
    if text not in wire.SERVED:
        raise BadRequest(422, f"the simulator serves no {text} bars")
    start = _time(query, "start", datetime.combine(now.date(), datetime.min.time(), UTC))
    end = _time(query, "end", now)
    if end < start:
        raise BadRequest(422, "end should not be before start")
    limit_text = query.get("limit", str(wire.DEFAULT_LIMIT))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= wire.MAX_LIMIT:
        raise BadRequest(422, "invalid limit: must be between 1 and 10000")
    _choice(query, "feed", wire.FEEDS)
    _choice(query, "adjustment", wire.ADJUSTMENTS)
    sort = _choice(query, "sort", ("asc", "desc"))
    after = None
    if "page_token" in query:
        after = wire.read_page_token(query["page_token"])
        if after is None:
            raise BadRequest(422, "invalid page_token")
    return BarsQuery(tuple(sorted(set(symbols))), Timeframe.parse(wire.SERVED[text]),
                     start, end, int(limit_text), sort == "desc", after)  # fmt: skip


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    value = query.get(name, allowed[0])
    if value not in allowed:
        raise BadRequest(422, f"invalid {name}: {value}")
    return value


def _time(query: Mapping[str, str], name: str, default: datetime) -> datetime:
    """An RFC 3339 time (a date alone means its midnight UTC)."""
    text = query.get(name)
    if text is None:
        return default
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(422, f"invalid {name}: {text}") from None
    if ts.tzinfo is None:
        if len(text) != 10:  # RFC 3339 needs an offset; a plain date is accepted
            raise BadRequest(422, f"invalid {name}: {text}")
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def _published(
    truth: Truth, series: SeriesKey, query: BarsQuery, now: datetime
) -> Iterator[Candle]:
    """The bars of one symbol in the query's range and order, as Alpaca has them now."""
    tf = series.tf
    current = tf.floor(now)
    # Labels of daily bars lie a few hours after the truth's open: one bar of slack.
    lo, hi = tf.add(tf.floor(query.start), -1), tf.next(min(query.end, now))
    opens = truth.opens_before(series, hi) if query.descending else truth.opens(series, lo, hi)
    for ts in opens:
        label = wire.label(tf, ts)
        if ts < lo or not query.start <= label <= query.end:
            if query.descending and ts < lo:
                return
            continue
        if truth.traded(series, ts):
            yield truth.partial(series, ts, now) if ts >= current else truth.bar(series, ts)


def select_bars(
    truth: Truth, query: BarsQuery, now: datetime
) -> tuple[dict[str, list[Candle]], tuple[str, datetime] | None]:
    """One page: bars by symbol, and the last bar's (symbol, label) when the page is full."""
    page: dict[str, list[Candle]] = {}
    room = query.limit
    for symbol in query.symbols:
        if query.after is not None and symbol < query.after[0]:
            continue  # pages before this one held it
        series = SeriesKey(SIM_VENUE, symbol, str(query.tf))
        rest = query
        if query.after is not None and symbol == query.after[0]:
            # Continue after the page's last bar (labels are whole seconds).
            step = timedelta(microseconds=1)
            mark = query.after[1]
            rest = (dataclasses.replace(query, end=mark - step) if query.descending
                    else dataclasses.replace(query, start=mark + step))  # fmt: skip
        taken = list(islice(_published(truth, series, rest, now), room))
        if taken:
            page[symbol] = taken
            room -= len(taken)
        if room == 0:
            return page, (symbol, wire.label(query.tf, taken[-1].ts))
    return page, None


def _beyond(query: BarsQuery) -> tuple[str, datetime]:
    """A page's last bar beyond every bar of the query, a second further out
    than the query's range or the token it continues: never the same twice."""
    second = timedelta(seconds=1)
    if query.descending:
        mark = min(query.start, query.after[1]) if query.after is not None else query.start
        return query.symbols[-1], mark - second
    mark = max(query.end, query.after[1]) if query.after is not None else query.end
    return query.symbols[-1], mark + second


class _RequestsPerMinute:
    """Requests per client in the current clock minute; past the budget: refused."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._used: dict[str, tuple[datetime, int]] = {}  # client -> (minute, requests)

    def admit(self, client: str, now: datetime) -> tuple[bool, int, datetime]:
        """Whether to serve, the requests left this minute, and when the minute ends."""
        minute = _MINUTE.floor(now)
        window, used = self._used.get(client, (minute, 0))
        used = used + 1 if window == minute else 1
        self._used[client] = (minute, used)
        return used <= self.budget, max(0, self.budget - used), _MINUTE.next(now)


def corrected(seed: int, symbol: str, ts: datetime) -> bool:
    """Whether a late trade changes the minute bar after it was streamed (one in four)."""
    digest = hashlib.blake2b(f"{seed}|{symbol}|{ts.isoformat()}".encode(), digest_size=1)
    return digest.digest()[0] % 4 == 0


class AlpacaPersonality:
    def __init__(self, context: SimContext) -> None:
        self._ctx = context
        budget = min(context.scenario.weight_per_minute, REQUESTS_PER_MINUTE)
        self._rate = _RequestsPerMinute(budget)
        # (key, feed) of the authenticated connections: one each (406 for another).
        self.authenticated: set[tuple[str, str]] = set()
        self.feeds = set(wire.FEEDS)  # the feeds the key's plan includes (others: 409)
        self.symbol_limit: int | None = None  # symbols a connection may subscribe (405)
        self._streams: set[_Stream] = set()  # open stream connections
        self.correction_delay_s = 30.0  # "u" bars go out this long after the "b"
        # Alpaca "may return less [than `limit`], even if there are more available
        # data points": a page holds at most this many bars whatever `limit`
        # asks (None: `limit` alone), with a `next_page_token` when it is cut short.
        self.page_bars: int | None = None
        # A misbehaving venue: every page carries a token, the last one too, and
        # following it gives an empty page with a fresh token, for ever.
        self.endless_pages = False

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v2/stocks/bars", self._multi_bars),
            web.get("/v2/stocks/{symbol}/bars", self._single_bars),
            web.get("/v2/{feed}", self._stream),
        ]

    async def _multi_bars(self, request: web.Request) -> web.Response:
        symbols = request.query.get("symbols", "")
        return await self._bars(request, symbols.split(",") if symbols else [], single=False)

    async def _single_bars(self, request: web.Request) -> web.Response:
        if "symbols" in request.query:
            return _error(400, wire.BAD_REQUEST, "unexpected parameter: symbols")
        return await self._bars(request, [request.match_info["symbol"]], single=True)

    async def _bars(self, request: web.Request, symbols: list[str], single: bool) -> web.Response:
        ctx = self._ctx
        headers = request.headers
        if headers.get("APCA-API-KEY-ID") != SIM_KEY or (
            headers.get("APCA-API-SECRET-KEY") != SIM_SECRET
        ):
            return web.json_response({"message": wire.FORBIDDEN}, status=403)
        now = ctx.clock()
        admitted, remaining, reset = self._rate.admit(request.remote or "?", now)
        rate = {"X-RateLimit-Limit": str(self._rate.budget),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": str(int(reset.timestamp()))}  # fmt: skip
        if not admitted:
            ctx.counters.sent_429 += 1
            return web.json_response({"message": wire.TOO_MANY_REQUESTS}, status=429, headers=rate)
        try:
            query = parse_bars_query(request.query, symbols, now)
        except BadRequest as exc:
            return _error(exc.status, exc.code, exc.message, rate)
        if self.page_bars is not None:
            query = dataclasses.replace(query, limit=min(query.limit, self.page_bars))
        page, last = select_bars(ctx.truth, query, now)
        if last is None and self.endless_pages:
            last = _beyond(query)
        token = None if last is None else wire.page_token(last[0], query.tf, last[1])
        bars = {symbol: [wire.bar(c) for c in candles] for symbol, candles in page.items()}
        if single:
            body = wire.single_bars_body(symbols[0], bars.get(symbols[0], []), token)
        else:
            body = wire.multi_bars_body(bars, token)
        return web.json_response(body, headers=rate)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["feed"] not in wire.FEEDS:
            raise web.HTTPNotFound()
        async with websocket(request, self._ctx) as ws:
            stream = _Stream(ws, self._ctx, self, request.match_info["feed"])
            self._streams.add(stream)
            try:
                await stream.run()
            finally:
                self._streams.discard(stream)
                if stream.key is not None:
                    self.authenticated.discard((stream.key, stream.feed))
        return ws

    async def fault_streams(self, code: int) -> int:
        """Send stream error `code` to every logged-in connection; 407 "slow
        client" then closes each. Returns how many were told."""
        told = [s for s in self._streams if s.key is not None]
        for stream in told:
            await stream.fault(code, close=code == 407)
        return len(told)


def _error(
    status: int, code: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(wire.error_body(code, message), status=status, headers=headers)


@dataclass(slots=True)
class _Correction:
    due: datetime
    candle: Candle


@dataclass(slots=True)
class _Channels:
    bars: set[str] = field(default_factory=set)
    updated: set[str] = field(default_factory=set)
    others: dict[str, set[str]] = field(default_factory=dict)  # trades, quotes, ...: no data

    def as_lists(self) -> dict[str, list[str]]:
        lists = {name: sorted(symbols) for name, symbols in self.others.items()}
        return {**lists, "bars": sorted(self.bars), "updatedBars": sorted(self.updated)}


class _Stream:
    """One stream connection: auth and (un)subscribe in, bars out."""

    def __init__(
        self, ws: web.WebSocketResponse, ctx: SimContext, owner: AlpacaPersonality, feed: str
    ) -> None:
        self._ws = ws
        self._ctx = ctx
        self._owner = owner
        self.feed = feed
        self.key: str | None = None  # the authenticated key
        self._channels = _Channels()
        self._pushed = _MINUTE.floor(ctx.clock())  # minutes before this were pushed
        self._corrections: list[_Correction] = []

    async def run(self) -> None:
        await self._send(wire.CONNECTED)
        async with asyncio.TaskGroup() as tasks:
            pusher = tasks.create_task(self._push())
            await self._read()
            pusher.cancel()

    async def _send(self, messages: list[dict[str, Any]]) -> bool:
        return await send_json(self._ws, messages)

    async def fault(self, code: int, *, close: bool) -> None:
        await self._send(wire.stream_error(code))
        if close:
            await self._ws.close()

    async def _read(self) -> None:
        try:
            first = await self._ws.receive(timeout=AUTH_TIMEOUT_S)
        except TimeoutError:
            await self._send(wire.stream_error(404))
            await self._ws.close()
            return
        if first.type != WSMsgType.TEXT:
            return
        await self._answer(first.data)
        async for msg in self._ws:
            if msg.type == WSMsgType.TEXT:
                await self._answer(msg.data)

    async def _answer(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        action = message.get("action") if isinstance(message, dict) else None
        if action == "auth":
            await self._auth(message)
        elif action in ("subscribe", "unsubscribe") and isinstance(message, dict):
            if self.key is None:
                await self._send(wire.stream_error(401))
            elif (refused := self._subscribe(message, action == "subscribe")) is not None:
                await self._send(wire.stream_error(refused))
            else:
                await self._send(wire.subscription(self._channels.as_lists()))
        else:
            await self._send(wire.stream_error(400))

    async def _auth(self, message: dict[str, Any]) -> None:
        if self.key is not None:
            await self._send(wire.stream_error(403))
        elif message.get("key") != SIM_KEY or message.get("secret") != SIM_SECRET:
            await self._send(wire.stream_error(402))
        elif self.feed not in self._owner.feeds:
            await self._send(wire.stream_error(409))  # not logged in; the connection stays
        elif (SIM_KEY, self.feed) in self._owner.authenticated:
            await self._send(wire.stream_error(406))  # one connection per key and endpoint
            await self._ws.close()
        else:
            self.key = SIM_KEY
            self._owner.authenticated.add((SIM_KEY, self.feed))
            await self._send(wire.AUTHENTICATED)

    def _subscribe(self, message: dict[str, Any], add: bool) -> int | None:
        """Apply an (un)subscribe; else the error code: 400 when it is not the
        documented shape, 410 for another stream's channel, 405 past the limit."""
        if any(name in message for name in wire.OTHER_STREAMS_CHANNELS):
            return 410
        changes = {name: message[name] for name in wire.CHANNELS if name in message}
        if not changes or not all(
            isinstance(symbols, list) and all(isinstance(s, str) and s for s in symbols)
            for symbols in changes.values()
        ):
            return 400
        limit = self._owner.symbol_limit
        if add and limit is not None:
            channels = self._channels
            held = set().union(channels.bars, channels.updated, *channels.others.values())
            wanted = held.union(*changes.values()) - {"*"}
            if len(wanted) > limit:
                return 405  # "your symbol subscriptions are the same as they were before"
        channels = self._channels
        for name, symbols in changes.items():
            target = {"bars": channels.bars, "updatedBars": channels.updated}.get(name)
            if target is None:
                target = channels.others.setdefault(name, set())
            if add:
                target.update(symbols)
            else:
                target.difference_update(symbols)
        return None

    def _symbols(self, subscribed: set[str]) -> list[str]:
        return self._ctx.truth.symbols if "*" in subscribed else sorted(subscribed)

    def _closed_bars(self, now: datetime) -> list[dict[str, Any]]:
        """The "b" messages of the minutes closed since the last push; queue corrections."""
        truth, seed = self._ctx.truth, self._ctx.scenario.seed
        closed_before = _MINUTE.floor(now)
        messages = []
        for minute in _MINUTE.bars(self._pushed, closed_before):
            for symbol in self._symbols(self._channels.bars):
                series = SeriesKey(SIM_VENUE, symbol, "1m")
                if not (truth.exists(series, minute) and truth.traded(series, minute)):
                    continue  # no trade, no bar
                final = truth.bar(series, minute)
                first = final
                if corrected(seed, symbol, minute):
                    # The late trade is missing from the first bar: less volume.
                    first = dataclasses.replace(final, volume=round(final.volume * 0.9, 8))
                    due = now + timedelta(seconds=self._owner.correction_delay_s)
                    self._corrections.append(_Correction(due, final))
                messages.append(wire.stream_bar("b", first))
        self._pushed = max(self._pushed, closed_before)
        return messages

    def _due_corrections(self, now: datetime) -> list[dict[str, Any]]:
        due = [c for c in self._corrections if c.due <= now]
        self._corrections = [c for c in self._corrections if c.due > now]
        updated = self._symbols(self._channels.updated)
        return [wire.stream_bar("u", c.candle) for c in due if c.candle.series.symbol in updated]

    async def _push(self) -> None:
        while not self._ws.closed:
            now = self._ctx.clock()
            wake = min([_MINUTE.next(now), *(c.due for c in self._corrections)])
            await asyncio.sleep(max(0.0, (wake - now).total_seconds()) + _PUSH_LAG_S)
            now = self._ctx.clock()
            if self.key is None:
                self._pushed = _MINUTE.floor(now)  # nothing is owed before auth
                continue
            messages = self._closed_bars(now) + self._due_corrections(now)
            if messages and await self._send(messages):
                self._ctx.counters.frames_sent += 1
                self._ctx.counters.corrected_bars_sent += sum(m["T"] == "u" for m in messages)
