"""OANDA v20 REST: `GET /v3/instruments/{instrument}/candles`; no candle stream.

Wire formats as documented at
https://developer.oanda.com/rest-live-v20/instrument-ep/ (the candles request:
`price` M|B|A, `granularity`, `count` at most 5000, `from`/`to`, `includeFirst`,
`dailyAlignment` 17 / `alignmentTimezone` America/New_York / `weeklyAlignment`
Friday by default; `Authorization: Bearer <token>`; errors 400/401/404/405),
https://developer.oanda.com/rest-live-v20/instrument-df/ (`Candlestick`,
`CandlestickData`, the granularities and their alignment) and
https://developer.oanda.com/rest-live-v20/troubleshooting-errors/ (error bodies
`{"errorCode"?: string, "errorMessage": string}`).

Facts the docs leave implicit, from OANDA's own answers:
- sparse: "If there is no market activity (no price generated) within the
  specified period, then no candle will be returned"
  (https://github.com/oanda/oandapy/issues/51);
- a `from`..`to` range spanning more than 5000 candles is refused with
  "Maximum value for 'count' exceeded", and a `to` in the future with
  "Invalid value specified for 'to'. Time is in the future"
  (https://github.com/happydasch/btoandav20/issues/28,
  https://github.com/hootnot/oanda-api-v20/issues/144);
- a candle stays `complete: false` after its end until the first price after
  it arrives: "anything between 1 sec up to the ~45 secs", "gaps of multiple
  minutes" between prices at quiet hours (https://github.com/hootnot/oanda-api-v20/issues/155,
  https://github.com/happydasch/btoandav20/issues/65). Such a candle is no
  answer yet: the page says its range is not final (`HistoryPage.not_final`),
  never that there is no bar.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

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
from candled.venues.wire import (
    SecretHeaders,
    bar_open,
    decimal_string,
    json_count,
    json_or_none,
    key_refusal,
    lowered,
    rfc3339_nanos,
    seconds_or_none,
    shown,
)
from candled.venues.wire import parse_rfc3339 as parse_time

LIMITS = VenueLimits(
    page_size=5000,  # `count`: "[default=500, maximum=5000]" (instrument-ep)
    request_weight=1,  # OANDA counts requests, not weights
    exact_genesis=False,  # nothing answers "first candle of the instrument"
    sparse=True,  # no candle for an interval without a price (oanda/oandapy#51)
    # "For an established connection, we recommend limiting this to one hundred
    # per second (100/s)": https://developer.oanda.com/rest-live-v20/best-practices/
    rate_capacity=100,
    rate_period_s=1.0,
    # A candle is complete once a price after its end arrives: seconds in busy
    # hours, up to ~45 s observed (hootnot/oanda-api-v20#155), longer for a
    # quiet instrument at night. 120 s covers the observed delays with room to
    # spare and still lets the heal cycle judge a bar two minutes after its
    # close; a candle still incomplete later is "not yet" to whoever asks
    # (poller, repair), so a longer wait costs a retry, never a lost bar.
    settling_s=120.0,
)
PRICE_COMPONENTS = {"M": "mid", "B": "bid", "A": "ask"}  # `options.price` -> candle field
_GRANULARITIES = {
    "1m": "M1", "5m": "M5", "15m": "M15", "30m": "M30", "1h": "H1",
    "2h": "H2", "4h": "H4", "6h": "H6", "8h": "H8", "12h": "H12",
    "1d": "D", "1w": "W", "1M": "M",
}  # fmt: skip
# Minute- and hour-aligned granularities start on the UTC grid anyway; the
# others are aligned to a day that starts at 17:00 New York unless asked
# otherwise, and weeks on Friday: ask for days at 00:00 UTC and weeks on
# Monday, the domain's alignment.
_UTC_DAYS = {"dailyAlignment": "0", "alignmentTimezone": "UTC"}
_DAY_ALIGNED = {
    **{g: _UTC_DAYS for g in ("H2", "H4", "H6", "H8", "H12", "D", "M")},
    "W": {**_UTC_DAYS, "weeklyAlignment": "Monday"},
}
TO_IN_FUTURE = "Invalid value specified for 'to'. Time is in the future"


class OandaCodec(CodecBase):
    """OANDA v20 instrument candles over REST; no candle stream (the pricing
    stream carries prices, not bars): live bars are polled."""

    LIMITS = LIMITS
    TIMEFRAMES = _GRANULARITIES
    NEEDS_CREDENTIALS = True  # every v20 endpoint needs the bearer token

    def __init__(
        self,
        venue: str = "oanda",
        credentials: Credentials | None = None,
        options: Mapping[str, str] | None = None,
    ) -> None:
        price = only_option("oanda", options, "price", "M", PRICE_COMPONENTS, " (mid, bid, ask)")
        super().__init__(venue)
        self._price = price
        self._component = PRICE_COMPONENTS[price]
        # Without credentials the codec only answers `limits` (config loading
        # refuses an OANDA venue without a token).
        self._headers: Mapping[str, str] = {}
        if credentials is not None:
            self._headers = SecretHeaders(
                {"Authorization": f"Bearer {credentials.key}"},
                {"Authorization": "Bearer <redacted>"},
            )

    def __repr__(self) -> str:
        return f"OandaCodec(venue={self._venue!r}, price={self._price!r})"

    def history_request(
        self, series: SeriesKey, start: datetime, end: datetime, limit: int
    ) -> HttpRequest:
        """Candles from the first bar opening at or after `start` to the open of
        the bar `end` falls in (OANDA refuses a `to` in the future)."""
        self.check_limit(limit)
        granularity = _GRANULARITIES.get(series.timeframe)
        if granularity is None:
            raise ValueError(f"oanda has no {series.timeframe} candles")
        tf = series.tf
        # `from` includes the candle it falls in: start on a bar so that none opens before.
        first = tf.ceil(require_utc(start))
        # Only bars that have closed by `end`: a window ending at "now" ends at
        # the open of the bar in progress. OANDA refuses a `to` in the future
        # (a 400), and a local clock ahead of OANDA's would otherwise get one.
        end = min(tf.floor(require_utc(end)), tf.add(first, limit))
        if end <= first:
            raise empty_window(start, end)
        return HttpRequest(
            method="GET",
            path=f"/v3/instruments/{quote(series.symbol, safe='')}/candles",
            params={
                "price": self._price,
                "granularity": granularity,
                "from": rfc3339_nanos(first),
                # `to` names the end of the range; a microsecond before the
                # next bar keeps that bar out whether OANDA reads `to` as
                # inclusive or not: exactly [start, end).
                "to": rfc3339_nanos(end - timedelta(microseconds=1)),
                **_DAY_ALIGNED.get(granularity, {}),
            },
            weight=LIMITS.request_weight,
            headers=self._headers,
        )

    def parse_history(
        self, series: SeriesKey, status: int, body: bytes, now: datetime
    ) -> list[Candle]:
        """The complete candles of an answer (`parse_history_page` says where it is not final)."""
        return self._parse(series, status, body, now)[0]

    def parse_history_page(
        self, series: SeriesKey, request: HttpRequest, status: int, body: bytes, now: datetime
    ) -> HistoryPage:
        """The complete candles, and where the answer stops being final: at the
        first candle that has closed by `now` and is still not `complete`.
        A `to` that OANDA finds in the future (its clock behind ours) is no
        error either: none of the window is final for OANDA yet."""
        if status == 400 and _error_message(json_or_none(body)) == TO_IN_FUTURE:
            return HistoryPage([], not_final=_request_from(request))
        candles, not_final = self._parse(series, status, body, now)
        return HistoryPage(candles, not_final=not_final)

    def _parse(
        self, series: SeriesKey, status: int, body: bytes, now: datetime
    ) -> tuple[list[Candle], datetime | None]:
        payload = json_or_none(body)
        if status != 200:
            raise self.refused_credentials(status, body) or _venue_error(status, payload)
        if not isinstance(payload, dict):
            raise CodecError("candles: expected a JSON object")
        instrument, granularity = payload.get("instrument"), payload.get("granularity")
        if instrument != series.symbol:
            raise CodecError(
                f"candles of instrument {shown(instrument)}, asked for {series.symbol}"
            )
        if granularity != _GRANULARITIES.get(series.timeframe):
            raise CodecError(f"candles of granularity {shown(granularity)}, asked for {series.tf}")
        rows = payload.get("candles")
        if not isinstance(rows, list):
            raise CodecError("candles: expected a `candles` array")
        now = require_utc(now)
        tf = series.tf
        candles, not_final = [], None
        for index, row in enumerate(rows):
            try:
                ts, candle = self._candle(series, tf, row)
            except CodecError as exc:
                raise CodecError(f"candle {index}: {exc}") from None
            if tf.close_time(ts) > now:
                continue  # still open at `now` (complete or not): not ours to judge yet
            if candle is not None:
                candles.append(candle)
            elif not_final is None or ts < not_final:
                not_final = ts  # closed, not complete: waiting for a price after its end
        candles.sort(key=lambda c: c.ts)  # oldest first, whatever the venue's order
        return candles, not_final

    def _candle(
        self, series: SeriesKey, tf: Timeframe, row: object
    ) -> tuple[datetime, Candle | None]:
        """The open time of one `Candlestick`, and its candle (None while it is
        not complete)."""
        if not isinstance(row, dict):
            raise CodecError("expected an object")
        complete = row.get("complete")
        if not isinstance(complete, bool):
            raise CodecError(f"complete flag {shown(complete)}")
        ts = bar_open(tf, parse_time(row.get("time")))
        if not complete:
            return ts, None
        data = row.get(self._component)
        if not isinstance(data, dict):
            raise CodecError(f"no `{self._component}` prices")
        o, h, low, c = (decimal_string(data.get(key)) for key in ("o", "h", "l", "c"))
        try:
            # The number of prices in the interval: an integer.
            volume = json_count(row.get("volume"))
        except CodecError as exc:
            raise CodecError(f"volume: {exc}") from None
        return ts, Candle(series, ts, o, h, low, c, float(volume))

    def rate_facts(self, status: int, headers: Mapping[str, str]) -> RateFacts:
        """A 429 and its Retry-After; OANDA reports no usage and bans nobody."""
        return RateFacts(
            used_weight=None,
            retry_after_s=seconds_or_none(lowered(headers).get("retry-after")),
            rate_limited=status == 429,
            banned=False,
        )

    def refused_credentials(self, status: int, body: bytes) -> CredentialsRefused | None:
        """A 401, or a 403 in OANDA's JSON error shape: the token."""
        # "A 401 Unauthorized response may be returned ... when the endpoint
        # being accessed requires the client to be authenticated however the
        # authentication token is invalid or has not been provided"; a token
        # without access is answered "Insufficient authorization to perform
        # request." (troubleshooting-errors). A 403 in OANDA's JSON error shape
        # refuses the token too; one without it is a CDN's or firewall's: retried.
        return key_refusal(self._venue, status, body, "errorMessage", needs_secret=False)


def _error_message(payload: Any) -> str | None:
    if isinstance(payload, dict) and isinstance(payload.get("errorMessage"), str):
        return str(payload["errorMessage"])
    return None


def _request_from(request: HttpRequest) -> datetime:
    """The first bar a candles request (`history_request`'s) asked for."""
    return parse_time(request.params.get("from"))


def _venue_error(status: int, payload: Any) -> VenueError:
    # {"errorMessage": "..."} with an optional string "errorCode".
    if isinstance(payload, dict) and isinstance(payload.get("errorMessage"), str):
        code = payload.get("errorCode")
        msg = payload["errorMessage"]
        return VenueError(status, None, f"{code}: {msg}" if isinstance(code, str) else msg)
    return VenueError(status, None, "no error body")
