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
from collections.abc import Iterator, Mapping, Sequence
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
    FrameResult,
    HistoryPage,
    HttpRequest,
    RateFacts,
    StreamError,
    StreamFault,
    VenueError,
    VenueLimits,
    bar_open,
    empty_window,
    header_count,
    json_number,
    json_or_none,
    only_option,
    seconds_or_none,
    shown,
    venue_words,
)

LIMITS = VenueLimits(
    # `limit` may be 1-10000. One less per window, so that the request can ask for
    # one bar more than the window holds: a full page (after which a
    # `next_page_token` may come although nothing follows) then cannot happen.
    # A token means Alpaca cut the page short, which it may: the backfill sends
    # the request `parse_history_page` names for the rest until none comes.
    page_size=9_999,
    request_weight=1,  # Alpaca counts requests
    # "There is no limit for the number of channels with minute bars", and an
    # account may hold one connection only (406 "connection limit exceeded"):
    # every series must fit on it.
    streams_per_connection=1_000_000,
    # No documented maximum age: never rotate (a make-before-break successor
    # would be a second connection, which Alpaca refuses).
    max_connection_age_s=math.inf,
    exact_genesis=False,  # nothing answers "first bar of this symbol"
    sparse=True,  # "bars are only generated when there are 'valid' trades" (forum, above)
    max_ws_messages_per_s=10.0,  # undocumented; subscribing takes one message per timeframe
    # "200 requests per minute" on the free Basic plan (alpaca.markets/support/
    # usage-limit-api-calls); Algo Trader Plus allows 10,000: set rate_capacity.
    rate_capacity=200,
    rate_period_s=60.0,
    live="stream",
    subscribe_in_url=False,  # channels are subscribed by message only
    acknowledges_requests=False,  # the `subscription` answer carries no id
    needs_credentials=True,  # key and secret on every request and on the stream
    needs_secret=True,
    stream_timeframes=frozenset({"1m"}),  # the stream has minute bars only
    quiet_stream=True,  # no heartbeat; nothing at all while the market is closed
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
# RFC 3339 in UTC, as Alpaca writes it: "2021-02-22T19:15:00Z", up to nanoseconds.
_RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$")
# A page token goes into the next request's URL: printable ASCII, bounded.
_PAGE_TOKEN = re.compile(r"[!-~]{1,1024}")
_BAR_TYPES = frozenset({"b", "u"})  # minute bars and corrected minute bars
_CONTROL_TYPES = frozenset({"success", "subscription", "error"})
_MALFORMED = FrameResult(malformed=True)
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


class _KeyHeaders(Mapping[str, str]):
    """Alpaca's key and secret headers, shown redacted in any repr (requests get logged)."""

    def __init__(self, credentials: Credentials) -> None:
        self._headers = {KEY_HEADER: credentials.key, SECRET_HEADER: credentials.secret}

    def __getitem__(self, name: str) -> str:
        return self._headers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)

    def __repr__(self) -> str:
        return f"{{'{KEY_HEADER}': '<redacted>', '{SECRET_HEADER}': '<redacted>'}}"


