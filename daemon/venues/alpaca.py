"""Alpaca market data v2, US equities: `GET /v2/stocks/bars` and the stock stream.

Wire formats as documented at
- https://docs.alpaca.markets/reference/stockbars and the docs' source,
  https://github.com/alpacahq/alpaca-docs (content/api-references/market-data-api/
  stock-pricing-data/historical.md): `symbols`, `timeframe` ("flexible for Min, Hour,
  Day, Week and Month ... maximum ... 59Min, 23Hour, 1Day, 1Week, 12Month"), `start`
  and `end` in RFC 3339, both inclusive ("equal to or after", "equal to or before"),
  `limit` 1-10000, `page_token`, `feed` (iex, sip), `adjustment`; the answer
  `{"bars": {"AAPL": [{"t", "o", "h", "l", "c", "v", "n", "vw"}]}, "next_page_token"}`;
  errors 400, 403, 422, 429 with `{"code": 42210000, "message": "invalid timeframe"}`
  (alpacahq/Alpaca-API issue 178); the headers `APCA-API-KEY-ID` / `APCA-API-SECRET-KEY`;
  "Paging": a `next_page_token` that is not null means "there may be more data";
  send it as `page_token` "while leaving the other parameters unchanged" to
  continue where the answer left off;
- https://docs.alpaca.markets/openapi/market-data-api.json, the `limit` parameter
  /v2/stocks/bars shares: "The maximum number of data points to return in the
  response page. The API may return less, even if there are more available data
  points in the requested interval. Always check the `next_page_token` for more
  pages." Public reports show server-sized pages with a token whatever `limit`
  asked on Alpaca's crypto bars (ccxt/ccxt issue 30095). `parse_history_page`
  names the request that continues a page; the backfill follows it to the end;
- https://docs.alpaca.markets/docs/real-time-stock-pricing-data (`wss://stream.data.
  alpaca.markets/v2/{feed}`: `[{"T":"success","msg":"connected"}]`, then
  `{"action":"auth","key":...,"secret":...}`, `{"action":"subscribe","bars":[...],
  "updatedBars":[...]}`, a `subscription` answer without any id, errors such as
  `[{"T":"error","code":402,"msg":"auth failed"}]`, data as arrays of messages;
  minute bars `"T":"b"`, corrected minute bars `"T":"u"`, as alpaca-py dispatches them);
- https://forum.alpaca.markets/t/alpaca-market-data-update-bars/8947: bars exist only
  for minutes with trades, are labelled by their open, arrive 20-100 ms after their
  close, and a bar recomputed for late trades is sent again on `updatedBars` with
  the same timestamp (the store's upsert replaces it).

Alpaca streams minute bars only: a series of another timeframe subscribes nothing
and must be configured `live = false` (its bars come from the catch-up backfill and
the heal cycle). Daily bars are labelled at midnight New York time (the docs'
`"t": "2022-04-11T04:00:00Z"`); the codec stores each under the domain's 1d bar of
the same date (00:00 UTC). The stream sends no heartbeat: at most one bar
frame a minute, nothing while the market is closed (WebSocket pings only), so
an `idle_timeout` under a minute reconnects an open market's healthy stream.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from candled.domain import Candle, SeriesKey, Timeframe
from candled.domain.timeframe import require_utc
from candled.venues.base import (
    CodecBase,
    CodecError,
    Credentials,
    CredentialsRefused,
    HistoryPage,
    HttpRequest,
    RateFacts,
    VenueError,
    VenueLimits,
    empty_window,
    only_option,
)
from candled.venues.stream import (
    LoggedIn,
    Malformed,
    Refusal,
    SessionBase,
    StreamCodecBase,
    StreamError,
    StreamEvent,
    StreamFault,
    StreamLimits,
    Subscribed,
)
from candled.venues.wire import (
    SecretHeaders,
    bar_open,
    header_count,
    json_number,
    json_or_none,
    key_refusal,
    lowered,
    rfc3339,
    seconds_or_none,
    shown,
    venue_words,
)
from candled.venues.wire import parse_rfc3339 as parse_time

LIMITS = VenueLimits(
    # `limit` may be 1-10000. One less per window, so that the request can ask for
    # one bar more than the window holds: a full page (after which a
    # `next_page_token` may come although nothing follows) then cannot happen.
    # A token means Alpaca cut the page short, which it may: the backfill sends
    # the request `parse_history_page` names for the rest until none comes.
    page_size=9_999,
    request_weight=1,  # Alpaca counts requests
    exact_genesis=False,  # nothing answers "first bar of this symbol"
    sparse=True,  # "bars are only generated when there are 'valid' trades" (forum, above)
    # "200 requests per minute" on the free Basic plan (alpaca.markets/support/
    # usage-limit-api-calls); Algo Trader Plus allows 10,000: set rate_capacity.
    rate_capacity=200,
    rate_period_s=60.0,
)
STREAM_LIMITS = StreamLimits(
    # "There is no limit for the number of channels with minute bars", and an
    # account may hold one connection only (406 "connection limit exceeded"):
    # every series must fit on it.
    streams_per_connection=1_000_000,
    # No documented maximum age: never rotate (a make-before-break successor
    # would be a second connection, which Alpaca refuses).
    max_connection_age_s=math.inf,
    max_messages_per_s=10.0,  # undocumented; subscribing takes one message per timeframe
)
BARS_PATH = "/v2/stocks/bars"
FEEDS = ("iex", "sip")
KEY_HEADER, SECRET_HEADER = "APCA-API-KEY-ID", "APCA-API-SECRET-KEY"
# Domain timeframe -> Alpaca timeframe. Minute and hour bars start on the UTC
# grid (New York is a whole number of hours off UTC); multi-hour, weekly and
# monthly bars are aligned in New York time, which the domain's grid is not.
TIMEFRAMES = {"1m": "1Min", "3m": "3Min", "5m": "5Min", "15m": "15Min", "30m": "30Min",
              "1h": "1Hour", "1d": "1Day"}  # fmt: skip
STREAM_TIMEFRAME = "1m"  # the stream's `bars` and `updatedBars` are minute bars
NEW_YORK = ZoneInfo("America/New_York")
# A page token goes into the next request's URL: printable ASCII, bounded.
_PAGE_TOKEN = re.compile(r"[!-~]{1,1024}")
_BAR_TYPES = frozenset({"b", "u"})  # minute bars and corrected minute bars
_KEY_SETTINGS = "api_key_env or api_key_file and api_secret_env or api_secret_file"
_BUG = "candled sent a message Alpaca refuses, a bug in candled (please report it)"
# The stream's error codes (docs.alpaca.markets/docs/streaming-market-data,
# "Errors"), by what each means for the connection, and what to fix; any other
# code reconnects as usual. 409 comes at login for a feed the plan lacks ("any
# attempt to access a data feed not available for your subscription will
# result in an error during authentication"); 406: "in most subscriptions ...
# this limit is 1" connection per endpoint; 405 leaves the subscription as it was.
_STREAM_FAULTS: dict[int, tuple[StreamFault, str]] = {
    400: (StreamFault.REJECTED, f"{_BUG}, or a symbol Alpaca does not accept"),
    401: (StreamFault.REJECTED, f"{_BUG}: it subscribed before its login was accepted"),
    402: (
        StreamFault.KEY_REFUSED,
        f"fix the key that {_KEY_SETTINGS} of this venue provide, then reload or restart",
    ),
    403: (StreamFault.HARMLESS, f"{_BUG}: it logged in twice; the session stands"),
    404: (StreamFault.VENUE_FAULT, "the login reached Alpaca too late (a slow link?)"),
    405: (
        StreamFault.NOT_ENTITLED,
        "more symbols than the key's plan allows on one connection: stream fewer"
        " (live = false on some series) or use a key whose plan allows more",
    ),
    406: (
        StreamFault.CONNECTION_LIMIT,
        "another connection uses this key's only stream connection (another candled,"
        f" or another program with the key that {_KEY_SETTINGS} provide)",
    ),
    407: (StreamFault.VENUE_FAULT, "Alpaca dropped the connection as a slow reader"),
    409: (StreamFault.NOT_ENTITLED, ""),  # names the feed: see `_stream_error`
    410: (StreamFault.REJECTED, f"{_BUG}: a channel this feed does not have"),
    500: (StreamFault.VENUE_FAULT, "Alpaca's internal error"),
}
# When one frame holds several errors, the gravest decides.
_GRAVITY = (StreamFault.KEY_REFUSED, StreamFault.NOT_ENTITLED, StreamFault.CONNECTION_LIMIT,
            StreamFault.REJECTED, StreamFault.VENUE_FAULT, StreamFault.HARMLESS)  # fmt: skip


class AlpacaCodec(CodecBase):
    """Alpaca's stock bars over REST (following page tokens), with its stock
    stream of minute bars (`AlpacaStream`)."""

    LIMITS = LIMITS
    TIMEFRAMES = TIMEFRAMES
    NEEDS_CREDENTIALS = True  # key and secret on every request and on the stream
    NEEDS_SECRET = True

    def __init__(
        self,
        venue: str = "alpaca",
        credentials: Credentials | None = None,
        options: Mapping[str, str] | None = None,
    ) -> None:
        feed = only_option("alpaca", options, "feed", "iex", FEEDS)
        if credentials is not None and not credentials.secret:
            raise ValueError(
                "alpaca needs an API secret with its key: set api_secret_env or api_secret_file"
            )
        super().__init__(venue)
        self._feed = feed
        # Without credentials the codec only answers `limits` (config loading
        # refuses an Alpaca venue without them).
        self._headers: Mapping[str, str] = {}
        if credentials is not None:
            self._headers = SecretHeaders(
                {KEY_HEADER: credentials.key, SECRET_HEADER: credentials.secret},
                {KEY_HEADER: "<redacted>", SECRET_HEADER: "<redacted>"},
            )
        self._stream = AlpacaStream(venue, feed, credentials)

    def __repr__(self) -> str:
        return f"AlpacaCodec(venue={self._venue!r}, feed={self._feed!r})"

    @property
    def stream(self) -> AlpacaStream:
        """The stock stream of the configured feed."""
        return self._stream

    def history_request(
        self, series: SeriesKey, start: datetime, end: datetime, limit: int
    ) -> HttpRequest:
        """Bars from the first opening at or after `start` to the last opening
        before `end` (Alpaca's bounds are inclusive), asking one bar more."""
        self.check_limit(limit)
        timeframe = _timeframe(series)
        tf = series.tf
        # `start` and `end` both include a bar opening on them: ask from the
        # first bar opening at or after `start` to the last one opening before `end`.
        first, last = tf.ceil(require_utc(start)), tf.add(tf.ceil(require_utc(end)), -1)
        if last < first:
            raise empty_window(start, end)
        bars = tf.count_bars(first, tf.next(last))
        if bars > limit:
            raise ValueError(f"window of {bars} bars, more than the limit {limit}")
        return HttpRequest(
            method="GET",
            path=BARS_PATH,
            params={
                "symbols": series.symbol,
                "timeframe": timeframe,
                "start": rfc3339(wire_time(tf, first)),
                "end": rfc3339(wire_time(tf, last)),
                # One more than the window holds: the answer is never a full page.
                "limit": str(bars + 1),
                "adjustment": "raw",
                "feed": self._feed,
                "sort": "asc",
            },
            weight=LIMITS.request_weight,
            headers=self._headers,
        )

    def parse_history(
        self, series: SeriesKey, status: int, body: bytes, now: datetime
    ) -> list[Candle]:
        """The closed bars of an answer that holds the whole window; a page token
        (the answer holds only part of it) is a CodecError here."""
        candles, token = self._history(series, status, body, now)
        if token is not None:
            # Alpaca left bars of the window out, and without the request there
            # is no asking for them (`parse_history_page` can): keeping what
            # came would let the healer confirm the rest empty.
            raise CodecError(
                f"bars: a next_page_token came back ({len(token)} characters):"
                " the answer holds only part of the window"
            )
        return candles

    def parse_history_page(
        self, series: SeriesKey, request: HttpRequest, status: int, body: bytes, now: datetime
    ) -> HistoryPage:
        """The closed bars of a page, and the same request with `page_token`
        where Alpaca cut the answer short."""
        # "Include the token ... as the page_token query parameter for the next
        # request ... while leaving the other parameters unchanged" (Paging).
        candles, token = self._history(series, status, body, now)
        if token is None:
            return HistoryPage(candles)
        params = {**request.params, "page_token": token}
        return HistoryPage(candles, dataclasses.replace(request, params=params))

    def _history(
        self, series: SeriesKey, status: int, body: bytes, now: datetime
    ) -> tuple[list[Candle], str | None]:
        """The closed candles of a bars answer, and its page token (None: the last page)."""
        payload = json_or_none(body)
        if status != 200:
            raise self.refused_credentials(status, body) or _venue_error(status, payload)
        if not isinstance(payload, dict) or "bars" not in payload:
            raise CodecError("bars: expected an object with `bars`")
        token = _page_token(payload.get("next_page_token"))
        bars = payload["bars"]
        if bars is None:  # no bar in the window: {} (or null)
            bars = {}
        if not isinstance(bars, dict):
            raise CodecError("bars: `bars` is not an object keyed by symbol")
        if set(bars) - {series.symbol}:
            raise CodecError(f"bars of {sorted(bars)}, asked for {series.symbol}")
        rows = bars.get(series.symbol, [])
        if not isinstance(rows, list):
            raise CodecError(f"bars: the bars of {series.symbol} are not an array")
        now, tf = require_utc(now), series.tf
        candles = []
        for index, row in enumerate(rows):
            try:
                candle = _bar(series, row)
            except CodecError as exc:
                raise CodecError(f"bar {index}: {exc}") from None
            # A daily bar closes at the next midnight in New York, not UTC.
            if wire_time(tf, tf.close_time(candle.ts)) <= now:
                candles.append(candle)
        candles.sort(key=lambda c: c.ts)  # oldest first, whatever `sort` did
        return candles, token

    def rate_facts(self, status: int, headers: Mapping[str, str]) -> RateFacts:
        """Used weight from X-RateLimit-Limit less -Remaining, Retry-After, 429; no bans."""
        # X-RateLimit-Limit / -Remaining / -Reset (epoch seconds) come with every
        # answer (forum.alpaca.markets/t/executing-orders/12029); the reset is a
        # clock time this clock-free codec cannot turn into a wait.
        named = lowered(headers)
        limit = header_count(named.get("x-ratelimit-limit"))
        remaining = header_count(named.get("x-ratelimit-remaining"))
        used = limit - remaining if limit is not None and remaining is not None else None
        return RateFacts(
            used_weight=max(0, used) if used is not None else None,
            retry_after_s=seconds_or_none(named.get("retry-after")),
            rate_limited=status == 429,
            banned=False,
        )

    def refused_credentials(self, status: int, body: bytes) -> CredentialsRefused | None:
        """A 401, or a 403 in Alpaca's JSON error shape: the key or its plan."""
        # 401 {"message": "unauthorized"}: a key Alpaca does not accept; 403
        # {"message": "forbidden"}: a wrong key or secret, or a plan without
        # the feed (forum.alpaca.markets/t/client-connection-forbidden/11066;
        # alpaca.markets/learn/how-to-fix-common-trading-api-errors-at-alpaca).
        # A 403 without Alpaca's JSON error is a CDN or firewall page: retried.
        return key_refusal(self._venue, status, body, "message", needs_secret=True)


class AlpacaSession(SessionBase["AlpacaStream"]):
    """One stock stream connection: the login and its answer, `subscription`
    answers without ids, error codes as typed refusals, closed minute bars."""

    ACKNOWLEDGED = False  # the `subscription` answer carries no id
    LOGIN = True

    def login(self) -> list[str]:
        """The `auth` action; bars come only once the venue says `authenticated`."""
        return [self.codec.login_message()]

    def _request(self, keys: Sequence[SeriesKey], request_id: int, subscribe: bool) -> str:
        # Only minute series have a channel; the others subscribe nothing (an
        # empty list is a valid subscribe) and take their bars from backfills.
        symbols = [s.symbol for s in keys if s.timeframe == STREAM_TIMEFRAME]
        action = "subscribe" if subscribe else "unsubscribe"
        return json.dumps({"action": action, "bars": symbols, "updatedBars": symbols})

    def receive(self, text: str) -> list[StreamEvent]:
        """Errors (the gravest decides), the login's answer, subscription answers, bars."""
        payload = json_or_none(text)
        # Every server message is an array of objects, each with its type in `T`.
        if not isinstance(payload, list) or not all(
            isinstance(m, dict) and isinstance(m.get("T"), str) for m in payload
        ):
            return [Malformed("not an array of typed messages")]
        errors = [self._stream_error(m) for m in payload if m["T"] == "error"]
        if errors:
            # e.g. 402 "auth failed", 406 "connection limit exceeded": no id to match.
            return [Refusal(min(errors, key=lambda e: _GRAVITY.index(e.fault)))]
        if any(m["T"] == "success" and m.get("msg") == "authenticated" for m in payload):
            self._logged_in = True
            return [LoggedIn()]
        if any(m["T"] == "subscription" for m in payload):
            return [Subscribed()]  # the whole subscription, after each change
        candles, malformed = [], []
        for message in payload:
            if message["T"] not in _BAR_TYPES:
                continue  # control messages, trades, quotes, statuses: not ours
            try:
                candles.append(self._stream_bar(message))
            except CodecError as e:
                malformed.append(Malformed(str(e)))  # keep the frame's good bars
        if not candles:
            return list(malformed[:1])
        # Bars arrive just after their minute closes: each is closed. Frames
        # carry several symbols, sorted out by the streams carried.
        return self._data(closed=candles) + malformed[:1]

    def _stream_error(self, message: dict[str, Any]) -> StreamError:
        code, words = message.get("code"), message.get("msg")
        said = f"{venue_words(code)} {venue_words(words)}"
        if not isinstance(code, int) or isinstance(code, bool):
            return StreamError(StreamFault.VENUE_FAULT, None, said)
        fault, fix = _STREAM_FAULTS.get(code, (StreamFault.VENUE_FAULT, ""))
        if code == 409:
            feed = self.codec.feed
            fix = (f'the key\'s plan does not include the "{feed}" feed: use a key'
                   f" whose plan does ({_KEY_SETTINGS})")  # fmt: skip
            if feed != "iex":
                fix += ' or set the venue\'s options feed = "iex"'
        return StreamError(fault, code, said, fix)

    def _stream_bar(self, message: dict[str, Any]) -> Candle:
        symbol = message.get("S")
        if not isinstance(symbol, str) or not symbol:
            raise CodecError("bar symbol")
        return _bar(SeriesKey(self.codec.venue, symbol, STREAM_TIMEFRAME), message)


class AlpacaStream(StreamCodecBase):
    """The stock stream `/v2/{feed}`: a login, then `bars` and `updatedBars`
    subscribed by message; minute bars only; no heartbeat."""

    LIMITS = STREAM_LIMITS
    SPARSE = AlpacaCodec.LIMITS.sparse
    # No heartbeat; nothing at all while the market is closed.
    QUIET = True
    TIMEFRAMES = frozenset({STREAM_TIMEFRAME})  # the stream has minute bars only
    SESSION = AlpacaSession

    def __init__(self, venue: str, feed: str, credentials: Credentials | None) -> None:
        super().__init__(venue)
        self.feed = feed
        self._credentials = credentials

    def __repr__(self) -> str:
        return f"AlpacaStream(venue={self._venue!r}, feed={self.feed!r})"

    def stream_name(self, key: SeriesKey) -> str:
        """`<timeframe>:<symbol>`."""
        return f"{key.timeframe}:{key.symbol}"

    def connect_path(self, series: Sequence[SeriesKey]) -> str:
        """`/v2/{feed}`: channels are subscribed by message."""
        return f"/v2/{self.feed}"

    def login_message(self) -> str:
        """The `auth` action with the venue's key and secret."""
        if self._credentials is None:
            raise ValueError("alpaca streams need the venue's api key and secret")
        c = self._credentials
        return json.dumps({"action": "auth", "key": c.key, "secret": c.secret})


def _page_token(token: object) -> str | None:
    """`next_page_token`: None (or empty) on the last page, else a token to send
    back as `page_token` (base64 text, "QUFQTHxNfDIwMjIt..."), bounded."""
    if token is None or token == "":
        return None  # sent back, an empty token would be no token at all
    if not isinstance(token, str) or _PAGE_TOKEN.fullmatch(token) is None:
        raise CodecError(f"bars: next_page_token {shown(token)} is not a page token")
    return token


def _timeframe(series: SeriesKey) -> str:
    try:
        return TIMEFRAMES[series.timeframe]
    except KeyError:
        raise ValueError(f"alpaca has no {series.timeframe} bars") from None


def wire_time(tf: Timeframe, ts: datetime) -> datetime:
    """Alpaca's label of the domain's bar `ts`: daily bars open at midnight New York."""
    if tf.seconds != 86_400:
        return ts
    return datetime.combine(ts.date(), time(), NEW_YORK).astimezone(UTC)


def domain_time(tf: Timeframe, ts: datetime) -> datetime:
    """The domain's open time of the bar Alpaca labels `ts`; CodecError if misaligned."""
    if tf.seconds == 86_400:
        try:
            local = ts.astimezone(NEW_YORK)
        except OverflowError:  # New York's date of 0001-01-01T00:00Z is in year 0
            raise CodecError(f"daily bar at {ts.isoformat()}, before year 1 in New York") from None
        if local.time() != time():
            raise CodecError(f"daily bar at {ts.isoformat()}, not midnight in New York")
        return bar_open(tf, datetime.combine(local.date(), time(), UTC))
    return bar_open(tf, ts)


def _bar(series: SeriesKey, row: object) -> Candle:
    """A bar object, REST or stream: `t`, `o`, `h`, `l`, `c`, `v` (`n` and `vw` unused)."""
    if not isinstance(row, dict):
        raise CodecError("expected an object")
    ts = domain_time(series.tf, parse_time(row.get("t")))
    o, h, low, c, v = (json_number(row.get(key)) for key in ("o", "h", "l", "c", "v"))
    return Candle(series, ts, o, h, low, c, v)


def _venue_error(status: int, payload: Any) -> VenueError:
    # {"code": 42210000, "message": "invalid timeframe"}; the code may be absent.
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        code = payload.get("code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        return VenueError(status, code, payload["message"])
    return VenueError(status, None, "no error body")