class AlpacaCodec(CodecBase):
    LIMITS = LIMITS
    TIMEFRAMES = TIMEFRAMES

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
        self._credentials = credentials
        self._headers: Mapping[str, str] = _KeyHeaders(credentials) if credentials else {}

    def __repr__(self) -> str:
        return f"AlpacaCodec(venue={self._venue!r}, feed={self._feed!r})"

    def history_request(
        self, series: SeriesKey, start: datetime, end: datetime, limit: int
    ) -> HttpRequest:
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

    def genesis_request(self, series: SeriesKey) -> HttpRequest:
        raise NotImplementedError("alpaca cannot answer a symbol's first bar (exact_genesis)")

    def parse_history(
        self, series: SeriesKey, status: int, body: bytes, now: datetime
    ) -> list[Candle]:
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
        # X-RateLimit-Limit / -Remaining / -Reset (epoch seconds) come with every
        # answer (forum.alpaca.markets/t/executing-orders/12029); the reset is a
        # clock time this clock-free codec cannot turn into a wait. No bans.
        lowered = {name.lower(): value for name, value in headers.items()}
        limit = header_count(lowered.get("x-ratelimit-limit"))
        remaining = header_count(lowered.get("x-ratelimit-remaining"))
        used = limit - remaining if limit is not None and remaining is not None else None
        return RateFacts(
            used_weight=max(0, used) if used is not None else None,
            retry_after_s=seconds_or_none(lowered.get("retry-after")),
            rate_limited=status == 429,
            banned=False,
        )

    def refused_credentials(self, status: int, body: bytes) -> CredentialsRefused | None:
        # 401 {"message": "unauthorized"}: a key Alpaca does not accept; 403
        # {"message": "forbidden"}: a wrong key or secret, or a plan without
        # the feed (forum.alpaca.markets/t/client-connection-forbidden/11066;
        # alpaca.markets/learn/how-to-fix-common-trading-api-errors-at-alpaca).
        # A 403 without Alpaca's JSON error is a CDN or firewall page: retried.
        if status not in (401, 403):
            return None
        payload = json_or_none(body)
        if isinstance(payload, dict) and isinstance(payload.get("message"), str):
            answer = payload["message"][:200]
        elif status == 401:
            answer = "no error body"
        else:
            return None
        return CredentialsRefused(self._venue, status, answer,
                                  needs_secret=True)  # fmt: skip

    def stream_name(self, series: SeriesKey) -> str:
        return f"{series.timeframe}:{series.symbol}"

    def stream_path(self, series: Sequence[SeriesKey]) -> str:
        return f"/v2/{self._feed}"  # channels are subscribed by message

    def login_messages(self) -> list[str]:
        if self._credentials is None:
            raise ValueError("alpaca streams need the venue's api key and secret")
        c = self._credentials
        return [json.dumps({"action": "auth", "key": c.key, "secret": c.secret})]

    def subscribe_message(self, series: Sequence[SeriesKey], request_id: int) -> str:
        return self._action("subscribe", series)

    def unsubscribe_message(self, series: Sequence[SeriesKey], request_id: int) -> str:
        return self._action("unsubscribe", series)

    @staticmethod
    def _action(action: str, series: Sequence[SeriesKey]) -> str:
        # Only minute series have a channel; the others subscribe nothing (an
        # empty list is a valid subscribe) and take their bars from backfills.
        symbols = [s.symbol for s in series if s.timeframe == STREAM_TIMEFRAME]
        return json.dumps({"action": action, "bars": symbols, "updatedBars": symbols})

    def parse_frame(self, text: str) -> FrameResult:
        payload = json_or_none(text)
        # Every server message is an array of objects, each with its type in `T`.
        if not isinstance(payload, list) or not all(
            isinstance(m, dict) and isinstance(m.get("T"), str) for m in payload
        ):
            return _MALFORMED
        errors = [self._stream_error(m) for m in payload if m["T"] == "error"]
        if errors:
            # e.g. 402 "auth failed", 406 "connection limit exceeded": no id to match.
            text = "; ".join(e.said for e in errors)
            error = min(errors, key=lambda e: _GRAVITY.index(e.fault))
            return FrameResult(error=text, stream_error=error)
        if any(m["T"] == "success" and m.get("msg") == "authenticated" for m in payload):
            return FrameResult(logged_in=True)
        if any(m["T"] == "subscription" for m in payload):
            return FrameResult(subscribed=True)  # the whole subscription, after each change
        candles, malformed = [], False
        for message in payload:
            if message["T"] not in _BAR_TYPES:
                continue  # control messages, trades, quotes, statuses: not ours
            try:
                candles.append(self._stream_bar(message))
            except CodecError:
                malformed = True  # keep the frame's good bars
        if not candles:
            return FrameResult(malformed=malformed)
        # Bars arrive just after their minute closes: each is closed. Frames
        # carry several symbols (stream None: the collector sorts them out).
        return FrameResult(candles=tuple(candles), is_data=True, malformed=malformed)

    def _stream_error(self, message: dict[str, Any]) -> StreamError:
        code, words = message.get("code"), message.get("msg")
        said = f"{venue_words(code)} {venue_words(words)}"
        if not isinstance(code, int) or isinstance(code, bool):
            return StreamError(StreamFault.VENUE_FAULT, None, said)
        fault, fix = _STREAM_FAULTS.get(code, (StreamFault.VENUE_FAULT, ""))
        if code == 409:
            fix = (f'the key\'s plan does not include the "{self._feed}" feed: use a key'
                   f" whose plan does ({_KEY_SETTINGS})")  # fmt: skip
            if self._feed != "iex":
                fix += ' or set the venue\'s options feed = "iex"'
        return StreamError(fault, code, said, fix)

    def _stream_bar(self, message: dict[str, Any]) -> Candle:
        symbol = message.get("S")
        if not isinstance(symbol, str) or not symbol:
            raise CodecError("bar symbol")
        return _bar(SeriesKey(self._venue, symbol, STREAM_TIMEFRAME), message)


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


def rfc3339(ts: datetime) -> str:
    return require_utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> datetime:
    m = _RFC3339.match(value) if isinstance(value, str) else None
    if m is None:
        raise CodecError(f"time {shown(value)} is not an RFC 3339 UTC time")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micros = int((m.group(7) or "0").ljust(9, "0")[:6])  # digits past microseconds dropped
    try:
        return datetime(year, month, day, hour, minute, second, micros, tzinfo=UTC)
    except ValueError:
        raise CodecError(f"time {shown(value)} is not a valid date") from None


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
